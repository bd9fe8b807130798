"""``bench quality``: the default model against its peers and its own ablations on the held-out
subjects, all measured in one run by the protocol of docs/evaluation.md (per-volume normalisation, whole slice and
body mask, per subject → per route → mean over routes; MAE in HU for CT targets).

Rows (the model folders of a recipe run, see :mod:`engine.recipe`):

- identity — the source, its intensities quantile-matched to the target's training histogram;
- MONAI BasicUNet — route-conditioned, L1, the compute budget of Stage II;
- SynerMedGen vae + Stage I only (zero-shot synthesis), Stage II only, Stage I + II (default);
- the default model again with the source-guided filter off (every other row has it, with the
  recipe's radius: :mod:`engine.inference.guided`);

and the ceilings every unfiltered SynerMedGen row shares: the target slices' own round trip through
the autoencoder (on the same slices), and below it the round trip through the model's slice size
alone (resampling, no autoencoder: what any method at that size could reach on the native grid
without the source's help; a filtered row, drawing the source's detail in, can pass them), plus
Stage I's CTS / MI / TIA accuracy on the same subjects beside chance and what ``identify`` answers
for each of their volumes with the default model (:mod:`engine.evaluation.understanding`).

With ``seeds`` > 1 the Stage II only and Stage I + II rows are sampled again from further seeds
(:data:`SEEDED`; the table keeps the first seed): their spread is the sampling noise any comparison
between them has to beat, and seed by seed both start from the same noise, so their difference is
paired (:func:`seed_lines`).

The generalization part (:mod:`engine.evaluation.generalization`, ``report["generalization"]``) scores
identity, BasicUNet and the default model again on inputs unlike the training data — shifted fields
of view and resolution, CBCTs simulated outside the training ranges, real images never trained on —
each beside identity on the same inputs.

Each row also carries its *target agreement* (:func:`target_agreement`): how alike its outputs for
different MR targets of one source slice are, beside the same for the real scans — a model that
ignores the requested target (the same image for T1 → T2 and T1 → FLAIR) scores ≈ 1 — and, per
route, its *through-plane* variation (:func:`engine.evaluation.metrics.evaluate`): slice-to-slice
change against the real scan's, where slices synthesized independently show up as stripes.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import modalities, recipe
from engine.evaluation import generalization as gen
from engine.evaluation.metrics import pearson
from engine.evaluation.synthesis_eval import (
    ModelEvaluation,
    SubjectScore,
    central_block,
    evaluate_model,
    route_jobs,
    score_volume,
)
from engine.evaluation.understanding import identification, identification_lines, understanding, understanding_lines
from engine.inference.model_card import ModelCard
from engine.inference.pipeline import SliceSynthesizer, Synthesizer, unit_slices
from engine.inference.settings import SynthesisSettings, settings_from_card
from engine.inference.slices import slices_first
from engine.jobs import CancelToken, check_cancel, noop
from engine.tasks.dataset import PairedDataset

MR_ROUTES = tuple((a, b) for a in ("T1", "T1CE", "T2", "FLAIR") for b in ("T1", "T1CE", "T2", "FLAIR") if a != b) \
    + (("T1", "PD"), ("PD", "T1"))
ROUTES = MR_ROUTES + (("CBCT", "CT"),)
ROWS = (  # key, label, recipe entry (None: fitted here), with the source-guided filter
    ("identity", "identity (histogram-matched source)", None, True),
    ("unet", "MONAI BasicUNet (L1, route-conditioned)", recipe.UNET, True),
    ("stage1", "SynerMedGen vae + Stage I only (zero-shot)", recipe.STAGE1, True),
    ("stage2", "SynerMedGen Stage II only (no Stage I)", recipe.STAGE2_ONLY, True),
    ("stage12", "SynerMedGen Stage I + II (default model)", recipe.STAGE12, True),
    ("stage12_unfiltered", "SynerMedGen Stage I + II, source-guided filter off", recipe.STAGE12, False),
)
REQUIRED = {recipe.STAGE1, recipe.STAGE12}   # other rows are left out, with the reason, when their entry is missing
SEEDED = ("stage2", "stage12")            # the rows sampled again from further seeds with ``seeds`` > 1
CEILING = ("vae", "VAE round trip of the target (ceiling without the filter)")
RESAMPLING = ("resampling", "resampling to the model's slice size and back (ceiling at this size without the filter)")
QUICK = {"recipe": "quick", "slices": 2, "steps": 3}


class ResamplingRoundTrip(SliceSynthesizer):
    """A volume cut into slices, resampled to the model's slice size and back, and re-stacked:
    what any method working at that slice size could at best reach on the native grid. Its
    "route" is the volume's own modality."""

    method = "resampling to the model's slice size and back"

    def __init__(self, model: Synthesizer) -> None:
        super().__init__(model.card, model.image_size, model.device)

    def _check_route(self, source: str, target: str) -> tuple[str, str]:
        return modalities.canonical(source), modalities.canonical(target)

    def default_settings(self) -> SynthesisSettings:
        # a round trip without the filter or the HU calibration, whatever the model's card says: its
        # "source" is the target itself, which a filter would copy back and a calibration would shift
        return super().default_settings().replace(guided_filter=0.0, hu_calibration=False)

    def _prepare(self, source: str, target: str, settings: SynthesisSettings) -> tuple[Any, list[str]]:
        return None, [f"method: {self.method}"]

    def _run_batch(self, images, indices, prepared, settings, cancel, on_step=noop) -> torch.Tensor:
        return images.float().clone()

    def slice_memory_estimate(self, prepared: Any) -> int:
        return 8 * self.image_size ** 2


