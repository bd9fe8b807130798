"""``bench floor``: on a route whose source and target share a physical scale (CBCT → CT), what the
output is made of — the model card's ``source_floor``: the HU-calibrated source, its noise filtered
with a strength (``denoise``, :mod:`engine.inference.denoise`), plus a weight times the model's
change to it.

Chosen on the validation subjects: each volume is synthesized once by the model alone (weight 1) and
once as the calibrated source (weight 0, no filter; the model's output outside the source's field of
view in both); every strength of :data:`STRENGTHS` filters the second and every weight of
:data:`WEIGHTS` blends the two (the blend is linear, so no further synthesis is needed), each scored
inside the body. The pair with the lowest mean MAE is chosen, on a tie (within 0.1 HU) the smaller
weight (the source is the floor), then the weaker filter. Then it is measured, never chosen, on held-out inputs: the
test split, CBCTs simulated outside the training ranges and the real head CTs of the hold-out
(:mod:`engine.evaluation.generalization`), each beside the source as it is, and where the source's
field of view cut the head off: how much of the head it left out and how far off the output is there
(the model's whatever the weight, where it continues the body).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import modalities
from engine.evaluation import generalization as gen
from engine.evaluation.synthesis_eval import central_block, outside_fov, route_jobs, scored_stacks
from engine.inference.denoise import filter_slices
from engine.inference.field_of_view import padding_mask
from engine.inference.slices import slices_back, slices_first
from engine.jobs import CancelToken, check_cancel

WEIGHTS = tuple(round(0.1 * k, 1) for k in range(11))
STRENGTHS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
TIE_HU = 0.1                    # mean MAEs this close count as a tie
ROUTES = (gen.CBCT_ROUTE,)
SLICES = 8                      # central body slices per volume


def weight_curve(synth, volumes, split: str | None, *, routes: Sequence[tuple[str, str]] = ROUTES,
                 max_slices: int | None = SLICES, weights: Sequence[float] = WEIGHTS,
                 strengths: Sequence[float] = STRENGTHS, cancel: CancelToken | None = None) -> dict[str, dict[str, Any]]:
    """Per route ("CBCT→CT"): the subjects, the source's own mean MAE inside the body (``as_is``),
    the mean MAE of every filter strength and weight (``grid``: [[strength, weight, MAE], …]) and,
    over the subjects whose head the source's field of view cuts (``outside_subjects``), the mean
    share of the head it leaves out (``outside_share``) and the output's mean MAE there
    (``outside_mae``; None when it cuts none)."""
    settings = synth.default_settings()
    found: dict[str, dict[str, Any]] = {}
    for subject, (source, target) in route_jobs(synth, volumes, split, routes):
        check_cancel(cancel)
        volume, reference = volumes.volume(subject, source), volumes.volume(subject, target)
        plan = synth.plan(volume, source, plane=settings.plane)
        picked = central_block(plan.active, max_slices)
        scored = picked if max_slices else None
        asked = settings.replace(anatomy=volumes.anatomy(subject) or settings.anatomy, floor_denoise=0.0)
        model, base = (synth.synthesize_volume(volume, source, target, asked.replace(source_floor=w), cancel=cancel,
                                               slices=picked) for w in (1.0, 0.0))

        # the body MAE score_volume gives (on one grid, as the paired datasets have), with the reference cut
        # and its body found once for every pair
        ref = scored_stacks(model, reference, plan.axis, scored)[1]
        body = modalities.body_mask(ref, target)
        if not body.any():
            raise ValueError(f"subject {subject!r}: its {target} shows no body in the scored slices, "
                             "so no MAE inside the body can be measured")

        def mae(array: np.ndarray) -> float:
            stack = slices_first(np.asarray(array, np.float32), plan.axis)
            return float(np.abs((stack[scored] if scored is not None else stack)[body] - ref[body]).mean(dtype=np.float64))

        # the pipeline's filter, on the slices it cuts: outside the field of view base is the model's
        missing = slices_first(padding_mask(volume), plan.axis)
        stack = slices_first(np.asarray(base.array, np.float32), plan.axis)
        bottom = modalities.scale_bottom(target) or -np.inf                 # synthesis clamps the output there
        entry = found.setdefault(f"{source}→{target}", {"subjects": [], "as_is": [], "maes": [], "outside": []})
        entry["subjects"].append(subject)
        entry["as_is"].append(mae(np.asarray(volume.array, np.float32)))
        maes = []
        for k in strengths:
            check_cancel(cancel)
            floor = base.array
            if k:
                filtered = stack.copy()
                filtered[picked] = filter_slices(stack[picked], k, missing[picked])
                floor = slices_back(filtered, plan.axis)
            maes += [mae(np.maximum(floor + w * (model.array - floor), bottom)) for w in weights]   # as synthesis
        entry["maes"].append(maes)
        share, there = outside_fov(model, reference, volume, scored, plan.axis)
        if there is not None:
            entry["outside"].append((share, there))
    for entry in found.values():
        means = np.mean(np.asarray(entry.pop("maes")), axis=0)
        pairs = [(k, w) for k in strengths for w in weights]
        entry["grid"] = [[float(k), float(w), float(m)] for (k, w), m in zip(pairs, means)]
        entry["as_is"] = float(np.mean(entry["as_is"]))
        outside = entry.pop("outside")
        entry["outside_subjects"] = len(outside)
        entry["outside_share"] = float(np.mean([s for s, _ in outside])) if outside else None
        entry["outside_mae"] = float(np.mean([m for _, m in outside])) if outside else None
    return found


def choose(grid: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(strength, weight) of the lowest MAE; among those within :data:`TIE_HU` of it the smallest
    weight, then the weakest filter (a difference the table's one decimal does not show is no reason
    to keep more of the model or to smooth more)."""
    best = min(m for _, _, m in grid)
    return min(((k, w) for k, w, m in grid if m <= best + TIE_HU), key=lambda kw: (kw[1], kw[0]))


