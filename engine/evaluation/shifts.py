"""Shifted inputs for the generalization benchmark: what differs between sites, applied to a
held-out volume *and to its reference in the same way*, so a score is always computed on the
shifted volume's own grid against a reference shifted identically.

- :func:`crop_box` / :func:`crop` — a tight field of view: the in-plane bounding box of the body
  (+ a margin in mm); same spacing, fewer pixels;
- :func:`pad` — the volume placed in a field of view ``factor`` times wider (in-plane), filled with
  the modality's background (air −1000 HU for CT / CBCT, 0 for MR); same spacing, more pixels;
- :func:`coarser` — another resolution: in-plane pixels ``in_plane`` times larger and slices
  ``through_plane`` times thicker over the same physical extent (Gaussian pre-blur matching the
  larger voxel, then linear resampling with SimpleITK).

Each shift is a :class:`Shift` (a function of one volume) built from the *source*'s geometry and
body, then applied unchanged to every modality of the subject. :func:`out_of_range_specs` gives
the CBCT simulator settings outside the training ranges (read from :class:`CBCTSpec`'s defaults).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from engine import modalities
from engine.inference.slices import slice_axis
from engine.io.volume import Volume

if TYPE_CHECKING:
    from engine.demo_data.ct import CBCTSpec

CROP_MARGIN_MM = 2.0
PAD_FACTOR = 1.6
COARSER_IN_PLANE = 1.5
COARSER_THROUGH_PLANE = 2.0


def background_value(modality: str | None) -> float:
    """What lies outside the body in a scan of ``modality``: air for CT-family, 0 otherwise."""
    if modality and modalities.get(modality).family == "CT":
        return -1000.0
    return 0.0


def in_plane_axes(volume: Volume) -> tuple[int, int]:
    """The two array axes (of z, y, x = 0, 1, 2) spanning the slices the models cut."""
    axis = slice_axis(volume.spacing)
    first, second = (a for a in (0, 1, 2) if a != axis)
    return first, second


def _xyz(axis: int) -> int:
    """Array axis (z, y, x) → the index of that axis in (x, y, z) geometry tuples."""
    return 2 - axis


@dataclass(frozen=True)
class Geometry:
    """A target grid: array shape (z, y, x); spacing and origin (x, y, z); direction row-major."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"shape_zyx": list(self.shape), "spacing_xyz_mm": [round(s, 4) for s in self.spacing],
                "origin_lps_mm": [round(o, 3) for o in self.origin]}


def _index_origin(volume: Volume, offset_xyz) -> tuple[float, float, float]:
    """The LPS point of continuous voxel index ``offset_xyz`` of ``volume``."""
    x, y, z = (volume.index_to_lps() @ np.append(np.asarray(offset_xyz, float), 1.0))[:3]
    return float(x), float(y), float(z)


def resample(volume: Volume, geometry: Geometry, blur_mm: tuple[float, float, float] | None = None) -> Volume:
    """``volume`` on ``geometry`` (identity transform, linear; outside → the modality's background),
    optionally Gaussian-blurred first (sigma per x, y, z in mm)."""
    from engine.io.itk_files import volume_to_sitk

    image = volume_to_sitk(volume.replace(array=np.nan_to_num(np.asarray(volume.array, np.float32))))
    if blur_mm is not None and any(s > 0 for s in blur_mm):
        image = sitk.SmoothingRecursiveGaussian(image, [max(float(s), 1e-3) for s in blur_mm])
    ref = sitk.Image([int(n) for n in geometry.shape[::-1]], sitk.sitkFloat32)
    ref.SetSpacing(geometry.spacing)
    ref.SetOrigin(geometry.origin)
    ref.SetDirection(geometry.direction)
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, background_value(volume.modality),
                        sitk.sitkFloat32)
    return dataclasses.replace(volume, array=sitk.GetArrayFromImage(out).astype(np.float32, copy=False),
                               spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction)