class VAERoundTrip(ResamplingRoundTrip):
    """A volume through a model's autoencoder and back (posterior mean) at its slice size: what
    any synthesis by that model could at best reach."""

    method = "autoencoder round trip"

    def __init__(self, model: Synthesizer) -> None:
        super().__init__(model)
        self.vae = model.model.vae

    @torch.no_grad()
    def _run_batch(self, images, indices, prepared, settings, cancel, on_step=noop) -> torch.Tensor:
        pixels = images.to(self.device) * 2.0 - 1.0
        return unit_slices(self.vae.decode(self.vae.encode(pixels)).float())

    def slice_memory_estimate(self, prepared: Any) -> int:
        return 4 * 8 * self.vae.config.ch * self.image_size ** 2


def _scores(evaluation: ModelEvaluation) -> dict[str, Any]:
    data = evaluation.to_dict()
    return {"routes": {r["route"]: {"subjects": r["subjects"], "unit": r["unit"], "whole": r["whole"],
                                    "body": r["body"], "through_plane": r.get("through_plane")}
                       for r in data["routes"]},
            "mean": data["mean_over_routes"]}


def ceiling(round_trip: ResamplingRoundTrip, paired: PairedDataset, split: str, routes: Sequence[tuple[str, str]],
            max_slices: int | None, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Per route: the target volumes' round trip, scored on the slices the routes were scored on."""
    result = ModelEvaluation(round_trip.method, paired.name, split, {})
    done: dict[tuple[str, str], Any] = {}
    for subject in paired.subject_names(split):
        for route in paired.subject(subject).routes:
            if route not in routes:
                continue
            check_cancel(cancel)
            source, target = route
            key = (subject, target)
            if key not in done:
                reference = paired.volume(subject, target)
                picked = central_block(round_trip.plan(paired.volume(subject, source), source).active, max_slices)
                synthetic = round_trip.synthesize_volume(reference, target, target, slices=picked, cancel=cancel)
                done[key] = (score_volume(synthetic, reference, target, slices=picked if max_slices else None),
                             len(picked))
            scores, count = done[key]
            result.subjects.append(SubjectScore(subject, route, scores, count, 0.0))
    return _scores(result)


def _mean_pairwise_correlation(images: Sequence[np.ndarray], mask: np.ndarray) -> float:
    values = [pearson(a, b, mask) for a, b in itertools.combinations(images, 2)]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def target_agreement(synth: SliceSynthesizer, paired: PairedDataset, split: str | None,
                     routes: Sequence[tuple[str, str]] | None = None, settings: SynthesisSettings | None = None,
                     cancel: CancelToken | None = None) -> dict[str, Any]:
    """Mean pairwise Pearson correlation, inside the source's body mask, of ``synth``'s outputs for
    the different MR targets of one central source slice per subject (the source with the most MR
    targets among the routes both ``synth`` and ``routes`` — by default the benchmark's,
    :data:`ROUTES` — have), and of the real target scans on
    the same slice (linearly resampled onto the source grid when theirs differs). Near 1 with the
    real value well below: the method ignores which target was asked for."""
    from engine.io.resample import resample_onto

    settings = settings or synth.default_settings()
    by_subject: dict[str, dict[str, list[str]]] = {}
    for subject, (source, target) in route_jobs(synth, paired, split, ROUTES if routes is None else routes):
        if modalities.get(target).family == "MR":
            by_subject.setdefault(subject, {}).setdefault(source, []).append(target)
    synthetic, real = [], []
    for subject, targets in by_subject.items():
        source = max(sorted(targets), key=lambda s: len(targets[s]))
        if len(targets[source]) < 2:
            continue
        volume = paired.volume(subject, source)
        plan = synth.plan(volume, source)
        if not plan.active:
            continue
        index = central_block(plan.active, 1)
        array = np.nan_to_num(np.asarray(volume.array, np.float32))
        mask = slices_first(modalities.body_mask(array, source), plan.axis)[index[0]]
        sampling = settings.replace(anatomy=paired.anatomy(subject) or settings.anatomy)
        outputs, scans = [], []
        for target in targets[source]:
            check_cancel(cancel)
            out = synth.synthesize_volume(volume, source, target, settings=sampling, slices=index, cancel=cancel)
            outputs.append(slices_first(np.asarray(out.array, np.float32), plan.axis)[index[0]])
            scan = paired.volume(subject, target)
            scan = scan if scan.same_grid(volume) else resample_onto(scan, volume)
            scans.append(slices_first(np.asarray(scan.array, np.float32), plan.axis)[index[0]])
        pair = (_mean_pairwise_correlation(outputs, mask), _mean_pairwise_correlation(scans, mask))
        if all(math.isfinite(v) for v in pair):
            synthetic.append(pair[0])
            real.append(pair[1])
    return {"synthetic": float(np.mean(synthetic)) if synthetic else None,
            "real": float(np.mean(real)) if real else None, "subjects": len(synthetic)}


def untrained_why(folder: Path) -> str:
    """Why a recipe entry's folder has no model to score: never started, or stopped before its end."""
    return f"{folder} {'was not trained to its end' if folder.exists() else 'was not trained'} in this run"


def _trained(folder: Path) -> bool:
    """Whether a recipe entry's folder holds a finished model (a stopped run's folder holds its start)."""
    from engine.baselines.unet import CARD

    if (folder / CARD).is_file():
        return True
    try:
        return json.loads((folder / "metadata.json").read_text(encoding="utf-8"))["recipe"]["stages"][-1].get(
            "status") == "finished"
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False


def run_quality(run: str | Path, data: str | Path, *, split: str = "test", max_slices: int | None = 8,
                steps: int | None = None, device: str = "cpu", understanding_samples: int = 64, seeds: int = 1,
                generalization: bool = True, generalization_slices: int | None = None,
                progress: Callable[[str], None] = lambda line: None, cancel: CancelToken | None = None
                ) -> dict[str, Any]:
    """Every row on ``data``'s ``split`` for the routes of :data:`ROUTES` the split has; the
    recipe's models come from the run folder ``run`` and all sample with the recipe's inference
    defaults (``steps`` overrides their ODE steps); every row but one applies its source-guided filter.
    The rows of :data:`SEEDED` are scored for ``seeds`` sampling seeds (the recipe's and the next ones).
    With ``generalization`` the rows of :data:`engine.evaluation.generalization.ROWS` are scored again on
    shifted and real held-out inputs (:mod:`engine.evaluation.generalization`; ``generalization_slices``
    central slices per volume, default the smaller of ``max_slices`` and its own default), under
    ``report["generalization"]``."""
    from engine.baselines.identity import IntensityMatch
    from engine.baselines.unet import UNetSynthesizer

    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    seeds = int(seeds)
    run = Path(run)
    missing = [name for _, _, name, _ in ROWS if name and not _trained(run / name)]
    if set(missing) & REQUIRED:
        raise FileNotFoundError(f"{run}: missing {', '.join(missing)}; train them with "
                                f"python main.py recipe --data {data} --out {run}")
    # slices (Stage I's questions, the identity fit) cut as the recipe's models cut them
    paired = PairedDataset.open(data, pixel_mm=ModelCard.read(run / recipe.STAGE12).pixel_mm)
    held_out = recipe.left_out(run / recipe.STAGE12)
    if held_out:                   # leave-one-source-out: the test split is that source's subjects, all of them
        paired = paired.leave_out(held_out)
    present = set(paired.routes(split))
    routes = [r for r in ROUTES if r in present]
    if not routes:
        raise ValueError(f"{data}: the {split!r} split has none of the benchmark routes")
    report: dict[str, Any] = {"data": str(data), "run": str(run), "split": split, "held_out_source": held_out,
                              "max_slices": max_slices,
                              "subjects": paired.subject_names(split), "routes": [f"{a}→{b}" for a, b in routes],
                              "rows": [], "skipped": []}
    sampling, _ = settings_from_card(recipe.INFERENCE_DEFAULTS)
    if steps is not None:
        sampling = sampling.replace(steps=steps)
    report["sampling"] = sampling.to_dict()
    default = Synthesizer(run / recipe.STAGE12, device=device)
    image_size = default.image_size
    kept: dict[str, tuple] = {}           # the rows the generalization sets score again
    for key, label, entry, filtered in ROWS:
        check_cancel(cancel)
        if entry in missing:
            report["skipped"].append({"key": key, "label": label, "why": untrained_why(run / entry)})
            continue
        started = time.perf_counter()
        progress(f"{label} …")
        if entry is None:
            synth: SliceSynthesizer = IntensityMatch.fit(paired, image_size)
            trained = {}
        elif entry == recipe.UNET:
            synth = UNetSynthesizer(run / entry, device=device)
            if synth.training.get("leave_out") != held_out:
                raise ValueError(f"{run / entry} was trained without {synth.training.get('leave_out')!r}, the run's "
                                 f"Stage II without {held_out!r}: retrain one of them")
            trained = {"steps": synth.training.get("steps_done"), "seconds": synth.training.get("elapsed_s")}
        else:
            synth = default if entry == recipe.STAGE12 else Synthesizer(run / entry, device=device)
            stages = synth.card.raw.get("recipe", {}).get("stages", [])
            trained = {"steps": stages[-1].get("steps_done"), "seconds": stages[-1].get("elapsed_s")} if stages else {}
        settings = (synth.default_settings() if entry in (None, recipe.UNET) else sampling).replace(
            guided_filter=sampling.guided_filter if filtered else 0.0,
            guided_filter_depth=sampling.guided_filter_depth if filtered else 0.0)
        evaluation = evaluate_model(synth, paired, split, routes=routes, max_slices=max_slices, settings=settings,
                                    cancel=cancel)
        row = {"key": key, "label": label, "model": str(run / entry) if entry else None, "trained": trained,
               "seconds": round(time.perf_counter() - started, 1), "guided_filter": settings.guided_filter,
               "guided_filter_depth": settings.guided_filter_depth, **_scores(evaluation),
               "target_agreement": target_agreement(synth, paired, split, routes, settings, cancel)}
        if seeds > 1 and key in SEEDED:
            row["seeds"] = [_seed_scores(settings.seed, row)]
            for seed in range(settings.seed + 1, settings.seed + seeds):
                progress(f"{label}, seed {seed} …")
                again = evaluate_model(synth, paired, split, routes=routes, max_slices=max_slices,
                                       settings=settings.replace(seed=seed), cancel=cancel)
                row["seeds"].append(_seed_scores(seed, _scores(again)))
        report["rows"].append(row)
        if key in gen.ROWS:
            kept[key] = (key, label, synth, settings)
    if generalization:
        slices = generalization_slices or min(max_slices or gen.SLICES, gen.SLICES)
        report["generalization"] = gen.run_generalization(
            paired, data, split, [kept[k] for k in gen.ROWS if k in kept], default, max_slices=slices,
            progress=progress, cancel=cancel)
    progress("VAE ceiling …")
    report["ceiling"] = {"key": CEILING[0], "label": CEILING[1],
                         **ceiling(VAERoundTrip(default), paired, split, routes, max_slices, cancel)}
    report["resampling"] = {"key": RESAMPLING[0], "label": RESAMPLING[1],
                            **ceiling(ResamplingRoundTrip(default), paired, split, routes, max_slices, cancel)}
    progress("Stage I understanding …")
    report["understanding"] = understanding(Synthesizer(run / recipe.STAGE1, device=device), paired, split,
                                            samples=understanding_samples, cancel=cancel)
    progress("identify …")
    report["identification"] = identification(default, paired, split, cancel)
    return report


# -- printing -----------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 1) -> str:
    return "—" if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) \
        else f"{value:.{digits}f}"


