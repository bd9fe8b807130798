"""Model folders on disk, safetensors only (nothing is ever unpickled): save ours atomically
(``config.json``, ``model.safetensors``, ``ae.safetensors``, ``metadata.json``, tokenizer) and load
ours or a BAGEL folder (``llm_config.json``, ``vit_config.json``, ``ema.safetensors``, ``ae.safetensors``)
with strict key matching and no renaming.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from engine.atomic import atomic_folder, native_os_error, plain_file_mode
from engine.files import open_safetensors, read_json
from engine.model.config import SynerMedGenConfig, from_bagel_dir
from engine.model.layers import PositionEmbedding
from engine.model.tokenizer import HF_TOKENIZER_FILES, TextTokenizer, has_tokenizer, load_tokenizer
from engine.model.unified import FIXED_PARAMETERS, SynerMedGen

CONFIG_FILE, MODEL_FILE, VAE_FILE, METADATA_FILE = "config.json", "model.safetensors", "ae.safetensors", "metadata.json"
BAGEL_FILES = ("llm_config.json", "vit_config.json", "ema.safetensors")
MODEL_TYPE, FORMAT_VERSION = "synermedgen", 1


@dataclass
class LoadedModel:
    """What a model folder holds: the model (with its VAE), config, tokenizer, model card, layout."""

    model: SynerMedGen
    config: SynerMedGenConfig
    tokenizer: TextTokenizer | None
    metadata: dict[str, Any] = field(default_factory=dict)
    layout: str = MODEL_TYPE  # "synermedgen" or "bagel"


def detect_layout(path: str | Path) -> str:
    """"bagel" or "synermedgen"; a ``ValueError`` naming what is missing otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a model folder")
    if all((path / name).exists() for name in BAGEL_FILES):
        return "bagel"
    if (path / CONFIG_FILE).exists() and (path / MODEL_FILE).exists():
        return MODEL_TYPE
    present = sorted(p.name for p in path.iterdir())
    raise ValueError(f"{path}: neither a SynerMedGen model folder ({CONFIG_FILE} + {MODEL_FILE}) nor a BAGEL "
                     f"checkpoint ({' + '.join(BAGEL_FILES)}); found {present}")


def _write_safetensors(tensors: Mapping[str, torch.Tensor], file: Path) -> None:
    save_safetensors(tensors, file, metadata={"format": "pt"})


