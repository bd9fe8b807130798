"""The default model's recipe and its comparison runs (above training and the baselines, which it
trains), as data: which stages train, from what,
with which budget — one seeded definition that ``python main.py recipe`` (and through it
``scripts/train_default_model.sh``) runs and that ``bench quality`` reads back.

A run folder holds one model folder per entry::

    vae/              autoencoder (the ceiling: everything generated passes through it)
    understanding/    vae + Stage I (CTS / MI / TIA)                → the zero-shot row
    generation/       vae + Stage I + Stage II                      → the default model
    generation-only/  vae + Stage II, no Stage I                    → the paper's ablation
    unet/             MONAI BasicUNet, L1, trained as long as generation-only/ took

Budgets are steps (bit-reproducible for a seed), except the U-Net's: its wall-clock time is the
one ``generation-only/`` recorded (the same Stage II steps as ``generation/``), so both get the
same compute on the machine that ran them — run them one after the other in one process
(``--only generation-only unet``) so they also share its load. Rerunning resumes an interrupted
entry and skips finished ones; a finished entry whose settings the recipe no longer gives (an option,
the architecture, or a start model retrained since) stops the run with the reason instead of being
reused or overwritten.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.jobs import CancelToken
from engine.training.config import TARGET_EMBEDDING

VAE, STAGE1, STAGE12, STAGE2_ONLY, UNET = "vae", "understanding", "generation", "generation-only", "unet"
ORDER = (VAE, STAGE1, STAGE12, STAGE2_ONLY, UNET)


@dataclass(frozen=True)
class Entry:
    """One model folder of a run: a SynerMedGen stage (``stage``, started from ``init``) or the
    U-Net baseline (``stage="unet"``, timed like ``budget_of``)."""

    name: str
    stage: str
    init: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    budget_of: str | None = None


Budget = Mapping[str, float]          # {"steps": n} (bit-reproducible for a seed) or {"minutes": m}


def _entries(vae: Budget, und: Budget, gen: Budget, image_size: int, pixel_mm: float, size: str,
             unet_batch: int, unet_minutes: float | None = None) -> tuple[Entry, ...]:
    # Stage II adds the target embedding (the generation expert sees the requested target directly)
    # and trains on timesteps shifted as the sampler's (shift 3, chosen on the validation subjects:
    # docs/model.md, "The training timestep shift")
    generation = {**gen, "batch_size": 8, "lr": 1e-3, "cfg_vit_dropout": 0.1, "cfg_vae_dropout": 0.1,
                  "model_overrides": {"target_modalities": TARGET_EMBEDDING, "timestep_shift": 3.0}}
    common = {"image_size": image_size, "pixel_mm": pixel_mm, "seed": 0}
    # Stage I is evaluated six times in a run of steps (its log); under a minutes budget only at its end
    und_eval = {"eval_every": int(und["steps"]) // 6} if "steps" in und else {}
    return (
        Entry(VAE, "vae", None, {**common, "size": size, **vae, "batch_size": 16, "lr": 1e-3, "eval_samples": 64}),
        # MI weighted double: `identify` asks MI's question
        Entry(STAGE1, "understanding", VAE, {**common, **und, "batch_size": 8, "lr": 1e-3,
                                             "task_weights": {"CTS": 1.0, "MI": 2.0, "TIA": 1.0},
                                             "eval_samples": 64, **und_eval}),
        Entry(STAGE12, "generation", STAGE1, {**common, **generation}),
        Entry(STAGE2_ONLY, "generation", VAE, {**common, **generation}),
        # the U-Net trains as long as a Stage II took: a fixed budget where the recipe runs it beside Stage II
        Entry(UNET, "unet", None, {**common, "batch_size": unet_batch, "minutes": unet_minutes})
        if unet_minutes else Entry(UNET, "unet", None, {**common, "batch_size": unet_batch}, budget_of=STAGE2_ONLY),
    )


RECIPES: dict[str, tuple[Entry, ...]] = {
    # the shipped default model: 64-pixel tiles of 4 mm (256 mm, a whole adult head); with PARALLEL=1 the
    # U-Net trains beside Stage II for about as long as Stage II's steps take on one core (its card and the
    # benchmark show both)
    "default": _entries({"steps": 1500}, {"steps": 2400}, {"steps": 4800}, image_size=64, pixel_mm=4.0,
                        size="default", unet_batch=16, unet_minutes=33.0),
    # the same entries on one GPU, budgeted in minutes (scripts/train_default_model_gpu.sh: vae, then
    # Stage I → Stage II beside Stage II alone beside the U-Net, each with data-loading workers; the U-Net
    # trains as many minutes as each Stage II): budgets meant to reach at least the CPU recipe's steps at
    # the rates docs/training.md's "Training on a GPU" reports
    "gpu": _entries({"minutes": 1.5}, {"minutes": 2.5}, {"minutes": 5.0}, image_size=64, pixel_mm=4.0,
                    size="default", unet_batch=16, unet_minutes=5.0),
    # seconds: the same pipeline on a phantom dataset, for tests and `bench quality --quick`
    "quick": _entries({"steps": 4}, {"steps": 3}, {"steps": 4}, image_size=32, pixel_mm=1.0, size="default",
                      unet_batch=4),
}


# Sampling of the shipped model, chosen on the validation subjects (docs/model.md: the `evaluate --split val`
# commands): 12 unguided Euler steps, neighbouring slices started from noise correlated 0.9, each slice
# re-drawn from its source slice in windows of radius 2 model pixels that reach 2 model pixels into the
# neighbouring slices (engine/inference/guided.py).
# The shipped card carries them; `bench quality` samples every SynerMedGen row with them.
INFERENCE_DEFAULTS = {"steps": 12, "solver": "euler", "shift": 3.0, "noise_correlation": 0.9, "guided_filter": 2.0,
                      "guided_filter_depth": 2.0,
                      "guidance": {"text_scale": 2.0, "image_scale": 1.0, "interval": [0.4, 1.0]}}
LIMITATIONS = [
    "Trained on simulated contrasts from real anatomy (two brain templates, one head CT), not on patient scans: "
    "expect it to fail on real clinical data until fine-tuned on it.",
    "Trained with each sample's field of view, resolution, bias field, noise, contrast and CT calibration "
    "randomized within the ranges the card's training_randomization and data_derivation give: inputs beyond them "
    "(e.g. a CBCT calibrated further off, another body region) are outside what it learnt — the "
    "out-of-distribution guard warns of some, not all.",
    "A tiny model (tens of MB) seeing slices at 4 mm pixels in 64-pixel tiles: outputs are resampled back onto the "
    "input grid, then re-drawn from the source slice there (the source-guided filter): edges at native resolution "
    "are the source's, and fine structure only the target shows (e.g. a lesion invisible in the source) stays "
    "blurry.",
    "2-D, slice by slice along the acquisition axis: no through-plane consistency is learnt; neighbouring slices "
    "share only their starting noise (correlated) and the source-guided filter's windows, which reach across "
    "slices.",
    "Far from converged after CPU minutes of Stage II: outputs are mottled, and its outputs for different targets "
    "of one source are more alike than the real contrasts are (the benchmark's target agreement).",
    "Research use only, not for diagnosis.",
]
SHIPPED_FILES = ("config.json", "model.safetensors", "ae.safetensors", "tokenizer.json")


def ship(run: str | Path, dest: str | Path, data: str | Path, benchmark: Mapping[str, Any] | None = None) -> Path:
    """Copy ``run``/generation into ``dest`` (atomically) as the app's default model, its card
    completed with the name, inference defaults, limitations, the demo data's derivation, the
    training split's input profile (what the out-of-distribution guard compares inputs with) and,
    when given, ``benchmark``: the card keys of a ``bench quality`` report
    (:func:`engine.evaluation.quality.card_entries`)."""
    import shutil

    from engine.atomic import atomic_folder
    from engine.demo_data.builder import DemoRecipe
    from engine.demo_data.derivation import derivation_text
    from engine.inference.ood import training_profile
    from engine.tasks.dataset import PairedDataset

    source = Path(run) / STAGE12
    held_out = left_out(source)
    if held_out:
        raise ValueError(f"{source} was trained without the source {held_out!r} (leave-one-source-out): it is for "
                         "the benchmark, not the default model")
    card = json.loads((source / "metadata.json").read_text(encoding="utf-8"))
    dataset = json.loads((Path(data) / "dataset.json").read_text(encoding="utf-8"))
    card["start"] = card.pop("started_from", {}).get("start", card.get("start"))     # the chain's fresh model
    card.update({"name": "SynerMedGen default (demo data)", "inference_defaults": INFERENCE_DEFAULTS,
                 "limitations": LIMITATIONS, "data_notice": dataset.get("notice", ""),
                 "data_derivation": derivation_text(DemoRecipe.from_dict(dataset["recipe"]) if "recipe" in dataset
                                                    else None),
                 "data_sources": dataset.get("sources", [])})
    card["input_profile"] = training_profile(PairedDataset.open(data, pixel_mm=card.get("pixel_mm")), "train")
    card.update(benchmark or {})
    with atomic_folder(dest) as tmp:
        for name in SHIPPED_FILES:
            shutil.copy2(source / name, tmp / name)
        (tmp / "metadata.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(dest)


def _stages(folder: Path) -> list[dict[str, Any]]:
    """The training stages a model folder's card records, oldest first (raises on a folder without one)."""
    return json.loads((folder / "metadata.json").read_text(encoding="utf-8"))["recipe"]["stages"]


