"""BAGEL's timestep shift and the training-time sampler of flow matching: the time math the model's
loss and the sampler's schedule (:mod:`engine.sampling.schedule`) share, below both. Convention: x_t = (1 − t)·x0
+ t·ε, t = 1 is pure noise, t = 0 is data.
"""
from __future__ import annotations

import math

import torch

LOGIT_NORMAL = "logit_normal"
UNIFORM = "uniform"
TRAINING_DISTRIBUTIONS = (LOGIT_NORMAL, UNIFORM)


def shift_timesteps(t, shift: float):
    """BAGEL's timestep shift s·t / (1 + (s − 1)·t): s > 1 spends more steps near the noise end.

    Works on floats and tensors; maps 0 → 0 and 1 → 1; ``shift = 1`` is the identity.
    """
    _check_shift(shift)
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_timesteps(t, shift: float):
    """The inverse of :func:`shift_timesteps`: u = t / (s − (s − 1)·t)."""
    _check_shift(shift)
    return t / (shift - (shift - 1.0) * t)


def sample_training_timesteps(batch: int, *, shift: float = 1.0, distribution: str = LOGIT_NORMAL,
                              mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
                              device: torch.device | str | None = None) -> torch.Tensor:
    """Training times t ∈ (0, 1) of shape (batch,), float32.

    ``logit_normal`` (BAGEL): t = shift(sigmoid(n)), n ~ N(mean, std²); ``uniform``: t = shift(u),
    u ~ U(0, 1). Drawn on the generator's device (CPU by default), then moved to ``device``.
    """
    if distribution not in TRAINING_DISTRIBUTIONS:
        raise ValueError(f"unknown timestep distribution {distribution!r}; use one of {TRAINING_DISTRIBUTIONS}")
    gen_device = generator.device if generator is not None else "cpu"
    if distribution == LOGIT_NORMAL:
        n = torch.randn(batch, generator=generator, device=gen_device) * std + mean
        u = torch.sigmoid(n)
    else:
        u = torch.rand(batch, generator=generator, device=gen_device)
    return shift_timesteps(u, shift).to(device=device if device is not None else u.device)


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"timestep shift must be a positive number, got {shift!r}")
