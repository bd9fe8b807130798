"""The generalization part of ``bench quality``: the same rows scored on inputs unlike the
training data, always beside the identity baseline (the histogram-matched source) on the same
inputs. The sets:

- ``fov_crop`` / ``fov_pad`` / ``resolution`` — the test split's subjects with every volume shifted
  the same way (:mod:`engine.evaluation.shifts`): a tight crop, a field of view ×1.6 wider, coarser
  pixels and thicker slices; scored on the shifted grid against the reference shifted identically;
- ``cbct_out_of_range`` — the test split's CT subjects with their CBCT simulated again, from the CT,
  with simulator settings outside the training ranges (:func:`shifts.out_of_range_specs`, derived from
  ``CBCTSpec()``: "above" and "below" each subject, a fixed seed);
- ``real_ct`` — real head CTs shipped as test files of pydicom / pydicom-data (the real-data hold-out,
  never training data: :func:`engine.tasks.holdout.check_holdout_unused`), degraded by the same out-of-range simulator and
  scored against the clean real CT inside the head;
- ``real_mr`` — real MR test files with no partner to score against: what ``identify`` answers for
  each, and a round trip (as T1 → T2 → T1, or T2 → T1 → T2 for a file whose header says T2) scored
  against the input. A round trip measures self-consistency, not correctness: the identity baseline
  keeps the anatomy by construction, so it is the bar that shows how much anatomy a method loses.

Per set and row: MR SSIM ×100 inside the body (mean over the MR routes), CBCT → CT MAE in HU inside
the head and, beside it, the CBCT's own MAE on the same slices and the fraction of it removed,
``1 − MAE_row / MAE_cbct`` (route means over the set's subjects).
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import modalities
from engine.evaluation import shifts
from engine.evaluation.synthesis_eval import ModelEvaluation, SubjectScore, central_block, evaluate_model, score_volume
from engine.io.volume import Volume
from engine.jobs import CancelToken, check_cancel
from engine.tasks.holdout import NOT_USED, HoldoutFile, check_holdout_unused, holdout_paths

MR_ROUTES = (("T1", "T2"), ("T2", "FLAIR"), ("FLAIR", "T1"), ("T1", "T1CE"))   # each BraTS contrast a target once
CBCT_ROUTE = ("CBCT", "CT")
ROWS = ("identity", "unet", "stage12")     # the rows of quality.ROWS scored here
UNCALIBRATED = ("stage12_uncalibrated", "SynerMedGen Stage I + II, HU calibration off")   # CBCT sets only
SLICES = 4                                  # central body slices per volume (at most the main table's)
SEED = 2026                                 # the out-of-range CBCT simulations
CBCT_SIDES = ("above", "below")
CT_CLIP = (-1024.0, 3071.0)                 # real CTs: the scanner's outside-FOV padding (−2000, −3024) is air

SET_LABELS = {
    "fov_crop": "shifted field of view: crop to the body + 2 mm",
    "fov_pad": "shifted field of view: padded ×1.6 with background",
    "resolution": "other resolution: in-plane pixels ×1.5, slices ×2 thicker",
    "cbct_out_of_range": "CBCT simulated outside the training ranges (test CTs)",
    "real_ct": "real head CTs never trained on (pydicom / pydicom-data), out-of-range CBCT",
}


def load_holdout(item: HoldoutFile, path: Path) -> Volume:
    """One hold-out file through the project's reader; CT clipped to :data:`CT_CLIP`."""
    from engine import io

    volume = io.load(path)
    if item.kind == "CT":
        volume = volume.replace(array=np.clip(np.asarray(volume.array, np.float32), *CT_CLIP),
                                modality="CT", unit="HU")
    return volume.replace(name=f"{item.package}:{item.name}")


# -- a stand-in for PairedDataset --------------------------------------------------------------------
@dataclass(frozen=True)
class _Subject:
    routes: tuple[tuple[str, str], ...]