def mae_at(grid: Sequence[Sequence[float]], strength: float, weight: float) -> float:
    return next(m for k, w, m in grid if math.isclose(k, strength) and math.isclose(w, weight))


def run_floor(model: str | Path, data: str | Path, *, choose_split: str = "val", test_split: str = "test",
              max_slices: int | None = SLICES, device: str = "cpu", generalization: bool = True,
              progress: Callable[[str], None] = lambda line: None, cancel: CancelToken | None = None) -> dict[str, Any]:
    """The filter strength and weight per same-scale route chosen on ``choose_split``, and what they
    give on held-out sets."""
    from engine.inference.pipeline import Synthesizer
    from engine.tasks.dataset import PairedDataset

    synth = Synthesizer(model, device=device)
    paired = PairedDataset.open(data, pixel_mm=synth.pixel_mm)
    progress(f"choosing on the {choose_split} split …")
    chosen = weight_curve(synth, paired, choose_split, max_slices=max_slices, cancel=cancel)
    if not chosen:
        raise ValueError(f"{data}: the {choose_split!r} split has no subject with a same-scale route "
                         f"({', '.join(f'{a}→{b}' for a, b in ROUTES)}) the model supports")
    for entry in chosen.values():
        entry["denoise"], entry["weight"] = choose(entry["grid"])
    sets: list[tuple[str, str, Any, str | None]] = [("test", f"held-out subjects ({test_split} split)", paired,
                                                     test_split)]
    if generalization:
        sets.append(("cbct_out_of_range", gen.SET_LABELS["cbct_out_of_range"], gen.cbct_set(paired, test_split), None))
        sets.append(("real_ct", gen.SET_LABELS["real_ct"], gen.real_ct_set()[0], None))
    measured = []
    for key, label, volumes, split in sets:
        check_cancel(cancel)
        progress(f"measuring on {label} …")
        curves = weight_curve(synth, volumes, split, max_slices=max_slices, cancel=cancel)
        for route, entry in curves.items():
            pick = chosen.get(route)
            grid = entry["grid"]
            measured.append({"set": key, "label": label, "route": route, "subjects": len(entry["subjects"]),
                             "as_is": entry["as_is"], "calibrated": mae_at(grid, 0.0, 0.0),
                             "denoised": None if pick is None else mae_at(grid, pick["denoise"], 0.0),
                             "model": mae_at(grid, 0.0, 1.0),
                             "floored": None if pick is None else mae_at(grid, pick["denoise"], pick["weight"]),
                             "grid": grid, "outside_subjects": entry["outside_subjects"],
                             "outside_share": entry["outside_share"], "outside_mae": entry["outside_mae"]})
    return {"model": str(model), "data": str(data), "choose_split": choose_split, "max_slices": max_slices,
            "settings": synth.default_settings().to_dict(), "routes": chosen, "measured": measured}