def _mr_mean(row: dict, where: str, metric: str | None = None) -> float | None:
    """Mean over the brain-MR routes of ``v[where][metric]`` (or ``v[where]`` when metric is None)."""
    values = [v[where] if metric is None else v[where].get(metric) for r, v in row["routes"].items()
              if v.get(where) is not None and not r.endswith("→CT")]
    values = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(values)) if values else None


def _ct(row: dict, where: str, metric: str) -> float | None:
    value = (row["routes"].get("CBCT→CT") or {}).get(where) or {}
    return value.get(metric)


SEED_METRICS = (  # summary column, label, decimals
    ("mr_ssim", "MR SSIM", 2), ("mr_ssim_body", "MR SSIM (body)", 2), ("ct_mae_hu_body", "CBCT→CT MAE HU", 1))


def _seed_scores(seed: int, scores: dict) -> dict[str, Any]:
    """One seed's summary columns of a row (``scores`` has its per-route ``routes``)."""
    return {"seed": seed, "mr_ssim": _mr_mean(scores, "whole", "ssim_x100"),
            "mr_ssim_body": _mr_mean(scores, "body", "ssim_x100"), "ct_mae_hu_body": _ct(scores, "body", "mae")}


def _spread(values: Sequence[float | None], digits: int) -> str:
    """'mean ± sd (v1 / v2 / …)' of the finite values, sd over the seeds (n − 1)."""
    kept = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not kept:
        return "—"
    sd = float(np.std(kept, ddof=1)) if len(kept) > 1 else math.nan
    return f"{_f(float(np.mean(kept)), digits)} ± {_f(sd, digits)} ({' / '.join(_f(v, digits) for v in values)})"