class VolumeSet:
    """What :func:`evaluate_model` reads of a :class:`PairedDataset` (names, routes, volumes,
    anatomy), for pseudo-subjects whose volumes are made on first use and cached."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._makers: dict[str, dict[str, Callable[[], Volume]]] = {}
        self._routes: dict[str, tuple[tuple[str, str], ...]] = {}
        self._anatomy: dict[str, str] = {}
        self._cache: dict[tuple[str, str], Volume] = {}
        self.details: dict[str, dict] = {}      # per subject: what was done (shift geometry, CBCT parameters)

    def add(self, subject: str, makers: Mapping[str, Callable[[], Volume]], routes: Sequence[tuple[str, str]],
            anatomy: str = "") -> None:
        self._makers[subject] = dict(makers)
        self._routes[subject] = tuple(routes)
        self._anatomy[subject] = anatomy

    def subject_names(self, split: str | None = None) -> list[str]:
        return list(self._makers)

    def subject(self, name: str) -> _Subject:
        return _Subject(self._routes[name])

    def subject_modalities(self, name: str) -> tuple[str, ...]:
        return tuple(self._makers[name])

    def anatomy(self, name: str) -> str:
        return self._anatomy.get(name, "")

    def volume(self, subject: str, modality: str) -> Volume:
        key = (subject, modalities.canonical(modality))
        if key not in self._cache:
            self._cache[key] = self._makers[subject][key[1]]()
        return self._cache[key]


def _subjects_with(paired, split: str, routes: Sequence[tuple[str, str]]) -> list[str]:
    wanted = set(routes)
    return [s for s in paired.subject_names(split) if wanted & set(paired.subject(s).routes)]


def shifted_set(paired, split: str, key: str, routes: Sequence[tuple[str, str]]) -> VolumeSet:
    """The ``split``'s subjects with every volume shifted by :data:`shifts.SHIFTS` ``key``, the shift
    fixed from the subject's first modality (its grid) and applied unchanged to all of them."""
    _, make = shifts.SHIFTS[key]
    out = VolumeSet(f"{paired.name} ({key})")
    for subject in _subjects_with(paired, split, routes):
        info = paired.subject(subject)
        fixed: dict[str, shifts.Shift] = {}

        def shift(subject=subject, info=info, fixed=fixed) -> shifts.Shift:
            if "shift" not in fixed:
                first = paired.volume(subject, info.reference)
                fixed["shift"] = make(first, info.reference)
                out.details[subject] = {"from": {"shape_zyx": list(first.shape),
                                                 "spacing_xyz_mm": [round(s, 4) for s in first.spacing]},
                                        "to": fixed["shift"].geometry.to_dict()}
            return fixed["shift"]

        makers = {m: (lambda m=m, s=subject, shift=shift: shift()(paired.volume(s, m)))
                  for m in paired.subject_modalities(subject)}
        out.add(subject, makers, [r for r in info.routes if r in routes], paired.anatomy(subject))
    return out


def simulated_cbct(ct: Volume, spec, seed: int) -> tuple[Volume, dict]:
    """A CBCT of ``ct`` (HU) by the demo-data simulator with ``spec``, on the CT's grid."""
    from engine.demo_data.ct import simulate_cbct
    from engine.demo_data.grid import Grid

    hu, params = simulate_cbct(np.asarray(ct.array, np.float32), Grid.of(ct), np.random.default_rng(seed), spec)
    return ct.with_array(hu, modality="CBCT", unit="HU", name=f"CBCT simulated from {ct.name or 'CT'}",
                         notes=tuple(ct.notes) + ("CBCT simulated outside the training ranges",)), params


def _cbct_pairs(out: VolumeSet, name: str, ct: Callable[[], Volume], index: int, anatomy: str) -> None:
    specs = shifts.out_of_range_specs()
    for k, side in enumerate(CBCT_SIDES):
        seed = SEED + 2 * index + k
        subject = f"{name} ({side})"

        def cbct(side=side, seed=seed, subject=subject) -> Volume:
            volume, params = simulated_cbct(out.volume(subject, "CT"), specs[side], seed)
            out.details[subject] = {"side": side, "seed": seed, "params": params}
            return volume

        out.add(subject, {"CT": ct, "CBCT": cbct}, [CBCT_ROUTE], anatomy)


def cbct_set(paired, split: str) -> VolumeSet:
    """Each CT subject of ``split``, its CBCT simulated again "above" and "below" the training ranges."""
    out = VolumeSet(f"{paired.name} (CBCT outside the training ranges)")
    for index, subject in enumerate(_subjects_with(paired, split, [CBCT_ROUTE])):
        _cbct_pairs(out, subject, functools.partial(paired.volume, subject, "CT"), index,
                    paired.anatomy(subject) or "head")
    return out


