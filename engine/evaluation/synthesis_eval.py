"""Scoring synthetic volumes: one volume against its reference (resampled onto the synthetic grid
when needed), and a model over a paired dataset's split — every route of every subject, scored
per subject, then averaged per route (docs/evaluation.md) and over routes.

Scores are computed on the slices the model produced: the volumes are viewed slice-first along
the acquisition axis (:func:`engine.inference.slices.slice_axis`), so SSIM windows lie in those slices.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine import modalities
from engine.evaluation.metrics import Evaluation, evaluate
from engine.inference.field_of_view import holds_data, padding_mask
from engine.inference.slices import slice_axis, slices_first
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop

SCORE_KEYS = ("psnr_db", "ssim_x100", "mae")


SYNTHETIC_REFERENCE = ("the reference is synthetic (made by a model, not acquired): the scores measure agreement "
                       "with another model's output, not with the patient")


def score_volume(synthetic: Volume, reference: Volume, target: str | None = None,
                 slices: Sequence[int] | None = None, cancel: CancelToken | None = None,
                 axis: int | None = None, covered: np.ndarray | None = None) -> Evaluation:
    """PSNR / SSIM / MAE (whole and inside the reference's body mask) of ``synthetic`` against
    ``reference``, slice by slice along ``axis`` (:func:`scored_stacks`), counting only the part of
    ``synthetic``'s grid the reference covers with data (``covered``, on that grid: given by a caller
    that has found it already; else :func:`holds_data`: not beyond its grid, not its padding outside a
    reconstructed field of view); ``slices`` (indices along ``axis``) restricts the scoring to those
    slices."""
    target = modalities.canonical(target or synthetic.modality or reference.modality or "")
    if covered is None:
        covered = holds_data(reference, synthetic)
    syn, ref, region = scored_stacks(synthetic, reference, axis, slices, covered)
    return evaluate(syn, ref, target, cancel=cancel, covered=region)


def scored_stacks(synthetic: Volume, reference: Volume, axis: int | None = None, slices: Sequence[int] | None = None,
                  *extra: np.ndarray) -> list[np.ndarray]:
    """``synthetic`` and ``reference`` (resampled, linear, onto the synthetic grid if the grids differ)
    as float32 (n, h, w) stacks along ``axis`` — the synthesis plan's; None: the acquisition axis,
    :func:`engine.inference.slices.slice_axis` — followed by any ``extra`` arrays on the synthetic
    grid cut alike; ``slices`` (indices along ``axis``) keeps only those slices."""
    from engine.io.resample import resample_onto

    if not synthetic.same_grid(reference):
        reference = resample_onto(reference, synthetic)
    axis = slice_axis(synthetic.spacing) if axis is None else axis
    arrays = [np.asarray(synthetic.array, dtype=np.float32), np.asarray(reference.array, dtype=np.float32), *extra]
    stacks = [slices_first(a, axis) for a in arrays]
    return [s[list(slices)] for s in stacks] if slices is not None else stacks


def outside_fov(synthetic: Volume, reference: Volume, source: Volume, slices: Sequence[int] | None,
                axis: int | None = None) -> tuple[float, float | None]:
    """(the share of the reference's body that the source's field of view leaves out, the synthetic's
    MAE there — None when it leaves none out) on ``slices`` along ``axis`` (all when None), the body
    found as :func:`score_volume` finds it on one grid (the datasets scored here pair each source with a
    reference on its grid). ``synthetic`` and ``source`` share a grid (synthesis keeps it)."""
    syn, ref, missing = scored_stacks(synthetic, reference, axis, slices, padding_mask(source))
    body = modalities.body_mask(ref, reference.modality or "CT")
    out = body & missing
    if not out.any():
        return 0.0, None
    return float(out.sum() / body.sum()), float(np.abs(syn[out] - ref[out]).mean())


def central_block(indices: Sequence[int], count: int | None) -> list[int]:
    """``count`` consecutive entries from the middle of ``indices`` (all when ``count`` is None)."""
    indices = list(indices)
    if count is None or count >= len(indices):
        return indices
    start = max(0, (len(indices) - count) // 2)
    return indices[start:start + count]


@dataclass(frozen=True)
class SubjectScore:
    subject: str
    route: tuple[str, str]
    evaluation: Evaluation
    slices: int
    seconds: float
    unseen: float | None = None     # CT-family source: the share of the target's body it holds no data of


@dataclass
class ModelEvaluation:
    """Per-subject scores of every route and their per-route and overall means."""

    model: str
    dataset: str
    split: str
    settings: dict
    subjects: list[SubjectScore] = field(default_factory=list)

    def routes(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys(s.route for s in self.subjects))

    def route_means(self) -> dict[tuple[str, str], dict]:
        out = {}
        for route in self.routes():
            scores = [s for s in self.subjects if s.route == route]
            out[route] = {"subjects": len(scores), "unit": scores[0].evaluation.unit,
                          "whole": _mean([s.evaluation.whole.to_dict() for s in scores]),
                          "body": _mean([s.evaluation.body.to_dict() for s in scores if s.evaluation.body]),
                          **_mean([{"through_plane": s.evaluation.through_plane} for s in scores], ("through_plane",)),
                          "seconds": float(np.mean([s.seconds for s in scores]))}
        return out

    def unit_means(self) -> dict[str, dict]:
        """The mean over the routes of each unit (the MR routes' % of range, CT's HU), MAE included:
        MAEs average only within one unit."""
        means = list(self.route_means().values())
        out = {}
        for unit in dict.fromkeys(m["unit"] for m in means):
            rows = [m for m in means if m["unit"] == unit]
            out[unit] = {"routes": len(rows), "whole": _mean([m["whole"] for m in rows]),
                         "body": _mean([m["body"] for m in rows]), **_mean(rows, ("through_plane",))}
        return out

    def to_dict(self) -> dict:
        means = self.route_means()
        return {
            "model": self.model, "dataset": self.dataset, "split": self.split, "settings": self.settings,
            "routes": [{"route": f"{a}→{b}", "source": a, "target": b, **m} for (a, b), m in means.items()],
            "mean_over_routes": {"whole": _mean([m["whole"] for m in means.values()], keys=("psnr_db", "ssim_x100")),
                                 "body": _mean([m["body"] for m in means.values()], keys=("psnr_db", "ssim_x100")),
                                 **_mean(list(means.values()), ("through_plane",))},
            "mean_per_unit": self.unit_means(),
            "subjects": [{"subject": s.subject, "route": f"{s.route[0]}→{s.route[1]}", "slices": s.slices,
                          "seconds": s.seconds, **s.evaluation.to_dict(),
                          **({} if s.unseen is None else {"source_unseen_share": s.unseen})} for s in self.subjects],
        }

    def unseen_warnings(self, at_least: float = 0.05) -> list[str]:
        """A line for each subject whose source holds no data of at least ``at_least`` of the target's
        body (a CBCT's field of view or grid cutting the head): the model's guess there is scored too."""
        return [f"{s.subject}: {s.unseen:.0%} of the {s.route[1]}'s body lies where the {s.route[0]} shows nothing "
                "(outside its field of view or grid): the model's guess there is scored too"
                for s in self.subjects if s.unseen is not None and s.unseen >= at_least]

    def table(self) -> str:
        """A plain-text table: one row per route, then the mean over routes and, when the routes have
        several units, the mean of each unit's routes (MAE included)."""
        means = self.route_means()
        per_unit = self.unit_means() if len({m["unit"] for m in means.values()}) > 1 else {}
        maes = [_f(m[part].get("mae")) + " " + m["unit"] for m in means.values() for part in ("whole", "body")]
        mae = max([11, *map(len, maes)]) + 2           # "7.36 % of range" had run into the SSIM column
        name = max([14, *(len(f"mean {unit}") + 1 for unit in per_unit)])
        head = (f"{'route':<{name}}{'n':>3}  {'PSNR dB':>8}{'SSIM':>7}{'MAE':>{mae}}  {'body PSNR':>9}{'SSIM':>7}"
                f"{'MAE':>{mae}}  {'through-plane':>13}")

        def row(label: str, n, m: dict, unit: str = "") -> str:
            w, bd = m["whole"], m["body"]
            with_unit = (lambda v: _f(v) + " " + unit) if unit else (lambda v: "")
            return (f"{label:<{name}}{n:>3}  {_f(w.get('psnr_db')):>8}{_f(w.get('ssim_x100')):>7}"
                    f"{with_unit(w.get('mae')):>{mae}}  {_f(bd.get('psnr_db')):>9}{_f(bd.get('ssim_x100')):>7}"
                    f"{with_unit(bd.get('mae')):>{mae}}  {_f(m.get('through_plane')):>13}")

        lines = [head, "-" * len(head)]
        lines += [row(a + "→" + b, m["subjects"], m, m["unit"]) for (a, b), m in means.items()]
        lines.append("-" * len(head))
        lines.append(row("mean", "", self.to_dict()["mean_over_routes"]))
        lines += [row(f"mean {unit}", m["routes"], m, unit) for unit, m in per_unit.items()]
        return "\n".join(lines)


def _f(value) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _mean(rows: list[dict], keys: Iterable[str] = SCORE_KEYS) -> dict:
    out = {}
    for key in keys:
        values = [r[key] for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
        if values:
            out[key] = float(np.mean(values))
    return out


def route_jobs(synthesizer, paired, split: str | None, routes: Iterable[Sequence[str]] | None = None
               ) -> list[tuple[str, tuple[str, str]]]:
    """(subject, route) of every subject of ``split`` and route that the subject, the model (when
    its card lists routes) and ``routes`` (when given) all have, in subject order."""
    wanted = None if routes is None else {(modalities.canonical(a), modalities.canonical(b)) for a, b in routes}
    supported = set(synthesizer.routes) if synthesizer.routes else None
    return [(s, r) for s in paired.subject_names(split) for r in paired.subject(s).routes
            if (supported is None or r in supported) and (wanted is None or r in wanted)]


def evaluate_model(synthesizer, paired, split: str | None = "test", *, routes: Iterable[Sequence[str]] | None = None,
                   max_slices: int | None = None, settings=None, progress: ProgressFn = noop,
                   cancel: CancelToken | None = None) -> ModelEvaluation:
    """Synthesize every (subject of ``split``, route the model and the subject both have) and score
    it against the subject's real target volume. ``split=None`` uses every subject; ``max_slices``
    synthesizes only that many central body slices per volume (and scores those)."""
    settings = settings or synthesizer.default_settings()
    subjects = paired.subject_names(split)
    if not subjects:
        raise ValueError(f"the dataset has no subjects in the {split!r} split; choose another with --split")
    jobs = route_jobs(synthesizer, paired, split, routes)
    if not jobs:
        raise ValueError(f"no route of the model ({', '.join(f'{a}→{b}' for a, b in synthesizer.routes) or 'any'}) "
                         f"is present in the {split!r} split's subjects")
    result = ModelEvaluation(synthesizer.name, paired.name, split or "all", settings.to_dict())
    for k, (subject, (source, target)) in enumerate(jobs):
        check_cancel(cancel)
        started = time.perf_counter()
        volume = paired.volume(subject, source)
        reference = paired.volume(subject, target)
        plan = synthesizer.plan(volume, source, plane=settings.plane)
        picked = central_block(plan.active, max_slices)
        anatomy = paired.anatomy(subject) or settings.anatomy

        def report(p: Progress, k=k, label=f"{subject} {source}→{target}") -> None:
            progress(Progress(k + p.fraction, len(jobs), f"{label}: {p.message}"))

        synthetic = synthesizer.synthesize_volume(volume, source, target, settings.replace(anatomy=anatomy),
                                                  progress=report, cancel=cancel, slices=picked)
        scored = picked if max_slices else None
        scores = score_volume(synthetic, reference, target, slices=scored, cancel=cancel, axis=plan.axis)
        unseen = (outside_fov(synthetic, reference, volume, scored, plan.axis)[0]
                  if modalities.get(source).family == "CT" else None)
        result.subjects.append(SubjectScore(subject, (source, target), scores, len(picked),
                                            time.perf_counter() - started, unseen))
        progress(Progress(k + 1, len(jobs), f"{subject} {source}→{target} scored"))
    return result