def _columns(per_seed: Sequence[dict]) -> str:
    return "; ".join(f"{name} {_spread([s[metric] for s in per_seed], digits)}"
                     for metric, name, digits in SEED_METRICS)


def seed_lines(report: dict) -> list[str]:
    """The sampling-noise paragraph: each seeded row's columns per seed, then, seed by seed, the
    default model minus Stage II only (same starting noise, so a paired difference)."""
    rows = {r["key"]: r for r in report["rows"] if r.get("seeds")}
    if not rows:
        return []
    seeds = [s["seed"] for s in next(iter(rows.values()))["seeds"]]
    lines = ["", f"Sampling noise: {' and '.join(r['label'] for r in rows.values())} sampled from seeds "
             f"{', '.join(map(str, seeds))} (the table: seed {seeds[0]}); mean ± standard deviation over the seeds, "
             "then each seed's value:"]
    lines += [f"- {row['label']}: {_columns(row['seeds'])}" for row in rows.values()]
    if all(k in rows for k in SEEDED):
        before, after = (rows[k]["seeds"] for k in SEEDED)
        paired = [{m: None if a[m] is None or b[m] is None else a[m] - b[m] for m, _, _ in SEED_METRICS}
                  for a, b in zip(after, before)]
        lines.append(f"- {rows[SEEDED[1]]['label']} minus {rows[SEEDED[0]]['label']}, seed by seed: {_columns(paired)}")
    return lines


