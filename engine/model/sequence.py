"""Packed sequences: the segments a sample is made of (text, ViT image, clean or noisy VAE latent),
their token layout with BAGEL's markers and RoPE positions, and the attention mask between them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.model.config import SpecialTokenIds

CAUSAL, FULL, NOISE = 0, 1, 2  # split kinds: text, context image, noisy latent (keys hidden from others)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Text:
    """``<|im_start|>`` ids ``<|im_end|>`` on consecutive positions; ``loss`` marks an answer whose
    tokens (and the closing ``<|im_end|>``) are labels. ``close=False`` leaves the segment open so
    the logits at its last token predict what comes next."""

    ids: Sequence[int] | torch.Tensor
    loss: bool = False
    close: bool = True


@dataclass(frozen=True)
class VitImage:
    """An image (C, H, W) in [−1, 1] seen through the ViT: understanding tokens."""

    image: torch.Tensor


@dataclass(frozen=True)
class CleanLatent:
    """A clean scaled VAE latent (z, H, W) as context: generation-expert tokens with t = 0."""

    latent: torch.Tensor


@dataclass(frozen=True)
class NoisyLatent:
    """A noisy latent x_t (z, H, W) at time t; its keys are visible only to itself. ``source`` is the
    clean source latent on the same grid, added token-aligned when the model has ``vae2llm_src``;
    ``target`` the row of the requested modality in ``target_embedder`` (0: none), for models with
    ``target_modalities``."""

    latent: torch.Tensor
    t: float | torch.Tensor
    source: torch.Tensor | None = None
    target: int = 0


@dataclass(frozen=True)
class SkipPosition:
    """Advance the RoPE position without tokens (BAGEL keeps the slot of a dropped training image)."""

    steps: int = 1


Segment = Text | VitImage | CleanLatent | NoisyLatent | SkipPosition


def edit_segments(source_latent: torch.Tensor | None, source_image: torch.Tensor | None,
                  instruction_ids: Sequence[int] | None, *, use_vae: bool = True, use_vit: bool = True,
                  use_text: bool = True, advance_dropped_images: bool = False) -> list[Segment]:
    """The editing context of one sample: [clean VAE source][ViT source][instruction text].

    Dropped images are left out; with ``advance_dropped_images`` (training-time CFG dropout, as in
    BAGEL) each still advances the RoPE position by one. Dropped text never does.
    """
    segments: list[Segment] = []
    if use_vae and source_latent is not None:
        segments.append(CleanLatent(source_latent))
    elif advance_dropped_images:
        segments.append(SkipPosition())
    if use_vit and source_image is not None:
        segments.append(VitImage(source_image))
    elif advance_dropped_images:
        segments.append(SkipPosition())
    if use_text and instruction_ids is not None:
        segments.append(Text(instruction_ids))
    return segments


@dataclass
class ImageSlot:
    row: int
    start: int  # index in the row of the first image token
    image: torch.Tensor


@dataclass
class LatentSlot:
    row: int
    start: int
    latent: torch.Tensor
    t: float | torch.Tensor
    source: torch.Tensor | None
    noisy: bool
    target: int = 0


@dataclass
class PackedLayout:
    """Token layout of a padded batch (B, L): ids (0-filled under images), routing, positions, splits."""

    ids: torch.Tensor
    valid: torch.Tensor
    gen_mask: torch.Tensor
    position_ids: torch.Tensor
    split_id: torch.Tensor
    split_kind: torch.Tensor
    labels: torch.Tensor
    next_position: torch.Tensor  # (B,) RoPE position after the row
    vit_slots: list[ImageSlot] = field(default_factory=list)
    latent_slots: list[LatentSlot] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        batch, length = self.ids.shape
        return batch, length


@dataclass(frozen=True)
class GridSpec:
    """Token grid sizes of the model: pixels per ViT token, latent cells per generation token."""

    vit_patch: int
    latent_patch: int


def pack_rows(rows: Sequence[Sequence[Segment]], tokens: SpecialTokenIds, grid: GridSpec,
              start_positions: Sequence[int] | None = None, device: torch.device | str | None = None
              ) -> PackedLayout:
    """Lay out each row's segments with markers and RoPE positions (docs/bagel-layout.md), right-padded."""
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("ids", "gen", "pos", "sid", "kind", "labels")}
    next_positions, vit_slots, latent_slots = [], [], []
    for r, row in enumerate(rows):
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in columns}
        position = int(start_positions[r]) if start_positions is not None else 0
        offset = split = 0

        def add(ids: torch.Tensor, gen: torch.Tensor, pos: torch.Tensor, kind: int, labels: torch.Tensor) -> None:
            n = ids.numel()
            for key, value in (("ids", ids), ("gen", gen), ("pos", pos), ("labels", labels),
                               ("sid", torch.full((n,), split)), ("kind", torch.full((n,), kind))):
                parts[key].append(value)

        for seg in row:
            if isinstance(seg, SkipPosition):
                position += seg.steps
                continue
            if isinstance(seg, Text):
                body = torch.as_tensor(seg.ids, dtype=torch.long).reshape(-1).cpu()
                ids = torch.cat([torch.tensor([tokens.im_start]), body]
                                + ([torch.tensor([tokens.im_end])] if seg.close else []))
                labels = torch.full_like(ids, IGNORE_INDEX)
                if seg.loss:
                    targets = torch.cat([body, torch.tensor([tokens.im_end])]) if seg.close else body
                    labels[:targets.numel()] = targets
                n = ids.numel()
                add(ids, torch.zeros(n, dtype=torch.bool), position + torch.arange(n), CAUSAL, labels)
                position += n
            elif isinstance(seg, (VitImage, CleanLatent, NoisyLatent)):
                if isinstance(seg, VitImage):
                    h, w = seg.image.shape[-2:]
                    n_img = _grid_tokens(h, w, grid.vit_patch, "ViT image")
                    vit_slots.append(ImageSlot(r, offset + 1, seg.image))
                    kind, gen = FULL, False
                else:
                    h, w = seg.latent.shape[-2:]
                    n_img = _grid_tokens(h, w, grid.latent_patch, "latent")
                    if isinstance(seg, NoisyLatent):
                        slot = LatentSlot(r, offset + 1, seg.latent, seg.t, seg.source, True, seg.target)
                    else:
                        slot = LatentSlot(r, offset + 1, seg.latent, 0.0, None, False, 0)
                    latent_slots.append(slot)
                    kind, gen = (NOISE if slot.noisy else FULL), True
                n = n_img + 2
                ids = torch.full((n,), tokens.pad)
                ids[0], ids[-1] = tokens.vision_start, tokens.vision_end
                gen_mask = torch.zeros(n, dtype=torch.bool)
                gen_mask[1:-1] = gen
                add(ids, gen_mask, torch.full((n,), position), kind, torch.full((n,), IGNORE_INDEX))
                if kind == FULL:
                    position += 1
            else:
                raise TypeError(f"not a sequence segment: {type(seg).__name__}")
            offset += n
            split += 1
        for key in columns:
            columns[key].append(torch.cat(parts[key]) if parts[key] else torch.zeros(0, dtype=torch.long))
        next_positions.append(position)
    length = max(1, max(t.numel() for t in columns["ids"]))
    pads = {"ids": tokens.pad, "gen": 0, "pos": 0, "sid": -1, "kind": FULL, "labels": IGNORE_INDEX}
    out = {}
    for key, values in columns.items():
        batch = torch.full((len(rows), length), pads[key], dtype=torch.long)
        for r, v in enumerate(values):
            batch[r, :v.numel()] = v.long()
        out[key] = batch.to(device)
    lengths = torch.tensor([v.numel() for v in columns["ids"]])
    valid = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    return PackedLayout(ids=out["ids"], valid=valid, gen_mask=out["gen"].bool(), position_ids=out["pos"],
                        split_id=out["sid"], split_kind=out["kind"], labels=out["labels"],
                        next_position=torch.tensor(next_positions, dtype=torch.long, device=device),
                        vit_slots=vit_slots, latent_slots=latent_slots)