def left_out(folder: str | Path) -> str | None:
    """The dataset source a model folder of a run was trained without (``recipe --leave-out``), or None."""
    return _stages(Path(folder))[-1].get("config", {}).get("leave_out") or None


def finished(folder: Path, stage: str, steps: int | None) -> bool:
    """Whether ``folder`` holds a finished run of ``stage`` with ``steps`` steps done (any number
    under a minutes budget: ``steps`` None)."""
    from engine.baselines.unet import CARD

    try:
        if stage == "unet":
            return (folder / CARD).is_file()
        record = _stages(folder)[-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False
    return (record.get("stage") == stage and record.get("status") == "finished"
            and (steps is None or record.get("steps_done") == steps))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _first_difference(recorded: Any, wanted: Any, path: str = "") -> str | None:
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in sorted(set(recorded) | set(wanted)):
            found = _first_difference(recorded.get(key), wanted.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if recorded == wanted else f"{path} {recorded!r} (the recipe now gives {wanted!r})"


def _changed_option(recorded: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    """The first training option the run recorded otherwise than the recipe now sets it."""
    from engine.training.config import LEGACY_OPTIONS

    recorded = {**LEGACY_OPTIONS, **recorded}          # a run older than an option trained without it
    for key, value in options.items():
        if key in recorded and _plain(recorded[key]) != _plain(value):
            return f"{key} {recorded[key]!r} (the recipe now asks for {value!r})"
    return None


def stale_settings(folder: Path, entry: Entry, out: Path) -> str | None:
    """Why the finished entry in ``folder`` no longer matches the recipe, or None: a training option
    the recipe now sets otherwise, another architecture for a fresh model, or a start model
    (``out``/``entry.init``) that has been retrained since; for the U-Net, a budget that is no longer
    the time its ``budget_of`` entry trained."""
    from engine.model.config import SynerMedGenConfig, preset

    if entry.stage == "unet":
        return _stale_unet(folder, entry, out)
    stages = _stages(folder)
    recorded = stages[-1].get("config", {})
    changed = _changed_option(recorded, entry.options)
    if changed:
        return changed
    if entry.init is None:
        wanted = preset(entry.options.get("size", "default")).replace(
            **entry.options.get("model_overrides", {})).to_dict()
        written = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        written = SynerMedGenConfig.from_dict({k: v for k, v in written.items() if k in wanted}).to_dict()
        for config in (wanted, written):      # set in training: the tokenizer's ids, the measured latent statistics
            config.pop("tokens", None)
            for measured in ("scale_factor", "shift_factor"):
                config["vae"].pop(measured, None)
        return _first_difference(_plain(written), _plain(wanted))
    start = out / entry.init
    try:
        start_runs = [s.get("run_id") for s in _stages(start)]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its start model {start} is missing"
    if [s.get("run_id") for s in stages[:-1]] != start_runs:
        return f"it was trained from an earlier {start} (that entry has been retrained since)"
    return None


def _stale_unet(folder: Path, entry: Entry, out: Path) -> str | None:
    from engine.baselines.unet import CARD, trained_seconds

    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its card {folder / CARD} cannot be read ({exc})"
    if not isinstance(card, dict) or not isinstance(card.get("training"), dict):
        return f"its card {folder / CARD} records no training"
    training = card["training"]
    recorded = {"image_size": card.get("image_size"), "pixel_mm": card.get("pixel_mm"),
                "batch_size": training.get("batch_size"), "minutes": training.get("minutes"),
                "seed": training.get("seed"), "leave_out": training.get("leave_out")}
    changed = _changed_option(recorded, entry.options)
    if changed:
        return changed
    if entry.budget_of is None:
        return None
    budget = out / entry.budget_of
    try:
        minutes = trained_seconds(budget) / 60.0
    except ValueError as exc:
        return f"the entry that sets its budget has no training time to compare with: {exc}"
    trained = training.get("minutes")
    if not isinstance(trained, (int, float)) or not math.isclose(trained, minutes, rel_tol=1e-6):
        return (f"it trained {trained!r} min, the time of an earlier {budget} (that entry has been retrained since "
                f"and took {minutes:.2f} min)")
    return None


def run_recipe(data: str | Path, out: str | Path, recipe: str = "default", *, only: Sequence[str] | None = None,
               threads: int | None = None, device: str = "auto", workers: int = 0, leave_out: str | None = None,
               emit: Callable[[dict], None] = lambda r: None, cancel: CancelToken | None = None) -> Path:
    """Train the entries of ``recipe`` (all, or ``only`` those) into ``out``/NAME, in order;
    ``workers`` data-loading processes prepare each entry's batches (0: the training process).
    ``leave_out`` trains every entry without one dataset source (leave-one-source-out: ``bench quality``
    then scores the run on that source's subjects)."""
    from engine.baselines.unet import train_unet, trained_seconds
    from engine.training.config import TrainConfig
    from engine.training.trainer import train

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    entries = RECIPES[recipe]
    unknown = sorted(set(only or ()) - {e.name for e in entries})
    if unknown:
        raise ValueError(f"unknown recipe entries {unknown}; choose among {', '.join(e.name for e in entries)}")
    out = Path(out)
    for entry in entries:
        if only and entry.name not in only:
            continue
        entry = replace(entry, options={**entry.options, "leave_out": leave_out})
        folder = out / entry.name
        options = dict(entry.options)
        if finished(folder, entry.stage, options.get("steps")):
            stale = stale_settings(folder, entry, out)
            if stale:
                raise ValueError(f"{folder}: a finished {entry.stage} run whose settings are no longer the recipe's: "
                                 f"{stale}. Delete that folder (and the entries trained from it) to retrain it, or "
                                 "pass another --out")
            emit({"event": "skipped", "entry": entry.name, "reason": "finished", "model_dir": str(folder)})
            continue
        emit({"event": "entry", "entry": entry.name, "stage": entry.stage, "model_dir": str(folder)})
        if entry.stage == "unet":
            minutes = trained_seconds(out / entry.budget_of) / 60.0 if entry.budget_of else options["minutes"]
            train_unet(data, folder, minutes=minutes, device=device, log=emit, cancel=cancel,
                       batch_size=options["batch_size"], image_size=options["image_size"],
                       pixel_mm=options["pixel_mm"], seed=options["seed"], workers=workers, leave_out=leave_out)
            continue
        init = None if entry.init is None else str(out / entry.init)
        train(TrainConfig(data=str(data), stage=entry.stage, out=str(folder), init=init, threads=threads,
                          device=device, workers=workers, **options), emit, cancel)
    return out