def _with_ceilings(report: dict) -> list[dict]:
    """The method rows, then the ceilings the report has (older reports lack the resampling one)."""
    return report["rows"] + [report[k] for k in ("ceiling", "resampling") if k in report]


def summary(report: dict) -> list[dict]:
    """One line per method (and the ceilings): brain-MR means over routes, CBCT → CT, budget."""
    lines, held_out = [], report.get("held_out_source")
    for row in _with_ceilings(report):
        label = row["label"].replace("(default model)", f"(the default recipe without {held_out})") if held_out \
            else row["label"]
        lines.append({"key": row["key"], "label": label, "trained": row.get("trained") or {},
                      "mr_ssim": _mr_mean(row, "whole", "ssim_x100"), "mr_ssim_body": _mr_mean(row, "body", "ssim_x100"),
                      "mr_psnr_db": _mr_mean(row, "whole", "psnr_db"), "ct_mae_hu_body": _ct(row, "body", "mae"),
                      "ct_ssim": _ct(row, "whole", "ssim_x100"), "mr_through_plane": _mr_mean(row, "through_plane"),
                      "target_agreement": (row.get("target_agreement") or {}).get("synthetic")})
    return lines


def do_nothing_warnings(report: dict) -> list[dict]:
    """The model card's ``benchmark_warnings``: for the brain-MR routes and for CBCT → CT, a warning
    when the default model scored worse than the histogram-matched source on the report's split."""
    lines = {line["key"]: line for line in summary(report)}
    model, identity = lines.get("stage12"), lines.get("identity")
    if not model or not identity:
        return []
    where = f"the held-out {report.get('split', 'test')} subjects of its benchmark (bench quality)"
    found = []
    ours, theirs = model["mr_ssim"], identity["mr_ssim"]
    if ours is not None and theirs is not None and ours < theirs:
        found.append({"routes": [list(r) for r in MR_ROUTES],
                      "warning": f"on {where} this model's brain-MR outputs scored a mean SSIM of {ours:.1f}, the "
                                 f"source itself (histogram-matched) {theirs:.1f}: it made them less like the real "
                                 "scan than doing nothing; compare with the source before use"})
    ours, theirs = model["ct_mae_hu_body"], identity["ct_mae_hu_body"]
    if ours is not None and theirs is not None and ours > theirs:
        found.append({"routes": [["CBCT", "CT"]],
                      "warning": f"on {where} this model's synthetic CTs were {ours:.0f} HU off inside the head, the "
                                 f"CBCT itself (histogram-matched) {theirs:.0f} HU: it made them worse than doing "
                                 "nothing; compare with the source before use"})
    return found


