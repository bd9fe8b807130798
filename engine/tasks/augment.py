"""Domain randomization of training samples (the SynthSR / SynthSeg lesson): what varies between
sites is drawn afresh for every sample. A :class:`View` (field of view: rotation, size, shift, a cut
field of view) is shared by every image of a sample, so a source and its target stay aligned; the
acquisition (resolution, bias field, noise, contrast, calibration, 8-bit storage) degrades the
model's *inputs* only — a synthesis target stays as simulated, physics-faithful.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from engine import modalities


@dataclass(frozen=True)
class Randomization:
    """Ranges of the per-sample draws (uniform unless said otherwise); ``*_p`` are probabilities."""

    rotation_deg: float = 15.0                          # in-plane rotation, ±
    zoom: tuple[float, float] = (0.88, 1.12)            # anatomy size between people
    shift: float = 0.15                                 # translation, ± this share of the slice
    cut_p: float = 0.25                                 # a field of view that cuts the anatomy
    cut_keep: tuple[float, float] = (0.55, 0.95)        # … keeping this share of each side
    blur_p: float = 0.4                                 # a coarser in-plane resolution / thicker slice
    blur_factor: tuple[float, float] = (1.2, 2.5)       # … pixel size × this along one or both axes
    bias_p: float = 0.5                                 # MR: a smooth multiplicative bias field
    bias_strength: float = 0.35                         # … log-amplitude std
    noise_p: float = 0.5
    noise_std: tuple[float, float] = (0.005, 0.04)      # in normalised units
    gamma_p: float = 0.5                                # MR: contrast (gamma) around the simulated physics
    gamma: tuple[float, float] = (0.7, 1.45)
    hu_offset: float = 40.0                             # CT family: calibration on top of the data's, ± HU
    hu_scale: float = 0.04                              # … and ± this relative scale
    quantize_p: float = 0.15                            # stored as 8 bits

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class View:
    """The geometry of one sample: a 2×3 ``affine_grid`` matrix from the model's square to the
    canvas, and an optional kept box (top, left, bottom, right) in model pixels (outside: background)."""

    theta: tuple[tuple[float, float, float], tuple[float, float, float]]
    keep: tuple[int, int, int, int] | None = None


def _crop_offset(length: int, size: int) -> float:
    """Where the centre crop's centre lies from the canvas centre (pixels): 0, or −½ for an odd difference."""
    return (length - size) // 2 + size / 2 - length / 2


def draw_view(rng: random.Random, spec: Randomization, canvas_hw: tuple[int, int], size: int) -> View:
    """A random field of view of a (Hc, Wc) canvas as a ``size``² model image."""
    hc, wc = canvas_hw
    angle = math.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg))
    zoom = rng.uniform(*spec.zoom)
    # canvas pixel offset from its centre = A · (model pixel offset from its centre) + t; t = 0 is the
    # centre crop apply_view takes without a view (half a pixel off the canvas centre for an odd difference)
    a = [[math.cos(angle) / zoom, -math.sin(angle) / zoom], [math.sin(angle) / zoom, math.cos(angle) / zoom]]
    tx = rng.uniform(-spec.shift, spec.shift) * size + rng.uniform(-0.5, 0.5) * (wc - size) + _crop_offset(wc, size)
    ty = rng.uniform(-spec.shift, spec.shift) * size + rng.uniform(-0.5, 0.5) * (hc - size) + _crop_offset(hc, size)
    theta = ((a[0][0] * size / wc, a[0][1] * size / wc, 2.0 * tx / wc),
             (a[1][0] * size / hc, a[1][1] * size / hc, 2.0 * ty / hc))
    keep = None
    if rng.random() < spec.cut_p:
        kh, kw = (max(2, round(size * rng.uniform(*spec.cut_keep))) for _ in range(2))
        top, left = rng.randint(0, size - kh), rng.randint(0, size - kw)
        keep = (top, left, top + kh, left + kw)
    return View(theta, keep)


