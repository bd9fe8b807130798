"""Whether two scans of one subject on different grids show their anatomy in one place. Header
coordinates say where each grid lies, not whether the patient lay still: a daily CBCT beside its
planning CT is often millimetres and degrees off (the couch moved), and training on such a pair teaches
the model to draw anatomy where the input shows none.

Both scans' edges (gradient magnitude, so a T1 and a T2, or a CBCT and a CT, are compared alike) are
correlated on a coarse grid over the part the moving scan shows (inside its grid, away from its
field-of-view padding and edge), the fixed scan slid against it by up to :data:`MAX_SHIFT_MM`: a shift of
at least :data:`MIN_SHIFT_MM` that raises their normalised correlation by :data:`MIN_GAIN` or more says
they are not aligned. A rotation shows as such a shift too.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine import modalities
from engine.inference.field_of_view import holds_data
from engine.io.resample import resample_onto
from engine.io.volume import Volume

COARSE_MM = 4.0           # the grid the edges are compared on
MAX_SHIFT_MM = 30.0
MIN_SHIFT_MM = 3.0
MIN_GAIN = 0.1            # of normalised correlation
MIN_VOXELS = 200          # of the moving scan's shown part on the coarse grid: fewer, and nothing is judged


def misalignment(moving: Volume, fixed: Volume) -> tuple[float, float] | None:
    """(how far, in mm, ``moving``'s anatomy lies off ``fixed``'s, the normalised correlation that
    shift gains) when both pass the module's thresholds; None when they are aligned or cannot be told.
    Both need a modality (how their values are read depends on it)."""
    if not (moving.modality and fixed.modality):
        return None
    grid = _coarse(fixed)
    shows = holds_data(moving, grid, below_scale=moving.modality != "CBCT")   # a CBCT's padding may be −1000 HU
    shows = ndimage.binary_erosion(shows, iterations=2)      # away from the field's edge and its brightening
    if shows.sum() < MIN_VOXELS:
        return None
    a = _edges(resample_onto(moving, grid).array, moving.modality, shows)
    b = _edges(resample_onto(fixed, grid).array, fixed.modality, np.ones(grid.shape, dtype=bool))
    ncc = _correlation(a, b, shows)
    shifts = np.stack(np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in ncc.shape], indexing="ij"), -1)
    distance = np.linalg.norm(shifts * np.asarray(grid.spacing[::-1]), axis=-1)
    ncc = np.where(distance <= MAX_SHIFT_MM, ncc, -np.inf)
    best = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    gain = float(ncc[best] - ncc[0, 0, 0])
    if distance[best] >= MIN_SHIFT_MM and gain >= MIN_GAIN:
        return float(distance[best]), gain
    return None


def _coarse(volume: Volume) -> Volume:
    """An empty grid over ``volume``'s box with voxels of at least :data:`COARSE_MM`."""
    sx, sy, sz = (max(float(s), COARSE_MM) for s in volume.spacing)
    spacing = (sx, sy, sz)
    size = [max(1, int(round(n * s / c))) for n, s, c in zip(volume.size_xyz, volume.spacing, spacing)]
    origin = tuple(np.asarray(volume.index_to_lps()[:3, :3] @ ((np.asarray(spacing) / np.asarray(volume.spacing)
                                                                  - 1.0) / 2.0) + np.asarray(volume.origin)))
    return Volume(np.zeros(size[::-1], np.float32), spacing=spacing, origin=origin, direction=volume.direction)


def _edges(array: np.ndarray, modality: str, region: np.ndarray) -> np.ndarray:
    """The gradient magnitude of a scan's values read on a common scale (HU clipped to air … dense
    bone; MR between its 1st and 99th percentile), normalised inside ``region`` and zero outside."""
    values = np.asarray(array, dtype=np.float32)
    if modalities.get(modality).family == "CT":
        values = np.clip(values, -1000.0, 2000.0)
    else:
        lo, hi = np.percentile(values[region], (1.0, 99.0))
        values = np.clip((values - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    edges = ndimage.gaussian_gradient_magnitude(values, 1.0)
    inside_values = edges[region]
    return np.where(region, (edges - inside_values.mean()) / max(float(inside_values.std()), 1e-6), 0.0)


def _correlation(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The normalised correlation of ``a`` (zero outside ``region``) with ``b`` shifted by every (z, y, x)
    offset (a negative one at the end of its axis, as an FFT's frequencies are): the sum of their
    products over ``region`` divided by both norms there."""
    shape = [2 * n for n in a.shape]                            # zero-padded: nothing wraps around

    def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        axes = tuple(range(u.ndim))
        return np.fft.irfftn(np.fft.rfftn(u, shape, axes) * np.conj(np.fft.rfftn(v, shape, axes)), shape, axes)

    energy = cross(region.astype(np.float32), b * b)
    return cross(a, b) / np.sqrt(np.maximum(float((a * a).sum()) * energy, 1e-12))
