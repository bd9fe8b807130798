"""Exporting a model's inference pieces to ONNX: the VAE encoder and decoder, the context encoder
(K/V of every guidance branch) and the velocity step over that cached context, each a plain
tensor-in/tensor-out graph with a dynamic batch, written atomically into a folder with a small
``export.json`` (opset, versions, fingerprint of the model files) so a stale export is redone.

The graphs are the tensor-only form of ``SynerMedGen.encode_context`` / ``velocity`` for the fixed
row layouts inference uses; the row layout of one sample per branch is computed by the model's own
``pack_rows`` / ``attention_mask`` and handed in (context) or baked in (velocity).
"""
from __future__ import annotations

import copy
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from engine.atomic import atomic_folder
from engine.model.mot import KVCache
from engine.model.sequence import NoisyLatent, attention_mask, pack_rows
from engine.model.unified import SynerMedGen
from engine.model.vit import vit_input

OPSET = 17
# bumped whenever the exported graphs change (2: one additive attention bias per pass, keys/values not
# repeated for grouped queries in the velocity step): an older export beside a model is then redone on
# first use
GRAPH_VERSION = 2
MANIFEST = "export.json"
GRAPHS = ("vae_encoder", "vae_decoder", "context", "velocity")
EXTERNAL_DATA_BYTES = 1 << 30       # a graph with more weights keeps them in NAME.onnx.data (protobuf stops at 2 GiB)
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt")   # what an export depends on


# -- the layout of context rows ---------------------------------------------------------------------
def context_layout(model: SynerMedGen, latent_shape: Sequence[int], vit_shape: Sequence[int],
                   instruction_ids: Sequence[int], branches: Sequence[str]) -> dict[str, torch.Tensor]:
    """The context graph's layout inputs for one sample per branch (rows in ``branches`` order), and
    each row's ``valid`` mask, ``next_position`` and whether it holds the source latent (``present``,
    what token-aligned models add to the noisy tokens), as ``encode_context`` lays the rows out."""
    rows = model.edit_rows(torch.zeros(1, *latent_shape), torch.zeros(1, *vit_shape), [list(instruction_ids)],
                           branches)
    layout = pack_rows(rows, model.config.tokens, model.grid)
    is_image = torch.zeros_like(layout.ids, dtype=torch.bool)
    image_index = torch.zeros_like(layout.ids)
    latent_tokens = _tokens(latent_shape[-2:], model.config.latent_patch_size)
    present = torch.zeros(len(branches))
    for slot in layout.latent_slots:
        present[slot.row] = 1.0
        is_image[slot.row, slot.start:slot.start + latent_tokens] = True
        image_index[slot.row, slot.start:slot.start + latent_tokens] = torch.arange(latent_tokens)
    vit_tokens = _tokens(vit_shape[-2:], model.config.vit.patch_size)
    for vit_slot in layout.vit_slots:
        is_image[vit_slot.row, vit_slot.start:vit_slot.start + vit_tokens] = True
        image_index[vit_slot.row, vit_slot.start:vit_slot.start + vit_tokens] = latent_tokens + torch.arange(vit_tokens)
    return {"ids": layout.ids, "position_ids": layout.position_ids, "gen_mask": layout.gen_mask,
            "attn_mask": attention_mask(layout), "image_index": image_index, "is_image": is_image,
            "valid": layout.valid, "next_position": layout.next_position, "present": present}


CONTEXT_LAYOUT_INPUTS = ("ids", "position_ids", "gen_mask", "attn_mask", "image_index", "is_image")


def _tokens(hw: Sequence[int], patch: int) -> int:
    return (int(hw[0]) // patch) * (int(hw[1]) // patch)


def per_branch_rows(per_branch: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """(G, …) → (G·n, …) branch-major: each branch's row repeated for the n samples."""
    g = per_branch.shape[0]
    size = cast(int, n)                 # a traced size is a 0-d tensor, which expand takes as well
    return per_branch[:, None].expand(g, size, *per_branch.shape[1:]).reshape(-1, *per_branch.shape[1:])


def per_sample_rows(per_sample: torch.Tensor, copies: torch.Tensor | int) -> torch.Tensor:
    """(n, …) → (copies·n, …) branch-major: the n samples once per branch."""
    n = per_sample.shape[0]
    size = cast(int, copies)            # a traced size is a 0-d tensor, which expand takes as well
    return per_sample[None].expand(size, n, *per_sample.shape[1:]).reshape(-1, *per_sample.shape[1:])


# -- the graphs -------------------------------------------------------------------------------------
class VaeEncoderGraph(nn.Module):
    """Pixels (n, 1, S, S) in [−1, 1] → scaled latents (n, z, S/d, S/d)."""

    def __init__(self, model: SynerMedGen) -> None:
        super().__init__()
        self.vae = model.vae

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels)


class VaeDecoderGraph(nn.Module):
    """Scaled latents (n, z, h, w) → images (n, out_channels, S, S)."""

    def __init__(self, model: SynerMedGen) -> None:
        super().__init__()
        self.vae = model.vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent)