@dataclass(frozen=True)
class Shift:
    """One change of geometry, fixed once (from a subject's source) and applied to each of its volumes."""

    name: str
    geometry: Geometry
    blur_mm: tuple[float, float, float] | None = None
    note: str = ""

    def __call__(self, volume: Volume) -> Volume:
        return resample(volume, self.geometry, self.blur_mm).replace(
            notes=tuple(volume.notes) + (f"generalization shift: {self.name} ({self.note})",))


def crop_box(volume: Volume, modality: str | None = None, margin_mm: float = CROP_MARGIN_MM
             ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Per array axis (z, y, x): [start, stop) of the body's bounding box (over the whole volume,
    ``modality``'s body mask) widened by ``margin_mm`` in-plane and clipped; the slice axis is kept whole."""
    mask = modalities.body_mask(np.nan_to_num(np.asarray(volume.array, np.float32)),
                                modality or volume.modality or "T1")
    box = [(0, n) for n in volume.shape]
    if not mask.any():
        return box[0], box[1], box[2]
    for axis in in_plane_axes(volume):
        other = tuple(a for a in (0, 1, 2) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        pixels = int(math.ceil(margin_mm / volume.spacing[_xyz(axis)]))
        box[axis] = (max(0, int(hits[0]) - pixels), min(volume.shape[axis], int(hits[-1]) + 1 + pixels))
    return box[0], box[1], box[2]


def crop(volume: Volume, modality: str | None = None, margin_mm: float = CROP_MARGIN_MM) -> Shift:
    """The tight field of view: the in-plane body bounding box + ``margin_mm``, same spacing."""
    box = crop_box(volume, modality, margin_mm)
    (z0, z1), (y0, y1), (x0, x1) = box
    shape = (z1 - z0, y1 - y0, x1 - x0)
    origin = _index_origin(volume, [box[2][0], box[1][0], box[0][0]])
    return Shift("crop", Geometry(shape, volume.spacing, origin, volume.direction),
                 note=f"in-plane body bounding box + {margin_mm:g} mm, spacing kept")


def pad(volume: Volume, factor: float = PAD_FACTOR) -> Shift:
    """The volume centred in a field of view ``factor`` times wider in-plane, same spacing."""
    shape = list(volume.shape)
    start = [0, 0, 0]                                       # (z, y, x) index of the new first voxel
    for axis in in_plane_axes(volume):
        new = int(round(volume.shape[axis] * factor))
        start[axis] = -((new - volume.shape[axis]) // 2)
        shape[axis] = new
    origin = _index_origin(volume, [start[2], start[1], start[0]])
    return Shift("pad", Geometry((shape[0], shape[1], shape[2]), volume.spacing, origin, volume.direction),
                 note=f"field of view ×{factor:g} in-plane, background outside, spacing kept")


def coarser(volume: Volume, in_plane: float = COARSER_IN_PLANE, through_plane: float = COARSER_THROUGH_PLANE) -> Shift:
    """In-plane pixels ``in_plane`` × larger and slices ``through_plane`` × thicker over the same
    physical extent (the field of view's outer edges kept), after a Gaussian blur whose FWHM makes
    up the difference between the old and the new voxel."""
    axis = slice_axis(volume.spacing)
    spacing = list(volume.spacing)
    shape = list(volume.shape)
    blur = [0.0, 0.0, 0.0]
    first_centre = [0.0, 0.0, 0.0]                          # (x, y, z) continuous index of the new first voxel
    for a in (0, 1, 2):
        k = _xyz(a)
        factor = through_plane if a == axis else in_plane
        old = volume.spacing[k]
        extent = old * volume.shape[a]
        n = max(1, int(round(extent / (old * factor))))
        new = extent / n                                    # the exact extent is kept
        spacing[k], shape[a] = new, n
        blur[k] = math.sqrt(max(new ** 2 - old ** 2, 0.0)) / 2.3548
        first_centre[k] = (new / old - 1.0) / 2.0
    origin = _index_origin(volume, first_centre)
    return Shift("coarser", Geometry((shape[0], shape[1], shape[2]), (spacing[0], spacing[1], spacing[2]), origin,
                                     volume.direction), (blur[0], blur[1], blur[2]),
                 note=f"in-plane pixels ×{in_plane:g}, slices ×{through_plane:g} thicker, same extent")


SHIFTS: dict[str, tuple[str, Callable[[Volume, str], Shift]]] = {
    "fov_crop": ("field of view cropped to the body's bounding box + 2 mm (same spacing)",
                 lambda v, m: crop(v, m)),
    "fov_pad": (f"field of view padded ×{PAD_FACTOR:g} in-plane with background (same spacing)",
                lambda v, m: pad(v)),
    "resolution": (f"in-plane pixels ×{COARSER_IN_PLANE:g}, slices ×{COARSER_THROUGH_PLANE:g} thicker "
                   "(blurred and resampled, same extent)", lambda v, m: coarser(v)),
}


# -- CBCT outside the training ranges -----------------------------------------------------------------
# field → how its shifted range is derived from the training range (lo, hi), per side:
#   ("up", a, b): (hi·a, hi·b) — a strength beyond the strongest trained;
#   ("down", a, b): (lo·a, lo·b) — fewer (views) than the fewest trained;
#   ("span", a, b): beyond hi by a…b spans on the "above" side, below lo by b…a spans on the "below" side.
OUT_OF_RANGE_RULES: dict[str, tuple[str, float, float]] = {
    "views": ("down", 0.6, 0.75),
    "streak_gain": ("up", 1.3, 1.5),
    "cupping": ("span", 0.375, 0.375),
    "scatter_shading": ("up", 1.4, 1.6),
    "noise_hu": ("up", 1.5, 1.7),
    "hu_scale": ("span", 0.5, 0.5),
    "hu_offset": ("span", 0.5, 0.5),
    "truncation_hu": ("span", 0.25, 0.35),
}
KEPT_IN_RANGE = ("rings", "ring_hu", "fov_shift_mm")      # drawn from the training ranges
WIDEST = ("fov_radius_mm",)     # fixed at the widest trained: a narrower FOV cuts away head no method can restore


def _shifted(lo: float, hi: float, rule: tuple[str, float, float], side: str, integer: bool) -> tuple:
    kind, a, b = rule
    span = hi - lo
    if kind == "up":
        out = (hi * a, hi * b)
    elif kind == "down":
        out = (lo * a, lo * b)
    elif side == "above":
        out = (hi + a * span, hi + b * span)
    else:
        out = (lo - b * span, lo - a * span)
    if integer:
        return (int(math.floor(out[0])), int(math.floor(out[1])))
    return (round(float(out[0]), 4), round(float(out[1]), 4))


def out_of_range_specs(training=None) -> dict[str, CBCTSpec]:
    """Two CBCT simulator specs whose ranges lie outside ``training``'s (default: ``CBCTSpec()``,
    the ranges the default model's data are drawn from) on every field of
    :data:`OUT_OF_RANGE_RULES`: ``"above"`` (HU offset, scale, cupping and truncation beyond the
    largest trained) and ``"below"`` (beyond the smallest); both have fewer views, more streak,
    scatter and noise than any trained. The fields of :data:`KEPT_IN_RANGE` stay as trained, those of
    :data:`WIDEST` at the training range's top."""
    from engine.demo_data.ct import CBCTSpec

    training = training or CBCTSpec()
    specs = {}
    for side in ("above", "below"):
        changes = {}
        for name, rule in OUT_OF_RANGE_RULES.items():
            lo, hi = getattr(training, name)
            changes[name] = _shifted(lo, hi, rule, side, isinstance(lo, int) and isinstance(hi, int))
        for name in WIDEST:
            changes[name] = (getattr(training, name)[1],) * 2
        specs[side] = dataclasses.replace(training, **changes)
    return specs