def card_entries(report: dict) -> dict[str, Any]:
    """What a model card keeps of a report: ``benchmark`` (command, machine, split, the rows' summary,
    generalization, understanding, identification) and ``benchmark_warnings`` (:func:`do_nothing_warnings`)."""
    from engine.evaluation.generalization import generalization_summary

    return {"benchmark": {"command": report.get("command"), "machine": (report.get("machine") or {}).get("line"),
                          "split": report.get("split"), "subjects": report.get("subjects"),
                          "rows": summary(report), "skipped": report.get("skipped", []),
                          "generalization": generalization_summary(report.get("generalization")),
                          "understanding": report.get("understanding"),
                          "identification": report.get("identification")},
            "benchmark_warnings": do_nothing_warnings(report)}


def table_row(line: dict) -> str:
    """One :func:`summary` line as a row of the README table (also the rows a model card keeps)."""
    trained = line["trained"]
    budget = (f"{trained.get('steps')} steps, {_f((trained.get('seconds') or 0) / 60)} min" if trained
              else "fitted" if line["key"] == "identity" else "—")
    return (f"| {line['label']} | {_f(line['mr_ssim'])} | {_f(line['mr_ssim_body'])} | "
            f"{_f(line['mr_psnr_db'], 2)} | {_f(line['ct_mae_hu_body'])} | {_f(line['ct_ssim'])} | "
            f"{_f(line['target_agreement'], 3)} | {_f(line['mr_through_plane'], 2)} | {budget} |")