def card_entries(report: Mapping[str, Any], command: str) -> list[dict[str, Any]]:
    """The model card's ``source_floor`` from a :func:`run_floor` report; ``outside_fov`` from the
    first measured set whose field of view cut a head (the test split's, when it does)."""
    out = []
    for route, entry in report["routes"].items():
        strength, weight, grid = entry["denoise"], entry["weight"], entry["grid"]
        source, target = route.split("→")
        where = f"chosen on {len(entry['subjects'])} {report['choose_split']}-split subjects"
        found = (f"{mae_at(grid, strength, weight):.1f} HU inside the body against the calibrated source's "
                 f"{mae_at(grid, 0.0, 0.0):.1f} and the model alone's {mae_at(grid, 0.0, 1.0):.1f}")
        item = {"route": [source, target], "weight": weight, "denoise": strength, "command": command,
                "chosen_on": f"{where} (filter strength {strength:g}, weight {weight:g}): {found}"}
        cut = next((row for row in report["measured"] if row["route"] == route and row["outside_mae"] is not None), None)
        if cut is not None:
            item["outside_fov"] = {"mae_hu": round(cut["outside_mae"], 1), "share": round(cut["outside_share"], 3),
                                   "subjects": cut["outside_subjects"], "set": cut["label"]}
        out.append(item)
    return out


def write_card(model: str | Path, report: Mapping[str, Any], command: str) -> Path:
    """Record the chosen weights in ``model``'s card (atomically); the card's benchmark warnings for
    those routes are dropped (they scored the model without its floor)."""
    from engine.atomic import atomic_file
    from engine.inference.model_card import METADATA_FILE, parse_route

    path = Path(model) / METADATA_FILE
    card = json.loads(path.read_text(encoding="utf-8"))
    entries = card_entries(report, command)
    floored = {tuple(e["route"]) for e in entries}
    card["source_floor"] = entries
    kept = [w for w in card.get("benchmark_warnings") or ()
            if not {parse_route(r) for r in w.get("routes") or ()} <= floored]
    if "benchmark_warnings" in card:
        card["benchmark_warnings"] = kept
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _f(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"


def _cut(row: Mapping[str, Any]) -> tuple[str, str | None]:
    """(the subjects whose head the field of view cuts and the share it leaves out, the output's MAE
    there in HU — None when it cuts none)."""
    if row["outside_mae"] is None:
        return "none", None
    return (f"{row['outside_subjects']} of {row['subjects']} (mean {100 * row['outside_share']:.1f} % of the head)",
            f"{row['outside_mae']:.0f}")


def to_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"`{report.get('command', 'python main.py bench floor')}` — {report['max_slices'] or 'all'} central "
             "slices per volume; MAE in HU inside the body", ""]
    for route, entry in report["routes"].items():
        k, w, grid = entry["denoise"], entry["weight"], entry["grid"]
        cut, there = _cut(dict(entry, subjects=len(entry["subjects"])))
        by_weight = ", ".join(f"{b:g}: {m:.1f}" for a, b, m in grid if math.isclose(a, k))
        by_strength = ", ".join(f"{a:g}: {m:.1f}" for a, b, m in grid if math.isclose(b, w))
        lines.append(f"{route}: filter strength **{k:g}** and weight **{w:g}** chosen on {len(entry['subjects'])} "
                     f"{report['choose_split']}-split subjects (mean MAE in HU inside the body — by weight at strength "
                     f"{k:g}: {by_weight}; by strength at weight {w:g}: {by_strength}; the source as it is "
                     f"{entry['as_is']:.1f}; heads cut by the field of view: {cut}{'' if there is None else f', the output off there by {there} HU'})")
    lines += ["", "| set | route | subjects | source as is | calibrated source | calibrated, noise filtered "
                  "| model alone | with the floor | source's error removed | heads cut by the field of view "
                  "| the output's MAE outside it |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for row in report["measured"]:
        removed = gen.error_removed(row["as_is"], row["floored"])
        cut, there = _cut(row)
        lines.append(f"| {row['label']} | {row['route']} | {row['subjects']} | {_f(row['as_is'])} | "
                     f"{_f(row['calibrated'])} | {_f(row['denoised'])} | {_f(row['model'])} | {_f(row['floored'])} | "
                     f"{'—' if removed is None else f'{100 * removed:.0f} %'} | {cut} | {there or '—'} |")
    lines += ["", "Source's error removed: 1 − MAE(with the floor) / MAE(source as is). "
                  "Outside the source's field of view (its padding value) the output is the model's whatever the "
                  "weight (tissue not joined to the body inside it set to air); the last two columns: the subjects "
                  "whose head it cuts, the share of the head inside the body mask it leaves out, and the output's "
                  "MAE in HU there (means over those subjects)."]
    return "\n".join(lines) + "\n"


to_text = to_markdown
