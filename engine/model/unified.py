"""The unified SynerMedGen model (BAGEL layout): ViT + connector for understanding tokens, VAE latents
with ``vae2llm``/``llm2vae`` for generation tokens, the MoT language model between them, and the
pure tensor building blocks the sampler, trainer and inference call (no sampling loop here).

``model.state_dict()`` has exactly the keys of BAGEL's ``ema.safetensors``. The VAE is held beside
the main module (``model.vae``, keys of ``ae.safetensors``): it is not a registered submodule, but
``.to()`` / ``.half()`` / ``.to_empty()`` on the model apply to it too.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.flow_time import sample_training_timesteps
from engine.model.config import SynerMedGenConfig
from engine.model.layers import MLPConnector, PositionEmbedding, TimestepEmbedder
from engine.model.mot import KVCache, Qwen2MoTForCausalLM
from engine.model.sequence import (
    IGNORE_INDEX,
    GridSpec,
    NoisyLatent,
    PackedLayout,
    Segment,
    attention_mask,
    edit_segments,
    pack_rows,
)
from engine.model.vae import AutoEncoder
from engine.model.vit import SiglipVisionModel, grid_position_ids

BRANCHES = ("cond", "no_text", "no_image")  # CFG branches: all conditions, images only, text only
FIXED_PARAMETERS = ("vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed")  # sin-cos tables, never trained
# target rows start on the scale of the sin-cos position table they are added beside (norm ≈ 0.5·√d
# against its 0.71·√d), not at Qwen2's 0.02, which leaves them a few percent of a token
TARGET_EMBED_STD = 0.5


def patchify_latent(z: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/p)·(W/p), p·p·C), features ordered (p, q, c) as in BAGEL."""
    b, c, h, w = z.shape
    if h % p or w % p:
        raise ValueError(f"latent size {h}x{w} is not a multiple of the latent patch size {p}")
    x = torch.einsum("bchpwq->bhwpqc", z.reshape(b, c, h // p, p, w // p, p))
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """(B, h·w, p·p·C) → (B, C, h·p, w·p); the inverse of :func:`patchify_latent`."""
    b, n, d = tokens.shape
    c = d // (p * p)
    x = torch.einsum("bhwpqc->bchpwq", tokens.reshape(b, h, w, p, p, c))
    return x.reshape(b, c, h * p, w * p)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled (answer) tokens; positions labelled −100 are ignored."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    count = int((labels != IGNORE_INDEX).sum())
    if count == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / count


@dataclass
class Context:
    """The cached conditioning for denoising: per-layer K/V of the context tokens of every row.

    Rows are branch-major: row = branch_index·num_samples + sample. ``next_position`` is each row's
    RoPE position for the noisy block. ``aligned_source`` (rows, z, H, W) holds the clean source
    latent where the row has images (``aligned_present``), for models with ``vae2llm_src``;
    ``target`` (rows,) each row's ``target_embedder`` row (0 where the branch drops the text), for
    models with ``target_modalities``.
    """

    cache: KVCache
    next_position: torch.Tensor
    branches: tuple[str, ...]
    num_samples: int
    aligned_source: torch.Tensor | None = None
    aligned_present: torch.Tensor | None = None
    target: torch.Tensor | None = None
    # the velocity layouts built over this context (see SynerMedGen.velocity); never passed on to copies
    plans: dict[Any, NoisyPlan] = field(default_factory=dict, init=False, repr=False, compare=False)

    def rows_for(self, branches: Sequence[str]) -> slice | torch.Tensor:
        unknown = [b for b in branches if b not in self.branches]
        if not branches or unknown:
            raise ValueError(f"context has no branch {unknown}; it holds {self.branches}")
        s = self.num_samples
        starts = [self.branches.index(b) * s for b in branches]
        if all(b == a + s for a, b in zip(starts, starts[1:])):
            return slice(starts[0], starts[0] + s * len(branches))
        return torch.cat([torch.arange(a, a + s) for a in starts]).to(self.next_position.device)

    def select(self, branches: Sequence[str]) -> Context:
        """The context of some branches only (a view when they are adjacent, e.g. ("cond",))."""
        rows = self.rows_for(branches)
        pick = (lambda t: t[rows]) if isinstance(rows, slice) else (lambda t: t.index_select(0, rows))
        return Context(self.cache.select_rows(rows), pick(self.next_position), tuple(branches), self.num_samples,
                       *(None if x is None else pick(x) for x in (self.aligned_source, self.aligned_present,
                                                                    self.target)))

    def detach(self) -> Context:
        return Context(self.cache.detach(), self.next_position, self.branches, self.num_samples,
                       self.aligned_source, self.aligned_present, self.target)


@dataclass(frozen=True)
class NoisyPlan:
    """What every velocity call over one context, branch set and latent shape shares: the context
    of those branches (None: the whole context the plan is kept in — no reference cycle), and the
    noisy block's token ids, expert mask, RoPE positions and attention mask over cache + block
    (built once, reused for every flow step)."""

    context: Context | None
    ids: torch.Tensor
    gen_mask: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    start: int


@dataclass
class UnderstandingOutput:
    """LM logits and their labels: (B, L, V)/(B, L) for "all", (n, V)/(n,) for "labels", (B, V) for "last"."""

    logits: torch.Tensor
    labels: torch.Tensor | None
    layout: PackedLayout


class SynerMedGen(nn.Module):
    """BAGEL's ``Bagel`` module plus the separately held VAE."""

    def __init__(self, config: SynerMedGenConfig, vae: AutoEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        d = config.llm.hidden_size
        self.language_model = Qwen2MoTForCausalLM(config.llm)
        self.vit_model = SiglipVisionModel(config.vit, config.vit_max_num_patch_per_side)
        self.connector = MLPConnector(config.vit.hidden_size, d, config.connector_act)
        self.vit_pos_embed = PositionEmbedding(config.vit_max_num_patch_per_side, d)
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(config.patch_latent_dim, d)
        self.llm2vae = nn.Linear(d, config.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(config.max_latent_size, d)
        if config.source_token_aligned:
            self.vae2llm_src = nn.Linear(config.patch_latent_dim, d)
        if config.target_modalities:
            self.target_embedder = nn.Embedding(len(config.target_modalities) + 1, d, padding_idx=0)
        self.set_vae(vae if vae is not None else AutoEncoder(config.vae))

    # ---- the VAE beside the module -------------------------------------------------------------
    @property
    def vae(self) -> AutoEncoder:
        return self.__dict__["_vae"]

    def set_vae(self, vae: AutoEncoder) -> None:
        object.__setattr__(self, "_vae", vae)  # not registered: state_dict() stays ema.safetensors

    def vae_state_dict(self) -> dict[str, torch.Tensor]:
        return self.vae.state_dict()

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.vae._apply(fn, recurse)
        return self

    # ---- initialisation and parameter groups ---------------------------------------------------
    @torch.no_grad()
    def init_weights(self, std: float = 0.02, copy_init_moe: bool = True) -> None:
        """Fresh weights: Qwen2-style N(0, std) for the LLM and the generation glue (time embedder,
        ``vae2llm``), SigLIP's init for the ViT, LeCun-normal connector, N(0, TARGET_EMBED_STD)
        target rows, zero ``llm2vae``/``vae2llm_src`` and the "no target" row, sin-cos tables, and
        (``copy_init_moe``) generation experts copied from understanding."""
        self.language_model.init_weights(std)
        self.vit_model.init_weights()
        # the connector's output is added to the 2-D sin-cos table (entries of order 1): LeCun-normal
        # layers give it that scale too; at N(0, 0.02) the image reached the LLM ~23× below its positions
        for fc in (self.connector.fc1, self.connector.fc2):
            nn.init.normal_(fc.weight, std=fc.in_features ** -0.5)
            nn.init.zeros_(fc.bias)
        for module in (self.time_embedder, self.vae2llm):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=std)
                    nn.init.zeros_(sub.bias)
        for zero in [self.llm2vae] + ([self.vae2llm_src] if self.config.source_token_aligned else []):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)
        if self.config.target_modalities:
            nn.init.normal_(self.target_embedder.weight, std=TARGET_EMBED_STD)
            self.target_embedder.weight[0].zero_()
        self.vit_pos_embed.reset_parameters()
        self.latent_pos_embed.reset_parameters()
        if copy_init_moe:
            self.language_model.copy_und_to_gen()

    @staticmethod
    def is_generation_parameter(name: str) -> bool:
        return "_moe_gen" in name or name.split(".")[0] in (
            "vae2llm", "llm2vae", "time_embedder", "latent_pos_embed", "vae2llm_src", "target_embedder")

    def understanding_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """ViT, connector, understanding expert, embed_tokens, lm_head, final ``norm`` (Stage I)."""
        return [(n, p) for n, p in self.named_parameters()
                if n not in FIXED_PARAMETERS and not self.is_generation_parameter(n)]

    def generation_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every ``*_moe_gen``, ``norm_moe_gen``, vae2llm, llm2vae, time_embedder, vae2llm_src,
        target_embedder (Stage II)."""
        return [(n, p) for n, p in self.named_parameters()
                if n not in FIXED_PARAMETERS and self.is_generation_parameter(n)]

    def understanding_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.understanding_named_parameters()]

    def generation_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.generation_named_parameters()]

    # ---- shapes --------------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(z_channels, h, w) of the scaled latent of an image of height×width pixels."""
        step = self.config.latent_downsample
        if height % step or width % step:
            raise ValueError(f"image size {height}x{width} must be a multiple of {step} for this model")
        d = self.config.vae.downsample
        return self.config.vae.z_channels, height // d, width // d

    @property
    def grid(self) -> GridSpec:
        return GridSpec(vit_patch=self.config.vit.patch_size, latent_patch=self.config.latent_patch_size)

    # ---- embedding and the decoder pass --------------------------------------------------------
    def _embed(self, layout: PackedLayout) -> torch.Tensor:
        cfg = self.config
        emb = self.language_model.model.embed_tokens(layout.ids)
        batch, length, dim = emb.shape
        device, dtype = emb.device, emb.dtype
        indices, values = [], []
        groups: dict[tuple[int, ...], list] = {}
        for slot in layout.vit_slots:
            groups.setdefault(tuple(slot.image.shape), []).append(slot)
        for shape, slots in groups.items():
            images = torch.stack([s.image for s in slots]).to(device)
            tokens = self.connector(self.vit_model(images))
            ids = self.vit_model.position_ids(shape[-2], shape[-1], device)
            values.append((tokens + self.vit_pos_embed(ids)[None]).reshape(-1, dim))
            n = ids.numel()
            indices += [s.row * length + s.start + torch.arange(n, device=device) for s in slots]
        by_shape: dict[tuple[int, ...], list] = {}
        for latent_slot in layout.latent_slots:
            by_shape.setdefault(tuple(latent_slot.latent.shape), []).append(latent_slot)
        for slots in by_shape.values():
            latents = torch.stack([s.latent for s in slots]).to(device, dtype)
            t = torch.stack([torch.as_tensor(s.t, dtype=torch.float32, device=device).reshape(()) for s in slots])
            source = present = target = None
            if cfg.source_token_aligned:
                source = torch.stack([self._aligned_source(s) for s in slots]).to(device, dtype)
                present = torch.tensor([s.source is not None for s in slots], device=device)
            if cfg.target_modalities:              # a clean context latent's slot has target 0: nothing added
                target = torch.tensor([s.target for s in slots], device=device)
            tokens = self.latent_tokens(latents, t, source, present, target)
            values.append(tokens.reshape(-1, dim))
            indices += [s.row * length + s.start + torch.arange(tokens.shape[1], device=device) for s in slots]
        if not values:
            return emb
        flat = emb.reshape(batch * length, dim).index_copy(0, torch.cat(indices), torch.cat(values).to(dtype))
        return flat.view(batch, length, dim)

    def latent_tokens(self, latent: torch.Tensor, t: torch.Tensor, source: torch.Tensor | None = None,
                      present: torch.Tensor | None = None, target: torch.Tensor | None = None) -> torch.Tensor:
        """Generation tokens (B, N, D) of equal-sized latents (B, z, H, W) at times t (B,): vae2llm of
        the patches + timestep + latent position; + vae2llm_src of the clean ``source`` (B, z, H, W)
        where ``present`` (B,) (token-aligned models); + the ``target`` (B,) rows (target-conditioned
        models). :meth:`_embed` uses it per group of equal-sized latent slots, the cached velocity
        and the ONNX graphs for a whole batch at once."""
        p = self.config.latent_patch_size
        h, w = latent.shape[-2] // p, latent.shape[-1] // p
        pos = grid_position_ids(h, w, self.config.max_latent_size, latent.device)
        tokens = (self.vae2llm(patchify_latent(latent, p)) + self.time_embedder(t)[:, None]
                  + self.latent_pos_embed(pos)[None])
        if source is not None:
            if source.shape != latent.shape:
                raise ValueError(f"aligned source latents {tuple(source.shape)} do not match the target latents "
                                 f"{tuple(latent.shape)}")
            assert present is not None, "token-aligned sources come with their present flags"
            aligned = self.vae2llm_src(patchify_latent(source.to(latent.dtype), p))
            tokens = tokens + aligned * present.to(aligned.dtype)[:, None, None]
        if target is not None:                         # row 0 ("no target") adds nothing
            rows = self.target_embedder(target) * (target > 0).to(tokens.dtype)[:, None]
            tokens = tokens + rows[:, None]
        return tokens

    @staticmethod
    def _aligned_source(slot) -> torch.Tensor:
        """A latent slot's clean token-aligned source (zeros where it has none)."""
        if slot.source is None:
            return torch.zeros_like(slot.latent)
        if slot.source.shape != slot.latent.shape:
            raise ValueError(f"aligned source latent {tuple(slot.source.shape)} does not match the target "
                             f"latent {tuple(slot.latent.shape)}")
        return slot.source

    def _run(self, rows: Sequence[Sequence[Segment]], past: KVCache | None = None,
             start_positions: Sequence[int] | None = None, return_kv: bool = False):
        device = self.vae2llm.weight.device
        layout = pack_rows(rows, self.config.tokens, self.grid, start_positions, device)
        emb = self._embed(layout)
        mask = attention_mask(layout, past.valid if past is not None else None)
        hidden, kv = self.language_model.model(emb, layout.gen_mask, layout.position_ids, mask, past, return_kv)
        return hidden, layout, kv

    def _noisy_velocities(self, hidden: torch.Tensor, layout: PackedLayout) -> list[torch.Tensor]:
        """llm2vae(norm_moe_gen(h)) of each noisy latent, unpatchified to (z, H, W), in slot order."""
        p, length = self.config.latent_patch_size, hidden.shape[1]
        slots = [s for s in layout.latent_slots if s.noisy]
        sizes = [(s.latent.shape[-2] // p, s.latent.shape[-1] // p) for s in slots]
        idx = torch.cat([s.row * length + s.start + torch.arange(h * w, device=hidden.device)
                         for s, (h, w) in zip(slots, sizes)])
        out = self.llm2vae(hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx))
        pieces = out.split([h * w for h, w in sizes])
        return [unpatchify_latent(x[None], h, w, p)[0] for x, (h, w) in zip(pieces, sizes)]

    # ---- context, velocity, losses -------------------------------------------------------------
    def encode_segments(self, rows: Sequence[Sequence[Segment]], past: Context | None = None,
                        branches: Sequence[str] = ("cond",)) -> Context:
        """Cache the K/V of context rows (appended to ``past`` if given; nothing is modified)."""
        if any(isinstance(seg, NoisyLatent) for row in rows for seg in row):
            raise ValueError("a context must not contain noisy latents: their keys are hidden from later tokens")
        starts = past.next_position.tolist() if past is not None else None
        _, layout, kv = self._run(rows, past.cache if past is not None else None, starts, return_kv=True)
        keys, values = [k for k, _ in kv], [v for _, v in kv]
        cache = past.cache.extended(keys, values, layout.valid) if past is not None else \
            KVCache(tuple(keys), tuple(values), layout.valid)
        branches = tuple(past.branches if past is not None else branches)
        carried = (past.aligned_source, past.aligned_present, past.target) if past is not None else ()
        return Context(cache, layout.next_position, branches, len(rows) // len(branches), *carried)

    def edit_rows(self, source_latent: torch.Tensor | None, source_image: torch.Tensor | None,
                  instruction_ids: Sequence[Sequence[int]] | None, branches: Sequence[str] = BRANCHES
                  ) -> list[list[Segment]]:
        """Branch-major context rows [clean VAE source][ViT source][text] for S samples."""
        given = [len(x) for x in (source_latent, source_image, instruction_ids) if x is not None]
        if not given or len(set(given)) != 1:
            raise ValueError(f"edit_rows needs at least one condition, all with one sample count; got {given}")
        count = given[0]
        rows = []
        for branch in branches:
            if branch not in BRANCHES:
                raise ValueError(f"unknown CFG branch {branch!r}; choose from {BRANCHES}")
            for s in range(count):
                rows.append(edit_segments(
                    None if source_latent is None else source_latent[s],
                    None if source_image is None else source_image[s],
                    None if instruction_ids is None else instruction_ids[s],
                    use_vae=branch != "no_image", use_vit=branch != "no_image", use_text=branch != "no_text"))
        return rows

    def encode_context(self, source_latent: torch.Tensor | None, source_image: torch.Tensor | None,
                       instruction_ids: Sequence[Sequence[int]] | None, branches: Sequence[str] = BRANCHES,
                       targets: Sequence[int] | None = None) -> Context:
        """Editing context of S samples for each CFG branch: cond = all, no_text = images only,
        no_image = text only. ``source_latent`` (S, z, H, W) from ``vae.encode``; ``source_image``
        (S, C, H, W) in [−1, 1] for the ViT; ``instruction_ids`` S token-id lists (no markers);
        ``targets`` S ``target_embedder`` rows (``config.target_index``) of the requested modality
        (without them a target-conditioned model gets row 0, "no target", as the no_text branch does)."""
        rows = self.edit_rows(source_latent, source_image, instruction_ids, branches)
        context = self.encode_segments(rows, branches=tuple(branches))
        context.aligned_source, context.aligned_present = self._aligned_rows(source_latent, branches)
        context.target = self.target_rows(targets, branches, len(rows) // len(branches))
        return context

    def _aligned_rows(self, source_latent: torch.Tensor | None, branches: Sequence[str]
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Branch-major token-aligned sources and whether each row has them (None, None without)."""
        if not self.config.source_token_aligned or source_latent is None:
            return None, None
        present = torch.tensor([b != "no_image" for b in branches for _ in range(len(source_latent))],
                               device=source_latent.device)
        return source_latent.repeat(len(branches), 1, 1, 1), present

    def target_rows(self, targets: Sequence[int] | None, branches: Sequence[str], count: int
                    ) -> torch.Tensor | None:
        """Branch-major target rows: the sample's where the branch keeps the text, else 0 (none)."""
        if not self.config.target_modalities or targets is None:
            return None
        if len(targets) != count:
            raise ValueError(f"{len(targets)} targets for {count} samples")
        return torch.tensor([int(targets[s]) if b != "no_text" else 0 for b in branches for s in range(count)],
                            device=self.vae2llm.weight.device)

    def _noisy_rows(self, x_t: torch.Tensor, t, aligned: torch.Tensor | None, present: torch.Tensor | None,
                    copies: int, target: torch.Tensor | None = None) -> list[list[Segment]]:
        s = x_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).reshape(-1).expand(s)
        wanted = [0] * (copies * s) if target is None else target.tolist()
        rows: list[list[Segment]] = []
        for i in range(copies * s):
            source = None
            if aligned is not None:
                assert present is not None, "token-aligned sources come with their present flags (_aligned_rows)"
                source = aligned[i] if bool(present[i]) else None
            rows.append([NoisyLatent(x_t[i % s], t[i % s], source, wanted[i])])
        return rows

    def velocity(self, x_t: torch.Tensor, t: float | torch.Tensor, context: Context,
                 branches: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Predicted velocity (ε − x0) of noisy latents x_t (S, z, H, W) at time t (scalar or (S,),
        unscaled), for each branch of ``context``: {branch: (S, z, H, W)}. The cache is not written;
        the noisy block's layout is built on the first call and kept in ``context.plans``."""
        names = tuple(branches) if branches is not None else context.branches
        if x_t.shape[0] != context.num_samples:
            raise ValueError(f"x_t holds {x_t.shape[0]} samples, the context {context.num_samples}")
        x_t = x_t.to(self.vae2llm.weight.device)
        plan = self._noisy_plan(context, names, x_t)
        part, s = plan.context or context, x_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).reshape(-1).expand(s)
        copies = len(names)                                   # rows are branch-major: sample = row % s
        dtype = self.language_model.model.embed_tokens.weight.dtype
        tokens = self.latent_tokens(x_t.repeat(copies, 1, 1, 1).to(dtype), t.repeat(copies),
                                    part.aligned_source, part.aligned_present, part.target)
        v = self.block_velocity(tokens, plan.ids, plan.start, plan.gen_mask, plan.position_ids, plan.mask,
                                part.cache, x_t.shape[-2:]).to(x_t.dtype)
        return dict(zip(names, v.split(s)))

    def block_velocity(self, tokens: torch.Tensor, ids: torch.Tensor, start: int, gen_mask: torch.Tensor,
                       position_ids: torch.Tensor, mask: torch.Tensor, cache: KVCache,
                       latent_size: Sequence[int]) -> torch.Tensor:
        """Velocities (R, z, h, w) of a noisy block over a cache: the latent ``tokens`` (R, n, d)
        spliced at ``start`` between the embeddings of the block's marker ``ids`` ((R or 1, L)),
        one decoder pass, ``llm2vae`` and unpatchify to the ``latent_size`` (h, w). Shared by the
        cached :meth:`velocity` and the exported ONNX velocity graph."""
        markers = self.language_model.model.embed_tokens(ids).expand(tokens.shape[0], -1, -1)
        count = tokens.shape[1]
        emb = torch.cat([markers[:, :start], tokens.to(markers.dtype), markers[:, start + count:]], dim=1)
        hidden, _ = self.language_model.model(emb, gen_mask, position_ids, mask, cache)
        p = self.config.latent_patch_size
        out = self.llm2vae(hidden[:, start:start + count])
        return unpatchify_latent(out, latent_size[0] // p, latent_size[1] // p, p)

    def _noisy_plan(self, context: Context, names: tuple[str, ...], x_t: torch.Tensor) -> NoisyPlan:
        key = (names, tuple(x_t.shape))
        if key not in context.plans:
            # a branch subset's rows are a view of the cache, or a copy kept as long as the context
            part = context.select(names) if names != context.branches else context
            zero = torch.zeros(x_t.shape[1:], device=x_t.device)
            layout = pack_rows([[NoisyLatent(zero, 0.0)]] * part.cache.batch_size, self.config.tokens, self.grid,
                               part.next_position.tolist(), x_t.device)
            context.plans[key] = NoisyPlan(None if part is context else part, layout.ids, layout.gen_mask,
                                           layout.position_ids, attention_mask(layout, part.cache.valid),
                                           layout.latent_slots[0].start)
        return context.plans[key]

    def velocity_uncached(self, x_t: torch.Tensor, t: float | torch.Tensor, source_latent: torch.Tensor | None,
                          source_image: torch.Tensor | None, instruction_ids: Sequence[Sequence[int]] | None,
                          branches: Sequence[str] = BRANCHES, targets: Sequence[int] | None = None
                          ) -> dict[str, torch.Tensor]:
        """Reference for :meth:`velocity`: context and noisy block in one pass, nothing cached."""
        rows = self.edit_rows(source_latent, source_image, instruction_ids, branches)
        aligned, present = self._aligned_rows(source_latent, branches)
        noisy = self._noisy_rows(x_t, t, aligned, present, len(branches),
                                 self.target_rows(targets, branches, x_t.shape[0]))
        hidden, layout, _ = self._run([row + n for row, n in zip(rows, noisy)])
        v = torch.stack(self._noisy_velocities(hidden, layout)).to(x_t.dtype)
        return dict(zip(branches, v.split(x_t.shape[0])))

    def flow_loss(self, rows: Sequence[Sequence[Segment]], target_latent: torch.Tensor, *,
                  aligned_source: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
                  targets: Sequence[int] | None = None, t: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None,
                  timestep_shift: float | None = None, generator: torch.Generator | None = None,
                  reduction: str = "mean") -> torch.Tensor:
        """Rectified-flow MSE of B targets (B, z, H, W), each after its context row.

        x_t = (1 − t)·x0 + t·ε, target v = ε − x0, t logit-normal with the config's (or the given)
        shift; "mean" averages over all noisy tokens and channels, "none" gives one value per sample.
        ``targets`` are the samples' ``target_embedder`` rows (0 where the text was dropped; all 0
        when not given).
        """
        x0 = target_latent
        b = x0.shape[0]
        if len(rows) != b:
            raise ValueError(f"{len(rows)} context rows for {b} targets")
        shift = self.config.timestep_shift if timestep_shift is None else timestep_shift
        if t is None:
            t = sample_training_timesteps(b, shift=shift, generator=generator, device=x0.device)
        if noise is None:
            gen_device = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device, x0.dtype)
        tt = t.to(x0.dtype).reshape(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * noise
        sources = [None] * b if aligned_source is None else list(aligned_source)
        wanted = [0] * b if targets is None or not self.config.target_modalities else [int(x) for x in targets]
        full = [list(row) + [NoisyLatent(x_t[i], t[i], sources[i], wanted[i])] for i, row in enumerate(rows)]
        hidden, layout, _ = self._run(full)
        pred = torch.stack(self._noisy_velocities(hidden, layout))
        per_sample = (pred.float() - (noise - x0).float()).pow(2).flatten(1).mean(1)
        return per_sample if reduction == "none" else per_sample.mean()

    def understanding_forward(self, rows: Sequence[Sequence[Segment]], logits_for: str = "all"
                              ) -> UnderstandingOutput:
        """LM logits of packed text + ViT-image rows; ``logits_for`` = "all", "labels" (answer
        positions only, the cheap choice for training) or "last" (the last token of each row)."""
        hidden, layout, _ = self._run(rows)
        lm_head = self.language_model.lm_head
        if logits_for == "all":
            return UnderstandingOutput(lm_head(hidden), layout.labels, layout)
        if logits_for == "labels":
            keep = layout.labels != IGNORE_INDEX
            return UnderstandingOutput(lm_head(hidden[keep]), layout.labels[keep], layout)
        if logits_for == "last":
            last = layout.valid.long().sum(1) - 1
            return UnderstandingOutput(lm_head(hidden[torch.arange(hidden.shape[0]), last]), None, layout)
        raise ValueError(f"logits_for must be 'all', 'labels' or 'last', not {logits_for!r}")


def from_config(config: SynerMedGenConfig, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, copy_init_moe: bool = True) -> SynerMedGen:
    """A freshly initialised model (and VAE) on ``device``; ``"meta"`` allocates nothing."""
    with torch.device(device):
        model = SynerMedGen(config)
    if torch.device(device).type != "meta":
        model.init_weights(copy_init_moe=copy_init_moe)
    return model.to(dtype)
