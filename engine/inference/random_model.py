"""Model folders with random weights: real shapes and real FLOPs, no training. For tests (a tiny
model in a temporary folder), speed benchmarks and the GPU check (the ``bagel-7b`` preset before
real weights exist). Their card says plainly that they are untrained."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine import modalities

DEFAULT_ROUTES = (("T1", "T2"), ("T2", "T1"), ("T1", "FLAIR"), ("T2", "FLAIR"), ("CBCT", "CT"), ("CT", "CBCT"))


def write_random_model(path: str | Path, *, preset: str = "tiny", routes: Iterable[Sequence[str]] = DEFAULT_ROUTES,
                       image_size: int | None = 32, understanding: bool = True, seed: int = 0,
                       source_token_aligned: bool = False, target_modalities: Sequence[str] = (),
                       output_std: float = 0.05, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a model folder (config, random weights, tokenizer, card) and return its path.

    ``llm2vae`` gets small random weights (``output_std``) instead of zeros, so velocities are not
    all zero; so do ``vae2llm_src`` and the target rows of ``target_embedder`` (std 0.5) when
    present. ``understanding=True`` marks Stage I as trained in the card (tests of identify);
    ``metadata`` entries are merged into the card.
    """
    from engine.model import save_model_dir

    loaded = random_model(preset=preset, routes=routes, image_size=image_size, understanding=understanding,
                          seed=seed, source_token_aligned=source_token_aligned,
                          target_modalities=target_modalities, output_std=output_std, metadata=metadata)
    return save_model_dir(loaded.model, loaded.config, path, tokenizer=loaded.tokenizer, metadata=loaded.metadata)


def random_model(*, preset: str = "tiny", routes: Iterable[Sequence[str]] = DEFAULT_ROUTES,
                 image_size: int | None = 32, understanding: bool = True, seed: int = 0,
                 source_token_aligned: bool = False, target_modalities: Sequence[str] = (),
                 output_std: float = 0.05, metadata: Mapping[str, Any] | None = None,
                 device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
    """The same random model in memory (a :class:`engine.model.LoadedModel`, nothing written).
    With a half ``dtype`` the weights are created in it directly on ``device`` (the ``bagel-7b``
    preset in bf16 needs ~29 GB instead of ~58 GB of fp32 on the way)."""
    from engine.inference.corpus import instruction_corpus
    from engine.model import LoadedModel, from_config, train_tokenizer
    from engine.model import preset as get_preset

    routes = [(modalities.canonical(a), modalities.canonical(b)) for a, b in routes]
    names = list(dict.fromkeys(m for r in routes for m in r))
    vocab = min(get_preset(preset).llm.vocab_size, 1024)
    tokenizer = train_tokenizer(instruction_corpus(names, anatomies=("brain", "head")), vocab_size=vocab)
    cfg = get_preset(preset).replace(source_token_aligned=source_token_aligned,
                                     target_modalities=tuple(target_modalities), tokens=tokenizer.special_ids)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    if dtype != torch.float32:
        torch.set_default_dtype(dtype)          # parameters are born in ``dtype`` (RoPE stays float32)
    try:
        model = from_config(cfg, device=device, dtype=dtype).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        model.llm2vae.weight.normal_(std=output_std)
        if source_token_aligned:
            model.vae2llm_src.weight.normal_(std=output_std)
        if cfg.target_modalities:
            model.target_embedder.weight[1:].normal_(std=0.5)
    card: dict[str, Any] = {
        "name": f"random-{preset}",
        "description": "random weights — untrained; for tests and speed measurements only",
        "routes": [list(r) for r in routes],
        "modalities": names,
        "stages": ["vae", "understanding", "generation"] if understanding else ["vae", "generation"],
        "licence": "research use only, not for diagnosis",
    }
    if image_size is not None:
        card["image_size"] = int(image_size)
    card.update(dict(metadata or {}))
    return LoadedModel(model, cfg, tokenizer, card)
