"""Image-quality metrics of a synthetic volume against its reference (docs/evaluation.md):
PSNR and SSIM on intensities normalised by the target modality's rule, MAE in physical units (on
the normalised intensities for MR, whose units are arbitrary), over the whole image and inside a
body mask — both only where the reference has data — plus per-slice curves along array axis 0 and
the change from slice to slice against the reference's (through-plane consistency)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from engine import modalities
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop

# SSIM as scikit-image computes it with gaussian_weights=True (Wang et al. 2004): a gaussian
# window of sigma 1.5 truncated at 3.5 sigma (11 px), population covariances, K1/K2 below, the
# map averaged without the window's half-width at the slice borders.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_BORDER = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
_SLICES_PER_CHUNK = 16
RELATIVE_MAE_UNIT = "% of range"   # MR: MAE of the normalised intensities ×100 (each volume by its own percentiles)


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"the arrays differ in shape: {pred.shape} vs {target.shape}")
    return pred, target


def _selected(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return values.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != values.shape:
        raise ValueError(f"the mask's shape {mask.shape} differs from the images' {values.shape}")
    return values[mask]


def mse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error (inside ``mask`` when given; NaN for an empty mask)."""
    pred, target = _pair(pred, target)
    err = _selected((pred - target) ** 2, mask)
    return float(err.mean()) if err.size else math.nan


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    err = mse(pred, target, mask)
    if err == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / err)


def mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, in the units of the inputs (HU for CT in physical units)."""
    pred, target = _pair(pred, target)
    err = _selected(np.abs(pred - target), mask)
    return float(err.mean()) if err.size else math.nan


def ssim_map(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """The local SSIM of each pixel, computed per 2-D slice of a (z, y, x) or (y, x) array."""
    pred, target = _pair(pred, target)
    if pred.ndim not in (2, 3):
        raise ValueError(f"SSIM needs 2-D slices or a 3-D stack of them, got shape {pred.shape}")
    if min(pred.shape[-2:]) < 2 * SSIM_BORDER + 1:
        raise ValueError(f"SSIM needs slices of at least {2 * SSIM_BORDER + 1}×{2 * SSIM_BORDER + 1} pixels, "
                         f"got {pred.shape[-2]}×{pred.shape[-1]}")
    sigma = (SSIM_SIGMA, SSIM_SIGMA) if pred.ndim == 2 else (0.0, SSIM_SIGMA, SSIM_SIGMA)

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(pred), blur(target)
    vx = blur(pred * pred) - ux * ux
    vy = blur(target * target) - uy * uy
    vxy = blur(pred * target) - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim_interior(shape: tuple[int, ...]) -> np.ndarray:
    """Where the SSIM map counts: every pixel but the window's half-width at each slice border."""
    inside = np.zeros(shape, dtype=bool)
    b = SSIM_BORDER
    inside[..., b:shape[-2] - b, b:shape[-1] - b] = True
    return inside


def pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images (inside ``mask`` when given); NaN when either is constant there."""
    a, b = _pair(a, b)
    a, b = _selected(a, mask), _selected(b, mask)
    a, b = a - a.mean() if a.size else a, b - b.mean() if b.size else b
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else math.nan


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None) -> float:
    """Mean SSIM (0…1) over the slices' interiors, or over the interior part of ``mask``."""
    smap = ssim_map(pred, target, data_range)
    counted = ssim_interior(smap.shape)
    if mask is not None:
        counted &= np.asarray(mask, dtype=bool)
    return float(smap[counted].mean()) if counted.any() else math.nan


@dataclass(frozen=True)
class Scores:
    """One set of scores: PSNR in dB and SSIM ×100 on normalised intensities, MAE in ``unit``."""

    psnr: float
    ssim: float
    mae: float

    def to_dict(self) -> dict:
        return {"psnr_db": self.psnr, "ssim_x100": self.ssim, "mae": self.mae}


