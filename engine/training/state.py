"""Resumable training state without pickle: model, EMA, optimizer, scheduler, step, RNG and data
position saved as safetensors + JSON into a folder that is replaced atomically. ``state.json`` is
written last and lists the size of every tensor file, so a checkpoint is complete only when all of
it is there; after a kill at any instant :func:`recover_state` puts the newest complete checkpoint
back in place, and :func:`trim_records` drops the progress records of the work done again."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from engine.atomic import atomic_file, atomic_folder, recover_folder
from engine.model.checkpoint import save_safetensors
from engine.training.protocol import STATE_DIR

TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")   # and ema.safetensors


@dataclass
class TrainingState:
    """The scalars of a run; the tensors travel beside it in safetensors files."""

    stage: str
    step: int = 0
    samples_seen: int = 0
    best_loss: float | None = None
    history: list[dict] = field(default_factory=list)   # recent JSON-lines records
    elapsed_s: float = 0.0                               # training wall time over all sessions of the run
    extra: dict = field(default_factory=dict)            # JSON-able run facts (config, recipe so far, …)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "samples_seen": self.samples_seen,
                "best_loss": self.best_loss, "history": self.history[-2000:], "elapsed_s": self.elapsed_s,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> TrainingState:
        return cls(stage=d["stage"], step=int(d["step"]), samples_seen=int(d.get("samples_seen", 0)),
                   best_loss=d.get("best_loss"), history=list(d.get("history", [])),
                   elapsed_s=float(d.get("elapsed_s", 0.0)), extra=dict(d.get("extra", {})))


def _optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        meta["state"][str(idx)] = {}
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
                meta["state"][str(idx)][name] = "tensor"
            else:
                meta["state"][str(idx)][name] = value
    return tensors, meta


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for idx, slots in meta["state"].items():
        state[int(idx) if idx.isdigit() else idx] = {name: tensors[f"{idx}.{name}"] if kind == "tensor" else kind
                           for name, kind in slots.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state(legacy=True)        # numpy's stub types the default as legacy=False
    assert isinstance(np_state, tuple), "the global generator is a MT19937: its legacy state is a tuple"
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuplify(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


class HasState(Protocol):
    """What :func:`save_state` saves of an optimizer or a learning-rate schedule."""

    def state_dict(self) -> dict[str, Any]: ...


def save_state(run_dir: str | Path, state: TrainingState, model_tensors: dict[str, torch.Tensor],
               ema_tensors: dict[str, torch.Tensor] | None, optimizer: HasState,
               scheduler: HasState | None, data_position: dict) -> Path:
    """Write ``run_dir/checkpoint-last`` atomically: a crash mid-write keeps the previous one."""
    target = Path(run_dir) / STATE_DIR
    with atomic_folder(target) as tmp:
        save_safetensors(model_tensors, tmp / "model.safetensors")
        if ema_tensors is not None:
            save_safetensors(ema_tensors, tmp / "ema.safetensors")
        opt_tensors, opt_meta = _optimizer_to_flat(optimizer.state_dict())
        save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = rng_state()
        save_safetensors(rng_tensors, tmp / "rng.safetensors")
        meta = {"state": state.to_dict(), "optimizer": opt_meta, "rng": rng_meta,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "data_position": data_position,
                "files": {p.name: p.stat().st_size for p in sorted(tmp.glob("*.safetensors"))}}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))      # last: it makes the checkpoint complete
    return target


def checkpoint_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder; None when it is incomplete (a kill while it was
    written) or not a checkpoint. Folders written before ``files`` was recorded need the tensor files."""
    try:
        meta = json.loads((folder / "state.json").read_text())
        files = meta.get("files") or {name: None for name in TENSOR_FILES}
        for name, size in files.items():
            if size is not None and (folder / name).stat().st_size != size or not (folder / name).is_file():
                return None
        return int(meta["state"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recover_state(run_dir: str | Path) -> None:
    """Before resuming (one process only): after a kill while ``checkpoint-last`` was replaced, put
    the newest complete checkpoint in its place and remove the leftovers of the killed write."""
    recover_folder(Path(run_dir) / STATE_DIR, checkpoint_step)


def trim_records(path: str | Path, step: int) -> None:
    """Resuming from a checkpoint at ``step``: drop the JSON-lines records of later steps (that work
    is done again and reported again) and a last line cut short by a kill."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _record_kept(line, step)]
    if kept != lines:
        with atomic_file(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")


def _record_kept(line: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return line.endswith("\n") and not (isinstance(record, dict) and isinstance(record.get("step"), int)
                                        and record["step"] > step)


@dataclass
class LoadedState:
    state: TrainingState
    model_tensors: dict[str, torch.Tensor]
    ema_tensors: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict | None
    data_position: dict
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict

    def restore_rng(self) -> None:
        set_rng_state(self.rng_tensors, self.rng_meta)


def load_state(run_dir: str | Path) -> LoadedState | None:
    """The last checkpoint of a run, or None when the run has none yet (see :func:`recover_state`)."""
    folder = Path(run_dir) / STATE_DIR
    if not folder.exists():
        return None
    if checkpoint_step(folder) is None:
        raise ValueError(f"{folder}: the checkpoint is incomplete (a file is missing or cut short); remove "
                         "it to start over from the previous stage, or start over with --fresh")
    meta = json.loads((folder / "state.json").read_text())
    ema = folder / "ema.safetensors"
    return LoadedState(
        state=TrainingState.from_dict(meta["state"]),
        model_tensors=load_file(str(folder / "model.safetensors")),
        ema_tensors=load_file(str(ema)) if ema.exists() else None,
        optimizer=_optimizer_from_flat(load_file(str(folder / "optimizer.safetensors")), meta["optimizer"]),
        scheduler=meta["scheduler"],
        data_position=meta["data_position"],
        rng_tensors=load_file(str(folder / "rng.safetensors")),
        rng_meta=meta["rng"],
    )