class ContextGraph(nn.Module):
    """Source latents (n, z, h, w), ViT pixels (n, C, H, W) and the layout of one row per branch
    (G, L) (:func:`context_layout`) → keys and values (layers, G·n, kv_heads, L, head_dim), rows
    branch-major as in ``encode_context``."""

    def __init__(self, model: SynerMedGen) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent, vit_pixels, ids, position_ids, gen_mask, attn_mask, image_index, is_image):
        m = self.model
        n, groups = latent.shape[0], ids.shape[0]
        clean = m.latent_tokens(latent, torch.zeros(n, device=latent.device))
        seen = m.connector(m.vit_model(vit_pixels))
        seen = seen + m.vit_pos_embed(m.vit_model.position_ids(vit_pixels.shape[-2], vit_pixels.shape[-1],
                                                               vit_pixels.device))[None]
        table = per_sample_rows(torch.cat([clean, seen], dim=1), groups)                 # (R, Nl + Nv, D)
        index = per_branch_rows(image_index, n)
        picked = table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]))
        text = m.language_model.model.embed_tokens(per_branch_rows(ids, n))
        emb = torch.where(per_branch_rows(is_image, n)[..., None], picked, text)
        gen, positions, mask = (per_branch_rows(t, n) for t in (gen_mask, position_ids, attn_mask))
        _, kv = m.language_model.model(emb, gen, positions, mask, None, True)
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


class VelocityGraph(nn.Module):
    """One velocity evaluation over a cached context: x_t (n, z, h, w), t (n,), the context's keys
    and values (layers, R, kv_heads, P, head_dim) with ``past_valid`` (R, P) and ``next_position``
    (R,), then (token-aligned models) the source latents (n, z, h, w) with ``present`` (R,) and
    (target-conditioned models) each row's ``target`` embedder row (R,) → velocities (R, z, h, w),
    R = branches·n branch-major, as ``SynerMedGen.velocity``."""

    def __init__(self, model: SynerMedGen, latent_shape: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        z = torch.zeros(*latent_shape)
        layout = pack_rows([[NoisyLatent(z, 0.0, z if model.config.source_token_aligned else None)]],
                           model.config.tokens, model.grid)
        self.start = layout.latent_slots[0].start
        self.register_buffer("ids", layout.ids, persistent=False)
        self.register_buffer("gen_mask", layout.gen_mask, persistent=False)
        self.register_buffer("position_ids", layout.position_ids, persistent=False)
        self.register_buffer("self_mask", attention_mask(layout), persistent=False)       # (1, 1, L, L)

    def forward(self, x, t, keys, values, past_valid, next_position, *conditions):
        m = self.model
        rows, n = keys.shape[1], x.shape[0]
        copies = rows // n
        conditions = list(conditions)
        source = present = target = None
        if m.config.source_token_aligned:
            source, present = per_sample_rows(conditions.pop(0), copies), conditions.pop(0)
        if m.config.target_modalities:
            target = conditions.pop(0)
        lat = m.latent_tokens(per_sample_rows(x, copies), per_sample_rows(t, copies), source, present, target)
        length = self.ids.shape[1]
        mask = torch.cat([past_valid[:, None, None, :].expand(-1, 1, length, -1),
                          self.self_mask.expand(rows, -1, -1, -1)], dim=3)       # as attention_mask(…, past)
        past = KVCache(tuple(keys.unbind(0)), tuple(values.unbind(0)), past_valid)
        return m.block_velocity(lat, self.ids, self.start, self.gen_mask.expand(rows, -1),
                                self.position_ids + next_position[:, None], mask, past, x.shape[-2:])


# -- exporting ---------------------------------------------------------------------------------------
def model_fingerprint(model_dir: str | Path | None) -> dict[str, list[int]]:
    """{file: [size, mtime_ns]} of the model folder's files an export depends on ({} without a folder)."""
    folder = Path(model_dir) if model_dir is not None else None
    if folder is None or not folder.is_dir():
        return {}
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES}


def export_is_current(export_dir: str | Path, model_dir: str | Path | None, image_size: int) -> bool:
    """True when ``export_dir`` holds every graph, exported from the model folder as it is now."""
    folder = Path(export_dir)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (manifest.get("opset") == OPSET and manifest.get("graph_version") == GRAPH_VERSION
            and manifest.get("image_size") == int(image_size)
            and manifest.get("model_files") == model_fingerprint(model_dir)
            and all((folder / f"{name}.onnx").is_file() for name in GRAPHS))


