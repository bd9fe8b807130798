"""Scoring a synthetic volume against a real scan the user names (``synthesize --reference``, the
app's comparison): how much of the synthetic grid the reference covers, and the "do nothing"
baseline — the source, histogram-matched to the reference — scored by the same rule as the
synthetic; whether the reference is of the target's modality. Whether it is the same subject's scan:
:mod:`engine.io.identity`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine import modalities
from engine.evaluation.metrics import Evaluation
from engine.evaluation.synthesis_eval import score_volume
from engine.io import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop


def covered_part(synthetic: Volume, reference: Volume) -> np.ndarray:
    """The voxels of ``synthetic``'s grid that ``reference`` covers in physical space with data (not its
    padding outside a reconstructed field of view); ValueError when it covers none (nothing to score:
    another subject, or another frame of reference?)."""
    from engine.inference.field_of_view import holds_data

    covered = holds_data(reference, synthetic)
    if not covered.any():
        raise ValueError(f"{reference.name or 'the reference'} does not overlap {synthetic.name or 'the synthetic volume'} "
                         "in physical space: are they scans of the same subject in one frame of reference?")
    return covered


def reference_modality_warnings(reference: Volume, target: str) -> list[str]:
    """What ``reference``'s modality and unit say against scoring a synthetic ``target`` with it:
    nothing when it is ``target`` on ``target``'s scale; a warning when its modality is unknown, another
    of ``target``'s family (T1 for T2, CBCT for CT: told by a name or MR timing, which can mislead), of
    another family by its file name only, or when its values are off the scale (a PET in Bq/ml);
    ValueError when its header (DICOM Modality, or this app's mark) puts it in another family (MR for
    CT), whose scores cannot mean anything."""
    made = modalities.get(target)
    try:
        found = modalities.get(reference.modality or "")
    except ValueError:
        return [f"its modality is not known (neither its header nor its name says it): it is scored as a "
                f"{made.name} scan"]
    if found.family != made.family:
        why = (f"its modality is {found.name} ({found.description}), but the synthesis makes {made.name} "
               f"({made.description}): scores of one against the other mean nothing")
        if reference.synthetic or (reference.dicom or {}).get("Modality"):
            raise ValueError(f"{why}; give a {made.name} scan of the subject as the reference")
        return [f"{why}, unless its file name misleads (the modality was guessed from it)"]
    warnings = []
    if found.name != made.name:
        warnings.append(f"its modality is {found.name}, not {made.name}: unless its header or name misleads, the "
                        f"scores compare the synthetic {made.name} with another contrast")
    if not modalities.on_scale(found.name, reference.unit):
        warnings.append(f"its values are in {reference.unit}, not {made.unit}, the synthetic's: the scores compare "
                        "two scales")
    return warnings


def histogram_matched(source: Volume, reference: Volume, mask: np.ndarray) -> Volume:
    """The "do nothing" baseline: ``source`` (on ``reference``'s grid) with its intensities mapped
    monotonically so that their histogram inside the body ``mask`` matches the reference's there
    (the identity baseline's quantile map, fitted on this pair; outside the body its own map, so
    the background stays background), in the reference's units."""
    from engine.baselines import quantile_map

    src, ref = source.array.astype(np.float32), reference.array.astype(np.float32)
    mapped = np.empty_like(src)
    for part in (mask, ~mask):
        if part.any():
            xs, ys = quantile_map(src[part], ref[part])
            mapped[part] = np.interp(src[part], xs, ys)
    return reference.with_array(mapped, name=f"{source.name} (histogram-matched)", modality=reference.modality,
                                unit=reference.unit, notes=("source histogram-matched to the reference inside "
                                                            "its body mask (do-nothing baseline)",), dicom={})


def do_nothing(source_on_grid: Volume, reference_on_grid: Volume, covered: np.ndarray, target: str,
               axis: int | None = None, cancel: CancelToken | None = None) -> Evaluation:
    """The scores of the "do nothing" baseline: the source (resampled onto the synthetic grid, as the
    reference is), histogram-matched to the reference inside its body where it covers the grid,
    scored like the synthetic (``covered``: the part of the grid the reference has data in)."""
    mask = modalities.body_mask(reference_on_grid.array, target) & covered
    return score_volume(histogram_matched(source_on_grid, reference_on_grid, mask), reference_on_grid, target,
                        cancel=cancel, axis=axis, covered=covered)


@dataclass(frozen=True)
class ReferenceScores:
    """A synthetic volume scored against a reference on the synthetic grid, beside the baseline."""

    evaluation: Evaluation               # the synthetic's scores, where the reference has data
    baseline: Evaluation | None          # the do-nothing baseline's (None: no source given)
    coverage: float                      # the share of the synthetic grid the reference covers
    covered: np.ndarray                  # that part, on the synthetic grid
    reference: Volume                    # on the synthetic grid
    source: Volume | None                # on the synthetic grid


def score_against(synthetic: Volume, reference: Volume, source: Volume | None, target: str, axis: int | None = None,
                  progress: ProgressFn = noop, cancel: CancelToken | None = None) -> ReferenceScores:
    """Score ``synthetic`` against ``reference`` and, when ``source`` (what it was made from) is given,
    the do-nothing baseline by the same rule; ValueError when the reference covers none of the grid."""
    from engine.io.resample import resample_onto

    progress(Progress(0, 4, "resampling the reference"))
    covered = covered_part(synthetic, reference)
    ref_on_grid = resample_onto(reference, synthetic)
    check_cancel(cancel)
    source_on_grid = resample_onto(source, synthetic) if source is not None else None
    progress(Progress(1, 4, "scoring"))
    evaluation = score_volume(synthetic, ref_on_grid, target, cancel=cancel, axis=axis, covered=covered)
    baseline = None
    if source_on_grid is not None:
        progress(Progress(2, 4, "scoring the do-nothing baseline"))
        baseline = do_nothing(source_on_grid, ref_on_grid, covered, target, axis, cancel)
    progress(Progress(4, 4, "scored"))
    return ReferenceScores(evaluation, baseline, float(covered.mean()), covered, ref_on_grid, source_on_grid)