def real_ct_set() -> tuple[VolumeSet, list[dict]]:
    """The hold-out head CTs, each degraded "above" and "below" the training ranges; and what was
    found (or could not be loaded)."""
    out = VolumeSet("real head CTs (hold-out)")
    found: list[dict[str, Any]] = []
    for index, (item, path) in enumerate(holdout_paths("CT")):
        try:
            volume = load_holdout(item, path)
        except Exception as exc:        # noqa: BLE001 — a missing decoder skips the file, said in the report
            found.append({"file": f"{item.package}:{item.name}", "what": item.what, "error": str(exc)})
            continue
        found.append({"file": f"{item.package}:{item.name}", "what": item.what, "shape_zyx": list(volume.shape),
                      "spacing_xyz_mm": [round(s, 4) for s in volume.spacing]})
        def loaded(v: Volume = volume) -> Volume:
            return v

        _cbct_pairs(out, item.name, loaded, index, "head")
    return out, found


# -- scoring -----------------------------------------------------------------------------------------
def _mean(values) -> float | None:
    kept = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def summarize(evaluation: ModelEvaluation) -> dict[str, Any]:
    """Per route means, then the MR SSIM (body) mean over MR routes and CBCT → CT MAE (body)."""
    data = evaluation.to_dict()
    routes = {r["route"]: {"subjects": r["subjects"], "body": r["body"], "whole": r["whole"]} for r in data["routes"]}
    mr = [v["body"].get("ssim_x100") for r, v in routes.items() if not r.endswith("→CT")]
    ct = (routes.get("CBCT→CT") or {}).get("body", {}).get("mae")
    return {"routes": routes, "mr_ssim_body": _mean(mr), "ct_mae_hu_body": ct}


def cbct_as_is(synth, volumes: VolumeSet, max_slices: int | None, cancel: CancelToken | None = None) -> dict | None:
    """The CBCT itself scored as the CT (no processing) on the slices every row is scored on: the
    error the rows should remove."""
    result = ModelEvaluation("CBCT as is", volumes.name, "test", {})
    for subject in volumes.subject_names():
        if CBCT_ROUTE not in volumes.subject(subject).routes:
            continue
        check_cancel(cancel)
        cbct, ct = volumes.volume(subject, "CBCT"), volumes.volume(subject, "CT")
        picked = central_block(synth.plan(cbct, "CBCT").active, max_slices)
        scores = score_volume(cbct.replace(modality="CT"), ct, "CT", slices=picked if max_slices else None)
        result.subjects.append(SubjectScore(subject, CBCT_ROUTE, scores, len(picked), 0.0))
    return summarize(result) if result.subjects else None


def score_set(key: str, volumes: VolumeSet, rows: Sequence[tuple[str, str, Any, Any]], routes, max_slices: int | None,
              progress: Callable[[str], None], cancel: CancelToken | None) -> dict[str, Any]:
    """Every row on one set; the CBCT as is beside them when the set has CBCT → CT."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"key": key, "label": SET_LABELS.get(key, key), "subjects": volumes.subject_names(),
                             "rows": []}
    if not entry["subjects"]:
        entry["skipped"] = "no subject of the split has these routes"
        return entry
    for row_key, label, synth, settings in rows:
        check_cancel(cancel)
        progress(f"generalization, {key}: {label} …")
        evaluation = evaluate_model(synth, volumes, None, routes=routes, max_slices=max_slices, settings=settings,
                                    cancel=cancel)
        entry["rows"].append({"key": row_key, "label": label, **summarize(evaluation)})
    source = cbct_as_is(rows[0][2], volumes, max_slices, cancel)
    if source is not None:
        entry["cbct"] = source
        for row in entry["rows"]:
            row["ct_error_removed"] = error_removed(source["ct_mae_hu_body"], row["ct_mae_hu_body"])
    entry["details"] = volumes.details
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def error_removed(cbct_mae: float | None, model_mae: float | None) -> float | None:
    """(MAE_cbct − MAE_model) / MAE_cbct: 1 removes all of the CBCT's error, < 0 adds to it."""
    if cbct_mae is None or model_mae is None or not cbct_mae > 0:
        return None
    return (cbct_mae - model_mae) / cbct_mae


def round_trip(synth, volume: Volume, there: tuple[str, str], settings, max_slices: int | None,
               cancel: CancelToken | None = None) -> float | None:
    """SSIM ×100 inside the body of ``volume`` (as ``there[0]``) → ``there[1]`` → back, against itself."""
    source, middle = there
    volume = volume.replace(modality=source)
    picked = central_block(synth.plan(volume, source).active, max_slices)
    if not picked:
        return None
    out = synth.synthesize_volume(volume, source, middle, settings, cancel=cancel, slices=picked)
    back = synth.synthesize_volume(out, middle, source, settings, cancel=cancel, slices=picked)
    body = score_volume(back, volume, source, slices=picked).body
    return body.ssim if body is not None else None


