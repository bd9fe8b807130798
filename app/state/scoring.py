"""Scoring for the comparison (runs on a worker): the reference and source brought onto the
synthetic grid by SimpleITK (identity transform in physical space), the difference map, the
engine's scores of the synthetic volume (``score_volume``: the same numbers the CLI prints), and
the same scores of the "do nothing" baseline: the source histogram-matched to the reference."""
from __future__ import annotations

import numpy as np

from app.state.comparison import ComparisonResult
from engine import modalities
from engine.evaluation import SYNTHETIC_REFERENCE, reference_coverage, score_volume
from engine.io import Volume, inside, resample_onto
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop

NO_SOURCE_NOTE = "source not known: pick it under 'Source' to score the do-nothing baseline"


def histogram_matched(source: Volume, reference: Volume, mask: np.ndarray) -> Volume:
    """The "do nothing" baseline: ``source`` (on ``reference``'s grid) with its intensities mapped
    monotonically so that their histogram inside the body ``mask`` matches the reference's there
    (the identity baseline's quantile map, fitted on this pair; outside the body its own map, so
    the background stays background), in the reference's units."""
    from engine.baselines import quantile_map  # imports torch: the worker, never the UI thread

    src, ref = source.array.astype(np.float32), reference.array.astype(np.float32)
    mapped = np.empty_like(src)
    for part in (mask, ~mask):
        if part.any():
            xs, ys = quantile_map(src[part], ref[part])
            mapped[part] = np.interp(src[part], xs, ys)
    return reference.with_array(mapped, name=f"{source.name} (histogram-matched)", modality=reference.modality,
                                unit=reference.unit, notes=("source histogram-matched to the reference inside "
                                                            "its body mask (do-nothing baseline)",), dicom={})


def target_modality(synthetic: Volume, reference: Volume, override: str | None = None) -> str:
    """The modality whose normalisation the metrics use: the override, else the reference's."""
    for name in (override, reference.modality, synthetic.modality):
        if name:
            return modalities.canonical(name)
    raise ValueError(f"the modality of {reference.name or 'the reference'} is unknown: "
                     "choose it under 'Normalise as'")


def compare(synthetic: Volume, reference: Volume, source: Volume | None = None, modality: str | None = None,
            progress: ProgressFn = noop, cancel: CancelToken | None = None, plane: str = "auto") -> ComparisonResult:
    """Everything the comparison view shows, scored slice by slice in ``plane`` (the one synthesis cut
    ``synthetic`` in); raises ValueError when the volumes cannot be compared."""
    from engine.inference import plane_axis  # imports torch: the worker, never the UI thread

    target = target_modality(synthetic, reference, modality)
    axis = plane_axis(synthetic, plane)
    progress(Progress(0, 4, "resampling the reference"))
    coverage = reference_coverage(synthetic, reference)
    ref_on_grid, covered = resample_onto(reference, synthetic), inside(reference, synthetic)
    check_cancel(cancel)
    source_on_grid = resample_onto(source, synthetic) if source is not None else None
    progress(Progress(1, 4, "scoring"))
    evaluation = score_volume(synthetic, ref_on_grid, target, cancel=cancel, axis=axis)
    baseline, baseline_note = None, NO_SOURCE_NOTE
    if source_on_grid is not None:
        progress(Progress(2, 4, "scoring the do-nothing baseline"))
        mask = modalities.body_mask(ref_on_grid.array, target) & covered
        baseline = score_volume(histogram_matched(source_on_grid, ref_on_grid, mask), ref_on_grid, target,
                                cancel=cancel, axis=axis)
        baseline_note = ""
    progress(Progress(4, 4, "scored"))
    notes = []
    if ref_on_grid is not reference:
        notes.append("reference resampled onto the synthetic grid")
    if coverage < 0.999:
        notes.append(f"the reference covers {100 * coverage:.0f} % of the synthetic grid")
    if reference.synthetic:
        notes.append(SYNTHETIC_REFERENCE)
    known = {m for m in (synthetic.modality, reference.modality) if m}
    if len(known) > 1:
        notes.append(f"different modalities ({' vs '.join(sorted(known))}): the metrics compare unlike images")
    difference = synthetic.with_array((synthetic.array - ref_on_grid.array).astype(np.float32),
                                      name=f"{synthetic.name} − {reference.name}", notes=(), dicom={})
    return ComparisonResult(synthetic, ref_on_grid, difference, source_on_grid, evaluation,
                            axis, coverage, tuple(notes), baseline, baseline_note)
