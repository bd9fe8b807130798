"""The source floor's noise filter: an adaptive (Wiener) filter of a calibrated CT-family source,
slice by slice, whose strength follows the slice's own noise.

The noise of a slice is estimated where it is least structured — soft tissue inside the field of
view — from the difference to its 3 × 3 median (robustly: the median absolute deviation × 1.4826).
Each pixel then moves towards the mean of its :data:`WINDOW` × :data:`WINDOW` neighbourhood by the
share of the local variance that ``strength`` × that noise explains, so flat tissue is smoothed
and edges whose local variance is far above ``strength`` × the noise (bone against soft tissue) are
kept; low-contrast detail below that (a soft-tissue edge of tens of HU, a small lesion) is smoothed
with the noise. Pixels outside the field of view count as air. The window is in pixels, as the
noise is: it is a property of the reconstruction's pixels, not of the anatomy. ``strength`` 0
leaves the slice as it is; ``bench floor`` chooses it on the validation subjects
(:mod:`engine.evaluation.source_floor`) and the model card keeps it (``source_floor``'s ``denoise``).
"""
from __future__ import annotations

import math

import numpy as np

WINDOW = 7                          # pixels: the neighbourhood the local mean and variance are taken over
SOFT_TISSUE_HU = (-150.0, 150.0)    # where the noise is estimated (after the HU calibration)
MIN_VOXELS = 200                    # fewer soft-tissue pixels in a slice: its noise is not estimated
AIR_HU = -1000.0                    # what stands in for the voxels outside the field of view while filtering


def strength(value) -> float:
    """``value`` as a filter strength: a finite number ≥ 0; ValueError otherwise."""
    found = float(value)
    if not 0.0 <= found < math.inf:
        raise ValueError(f"a noise-filter strength must be a number ≥ 0, got {value!r}")
    return found


def noise_hu(image: np.ndarray, valid: np.ndarray | None = None) -> float | None:
    """The noise (HU, one standard deviation) of a 2-D ``image`` in its soft tissue (inside ``valid``),
    or None when too little soft tissue is there to tell."""
    from scipy import ndimage

    image = np.asarray(image, np.float32)
    lo, hi = SOFT_TISSUE_HU
    soft = (image > lo) & (image < hi)
    if valid is not None:
        soft &= np.asarray(valid, bool)
    if soft.sum() < MIN_VOXELS:
        return None
    residual = (image - ndimage.median_filter(image, size=3))[soft]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def adaptive_filter(image: np.ndarray, strength: float, missing: np.ndarray | None = None) -> np.ndarray:
    """``image`` (2-D, HU) filtered as the module says; pixels in ``missing`` (outside the field of
    view) take no part and are returned as they are."""
    from scipy import ndimage

    image = np.asarray(image, np.float32)
    valid = None if missing is None else ~np.asarray(missing, bool)
    work = image if valid is None else np.where(valid, image, np.float32(AIR_HU))
    noise = noise_hu(work, valid) if strength > 0 else None
    if not noise:
        return image.copy()
    mean = ndimage.uniform_filter(work, WINDOW, mode="nearest")
    variance = np.maximum(ndimage.uniform_filter(work * work, WINDOW, mode="nearest") - mean * mean, 0.0)
    floor = np.float32((strength * noise) ** 2)
    gain = np.maximum(variance - floor, 0.0) / np.maximum(variance, floor)
    out = mean + gain * (work - mean)
    return out if valid is None else np.where(valid, out, image)


def filter_slices(stack: np.ndarray, strength: float, missing: np.ndarray | None = None) -> np.ndarray:
    """:func:`adaptive_filter` on every slice of ``stack`` (slices first)."""
    if strength <= 0:
        return np.asarray(stack, np.float32)
    return np.stack([adaptive_filter(s, strength, None if missing is None else missing[i]) for i, s in enumerate(stack)])