@dataclass(frozen=True)
class Evaluation:
    """Scores of a synthetic volume against its reference, whole and inside the body mask."""

    modality: str                               # the target modality whose normalisation was used
    unit: str                                   # unit of the MAE
    whole: Scores
    body: Scores | None                         # None when the body mask is empty
    mask_fraction: float                        # share of the scored voxels inside the body mask
    normalisations: tuple[modalities.Normalisation, modalities.Normalisation]  # synthetic, reference
    per_slice: dict[str, np.ndarray] = field(default_factory=dict)  # "psnr", "ssim", "mae" per z
    through_plane: float | None = None          # see evaluate(); None with fewer than two body slices

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "unit": self.unit,
            "whole": self.whole.to_dict(),
            "body": self.body.to_dict() if self.body else None,
            "through_plane": self.through_plane,
            "mask_fraction": self.mask_fraction,
            "normalisation": {"synthetic": self.normalisations[0].to_dict(),
                              "reference": self.normalisations[1].to_dict()},
        }


def mae_unit(modality: str) -> str:
    """The unit :func:`evaluate` reports MAE in: the modality's physical unit (HU, SUV), or for MR —
    arbitrary units, one scanner's (or model's) scale unlike another's — percent of the normalised
    range, so that a synthetic and a real scan on different scales are compared by their contrast."""
    target = modalities.get(modality)
    return target.unit if target.fixed_range is not None else RELATIVE_MAE_UNIT


