"""The run's output folder as a model folder: ``config.json``, ``model.safetensors`` and
``ae.safetensors`` (the EMA weights), the tokenizer and ``metadata.json`` (the model card), written
beside ``checkpoint-last/`` and ``progress.jsonl`` — each file replaced atomically, the model card
last — at every checkpoint and at the end, so a cancelled or killed run leaves a usable model."""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine import modalities
from engine.inference.calibration import dataset_calibration
from engine.model import SynerMedGenConfig, save_model_dir
from engine.model.checkpoint import METADATA_FILE
from engine.tasks.dataset import PairedDataset
from engine.training.config import PATH_OPTIONS, TrainConfig

RESEARCH_ONLY = "research use only, not for diagnosis"
EXPORT_DIR = ".model-export"
CARD_VERSION = 1


class WeightsSnapshot:
    """What :func:`engine.model.save_model_dir` reads from a model (config, state dicts), held as
    plain whole tensors: lets rank 0 write weights gathered from shards or taken from the EMA."""

    def __init__(self, config: SynerMedGenConfig, state: Mapping[str, torch.Tensor],
                 vae_state: Mapping[str, torch.Tensor]) -> None:
        self.config = config
        self._state, self._vae_state = dict(state), dict(vae_state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def vae_state_dict(self) -> dict[str, torch.Tensor]:
        return self._vae_state


def write_model_folder(out: str | Path, snapshot: WeightsSnapshot, tokenizer, metadata: Mapping[str, Any]) -> Path:
    """Write the model folder files into ``out`` (which also holds the run's own files): a
    complete folder is written beside them first, then each file is renamed into place, the
    model card last, so readers see either the previous or the new version of every file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / EXPORT_DIR
    if staging.exists():
        shutil.rmtree(staging)
    save_model_dir(snapshot, snapshot.config, staging, tokenizer=tokenizer, metadata=metadata)
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n != METADATA_FILE] + [METADATA_FILE]:
        os.replace(staging / name, out / name)
    shutil.rmtree(staging)
    return out


def normalisation_scheme(names) -> dict[str, dict]:
    """How each modality's intensities were mapped to [0, 1] for training (docs/evaluation.md)."""
    out = {}
    for name in names:
        mod = modalities.get(name)
        if mod.fixed_range is not None:
            scheme = {"kind": "fixed_range", "range": list(mod.fixed_range), "unit": mod.unit, "clipped": True}
        else:
            scheme = {"kind": "percentiles", "percentiles": list(modalities.MR_PERCENTILES), "within": "body mask",
                      "per": "volume", "unit": mod.unit, "clipped": True}
        out[mod.name] = {"description": mod.description, "unit": mod.unit, "normalisation": scheme}
    return out


STARTED_FROM_KEYS = ("name", "start", "data_notice", "data_derivation", "data_sources")


def _another_model(base: dict, start_folder: Path, name: str) -> dict:
    """The card of a model trained from the one in ``start_folder`` (its card ``base``): named after
    its own folder (outputs name the model that made them), its start that model; the start model's
    name, start and data description move under ``started_from`` (kept from the first model of a
    chain of stages), and its limitations are kept, introduced as the start model's."""
    card = {k: v for k, v in base.items() if k not in STARTED_FROM_KEYS}
    started = base.get("name") or start_folder.name
    card["name"] = name
    card["start"] = f"{started} (model folder {start_folder.name})"
    card["started_from"] = base.get("started_from") or {k: base[k] for k in STARTED_FROM_KEYS if k in base}
    if base.get("limitations") and "started_from" not in base:
        card["limitations"] = [f"Trained further from {started}: the limitations below were found for that model "
                               "before this training; measure this one on your own data (evaluate).",
                               *base["limitations"]]
    return card


def data_description(paired: PairedDataset) -> dict:
    report = paired.report
    anatomies = sorted({s.anatomy for s in report.subjects if s.anatomy})
    skipped = [{**p.to_dict(), "path": shareable(p.path, report.root),
                **({"reference": shareable(p.reference, report.root)} if p.reference else {})} for p in report.problems]
    return {"name": report.name, "root": shareable(report.root), "subjects": len(report.subjects),
            "split": {k: list(v) for k, v in report.split.items()}, "modalities": list(report.modalities),
            "routes": [list(r) for r in report.routes], "anatomies": anatomies, "skipped": skipped}


def shareable(path: str | None, root: str | None = None) -> str | None:
    """A path as a model card keeps it: inside ``root``, relative to it; else its last part. A model is
    shared, and the folders above a dataset or a run may name a person (the run's own checkpoint-last
    keeps the full paths, for resuming)."""
    if not path:
        return path
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).name


