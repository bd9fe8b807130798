"""Scoring for the comparison (runs on a worker): the reference and source brought onto the
synthetic grid by SimpleITK (identity transform in physical space), the difference map, the
engine's scores of the synthetic volume (``score_volume``: the same numbers the CLI prints), and
the same scores of the "do nothing" baseline (``do_nothing``: the source histogram-matched to the
reference), only where the reference has data."""
from __future__ import annotations

import numpy as np

from app.state.comparison import ComparisonResult, unplaced
from engine import modalities
from engine.evaluation import (
    RELATIVE_MAE_UNIT,
    SYNTHETIC_REFERENCE,
    Evaluation,
    reference_modality_warnings,
    score_against,
)
from engine.io import Volume, identity_warnings
from engine.jobs import CancelToken, ProgressFn, noop

NO_SOURCE_NOTE = "source not known: pick it under 'Source' to score the do-nothing baseline"


def target_modality(synthetic: Volume, reference: Volume, override: str | None = None) -> str:
    """The modality whose normalisation the metrics use: the override, else the reference's."""
    for name in (override, reference.modality, synthetic.modality):
        if name:
            return modalities.canonical(name)
    raise ValueError(f"the modality of {reference.name or 'the reference'} is unknown: "
                     "choose it under 'Normalise as'")


def compare(synthetic: Volume, reference: Volume, source: Volume | None = None, modality: str | None = None,
            progress: ProgressFn = noop, cancel: CancelToken | None = None, plane: str = "auto",
            registrations=()) -> ComparisonResult:
    """Everything the comparison view shows, scored slice by slice in ``plane`` (the one synthesis cut
    ``synthetic`` in); a reference acquired in another frame of reference is first placed in the
    synthetic's source's by one of ``registrations`` (DICOM REG) relating them; raises ValueError when
    the volumes cannot be compared."""
    from engine.inference import plane_axis  # imports torch: the worker, never the UI thread
    from engine.io import frames_differ, in_frame_of

    target = target_modality(synthetic, reference, modality)
    try:               # the CLI's rule; another family is said, not refused: the views still show the pair
        modality_notes = reference_modality_warnings(reference, synthetic.modality or target)
    except ValueError as exc:
        modality_notes = [str(exc)]
    axis = plane_axis(synthetic, plane)
    acquired = source if source is not None else synthetic
    placed_reference, placed = in_frame_of(reference, acquired, registrations)
    if placed_reference is reference and frames_differ(reference, acquired):
        placed = placed or f"{unplaced()}, to place the reference"
    reference = placed_reference
    scored = score_against(synthetic, reference, source, target, axis, progress, cancel)
    ref_on_grid = scored.reference
    notes = [placed] if placed else []
    notes += identity_warnings(acquired, reference)
    if ref_on_grid is not reference:
        notes.append("reference resampled onto the synthetic grid")
    if scored.coverage < 0.999:
        notes.append(f"the reference covers {100 * scored.coverage:.0f} % of the synthetic grid with data (not beyond its "
                     "grid or its field of view): only that part is scored "
                     "(the difference is 0 beyond it)")
    if reference.synthetic:
        notes.append(SYNTHETIC_REFERENCE)
    notes.extend(modality_notes)
    return ComparisonResult(synthetic, ref_on_grid, difference(synthetic, ref_on_grid, scored.evaluation, scored.covered),
                            scored.source, scored.evaluation, axis, scored.coverage, tuple(notes), scored.baseline,
                            "" if scored.baseline is not None else NO_SOURCE_NOTE, scored.covered)


def difference(synthetic: Volume, reference: Volume, evaluation: Evaluation, covered: np.ndarray) -> Volume:
    """synthetic − reference where the reference has data (0 beyond), in the MAE's unit: physical
    units, or for MR — each volume on its own arbitrary scale — the normalised intensities ×100."""
    syn, ref = synthetic.array, reference.array
    if evaluation.unit == RELATIVE_MAE_UNIT:              # the engine's rule for MR's arbitrary units
        syn, ref = (100.0 * modalities.normalise(v, n) for v, n in zip((syn, ref), evaluation.normalisations))
    values = np.where(covered, np.asarray(syn, np.float32) - np.asarray(ref, np.float32), 0.0).astype(np.float32)
    return synthetic.with_array(values, name=f"{synthetic.name} − {reference.name}", unit=evaluation.unit,
                                notes=(), dicom={})