def example_inputs(model: SynerMedGen, image_size: int, batch: int = 2) -> dict[str, tuple]:
    """Inputs of every graph for ``batch`` samples and the ``cond`` + ``no_text`` branches."""
    cfg = model.config
    pixels = torch.rand(batch, 1, image_size, image_size) * 2 - 1
    vit = vit_input(pixels, cfg.vit.patch_size, cfg.vit_max_num_patch_per_side, cfg.vit.num_channels)
    with torch.no_grad():
        latent = model.vae.encode(pixels)
    branches = ("cond", "no_text")
    layout = context_layout(model, latent.shape[1:], vit.shape[1:], [5, 6, 7], branches)
    context = (latent, vit, *(layout[k] for k in CONTEXT_LAYOUT_INPUTS))
    with torch.no_grad():
        keys, values = ContextGraph(model)(*context)
    velocity: tuple[torch.Tensor | None, ...] = (torch.randn_like(latent), torch.full((batch,), 0.5), keys, values,
                                                 per_branch_rows(layout["valid"], batch),
                                                 per_branch_rows(layout["next_position"], batch))
    if cfg.source_token_aligned:
        velocity += (latent, per_branch_rows(layout["present"], batch))
    if cfg.target_modalities:
        velocity += (model.target_rows([1] * batch, branches, batch),)
    return {"vae_encoder": (pixels,), "vae_decoder": (latent,), "context": context, "velocity": velocity}


def graph_signature(name: str, aligned: bool, targeted: bool = False
                    ) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """(input names, output names, dynamic axes) of a graph; ``aligned``/``targeted``: the model's
    ``source_token_aligned`` / whether it has ``target_modalities``."""
    batch = {0: "batch"}
    if name == "vae_encoder":
        return ["pixels"], ["latent"], {"pixels": batch, "latent": batch}
    if name == "vae_decoder":
        return ["latent"], ["image"], {"latent": batch, "image": batch}
    if name == "context":
        branch_axes = {0: "branches", 1: "length"}
        axes = {"latent": batch, "vit_pixels": batch, **{k: dict(branch_axes) for k in CONTEXT_LAYOUT_INPUTS},
                "keys": {1: "rows", 3: "length"}, "values": {1: "rows", 3: "length"}}
        axes["attn_mask"] = {0: "branches", 2: "length", 3: "length"}
        return ["latent", "vit_pixels", *CONTEXT_LAYOUT_INPUTS], ["keys", "values"], axes
    inputs = (["x", "t", "keys", "values", "past_valid", "next_position"] + (["source", "present"] if aligned else [])
              + (["target"] if targeted else []))
    axes = {"x": batch, "t": batch, "keys": {1: "rows", 3: "past"}, "values": {1: "rows", 3: "past"},
            "past_valid": {0: "rows", 1: "past"}, "next_position": {0: "rows"}, "velocity": {0: "rows"}}
    if aligned:
        axes.update(source=batch, present={0: "rows"})
    if targeted:
        axes.update(target={0: "rows"})
    return inputs, ["velocity"], axes


def _place_graph(staged: Path, target: Path) -> None:
    """Move an exported graph (and any external data the exporter wrote beside it, alone in its
    staging folder) to ``target``; over EXTERNAL_DATA_BYTES its weights go into ``NAME.onnx.data``
    (ONNX external data, read by onnxruntime from the graph's folder), else into the graph file."""
    import onnx

    if sum(p.stat().st_size for p in staged.parent.iterdir()) <= EXTERNAL_DATA_BYTES:
        staged.replace(target)
        return
    onnx.save_model(onnx.load(str(staged)), str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{target.name}.data", size_threshold=1024)


def export_onnx(model: SynerMedGen, image_size: int, export_dir: str | Path,
                model_dir: str | Path | None = None) -> Path:
    """Export every graph of ``model`` (float32, CPU) into ``export_dir`` (replaced atomically) with
    ``export.json``; ``model_dir`` is fingerprinted so a later change to its files is noticed."""
    import onnx

    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()          # the caller's model stays where it is
    examples = example_inputs(model, image_size)
    aligned = model.config.source_token_aligned
    modules = {"vae_encoder": VaeEncoderGraph(model), "vae_decoder": VaeDecoderGraph(model),
               "context": ContextGraph(model), "velocity": VelocityGraph(model, examples["velocity"][0].shape[1:])}
    export_dir = Path(export_dir)
    with atomic_folder(export_dir) as tmp:
        for name in GRAPHS:
            inputs, outputs, axes = graph_signature(name, aligned, bool(model.config.target_modalities))
            staged = tmp / f".{name}" / f"{name}.onnx"
            staged.parent.mkdir()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")               # tracer warnings on constant layout sizes
                torch.onnx.export(modules[name], examples[name], str(staged), input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
            _place_graph(staged, tmp / f"{name}.onnx")
            shutil.rmtree(staged.parent)
            onnx.checker.check_model(str(tmp / f"{name}.onnx"))
        manifest: dict[str, Any] = {"format": "synermedgen-onnx", "opset": OPSET, "graph_version": GRAPH_VERSION,
                                    "image_size": int(image_size),
                                    "graphs": {name: f"{name}.onnx" for name in GRAPHS},
                                    "source_token_aligned": aligned,
                                    "target_modalities": list(model.config.target_modalities),
                                    "torch": torch.__version__,
                                    "onnx": onnx.__version__, "model_files": model_fingerprint(model_dir)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return export_dir