def stage_record(cfg: TrainConfig, *, run_id: str, status: str, step: int, steps: int | None, elapsed_s: float,
                 final_loss: float | None, world_size: int, device: str, routes, metrics: Mapping[str, Any]) -> dict:
    config = {k: shareable(v) if k in PATH_OPTIONS else v for k, v in cfg.to_dict().items()}
    return {"run_id": run_id, "stage": cfg.stage, "status": status, "steps_done": step, "steps_planned": steps,
            "elapsed_s": round(elapsed_s, 1), "final_loss": final_loss, "world_size": world_size, "device": device,
            "routes": [list(r) for r in routes], "metrics": dict(metrics), "config": config,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def model_card(base: Mapping[str, Any], paired: PairedDataset, prior_stages: list[dict], record: dict,
               image_size: int, ema_decay: float, trainable: int, extra: Mapping[str, Any] | None = None, *,
               pixel_mm: float | None = None, randomization: Mapping[str, Any] | None = None,
               start_folder: str | Path | None = None, name: str = "") -> dict:
    """The model card: the start model's card (``base``) updated with this stage — routes seen,
    modalities and their normalisation, data, the stage history (recipe) and the latest metrics.
    Trained from the model in ``start_folder`` (``--init``), it is another model, called ``name``
    (:func:`_another_model`)."""
    # the base's benchmark (and the source floor chosen on it) scored the base's weights, not these
    card = {k: v for k, v in base.items() if k not in ("benchmark", "benchmark_warnings", "source_floor")}
    if start_folder is not None:
        card = _another_model(card, Path(start_folder), name or Path(start_folder).name)
    routes = {tuple(r) for r in card.get("routes", [])} | {tuple(r) for r in record["routes"]}
    order = list(modalities.MODALITIES)
    names = sorted({m for r in routes for m in r} | set(card.get("modalities", {})), key=order.index)
    metrics = dict(card.get("metrics", {}))
    metrics.update({f"{record['stage']}": record["metrics"]} if record["metrics"] else {})
    card.update({
        "card_version": CARD_VERSION,
        "intended_use": RESEARCH_ONLY,
        "disclaimer": f"SynerMedGen Studio model — {RESEARCH_ONLY}.",
        "routes": [list(r) for r in sorted(routes, key=lambda r: (order.index(r[0]), order.index(r[1])))],
        "modalities": normalisation_scheme(names),
        "image_size": image_size,
        "pixel_mm": pixel_mm,
        "slicing": (f"2-D slices along each volume's acquisition axis (its thick slices, else the stored order), resampled to {pixel_mm:g} mm "
                    "pixels, centred on a background canvas (0, the bottom of the range) and cut into overlapping "
                    "image_size² tiles where wider" if pixel_mm else
                    "2-D slices along each volume's acquisition axis (its thick slices, else the stored order), resized with the aspect "
                    "kept so the longer side is image_size, centred and padded with 0 (the bottom of the range)"),
        "training_randomization": dict(randomization) if randomization else None,
        "calibration": dataset_calibration(paired) or card.get("calibration"),
        "data": data_description(paired),
        "weights": f"model.safetensors and ae.safetensors hold the exponential moving average of the trained "
                   f"weights (decay {ema_decay}, warmed up); frozen tensors equal those of the start model",
        "recipe": {"stages": list(prior_stages) + [record]},
        "metrics": metrics,
        "trainable_parameters_last_stage": trainable,
    })
    card.update(dict(extra or {}))
    return card