def evaluate(synthetic: np.ndarray, reference: np.ndarray, modality: str, mask: np.ndarray | None = None,
             progress: ProgressFn = noop, cancel: CancelToken | None = None,
             covered: np.ndarray | None = None) -> Evaluation:
    """Score ``synthetic`` against ``reference`` (same (z, y, x) grid, physical units).

    Each volume is normalised to [0, 1] by the target ``modality``'s rule (MR: its own 0.5–99.5
    percentiles inside the mask; CT: HU −1024…2000; PET: SUV 0…20) for PSNR (data range 1) and
    SSIM; MAE stays in physical units (:func:`mae_unit`: for MR, the normalised intensities ×100).
    ``mask`` defaults to the reference's body mask. Whole-image PSNR comes from the MSE over all
    voxels; SSIM and MAE are voxel means. ``covered`` (default: everywhere) is where the reference has
    data — a reference resampled onto a larger grid is filled beyond its field of view — and every
    score counts only those voxels. Per-slice values are NaN for slices with no voxel in the mask:
    two blank slices would otherwise score a perfect SSIM.

    ``through_plane`` compares the change from one slice to the next (axis 0, normalised
    intensities, voxels inside the mask on both slices) with the reference's: mean |Δ| of the
    synthetic / mean |Δ| of the reference. 1 is as much variation across slices as the real
    anatomy; a slice-by-slice method whose slices disagree (stripes in the other two planes)
    scores well above 1, one that repeats a slice below it.
    """
    syn, ref = _pair(synthetic, reference)
    if syn.ndim != 3:
        raise ValueError(f"evaluate needs (z, y, x) volumes, got shape {syn.shape}")
    target = modalities.get(modality)
    covered = np.ones(ref.shape, bool) if covered is None else np.asarray(covered, dtype=bool)
    if mask is None:
        mask = modalities.body_mask(ref, target.name)
    mask = np.asarray(mask, dtype=bool)
    for name, array in (("mask", mask), ("covered region", covered)):
        if array.shape != ref.shape:
            raise ValueError(f"the {name}'s shape {array.shape} differs from the volumes' {ref.shape}")
    if not covered.any():
        raise ValueError("the reference covers none of the scored grid")
    mask = mask & covered
    # an SSIM window is counted only when it lies wholly inside what the reference covers (in-plane)
    window = 2 * SSIM_BORDER + 1
    ssim_covered = covered if covered.all() else \
        ndimage.minimum_filter(covered, size=(1, window, window), mode="nearest")
    norms = (modalities.normalisation_for(syn, target.name, mask),
             modalities.normalisation_for(ref, target.name, mask))
    relative = mae_unit(target.name) == RELATIVE_MAE_UNIT
    n_slices = syn.shape[0]
    slice_sq = np.zeros(n_slices)
    slice_abs = np.zeros(n_slices)
    slice_ssim = np.zeros(n_slices)
    slice_n = np.zeros(n_slices)
    slice_ssim_n = np.zeros(n_slices)
    body_sq = body_abs = body_ssim = 0.0
    body_n = body_ssim_n = 0
    step_syn = step_ref = 0.0                   # through-plane: summed |Δ| between consecutive slices
    previous = None                             # the last slice of the previous chunk (sn, rn, m)
    for start in range(0, n_slices, _SLICES_PER_CHUNK):
        check_cancel(cancel)
        stop = min(n_slices, start + _SLICES_PER_CHUNK)
        s, r, m, c = syn[start:stop], ref[start:stop], mask[start:stop], covered[start:stop]
        c_ssim = ssim_covered[start:stop]
        sn = modalities.normalise(s, norms[0]).astype(np.float64)
        rn = modalities.normalise(r, norms[1]).astype(np.float64)
        sq = (sn - rn) ** 2
        ab = 100.0 * np.abs(sn - rn) if relative else np.abs(s - r)
        smap = ssim_map(sn, rn)
        inside = ssim_interior(smap.shape) & c_ssim
        slice_sq[start:stop] = np.where(c, sq, 0).sum(axis=(1, 2))
        slice_abs[start:stop] = np.where(c, ab, 0).sum(axis=(1, 2))
        slice_n[start:stop] = c.sum(axis=(1, 2))
        slice_ssim[start:stop] = np.where(inside, smap, 0).sum(axis=(1, 2))
        slice_ssim_n[start:stop] = inside.sum(axis=(1, 2))
        body_sq += float(sq[m].sum())
        body_abs += float(ab[m].sum())
        body_n += int(m.sum())
        body_ssim += float(smap[m & inside].sum())
        body_ssim_n += int((m & inside).sum())
        run_syn, run_ref, run_mask = (sn, rn, m) if previous is None else \
            (np.concatenate([p[None], c]) for p, c in zip(previous, (sn, rn, m)))
        pairs = run_mask[1:] & run_mask[:-1]
        step_syn += float(np.abs(np.diff(run_syn, axis=0))[pairs].sum())
        step_ref += float(np.abs(np.diff(run_ref, axis=0))[pairs].sum())
        previous = (sn[-1], rn[-1], m[-1])
        progress(Progress(stop, n_slices, f"scored slices {start + 1}–{stop} of {n_slices}"))

    def to_psnr(err: float | np.ndarray) -> float | np.ndarray:
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(1.0 / np.asarray(err, dtype=np.float64))

    n, ssim_n = slice_n.sum(), slice_ssim_n.sum()
    whole = Scores(float(to_psnr(slice_sq.sum() / n)),
                   100.0 * float(slice_ssim.sum() / ssim_n) if ssim_n else math.nan, float(slice_abs.sum() / n))
    body = None
    if body_n:
        body_ssim_mean = body_ssim / body_ssim_n if body_ssim_n else math.nan
        body = Scores(float(to_psnr(body_sq / body_n)), 100.0 * body_ssim_mean, body_abs / body_n)
    return Evaluation(
        modality=target.name,
        unit=mae_unit(target.name),
        whole=whole,
        body=body,
        mask_fraction=float(mask.sum() / covered.sum()),
        normalisations=norms,
        per_slice=_per_slice(np.asarray(mask.any(axis=(1, 2))), to_psnr, slice_sq, slice_abs, slice_n, slice_ssim, slice_ssim_n),
        through_plane=step_syn / step_ref if step_ref > 0 else None,
    )


def _per_slice(scored: np.ndarray, to_psnr, sq: np.ndarray, ab: np.ndarray, n: np.ndarray, ssim_sum: np.ndarray,
               ssim_n: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice means from per-slice sums; NaN for a slice with no body voxel (or none counted)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        means = {"psnr": to_psnr(sq / n), "ssim": 100.0 * ssim_sum / ssim_n, "mae": ab / n}
    return {key: np.where(scored & (n > 0), values, np.nan) for key, values in means.items()}


def worse_than_baseline(synthetic: Evaluation, baseline: Evaluation) -> tuple[str, list[str]]:
    """(the scope compared — "body" when both have body scores, else "whole" —, the metrics on which
    the synthetic scores worse than the do-nothing baseline there: "PSNR", "SSIM", "MAE")."""
    scope = "body" if synthetic.body is not None and baseline.body is not None else "whole"
    mine, theirs = getattr(synthetic, scope), getattr(baseline, scope)
    return scope, [name for name, worse in (("PSNR", mine.psnr < theirs.psnr), ("SSIM", mine.ssim < theirs.ssim),
                                            ("MAE", mine.mae > theirs.mae)) if worse]

