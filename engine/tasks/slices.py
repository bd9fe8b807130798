"""Slice geometry shared by training and inference: which axis to slice along, and the invertible
mapping between a 2-D slice of any shape and the model's square ``image_size`` input.

The mapping resizes the slice bilinearly (antialiased when shrinking) so its longer side is
``image_size``, keeping its pixel aspect (in pixels, not millimetres; up to rounding of the shorter
side), and centres it in the square, padding with ``pad_value`` (0 = the bottom of the normalised
range: air/background). Resizing before padding keeps the padding out of the slice's edge pixels.
:func:`from_model_slice` crops the padding and resizes back, so the output has the input's shape.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

_AXIS_PREFERENCE = (0, 1, 2)     # array axes (z, y, x): on ties, slice along z


def slice_axis(spacing_xyz) -> int:
    """The array axis (0 = z, 1 = y, 2 = x) with the largest spacing — the acquisition axis of a
    thick-slice scan; z when spacings tie (within 1 %)."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    by_axis = {0: sz, 1: sy, 2: sx}
    largest = max(by_axis.values())
    for axis in _AXIS_PREFERENCE:
        if by_axis[axis] >= largest * 0.99:
            return axis
    return 0


def slices_first(array: np.ndarray, axis: int) -> np.ndarray:
    """A (n, h, w) view of a (z, y, x) array with slice ``i`` = ``array`` indexed ``i`` along ``axis``."""
    return np.moveaxis(np.asarray(array), axis, 0)


def slices_back(stack: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of :func:`slices_first`: a (n, h, w) stack back to (z, y, x) order."""
    return np.moveaxis(np.asarray(stack), 0, axis)


@dataclass(frozen=True)
class Placement:
    """Where a (``height`` × ``width``) slice sits in the model's square input: resized to
    (``content_height`` × ``content_width``) — the longer side becomes ``image_size`` — and
    pasted at (``top``, ``left``) into a square of background."""

    height: int
    width: int
    content_height: int
    content_width: int
    top: int
    left: int
    image_size: int

    @classmethod
    def for_shape(cls, height: int, width: int, image_size: int) -> "Placement":
        if height < 1 or width < 1 or image_size < 1:
            raise ValueError(f"need a non-empty slice and image size, got {height}×{width} → {image_size}")
        scale = image_size / max(height, width)
        ch = min(image_size, max(1, round(height * scale)))
        cw = min(image_size, max(1, round(width * scale)))
        return cls(height, width, ch, cw, (image_size - ch) // 2, (image_size - cw) // 2, int(image_size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Placement":
        return cls(**{k: int(v) for k, v in data.items()})


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (n, 1, h, w) to (n, 1, height, width), antialiased when shrinking."""
    if tuple(images.shape[-2:]) == (height, width):
        return images.clone()
    shrinking = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def to_model_slice(slice2d, image_size: int, pad_value: float = 0.0) -> tuple[torch.Tensor, Placement]:
    """A (h, w) slice → ((1, S, S) float32 tensor, Placement); a (n, h, w) stack → (n, 1, S, S)."""
    data = slice2d if torch.is_tensor(slice2d) else torch.from_numpy(np.asarray(slice2d, dtype=np.float32))
    data = data.detach().to("cpu", torch.float32)
    single = data.ndim == 2
    if single:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"expected a (h, w) slice or a (n, h, w) stack, got shape {tuple(data.shape)}")
    n, h, w = data.shape
    p = Placement.for_shape(h, w, image_size)
    out = torch.full((n, 1, p.image_size, p.image_size), float(pad_value), dtype=torch.float32)
    out[:, :, p.top:p.top + p.content_height, p.left:p.left + p.content_width] = \
        _resize(data[:, None], p.content_height, p.content_width)
    return (out[0] if single else out), p


def from_model_slice(image, placement: Placement) -> np.ndarray:
    """The inverse of :func:`to_model_slice`: (S, S) or (1, S, S) → (h, w) float32 array;
    (n, 1, S, S) → (n, h, w)."""
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
    p = placement
    if tuple(data.shape[-2:]) != (p.image_size, p.image_size):
        raise ValueError(f"image is {tuple(data.shape[-2:])}, the placement expects {p.image_size}²")
    content = data[:, :, p.top:p.top + p.content_height, p.left:p.left + p.content_width]
    out = _resize(content, p.height, p.width)[:, 0].numpy().astype(np.float32, copy=False)
    return out[0] if single else out