def real_mr(rows, default, max_slices: int | None, progress: Callable[[str], None],
            cancel: CancelToken | None) -> dict[str, Any]:
    """Per hold-out MR file: the header's modality, ``identify``'s answer with the default model, and
    each row's round trip (SSIM ×100 inside the body against the input)."""
    files = []
    for item, path in holdout_paths("MR"):
        check_cancel(cancel)
        entry: dict[str, Any] = {"file": f"{item.package}:{item.name}", "what": item.what}
        try:
            volume = load_holdout(item, path)
        except Exception as exc:        # noqa: BLE001
            entry["error"] = str(exc)
            files.append(entry)
            continue
        header = volume.modality if volume.modality and modalities.get(volume.modality).family == "MR" else None
        source = header if header in ("T1", "T2") else "T1"
        there = (source, "T1" if source == "T2" else "T2")
        entry.update({"header": header, "round_trip": f"{there[0]}→{there[1]}→{there[0]}",
                      "shape_zyx": list(volume.shape)})
        progress(f"generalization, real MR: {item.name} …")
        try:
            found = default.identify(volume, cancel=cancel)
            entry["identify"] = {"modality": found.modality, "reliable": bool(found.reliable)}
        except Exception as exc:        # noqa: BLE001 — a volume identify cannot read is reported, not fatal
            entry["identify"] = {"error": str(exc)}
        entry["rows"] = {}
        for row_key, _, synth, settings in rows:
            if not all(r in synth.routes for r in (there, there[::-1])) and synth.routes:
                entry["rows"][row_key] = None
                continue
            entry["rows"][row_key] = round_trip(synth, volume, there, settings, max_slices, cancel)
        files.append(entry)
    return {"files": files}


def run_generalization(paired, data: str | Path, split: str, rows: Sequence[tuple[str, str, Any, Any]], default,
                       *, routes: Sequence[tuple[str, str]] | None = None, max_slices: int | None = SLICES,
                       progress: Callable[[str], None] = lambda line: None,
                       cancel: CancelToken | None = None) -> dict[str, Any]:
    """Every set of :data:`SET_LABELS` and the real MR files, for ``rows`` = (key, label, synthesizer,
    settings) — the identity baseline first — and the ``default`` model's ``identify``."""
    started = time.perf_counter()
    check_holdout_unused(data)
    present = set(paired.routes(split))
    routes = [(a, b) for a, b in (routes or MR_ROUTES + (CBCT_ROUTE,)) if (a, b) in present]
    report: dict[str, Any] = {"routes": [f"{a}→{b}" for a, b in routes], "max_slices": max_slices,
                              "rows": [{"key": k, "label": label} for k, label, _, _ in rows],
                              "cbct_specs": {side: spec.to_dict()
                                             for side, spec in shifts.out_of_range_specs().items()},
                              "cbct_kept_in_range": list(shifts.KEPT_IN_RANGE), "cbct_widest": list(shifts.WIDEST),
                              "sets": []}
    for key in shifts.SHIFTS:
        report["sets"].append(score_set(key, shifted_set(paired, split, key, routes), rows, routes, max_slices,
                                        progress, cancel))
    cbct_rows = list(rows) + _calibration_off(rows)
    if CBCT_ROUTE in present:
        report["sets"].append(score_set("cbct_out_of_range", cbct_set(paired, split), cbct_rows, [CBCT_ROUTE],
                                        max_slices, progress, cancel))
    else:
        report["sets"].append({"key": "cbct_out_of_range", "label": SET_LABELS["cbct_out_of_range"], "subjects": [],
                               "rows": [], "skipped": f"the {split!r} split has no CT subject"})
    real, found = real_ct_set()
    report["holdout"] = {"ct": found, "not_used": NOT_USED}
    if any(CBCT_ROUTE in (synth.routes or [CBCT_ROUTE]) for _, _, synth, _ in rows):
        report["sets"].append(score_set("real_ct", real,
                                        [r for r in cbct_rows if CBCT_ROUTE in (r[2].routes or [CBCT_ROUTE])],
                                        [CBCT_ROUTE], max_slices, progress, cancel))
    report["real_mr"] = real_mr(rows, default, max_slices, progress, cancel)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _calibration_off(rows: Sequence[tuple[str, str, Any, Any]]) -> list[tuple[str, str, Any, Any]]:
    """The default model again without the HU calibration (:mod:`engine.inference.calibration`): what
    that mechanism adds on the CBCT sets."""
    return [(UNCALIBRATED[0], UNCALIBRATED[1], synth, settings.replace(hu_calibration=False))
            for key, _, synth, settings in rows if key == "stage12"]


