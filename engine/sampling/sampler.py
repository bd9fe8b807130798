"""The one entry point for generation: draw seeded noise (or noise a given start), build the
shifted schedule, wrap the velocity in guidance, and integrate to t = 0."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.jobs import CancelToken, ProgressFn, noop
from engine.sampling.guidance import GuidanceConfig, guided_velocity
from engine.sampling.schedule import inference_timesteps, interpolate
from engine.sampling.solvers import get_solver


def draw_noise(shape: Sequence[int], *, generator: torch.Generator | None = None, seed: int | None = 0,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise, reproducible for a seed on every device: drawn in float32 on the
    generator's device (a fresh CPU generator seeded with ``seed`` when none is given), then moved.
    ``generator=None, seed=None`` uses torch's global RNG."""
    if generator is None and seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    gen_device = generator.device if generator is not None else "cpu"
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


@torch.no_grad()
def sample(velocity_fn: Callable, shape: Sequence[int], *, steps: int, shift: float, solver: str = "euler",
           guidance: GuidanceConfig | None = None, generator: torch.Generator | None = None, seed: int | None = 0,
           init: torch.Tensor | None = None, t_start: float = 1.0, noise: torch.Tensor | None = None,
           progress: ProgressFn = noop,
           cancel: CancelToken | None = None, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32, channel_dim: int = -1, token_patch: int = 1) -> torch.Tensor:
    """Integrate the flow from t = ``t_start`` to 0 and return x0 of ``shape`` in ``dtype``.

    ``velocity_fn``: without ``guidance``, ``(x, t) -> v``; with it, ``(x, t, branches) -> {branch: v}``
    (see :mod:`engine.sampling.guidance`). ``t`` is a float32 tensor of shape (batch,).
    ``steps`` counts ODE steps (Euler: network calls; BAGEL's 50 timesteps = ``steps=49``).
    ``init``: a clean start (e.g. the source latent); with ``t_start < 1`` the flow starts from
    x = (1 − t_start)·init + t_start·ε instead of pure noise. ``noise``: that ε, given (e.g. each
    slice's own seeded noise) instead of drawn from ``generator`` / ``seed``. The model sees ``dtype``; the ODE
    state is kept in at least float32. ``channel_dim`` / ``token_patch`` say what a token is for the
    per-token renorms (our model's (S, z, h, w) latents: ``channel_dim=1``, ``token_patch=2``).
    Cancelling raises :class:`engine.jobs.Cancelled`.
    """
    shape = tuple(int(s) for s in shape)
    if t_start < 1.0 and init is None:
        raise ValueError("t_start < 1 starts from a noised init: pass init (e.g. the source latent)")
    if init is not None and tuple(init.shape) != shape:
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
    state_dtype = torch.promote_types(dtype, torch.float32)
    if noise is None:
        noise = draw_noise(shape, generator=generator, seed=seed, device=device, dtype=state_dtype)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    else:
        noise = noise.to(device=device, dtype=state_dtype)
    x = noise if init is None else interpolate(init.to(device=device, dtype=state_dtype), noise, t_start)

    base = guided_velocity(velocity_fn, guidance, channel_dim, token_patch) if guidance is not None else velocity_fn

    def velocity(x_state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = base(x_state.to(dtype), t)
        if tuple(v.shape) != shape:
            raise ValueError(f"the velocity has shape {tuple(v.shape)}, expected {shape}")
        return v.to(state_dtype)

    timesteps = inference_timesteps(steps, shift, t_start)
    x = get_solver(solver)(velocity, x, timesteps, progress=progress, cancel=cancel)
    return x.to(dtype)
