"""Flow-matching time at inference: the rectified-flow convention and the inference schedule (BAGEL's
timestep shift and the training-time sampler, which the model's loss uses too, are :mod:`engine.flow_time`).

Convention (docs/bagel-layout.md): x_t = (1 − t)·x0 + t·ε, t = 1 is pure noise, t = 0 is data; the
network predicts the velocity v = ε − x0 (pointing from data to noise), so dx/dt = v.
"""
from __future__ import annotations

import torch

from engine.flow_time import shift_timesteps, unshift_timesteps


def inference_timesteps(steps: int, shift: float = 1.0, t_start: float = 1.0) -> torch.Tensor:
    """``steps + 1`` decreasing times from ``t_start`` to 0 (float64, CPU).

    **Convention: ``steps`` is the number of ODE steps** (= network calls for Euler). The grid is
    ``linspace(u_start, 0, steps + 1)`` in unshifted time, then shifted, with ``u_start`` chosen so
    that the first time is exactly ``t_start``. BAGEL's ``num_timesteps = N`` (``linspace(1, 0, N)``,
    N − 1 network calls) is therefore ``steps = N − 1`` here: its "50 steps" are ``steps=49``.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start!r}")
    u_start = unshift_timesteps(float(t_start), shift)
    u = torch.linspace(u_start, 0.0, int(steps) + 1, dtype=torch.float64)
    t = shift_timesteps(u, shift)
    t[0], t[-1] = float(t_start), 0.0        # exact end points despite rounding
    return t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·noise; ``t`` is a float or a (batch,) tensor broadcast over the rest."""
    t = _broadcastable(t, x0)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = noise − x0."""
    return noise - x0


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, t) -> torch.Tensor:
    """The clean sample implied by a velocity at time t: x0 = x_t − t·v (for previews)."""
    return x_t - _broadcastable(t, x_t) * velocity


def _broadcastable(t, like: torch.Tensor):
    if not torch.is_tensor(t):
        return float(t)
    t = t.to(device=like.device, dtype=like.dtype)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))