def generalization_summary(report: dict | None) -> list[dict] | None:
    """What the model card keeps of the generalization sets: per set, each row's MR SSIM inside the
    body, CBCT → CT MAE and the share of the CBCT's own error removed."""
    if not report:
        return None
    keep = ("key", "label", "mr_ssim_body", "ct_mae_hu_body", "ct_error_removed")
    return [{"key": entry["key"], "label": entry["label"],
             "cbct_mae_hu_body": (entry.get("cbct") or {}).get("ct_mae_hu_body"),
             "rows": [{k: row.get(k) for k in keep} for row in entry.get("rows", [])]}
            for entry in report.get("sets", [])]


# -- printing -----------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 1) -> str:
    return "—" if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) \
        else f"{value:.{digits}f}"


def _percent(value: Any) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"


def markdown_lines(report: dict | None) -> list[str]:
    """The generalization table (one block of rows per set, identity first in each) and the real-MR lines."""
    if not report:
        return []
    lines = ["", f"Generalization — {report['max_slices'] or 'all'} central slices per volume; routes "
             f"{', '.join(report['routes'])}; rows beside the identity baseline on the same inputs:", "",
             "| set | method | MR SSIM (body) | CBCT→CT MAE HU (body) | CBCT's own MAE HU | CBCT error removed |",
             "|---|---|---:|---:|---:|---:|"]
    for entry in report["sets"]:
        if entry.get("skipped"):
            lines.append(f"| {entry['label']} | — ({entry['skipped']}) | | | | |")
            continue
        own = (entry.get("cbct") or {}).get("ct_mae_hu_body")
        for row in entry["rows"]:
            lines.append(f"| {entry['label']} | {row['label']} | {_f(row['mr_ssim_body'])} | "
                         f"{_f(row['ct_mae_hu_body'])} | {_f(own)} | {_percent(row.get('ct_error_removed'))} |")
    specs = report.get("cbct_specs") or {}
    if specs:
        changed = [k for k in shifts.OUT_OF_RANGE_RULES]
        lines += ["", "Out-of-range CBCT (from `CBCTSpec()`'s training ranges): "
                  + "; ".join(f"{k} {tuple(specs['above'][k])} / {tuple(specs['below'][k])}" for k in changed)
                  + f" (above / below); {', '.join(report.get('cbct_kept_in_range', []))} as trained, "
                  f"{', '.join(report.get('cbct_widest', []))} the widest trained. "
                  "CBCT error removed: 1 − MAE(method) / MAE(the CBCT itself) inside the head."]
    holdout = report.get("holdout") or {}
    if holdout.get("ct"):
        lines.append("Real head CTs: " + "; ".join(f"{c['file']} ({c['what']}" + (f", not loaded: {c['error']}"
                                                                              if c.get("error") else "") + ")"
                                                   for c in holdout["ct"])
                     + f". Not used: {holdout.get('not_used', '')}.")
    files = (report.get("real_mr") or {}).get("files") or []
    if files:
        keys = [r["key"] for r in report["rows"]]
        labels = {r["key"]: r["label"] for r in report["rows"]}
        lines += ["", "Real MR files never trained on, with no partner scan: `identify`'s answer, and a round trip "
                  "through another contrast scored against the input (SSIM ×100 inside the body). A round trip "
                  "measures self-consistency, not correctness; the identity baseline keeps the anatomy by "
                  "construction, so it is the bar for how much anatomy a method loses.", "",
                  "| file | header | identify | round trip | " + " | ".join(labels[k] for k in keys) + " |",
                  "|---|---|---|---|" + "---:|" * len(keys)]
        for f in files:
            if f.get("error"):
                lines.append(f"| {f['file']} | not loaded: {f['error']} |" + " |" * (len(keys) + 2))
                continue
            found = f.get("identify") or {}
            said = found.get("modality", "error") + ("" if found.get("reliable") else " (guess)") \
                if "modality" in found else "error"
            lines.append(f"| {f['file']} ({f['what']}) | {f.get('header') or '—'} | {said} | {f['round_trip']} | "
                         + " | ".join(_f((f.get("rows") or {}).get(k)) for k in keys) + " |")
    return lines
