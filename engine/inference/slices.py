"""Slice geometry, owned by inference and used by training too: which axis to slice along, and the invertible
mapping between a 2-D slice of any shape and the model's square ``image_size`` input.

With a model pixel size (``pixel_mm``, recorded in the model card) a slice is resampled to that
physical pixel size, so a crop, a whole head and a head with a neck rest look the same scale to the
model; the result is centred on a background canvas at least ``image_size`` wide and cut into
``image_size``² tiles that overlap where the field of view is larger (blended back with tapered
weights). Without one (models trained before physical-scale slicing) the slice is resized so its
longer side is ``image_size`` (pixel aspect kept). :func:`from_model_slice` undoes either mapping
onto the input's exact pixel grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

THICK_SLICE_RATIO = 1.25         # a spacing this much above the other two marks the acquisition axis
TILE_OVERLAP = 0.25              # share of a tile shared with its neighbour when a slice needs several


def slice_axis(spacing_xyz) -> int:
    """The array axis (0 = z, 1 = y, 2 = x) slices are cut along when no plane is chosen: the
    acquisition axis of a thick-slice scan (its spacing at least :data:`THICK_SLICE_RATIO` times
    either other), else — near-isotropic voxels, such as a thin-slice CT whose pixels are a little
    wider than its slices — the order the slices are stored in (array axis 0). Synthesis, training,
    scoring, ``identify`` and the input guard all cut along it, so they see the same slices."""
    spacing_zyx = [float(s) for s in spacing_xyz][::-1]
    axis = int(np.argmax(spacing_zyx))
    others = [s for i, s in enumerate(spacing_zyx) if i != axis]
    return axis if spacing_zyx[axis] >= THICK_SLICE_RATIO * max(others) else 0


def in_plane_spacing(spacing_xyz, axis: int) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of the slices :func:`slices_first` cuts along ``axis``."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    return {0: (sy, sx), 1: (sz, sx), 2: (sz, sy)}[int(axis)]


def slices_first(array: np.ndarray, axis: int) -> np.ndarray:
    """A (n, h, w) view of a (z, y, x) array with slice ``i`` = ``array`` indexed ``i`` along ``axis``."""
    return np.moveaxis(np.asarray(array), axis, 0)


def slices_back(stack: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of :func:`slices_first`: a (n, h, w) stack back to (z, y, x) order."""
    return np.moveaxis(np.asarray(stack), 0, axis)


def _tile_starts(length: int, size: int) -> tuple[int, ...]:
    """Start offsets of ``size``-wide tiles covering ``length`` (≥ size) with at least TILE_OVERLAP overlap."""
    if length <= size:
        return (0,)
    stride = max(1, int(size * (1.0 - TILE_OVERLAP)))
    count = math.ceil((length - size) / stride) + 1
    return tuple(round(k * (length - size) / (count - 1)) for k in range(count))


