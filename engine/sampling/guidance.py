"""Three-branch classifier-free guidance for instruction-guided editing (docs/bagel-layout.md): the
config, which branches a step needs, how their velocities combine, and the sampler adapter.

Branches: ``cond`` (image + instruction), ``no_text`` (image, no instruction), ``no_image``
(instruction, no image). The model side evaluates them in one batched forward.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch

COND, NO_TEXT, NO_IMAGE = "cond", "no_text", "no_image"
BRANCHES = (COND, NO_TEXT, NO_IMAGE)
RENORM_MODES = ("global", "channel", "text_channel")
_EPS = 1e-8

BranchVelocityFn = Callable[[torch.Tensor, torch.Tensor, tuple], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance scales (1 = off; below 1 is refused), the interval ``(a, b]`` of t where guidance
    applies, and the velocity renormalisation (``renorm_min = 1`` disables it)."""

    text_scale: float = 4.0
    image_scale: float = 1.5
    interval: tuple[float, float] = (0.4, 1.0)
    renorm: str = "global"
    renorm_min: float = 0.0

    def __post_init__(self) -> None:
        for name in ("text_scale", "image_scale"):
            value = float(getattr(self, name))
            if not value >= 1.0:
                raise ValueError(f"{name} must be ≥ 1 (1 turns that guidance off), got {value}")
            object.__setattr__(self, name, value)
        interval = tuple(float(v) for v in self.interval)
        if len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0:
            raise ValueError(f"interval must be (a, b) with 0 ≤ a < b ≤ 1, got {self.interval}")
        object.__setattr__(self, "interval", interval)
        if self.renorm not in RENORM_MODES:
            raise ValueError(f"renorm must be one of {RENORM_MODES}, got {self.renorm!r}")
        if not 0.0 <= float(self.renorm_min) <= 1.0:
            raise ValueError(f"renorm_min must be in [0, 1], got {self.renorm_min}")
        object.__setattr__(self, "renorm_min", float(self.renorm_min))

    @classmethod
    def off(cls) -> GuidanceConfig:
        """No guidance: only the ``cond`` branch is ever evaluated."""
        return cls(text_scale=1.0, image_scale=1.0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["interval"] = list(self.interval)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> GuidanceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown guidance settings {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "interval" in values:
            values["interval"] = tuple(values["interval"])
        return cls(**values)

    def scales_at(self, t: float) -> tuple[float, float]:
        """(text, image) scales in force at time t: the configured ones when a < t ≤ b, else 1."""
        a, b = self.interval
        return (self.text_scale, self.image_scale) if a < t <= b else (1.0, 1.0)

    def branches_at(self, t: float) -> tuple[str, ...]:
        """The branches the model must evaluate at time t (``cond`` always comes first)."""
        text_scale, image_scale = self.scales_at(t)
        return (COND,) + ((NO_TEXT,) if text_scale > 1.0 else ()) + ((NO_IMAGE,) if image_scale > 1.0 else ())


def combine_guidance(outputs: Mapping[str, torch.Tensor], text_scale: float, image_scale: float,
                     renorm: str = "global", renorm_min: float = 0.0, channel_dim: int = -1,
                     token_patch: int = 1) -> torch.Tensor:
    """Combine branch velocities (shape (batch, …), computed in float32 or better).

    v_t' = v_nt + s_t·(v − v_nt); v' = v_ni + s_i·(v_t' − v_ni) if s_i > 1; then, for ``global``
    and ``channel``, v' · clamp(‖v‖/‖v'‖, r, 1). ``global`` takes the norm over every token and
    channel **of each batch element** (BAGEL takes it over the whole tensor, assuming batch 1; we
    batch slices, so one norm per slice); ``channel`` takes it along ``channel_dim`` per token.
    ``text_channel`` renormalises v_t' per token against v, then applies image guidance with no
    renorm. For image-shaped latents (batch, c, h, w) with ``channel_dim=1``, ``token_patch = p``
    makes a token a p×p block of latent pixels × channels, as BAGEL's 2×2-patch tokens. A scale of 1 (or less) skips its step and its branch. Deviation from BAGEL: with
    s_t = 1 and s_i > 1 we still apply image guidance (BAGEL silently applies none).
    """
    if renorm not in RENORM_MODES:
        raise ValueError(f"renorm must be one of {RENORM_MODES}, got {renorm!r}")
    use_text, use_image = text_scale > 1.0, image_scale > 1.0
    needed = (COND,) + ((NO_TEXT,) if use_text else ()) + ((NO_IMAGE,) if use_image else ())
    missing = [b for b in needed if b not in outputs]
    if missing:
        raise ValueError(f"the velocity function did not return the branches {missing} it was asked for")
    dtype = torch.promote_types(outputs[COND].dtype, torch.float32)
    v = outputs[COND].to(dtype)
    if not (use_text or use_image):
        return v
    v_text = outputs[NO_TEXT].to(dtype) + text_scale * (v - outputs[NO_TEXT].to(dtype)) if use_text else v
    if renorm == "text_channel":
        v_text = v_text * _renorm_factor(v, v_text, renorm_min, channel_dim, token_patch)
        if not use_image:
            return v_text
        v_image = outputs[NO_IMAGE].to(dtype)
        return v_image + image_scale * (v_text - v_image)
    guided = v_text
    if use_image:
        v_image = outputs[NO_IMAGE].to(dtype)
        guided = v_image + image_scale * (v_text - v_image)
    if renorm == "global":
        return guided * _renorm_factor(v, guided, renorm_min, None)
    return guided * _renorm_factor(v, guided, renorm_min, channel_dim, token_patch)


def _token_norm(x: torch.Tensor, channel_dim: int, token_patch: int) -> torch.Tensor:
    """‖x‖ per token, broadcastable to x: along ``channel_dim``, or over p×p blocks × channels."""
    if token_patch == 1:
        return torch.linalg.vector_norm(x, dim=channel_dim, keepdim=True)
    b, c, h, w = x.shape if x.ndim == 4 else (0, 0, 0, 0)
    if x.ndim != 4 or channel_dim not in (1, -3) or h % token_patch or w % token_patch:
        raise ValueError(f"token_patch={token_patch} needs (batch, c, h, w) latents with channel_dim=1 and "
                         f"h, w divisible by it; got shape {tuple(x.shape)}, channel_dim={channel_dim}")
    p = token_patch
    blocks = x.pow(2).sum(1).reshape(b, h // p, p, w // p, p).sum(dim=(2, 4)).sqrt()
    return blocks.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)[:, None]


def _renorm_factor(reference: torch.Tensor, guided: torch.Tensor, renorm_min: float,
                   channel_dim: int | None, token_patch: int = 1) -> torch.Tensor:
    """clamp(‖reference‖ / ‖guided‖, renorm_min, 1): per sample (``None``) or per token."""
    if channel_dim is None:
        dims = tuple(range(1, reference.ndim))
        ref_norm = torch.linalg.vector_norm(reference, dim=dims, keepdim=True)
        guided_norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
    else:
        ref_norm = _token_norm(reference, channel_dim, token_patch)
        guided_norm = _token_norm(guided, channel_dim, token_patch)
    return (ref_norm / (guided_norm + _EPS)).clamp(min=renorm_min, max=1.0)


def guided_velocity(fn: BranchVelocityFn, config: GuidanceConfig, channel_dim: int = -1, token_patch: int = 1):
    """Adapt ``fn(x, t, branches) -> {branch: v}`` to the solvers' ``(x, t) -> v``.

    At each call only the branches :meth:`GuidanceConfig.branches_at` names are requested, so
    outside the interval (or with scales of 1) the model runs the ``cond`` branch alone.
    ``channel_dim`` is the latent channel axis for the per-token renorms (-1 for BAGEL's
    (batch, tokens, channels) layout, 1 for (batch, channels, h, w)); ``token_patch`` the latent
    patch size making one token (our model: ``config.latent_patch_size``, with ``channel_dim=1``).
    """

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_now = float(t.reshape(-1)[0]) if torch.is_tensor(t) else float(t)
        text_scale, image_scale = config.scales_at(t_now)
        outputs = fn(x, t, config.branches_at(t_now))
        return combine_guidance(outputs, text_scale, image_scale, config.renorm, config.renorm_min, channel_dim,
                                token_patch)

    return velocity
