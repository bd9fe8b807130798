"""A rectangle drawn on a comparison slice and what each volume holds inside it: the voxel count,
mean, standard deviation and range in the volume's physical unit — what a physicist reads off a
region of interest (a bone's HU in the synthetic CT against the planning CT's)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from app.state.geometry import PlaneGeometry
    from engine.io import Volume


@dataclass(frozen=True)
class Rect:
    """A rectangle in view millimetres (u right, v down) of a plane's slice image."""

    u: float
    v: float
    width: float
    height: float


@dataclass(frozen=True)
class RoiStats:
    voxels: int
    mean: float
    sd: float
    low: float
    high: float
    unit: str


def pixels_in(geometry: PlaneGeometry, rect: Rect) -> tuple[slice, slice]:
    """The rows and columns of ``geometry``'s slice images whose pixel centres lie inside ``rect``."""
    du, dv = geometry.pixel_size
    rows, cols = geometry.image_shape

    def span(start: float, length: float, step: float, count: int) -> slice:
        first = int(np.ceil(min(start, start + length) / step - 0.5))
        last = int(np.floor(max(start, start + length) / step - 0.5))
        return slice(max(first, 0), max(min(last + 1, count), 0))

    return span(rect.v, rect.height, dv, rows), span(rect.u, rect.width, du, cols)


def roi_stats(geometry: PlaneGeometry, volume: Volume, k: int, rect: Rect, where: np.ndarray | None = None
              ) -> RoiStats | None:
    """``volume``'s values inside ``rect`` on slice ``k`` (finite values only, and only where the
    boolean ``where`` of the volume's shape is True: a reference's data); None when the rectangle holds
    no such pixel of the slice."""
    if not 0 <= k < geometry.n_slices:
        return None
    rows, cols = pixels_in(geometry, rect)
    values = np.asarray(geometry.slice_image(volume.array, k)[rows, cols], dtype=np.float64)
    keep = np.isfinite(values)
    if where is not None:
        keep &= geometry.slice_image(where, k)[rows, cols]
    values = values[keep]
    if values.size == 0:
        return None
    return RoiStats(int(values.size), float(values.mean()), float(values.std()), float(values.min()),
                    float(values.max()), volume.unit)