def apply_view(canvas: torch.Tensor, view: View | None, size: int) -> torch.Tensor:
    """(Hc, Wc) canvas → (1, size, size): the view's field of view (its centre crop without a view)."""
    if view is None:
        top, left = (canvas.shape[0] - size) // 2, (canvas.shape[1] - size) // 2
        return canvas[top:top + size, left:left + size][None].clone()
    theta = torch.tensor(view.theta, dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    out = F.grid_sample(canvas[None, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if view.keep is not None:
        top, left, bottom, right = view.keep
        kept = torch.zeros_like(out)
        kept[..., top:bottom, left:right] = out[..., top:bottom, left:right]
        out = kept
    return out[0].clamp_(0.0, 1.0)


def _generator(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.getrandbits(62))


def _smooth_field(gen: torch.Generator, size: int, lattice: int = 4) -> torch.Tensor:
    coarse = torch.randn(1, 1, lattice, lattice, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]


def degrade(image: torch.Tensor, modality: str, rng: random.Random, spec: Randomization) -> torch.Tensor:
    """A (1, S, S) model input in [0, 1] as another site might have acquired it (see the module doc)."""
    out = image.clone()
    size = out.shape[-1]
    gen = _generator(rng)
    family = modalities.get(modality).family
    body = out > 0.0
    if rng.random() < spec.blur_p:
        fy, fx = rng.uniform(*spec.blur_factor), rng.uniform(*spec.blur_factor)
        if rng.random() < 0.5:                       # one axis only: a thick slice seen edge-on
            fy, fx = (fy, 1.0) if rng.random() < 0.5 else (1.0, fx)
        low = F.interpolate(out[None], size=(max(2, round(size / fy)), max(2, round(size / fx))), mode="bilinear",
                            align_corners=False, antialias=True)
        out = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
    if family == "CT":
        hu_range = modalities.get(modality).fixed_range          # the [0, 1] normalisation's HU range
        assert hu_range is not None, "every CT modality normalises over a fixed HU range"
        lo, hi = hu_range
        scale = 1.0 + rng.uniform(-spec.hu_scale, spec.hu_scale)
        shift = rng.uniform(-spec.hu_offset, spec.hu_offset)
        hu = (lo + out * (hi - lo)) * scale + shift
        # calibration acts on HU; the canvas background stays background
        out = torch.where(body, (hu - lo) / (hi - lo), out)
    else:
        if rng.random() < spec.bias_p:
            out = out * torch.exp(spec.bias_strength * _smooth_field(gen, size))
        if rng.random() < spec.gamma_p:
            out = out.clamp(0.0, 1.0) ** rng.uniform(*spec.gamma)
    if rng.random() < spec.noise_p:
        sigma = rng.uniform(*spec.noise_std)
        noise = torch.randn(out.shape, generator=gen) * sigma
        out = (out + noise).abs() if family != "CT" else out + noise     # MR magnitude: Rician-like
    out = out.clamp(0.0, 1.0)
    if rng.random() < spec.quantize_p:
        out = torch.round(out * 255.0) / 255.0
    return out


@dataclass(frozen=True, eq=False)
class Look:
    """One sample's draw: its field of view and the generator its degradations draw from
    (``spec`` None: the centre of the canvas, nothing degraded — validation and evaluation)."""

    spec: Randomization | None
    rng: random.Random
    view: View | None = None

    @classmethod
    def draw(cls, spec: Randomization | None, rng: random.Random, canvas_hw: tuple[int, int], size: int) -> Look:
        return cls(spec, rng, draw_view(rng, spec, canvas_hw, size) if spec is not None else None)

    def image(self, canvas: torch.Tensor, size: int) -> torch.Tensor:
        return apply_view(canvas, self.view, size)

    def degrade(self, image: torch.Tensor, modality: str) -> torch.Tensor:
        return image if self.spec is None else degrade(image, modality, self.rng, self.spec)
