"""ODE solvers that integrate a flow-matching velocity field from noise (t = 1) towards data (t = 0).

Each solver takes ``velocity(x, t) -> v`` where ``t`` is a float32 tensor of shape (batch,) (all
equal), checks ``cancel`` before every network call and reports ``Progress(step, total)`` per step.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Solver = Callable[..., torch.Tensor]


def _time(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def _report(progress: ProgressFn, step: int, total: int) -> None:
    progress(Progress(step, total, f"sampling step {step}/{total}"))


def euler(velocity: VelocityFn, x: torch.Tensor, timesteps: torch.Tensor, *, progress: ProgressFn = noop,
          cancel: CancelToken | None = None) -> torch.Tensor:
    """First order, one network call per step: x ← x + (t_next − t)·v(x, t) (BAGEL's sampler)."""
    total = len(timesteps) - 1
    for i in range(total):
        t, t_next = float(timesteps[i]), float(timesteps[i + 1])
        check_cancel(cancel)
        x = x + (t_next - t) * velocity(x, _time(t, x))
        _report(progress, i + 1, total)
    return x


def heun(velocity: VelocityFn, x: torch.Tensor, timesteps: torch.Tensor, *, progress: ProgressFn = noop,
         cancel: CancelToken | None = None) -> torch.Tensor:
    """Second order (trapezoidal predictor–corrector): two calls per step, the last one at t = 0
    (a trained network's velocity is finite there; for fields singular at t = 0 use ``midpoint``)."""
    total = len(timesteps) - 1
    for i in range(total):
        t, t_next = float(timesteps[i]), float(timesteps[i + 1])
        dt = t_next - t
        check_cancel(cancel)
        v = velocity(x, _time(t, x))
        check_cancel(cancel)
        v_next = velocity(x + dt * v, _time(t_next, x))
        x = x + dt * 0.5 * (v + v_next)
        _report(progress, i + 1, total)
    return x


def midpoint(velocity: VelocityFn, x: torch.Tensor, timesteps: torch.Tensor, *, progress: ProgressFn = noop,
             cancel: CancelToken | None = None) -> torch.Tensor:
    """Second order (explicit midpoint): two calls per step, never evaluated at t = 0."""
    total = len(timesteps) - 1
    for i in range(total):
        t, t_next = float(timesteps[i]), float(timesteps[i + 1])
        dt = t_next - t
        check_cancel(cancel)
        v = velocity(x, _time(t, x))
        check_cancel(cancel)
        v_mid = velocity(x + 0.5 * dt * v, _time(t + 0.5 * dt, x))
        x = x + dt * v_mid
        _report(progress, i + 1, total)
    return x


SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun, "midpoint": midpoint}
CALLS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2}


def get_solver(name: str) -> Solver:
    key = str(name).strip().lower()
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; use one of {', '.join(SOLVERS)}")
    return SOLVERS[key]


def network_calls(solver: str, steps: int) -> int:
    """How many velocity evaluations (each up to three CFG branches) ``steps`` steps cost."""
    key = str(solver).strip().lower()
    get_solver(key)
    return steps * CALLS_PER_STEP[key]