def to_markdown(report: dict) -> str:
    """The README table: one row per method, brain-MR means and CBCT → CT, then accuracies."""
    held_out = report.get("held_out_source")
    subjects = (f"subjects of the source {held_out}, which every model of the run was trained without "
                "(leave-one-source-out; the identity baseline is fitted without it too)"
                if held_out and report["split"] == "test" else f"held-out subjects ({report['split']} split)")
    lines = [f"`{report.get('command', 'python main.py bench quality')}` — {len(report['subjects'])} {subjects}, "
             f"{report['max_slices'] or 'all'} central slices per volume, "
             f"{len(report['routes'])} routes; {(report.get('machine') or {}).get('line', '')}",
             "",
             "| method | MR SSIM | MR SSIM (body) | MR PSNR dB | CBCT→CT MAE HU (body) | CBCT→CT SSIM "
             "| target agreement | MR through-plane | trained |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [table_row(line) for line in summary(report)]
    real = next((r["target_agreement"].get("real") for r in report["rows"] if r.get("target_agreement")), None)
    lines += ["", f"Target agreement: mean correlation, inside the body, of a method's outputs for the different MR "
              f"targets of one central source slice per subject (the real scans: {_f(real, 3)}); near 1 means the "
              "requested target is ignored.",
              "", "MR through-plane: how much the output changes from one slice to the next inside the body, as a "
              "multiple of the real scan's change on the same slices (1: like the real anatomy; above 1: slices "
              "that disagree, seen as stripes in the sagittal and coronal planes).",
              *[f"\nNot measured: {s['label']} ({s['why']})." for s in report.get("skipped", [])],
              *seed_lines(report),
              "", *understanding_lines(report["understanding"]), *identification_lines(report["identification"])]
    lines += gen.markdown_lines(report.get("generalization"))
    return "\n".join(lines)


def to_text(report: dict) -> str:
    """Per route SSIM (whole slice) of every method, then the summary table."""
    rows = _with_ceilings(report)
    head = f"{'route':<12}" + "".join(f"{r['key']:>10}" for r in rows)
    lines = ["SSIM ×100 (whole slice) per route", head, "-" * len(head)]
    for route in report["routes"]:
        cells = [((r["routes"].get(route) or {}).get("whole") or {}).get("ssim_x100") for r in rows]
        lines.append(f"{route:<12}" + "".join(f"{_f(c):>10}" for c in cells))
    return "\n".join(lines) + "\n\n" + to_markdown(report)
