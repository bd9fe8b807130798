"""``bench understanding``: what one model understands on held-out subjects — Stage I's CTS / MI /
TIA accuracy, each beside the chance a guesser blind to the images has on the same questions, MI
also panel by panel and asked about one panel (the question ``identify`` asks of a slice) — and
what ``identify`` answers for every volume of those subjects, with the answers it gave instead.

:func:`understanding` and :func:`identification` are also rows of ``bench quality``.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.inference.pipeline import Synthesizer
from engine.jobs import CancelToken, check_cancel
from engine.tasks.dataset import PairedDataset

ONE_PANEL = "MI (1 panel)"


def understanding(synth: Synthesizer, paired: PairedDataset, split: str, *, samples: int, seed: int = 0,
                  one_panel: bool = False, cancel: CancelToken | None = None) -> dict[str, dict[str, float]]:
    """:func:`engine.training.evaluate.understanding_scores` of ``synth``'s model on ``split``:
    CTS, MI and TIA, and with ``one_panel`` also MI asked about one panel."""
    from engine.tasks.understanding import MIDataset
    from engine.training.evaluate import stage1_eval_sets, understanding_scores
    from engine.training.stages import TokenCache

    if synth.tokenizer is None:
        raise ValueError(f"{synth.model_dir}: the model folder has no tokenizer")
    sets = stage1_eval_sets(paired, split, image_size=synth.image_size, seed=seed)
    if one_panel and "MI" in sets:
        sets[ONE_PANEL] = MIDataset(paired, split, image_size=synth.image_size, seed=seed, max_panels=1)
    return understanding_scores(synth.model, sets, TokenCache(synth.tokenizer), samples=samples,
                                end_id=synth.config.tokens.im_end, choices=paired.modalities, cancel=cancel)


def identification(synth: Synthesizer, paired: PairedDataset, split: str,
                   cancel: CancelToken | None = None) -> dict[str, Any]:
    """What ``identify`` answers for every volume of ``split`` (its default slices and candidates):
    how many it names correctly; per modality [correct, volumes]; per modality the count of each
    answer (``answers``: true → answered → volumes); whether the model calls its answers reliable
    (``None`` when there was no volume) and why not (``note``)."""
    answers: dict[str, dict[str, int]] = {}
    reliable, note = None, ""
    for subject in paired.subject_names(split):
        for modality in paired.subject_modalities(subject):
            check_cancel(cancel)
            found = synth.identify(paired.volume(subject, modality), cancel=cancel)
            reliable = found.reliable if reliable is None else reliable and found.reliable
            note = note or ("" if found.reliable else f"{subject} {modality}: {found.note}")
            given = answers.setdefault(modality, {})
            given[found.modality] = given.get(found.modality, 0) + 1
    per_modality = {m: [given.get(m, 0), sum(given.values())] for m, given in answers.items()}
    return {"correct": sum(c for c, _ in per_modality.values()), "volumes": sum(n for _, n in per_modality.values()),
            "per_modality": per_modality, "answers": answers, "reliable": reliable, "note": note}


def run_understanding(model: str | Path, data: str | Path, *, split: str = "test", samples: int = 64,
                      device: str = "cpu", command: str = "", progress: Callable[[str], None] = lambda line: None,
                      cancel: CancelToken | None = None) -> dict[str, Any]:
    """Both measurements of ``model`` on ``data``'s ``split``."""
    synth = Synthesizer(Path(model), device=device)
    paired = PairedDataset.open(data, pixel_mm=synth.pixel_mm)        # slices cut as the model's
    if not paired.subject_names(split):
        raise ValueError(f"{data}: the {split!r} split has no subjects")
    progress("understanding …")
    scores = understanding(synth, paired, split, samples=samples, one_panel=True, cancel=cancel)
    progress("identify …")
    return {"command": command, "model": synth.name, "model_dir": str(model), "data": str(data), "split": split,
            "samples": samples, "subjects": paired.subject_names(split), "understanding": scores,
            "identification": identification(synth, paired, split, cancel)}


# -- printing -----------------------------------------------------------------------------------------
def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def _by_panel(name: str, score: dict[str, float]) -> bool:
    """Whether a score has a per-panel part worth printing (MI asked about several panels)."""
    return "panel_accuracy" in score and name != ONE_PANEL


def _counts(given: dict[str, int]) -> str:
    """'T1 ×5, T2 ×1': answers, most frequent first."""
    return ", ".join(f"{a} ×{n}" for a, n in sorted(given.items(), key=lambda kv: -kv[1]))


def understanding_lines(scores: dict[str, dict[str, float]]) -> list[str]:
    """One Markdown line: each task's accuracy, its chance and the item count."""
    parts = []
    for name, s in scores.items():
        panels = (f"; per panel {_percent(s['panel_accuracy'])}, chance {_percent(s['panel_chance'])}"
                  if _by_panel(name, s) else "")
        parts.append(f"{name} {_percent(s['accuracy'])} (chance {_percent(s['chance'])}{panels}; "
                     f"{s['items']} questions)")
    return ["Stage I understanding accuracy (chance: a guesser blind to the images; for MI it knows each "
            "panel's intensity family): " + ", ".join(parts), ""]


def identification_lines(found: dict[str, Any]) -> list[str]:
    """Markdown lines: how many volumes ``identify`` named, per modality with the wrong answers."""
    if not found or not found.get("volumes"):
        return ["`identify`: no volume to identify", ""]
    per = []
    for modality, (correct, volumes) in found["per_modality"].items():
        wrong = {a: n for a, n in (found.get("answers") or {}).get(modality, {}).items() if a != modality}
        per.append(f"{modality} {correct}/{volumes}" + (f" ({_counts(wrong)})" if wrong else ""))
    trust = ("it calls its answers reliable" if found["reliable"]
             else f"it labels its answers guesses: {found.get('note') or 'the model is not trusted to identify'}")
    return [f"`identify` with the model's defaults on every volume of these subjects: {found['correct']} of "
            f"{found['volumes']} named correctly — " + ", ".join(per) + f"; {trust}", ""]


def to_markdown(report: dict) -> str:
    head = (f"`{report.get('command') or 'python main.py bench understanding'}` — model {report['model']!r}, "
            f"{len(report['subjects'])} subjects ({report['split']} split)")
    return "\n".join([head, "", *understanding_lines(report["understanding"]),
                      *identification_lines(report["identification"])])


def to_text(report: dict) -> str:
    """Per task accuracy against chance, then identify's answers per true modality."""
    lines = [f"{'task':<14}{'accuracy':>10}{'chance':>10}{'questions':>11}"]
    for name, s in report["understanding"].items():
        lines.append(f"{name:<14}{_percent(s['accuracy']):>10}{_percent(s['chance']):>10}{s['items']:>11}")
        if _by_panel(name, s):
            lines.append(f"{'  per panel':<14}{_percent(s['panel_accuracy']):>10}{_percent(s['panel_chance']):>10}")
    found = report["identification"]
    lines += ["", "identify: true modality → answers"]
    for modality, given in (found.get("answers") or {}).items():
        lines.append(f"  {modality:<6} → {_counts(given)}")
    return "\n".join(lines) + "\n\n" + to_markdown(report)
