"""Per-volume HU calibration of CT-family sources (CT, CBCT) before synthesis: the volume is shifted
so its soft-tissue peak sits where the training CTs' does (the model card's ``calibration``). A
CBCT's global offset is the largest error a scanner's calibration makes; shifted into the range
the model was trained on, the model only has to correct what varies within the volume.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

SOFT_TISSUE_WINDOW_HU = (-350.0, 350.0)    # where the soft-tissue peak is looked for (offsets up to ±350 HU)
BIN_HU = 5.0
SMOOTHING_BINS = 4                          # Gaussian σ of the histogram, in bins


def soft_tissue_peak(hu: np.ndarray, body: np.ndarray | None = None) -> float | None:
    """The mode (HU) of the smoothed histogram of the body's voxels inside the soft-tissue window,
    or None when too few voxels fall there (no soft tissue to calibrate on)."""
    values = np.asarray(hu, dtype=np.float32)
    if body is not None:
        values = values[np.asarray(body, dtype=bool)]
    lo, hi = SOFT_TISSUE_WINDOW_HU
    values = values[(values >= lo) & (values <= hi) & np.isfinite(values)]
    if values.size < 500:
        return None
    counts, edges = np.histogram(values, bins=int((hi - lo) / BIN_HU), range=(lo, hi))
    x = np.arange(-3 * SMOOTHING_BINS, 3 * SMOOTHING_BINS + 1)
    kernel = np.exp(-0.5 * (x / SMOOTHING_BINS) ** 2)
    smooth = np.convolve(counts.astype(np.float64), kernel / kernel.sum(), mode="same")
    k = int(np.argmax(smooth))
    return float(0.5 * (edges[k] + edges[k + 1]))


def reference_peak(volumes: Iterable[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The median soft-tissue peak of (HU array, body mask) pairs: the training CTs' (for the card)."""
    peaks = [p for p in (soft_tissue_peak(hu, body) for hu, body in volumes) if p is not None]
    return float(np.median(peaks)) if peaks else None


def calibration_shift(hu: np.ndarray, body: np.ndarray, calibration: Mapping | None) -> tuple[float, str]:
    """(HU to add, a note for the result) for a CT-family source; (0, reason) when nothing is done."""
    reference = (calibration or {}).get("soft_tissue_hu")
    if reference is None:
        return 0.0, ""
    peak = soft_tissue_peak(hu, body)
    if peak is None:
        return 0.0, "HU calibration: no soft-tissue peak found in the source; left as it is"
    shift = float(reference) - peak
    return shift, (f"HU calibration: source shifted {shift:+.0f} HU (its soft-tissue peak {peak:+.0f} HU onto the "
                   f"training CTs' {float(reference):+.0f} HU; every value moves by it, bone and metal too, air held "
                   "at the scale's bottom)")


def dataset_calibration(paired, split: str | None = "train") -> dict | None:
    """The card's ``calibration``: the soft-tissue peak of ``paired``'s CT volumes in ``split``
    (None without CTs). ``paired`` is an :class:`engine.tasks.PairedDataset`."""
    from engine import modalities

    subjects = [s for s in paired.subject_names(split) if "CT" in paired.subject_modalities(s)]
    volumes = ((v.array, modalities.body_mask(v.array, "CT")) for v in (paired.volume(s, "CT") for s in subjects))
    reference = reference_peak(volumes)
    if reference is None:
        return None
    where = f"{split}-split " if split else ""
    return {"soft_tissue_hu": round(reference, 1), "from": f"the soft-tissue peak of {len(subjects)} {where}CTs"}