def save_safetensors(tensors: Mapping[str, torch.Tensor], file: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file`` (CPU copies) with a plain file's permissions (safetensors makes it
    private: a model copied to a shared folder could not be read by colleagues), its I/O failures
    (a full disk) raised as the OSError they are, naming ``file``."""
    from safetensors.torch import save_file

    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(file), metadata=metadata)
        with contextlib.suppress(OSError):          # a share that keeps its own permissions (SMB, FUSE)
            os.chmod(file, plain_file_mode())
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own type; only I/O ones are translated
        error = native_os_error(exc, file)
        if error is None:
            raise
        raise error from None


class ModelWeights(Protocol):
    """What :func:`save_model_dir` reads: a :class:`SynerMedGen` or a snapshot of its weights."""

    @property
    def config(self) -> SynerMedGenConfig: ...

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...

    def vae_state_dict(self) -> Mapping[str, torch.Tensor]: ...


def save_model_dir(model: ModelWeights, cfg: SynerMedGenConfig | None, path: str | Path,
                   tokenizer_dir: str | Path | None = None, metadata: Mapping[str, Any] | None = None,
                   tokenizer: TextTokenizer | None = None) -> Path:
    """Write a complete model folder into a temporary folder beside ``path``, then rename it into
    place (replacing an existing folder), so a reader never sees a half-written model."""
    cfg = cfg or model.config
    if cfg != model.config:
        raise ValueError("save_model_dir: the config differs from the model's own config")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder")
    with atomic_folder(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(
            {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **cfg.to_dict()}, indent=2))
        _write_safetensors(model.state_dict(), tmp / MODEL_FILE)
        _write_safetensors(model.vae_state_dict(), tmp / VAE_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(dict(metadata or {}), indent=2, default=str))
        if tokenizer is not None:
            tokenizer.save(tmp)
        elif tokenizer_dir is not None:
            copied = [n for n in ("tokenizer.json",) + HF_TOKENIZER_FILES if (Path(tokenizer_dir) / n).exists()]
            if "tokenizer.json" not in copied and "tokenizer_config.json" not in copied:
                raise ValueError(f"{tokenizer_dir}: no tokenizer files to copy")
            for name in copied:
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    return path


def _load_into(module: nn.Module, file: Path, recomputable: Iterable[str] = ()) -> set[str]:
    """Copy a safetensors file into ``module``'s (allocated) tensors with strict names and shapes.
    Returns the ``recomputable`` keys the file lacked."""
    if not file.exists():
        raise ValueError(f"{file}: missing")
    expected = module.state_dict()
    with open_safetensors(file) as handle:
        keys = set(handle.keys())
        absent = set(expected) - keys
        missing = sorted(absent - set(recomputable))
        unexpected = sorted(keys - set(expected))
        if missing or unexpected:
            raise ValueError(f"{file}: keys do not match the model — missing {_names(missing)}; "
                             f"unexpected {_names(unexpected)}")
        for key in sorted(keys):
            shape = tuple(handle.get_slice(key).get_shape())
            if shape != tuple(expected[key].shape):
                raise ValueError(f"{file}: {key} has shape {list(shape)}, the model expects "
                                 f"{list(expected[key].shape)}")
        with torch.no_grad():
            for key in sorted(keys):
                expected[key].copy_(handle.get_tensor(key))
    return absent


def _names(keys: list[str], limit: int = 12) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} [{shown}{', …' if len(keys) > limit else ''}]"


def load_model_dir(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   config_overrides: Mapping[str, Any] | None = None, memory_budget: int | None = None) -> LoadedModel:
    """Load our layout or a BAGEL layout onto ``device`` in ``dtype``, in eval mode.

    ``config_overrides`` replace top-level config fields (for a BAGEL folder also
    ``vae_scale_factor`` / ``vae_shift_factor``), e.g. ``max_latent_size`` when a BAGEL
    checkpoint lacks the position tables it is read from.

    The model is built on the meta device and allocated once, then filled tensor by tensor, so a
    7B checkpoint never exists twice in memory. Absent ``*.pos_embed`` tables are recomputed (as
    BAGEL's resume does); any other missing, unexpected or reshaped key raises ``ValueError``, as
    do weights larger than ``memory_budget`` bytes (checked before anything is allocated).
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == "bagel":
        cfg = from_bagel_dir(path, **dict(config_overrides or {}))
        weights = path / "ema.safetensors"
    else:
        data = read_json(path / CONFIG_FILE, "model config")
        if not isinstance(data, dict):
            raise ValueError(f"{path / CONFIG_FILE}: not a SynerMedGen config (not a JSON object)")
        if data.pop("model_type", None) != MODEL_TYPE:
            raise ValueError(f"{path / CONFIG_FILE}: not a SynerMedGen config (model_type must be {MODEL_TYPE!r})")
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"{path / CONFIG_FILE}: format_version {version} is newer than this program")
        try:
            cfg = SynerMedGenConfig.from_dict(data).replace(**dict(config_overrides or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path / CONFIG_FILE}: {err}") from err
        weights = path / MODEL_FILE
    tokenizer = load_tokenizer(path) if has_tokenizer(path) else None
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.llm.vocab_size:
            raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} ids, the model only "
                             f"{cfg.llm.vocab_size}")
        if layout == "bagel":
            cfg = cfg.replace(tokens=tokenizer.special_ids)
        elif tokenizer.special_ids != cfg.tokens:
            raise ValueError(f"{path}: the tokenizer's special ids {tokenizer.special_ids} differ from "
                             f"{CONFIG_FILE}'s {cfg.tokens}")
    with torch.device("meta"):
        model = SynerMedGen(cfg)
    need = sum(t.numel() for t in (*model.parameters(), *model.buffers())) * dtype.itemsize
    if memory_budget is not None and need > memory_budget:
        raise ValueError(f"{path}: this model needs {need / 2**30:.1f} GiB of memory for its weights, "
                         f"{memory_budget / 2**30:.1f} GiB is free on {torch.device(device).type}")
    model.to(dtype).to_empty(device=device)
    absent = _load_into(model, weights, recomputable=FIXED_PARAMETERS)
    for key in absent:                      # only FIXED_PARAMETERS may be absent: position tables
        cast(PositionEmbedding, model.get_submodule(key.rsplit(".", 1)[0])).reset_parameters()
    _load_into(model.vae, path / VAE_FILE)
    metadata = read_json(path / METADATA_FILE, "model card") if (path / METADATA_FILE).exists() else {}
    return LoadedModel(model.eval(), cfg, tokenizer, metadata, layout)