def _grid_tokens(h: int, w: int, patch: int, what: str) -> int:
    if h % patch or w % patch:
        raise ValueError(f"{what} size {h}x{w} is not a multiple of its token patch {patch}")
    return (h // patch) * (w // patch)


def attention_mask(layout: PackedLayout, past_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (B, 1, L, P + L) mask, True = may attend (docs/bagel-layout.md, the attention mask).

    Every split sees all earlier splits except noisy ones; text is causal within itself; images
    and noisy latents are bidirectional within themselves; all valid cached tokens are visible;
    padding is invisible (each padded query sees itself so no row is empty).
    """
    sid, kind, valid = layout.split_id, layout.split_kind, layout.valid
    length = sid.shape[1]
    idx = torch.arange(length, device=sid.device)
    same = sid[:, :, None] == sid[:, None, :]
    earlier = (sid[:, None, :] < sid[:, :, None]) & (kind[:, None, :] != NOISE)
    causal_ok = (kind[:, :, None] != CAUSAL) | (idx[None, None, :] <= idx[None, :, None])
    mask = (earlier | (same & causal_ok)) & valid[:, None, :]
    mask = mask | torch.eye(length, dtype=torch.bool, device=sid.device)[None]
    if past_valid is not None:
        past = past_valid[:, None, :].expand(-1, length, -1)
        mask = torch.cat([past, mask], dim=2)
    return mask[:, None]