@dataclass(frozen=True)
class Placement:
    """Where a (``height`` × ``width``) slice goes: resampled to (``content_height`` ×
    ``content_width``) pixels, pasted at (``top``, ``left``) into a background canvas of
    (``canvas_height`` × ``canvas_width``) ≥ ``image_size``², and cut into the ``image_size``² tiles
    starting at ``rows`` × ``cols``."""

    height: int
    width: int
    content_height: int
    content_width: int
    top: int
    left: int
    image_size: int
    canvas_height: int
    canvas_width: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def for_shape(cls, height: int, width: int, image_size: int, spacing: tuple[float, float] | None = None,
                  pixel_mm: float | None = None) -> Placement:
        """The placement of a slice; ``spacing`` (row, column mm) and ``pixel_mm`` together select
        physical-scale slicing, else the longer side is fitted to ``image_size``."""
        if height < 1 or width < 1 or image_size < 1:
            raise ValueError(f"need a non-empty slice and image size, got {height}×{width} → {image_size}")
        if pixel_mm:
            if spacing is None or min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
                raise ValueError(f"physical-scale slicing needs a positive pixel spacing, got {spacing}")
            ch = max(1, round(height * float(spacing[0]) / pixel_mm))
            cw = max(1, round(width * float(spacing[1]) / pixel_mm))
        else:
            scale = image_size / max(height, width)
            ch = min(image_size, max(1, round(height * scale)))
            cw = min(image_size, max(1, round(width * scale)))
        canvas_h, canvas_w = max(ch, image_size), max(cw, image_size)
        return cls(height, width, ch, cw, (canvas_h - ch) // 2, (canvas_w - cw) // 2, int(image_size),
                   canvas_h, canvas_w, _tile_starts(canvas_h, image_size), _tile_starts(canvas_w, image_size))

    @property
    def tiles(self) -> int:
        """Model images per slice."""
        return len(self.rows) * len(self.cols)


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (n, 1, h, w) to (n, 1, height, width), antialiased when shrinking."""
    if tuple(images.shape[-2:]) == (height, width):
        return images.clone()
    shrinking = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def _as_stack(slice2d) -> tuple[torch.Tensor, bool]:
    data = slice2d if torch.is_tensor(slice2d) else torch.from_numpy(np.asarray(slice2d, dtype=np.float32))
    data = data.detach().to("cpu", torch.float32)
    single = data.ndim == 2
    if single:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"expected a (h, w) slice or a (n, h, w) stack, got shape {tuple(data.shape)}")
    return data, single


def to_canvas(slice2d, placement: Placement, pad_value: float = 0.0) -> torch.Tensor:
    """A (h, w) slice or (n, h, w) stack → (n, 1, canvas_height, canvas_width): resampled and centred."""
    data, _ = _as_stack(slice2d)
    p = placement
    if tuple(data.shape[-2:]) != (p.height, p.width):
        raise ValueError(f"slice is {tuple(data.shape[-2:])}, the placement expects {(p.height, p.width)}")
    out = torch.full((data.shape[0], 1, p.canvas_height, p.canvas_width), float(pad_value), dtype=torch.float32)
    out[:, :, p.top:p.top + p.content_height, p.left:p.left + p.content_width] = \
        _resize(data[:, None], p.content_height, p.content_width)
    return out


def to_model_slice(slice2d, image_size: int, pad_value: float = 0.0, *, spacing: tuple[float, float] | None = None,
                   pixel_mm: float | None = None) -> tuple[torch.Tensor, Placement]:
    """A (h, w) slice → ((1, S, S) tensor, Placement) when it fits one tile, else (tiles, 1, S, S);
    a (n, h, w) stack → (n · tiles, 1, S, S), the tiles of each slice together, row by row."""
    data, single = _as_stack(slice2d)
    p = Placement.for_shape(data.shape[1], data.shape[2], image_size, spacing, pixel_mm)
    canvas = to_canvas(data, p, pad_value)
    s = p.image_size
    tiles = torch.stack([canvas[:, :, r:r + s, c:c + s] for r in p.rows for c in p.cols], dim=1)
    out = tiles.reshape(-1, 1, s, s)
    return (out[0] if single and p.tiles == 1 else out), p


def _taper(starts: tuple[int, ...], size: int, length: int) -> torch.Tensor:
    """(len(starts), size) blending weights: 1 in a tile's middle, ramping down over the overlap
    towards a neighbouring tile (never to 0, so every canvas pixel has weight)."""
    ramp = min(size, max(1, int(size * TILE_OVERLAP)))
    edge = (torch.arange(ramp, dtype=torch.float32) + 1.0) / (ramp + 1.0)
    weights = torch.ones(len(starts), size)
    for k, start in enumerate(starts):
        if start > 0:
            weights[k, :ramp] = edge
        if start + size < length:
            weights[k, size - ramp:] = edge.flip(0)
    return weights


def from_canvas(canvas: torch.Tensor, placement: Placement) -> np.ndarray:
    """(n, 1, canvas_height, canvas_width) → (n, h, w) float32 on the input slice's pixel grid."""
    p = placement
    content = canvas[:, :, p.top:p.top + p.content_height, p.left:p.left + p.content_width]
    return _resize(content, p.height, p.width)[:, 0].numpy().astype(np.float32, copy=False)


def from_model_slice(image, placement: Placement) -> np.ndarray:
    """The inverse of :func:`to_model_slice`: (S, S) or (1, S, S) → (h, w) float32 array (one tile);
    (n · tiles, 1, S, S) → (n, h, w), overlapping tiles blended."""
    data = torch.as_tensor(image).detach().to("cpu", torch.float32)
    single = data.ndim in (2, 3)
    if data.ndim == 2:
        data = data[None, None]
    elif data.ndim == 3:
        if data.shape[0] != 1:
            raise ValueError(f"a (c, S, S) image must have one channel, got shape {tuple(data.shape)}")
        data = data[None]
    elif data.ndim != 4 or data.shape[1] != 1:
        raise ValueError(f"expected (S, S), (1, S, S) or (n, 1, S, S), got shape {tuple(data.shape)}")
    p, s = placement, placement.image_size
    if tuple(data.shape[-2:]) != (s, s):
        raise ValueError(f"image is {tuple(data.shape[-2:])}, the placement expects {s}²")
    if data.shape[0] % p.tiles or (single and p.tiles != 1):
        raise ValueError(f"{data.shape[0]} images do not make whole slices of {p.tiles} tiles each")
    n = data.shape[0] // p.tiles
    if p.tiles == 1:
        canvas = data
    else:
        tiles = data.reshape(n, len(p.rows), len(p.cols), s, s)
        wr, wc = _taper(p.rows, s, p.canvas_height), _taper(p.cols, s, p.canvas_width)
        canvas = torch.zeros(n, 1, p.canvas_height, p.canvas_width)
        total = torch.zeros(p.canvas_height, p.canvas_width)
        for i, r in enumerate(p.rows):
            for j, c in enumerate(p.cols):
                w = wr[i][:, None] * wc[j][None, :]
                canvas[:, 0, r:r + s, c:c + s] += tiles[:, i, j] * w
                total[r:r + s, c:c + s] += w
        canvas /= total
    out = from_canvas(canvas, p)
    return out[0] if single else out
