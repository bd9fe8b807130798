"""The language model: a Qwen2 decoder with Mixture-of-Transformers layers. Every token is routed to
the understanding expert or to the generation expert (``*_moe_gen``) by a boolean ``gen_mask``;
one shared self-attention (PyTorch SDPA, explicit mask) runs over the whole sequence and an
optional per-layer key/value cache of earlier (context) tokens.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import LLMConfig
from engine.model.layers import RMSNorm, RotaryEmbedding, SwiGLUMLP, apply_rotary


@dataclass
class KVCache:
    """Keys (after k_norm and RoPE) and values of cached tokens, per layer (B, kv_heads, L, head_dim).

    ``valid`` (B, L) is False at padding, so rows of different lengths share one tensor.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    valid: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def select_rows(self, rows: slice | torch.Tensor) -> KVCache:
        """A cache for a subset of rows: a view for a slice, a copy for an index tensor."""
        if isinstance(rows, slice):
            return KVCache(tuple(k[rows] for k in self.keys), tuple(v[rows] for v in self.values), self.valid[rows])
        return KVCache(tuple(k.index_select(0, rows) for k in self.keys),
                       tuple(v.index_select(0, rows) for v in self.values), self.valid.index_select(0, rows))

    def extended(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], valid: torch.Tensor) -> KVCache:
        """A new cache with tokens appended after the cached ones (this cache is not modified)."""
        return KVCache(tuple(torch.cat([a, b], dim=2) for a, b in zip(self.keys, keys)),
                       tuple(torch.cat([a, b], dim=2) for a, b in zip(self.values, values)),
                       torch.cat([self.valid, valid], dim=1))

    def detach(self) -> KVCache:
        return KVCache(tuple(k.detach() for k in self.keys), tuple(v.detach() for v in self.values), self.valid)


class TokenRouting:
    """Sends each token of a flattened (N, …) batch through one expert, computing each expert only
    on its own tokens (gather, compute, one concatenation and an inverse-permutation gather)."""

    def __init__(self, gen_mask: torch.Tensor) -> None:
        flat = gen_mask.reshape(-1)
        n_gen = int(flat.sum())
        self.mode = "und" if n_gen == 0 else "gen" if n_gen == flat.numel() else "mixed"
        if self.mode == "mixed":
            self.und_idx = torch.nonzero(~flat).squeeze(1)
            self.gen_idx = torch.nonzero(flat).squeeze(1)
            self.inverse = torch.argsort(torch.cat([self.und_idx, self.gen_idx]))

    def __call__(self, x: torch.Tensor, und_fn: Callable, gen_fn: Callable):
        if self.mode == "und":
            return und_fn(x)
        if self.mode == "gen":
            return gen_fn(x)
        und_out = und_fn(x.index_select(0, self.und_idx))
        gen_out = gen_fn(x.index_select(0, self.gen_idx))
        if isinstance(und_out, tuple):
            return tuple(self._merge(a, b) for a, b in zip(und_out, gen_out))
        return self._merge(und_out, gen_out)

    def _merge(self, und_out: torch.Tensor, gen_out: torch.Tensor) -> torch.Tensor:
        return torch.cat([und_out, gen_out]).index_select(0, self.inverse)


def attention_bias(attn_mask: torch.Tensor, dtype: torch.dtype, cfg: LLMConfig) -> torch.Tensor:
    """A boolean (B, 1, L, K) mask (True = may attend; no row may be empty) as the additive bias every
    layer's attention takes: 0 / −inf in ``dtype``. Built once per pass: SDPA would convert a boolean
    mask in every layer, and its ONNX export also guards every layer's softmax against empty rows.

    With grouped-query attention and few queries (L ≤ 2·head_dim·kv_heads: the flow steps' noisy
    block) the bias is *folded*, (B, 1, groups·L, K), repeated for the query heads that share a
    key/value head, so attention need not repeat the cached keys and values in every layer: the
    folded bias is then no larger than one layer's repeated keys and values. Long passes (a
    context's prefill, training) keep (B, 1, L, K)."""
    bias = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(~attn_mask, float("-inf"))
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    batch, _, length, keys = bias.shape
    if groups > 1 and length <= 2 * cfg.head_dim * cfg.num_key_value_heads:
        bias = bias[:, :, None].expand(batch, 1, groups, length, keys).reshape(batch, 1, groups * length, keys)
    return bias


def _head_norm(cfg: LLMConfig) -> nn.Module:
    return RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()


class PackedAttentionMoT(nn.Module):
    """Per-expert q/k/v/o projections and q/k norms; one shared grouped-query attention."""

    o_proj: nn.Linear                       # set in __init__'s loop over the experts, as are the others
    o_proj_moe_gen: nn.Linear

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(d, self.num_heads * hd, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(d, self.num_kv_heads * hd, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(d, self.num_kv_heads * hd, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(self.num_heads * hd, d, bias=False))
            setattr(self, f"q_norm{suffix}", _head_norm(cfg))
            setattr(self, f"k_norm{suffix}", _head_norm(cfg))

    def _qkv(self, suffix: str) -> Callable:
        q_proj, k_proj, v_proj = (getattr(self, f"{n}_proj{suffix}") for n in "qkv")
        q_norm, k_norm = getattr(self, f"q_norm{suffix}"), getattr(self, f"k_norm{suffix}")

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            q = q_norm(q_proj(x).view(-1, self.num_heads, self.head_dim))
            k = k_norm(k_proj(x).view(-1, self.num_kv_heads, self.head_dim))
            return q, k, v_proj(x).view(-1, self.num_kv_heads, self.head_dim)

        return run

    def forward(self, x: torch.Tensor, routing: TokenRouting, batch: int, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B·L, D) → output (B·L, D) and this block's (K, V), each (B, kv_heads, L, head_dim);
        ``attn_mask`` is the :func:`attention_bias` of the layer stack."""
        q, k, v = routing(x, self._qkv(""), self._qkv("_moe_gen"))
        length = x.shape[0] // batch
        q, k, v = (t.view(batch, length, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        new_kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1 and attn_mask.shape[-2] == groups * length:
            # folded bias (see attention_bias): each key/value head's query heads (h = kv·groups + g)
            # become one longer query, so the keys/values are not repeated
            q = q.reshape(batch, self.num_kv_heads, groups * length, self.head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            out = out.reshape(batch, self.num_heads, length, self.head_dim)
        else:
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(batch * length, self.num_heads * self.head_dim)
        return routing(out, self.o_proj, self.o_proj_moe_gen), new_kv


class Qwen2MoTDecoderLayer(nn.Module):
    """Pre-norm residual block; norms, attention projections and MLP each exist twice."""

    input_layernorm: RMSNorm                # set in __init__'s loop over the experts
    input_layernorm_moe_gen: RMSNorm
    post_attention_layernorm: RMSNorm
    post_attention_layernorm_moe_gen: RMSNorm

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.self_attn = PackedAttentionMoT(cfg)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size)
        self.mlp_moe_gen = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size)
        for suffix in ("", "_moe_gen"):
            setattr(self, f"input_layernorm{suffix}", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
            setattr(self, f"post_attention_layernorm{suffix}", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))

    def forward(self, h: torch.Tensor, routing: TokenRouting, batch: int, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None):
        x = routing(h, self.input_layernorm, self.input_layernorm_moe_gen)
        attn, kv = self.self_attn(x, routing, batch, cos, sin, attn_mask, past)
        h = h + attn
        mlp = routing(h, lambda t: self.mlp(self.post_attention_layernorm(t)),
                      lambda t: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(t)))
        return h + mlp, kv


class Qwen2MoTModel(nn.Module):
    """Token embeddings, the decoder layers, and the two final norms (``norm`` / ``norm_moe_gen``)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)

    def forward(self, inputs_embeds: torch.Tensor, gen_mask: torch.Tensor, position_ids: torch.Tensor,
                attn_mask: torch.Tensor, past: KVCache | None = None, return_kv: bool = False
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Run the decoder over new tokens (B, L, D) that attend to ``past`` plus themselves.

        ``attn_mask`` is boolean (B, 1, L, past_len + L), True = may attend. Returns the final-
        normed hidden states (B, L, D) and, if ``return_kv``, each layer's (K, V) of the new tokens.
        The cache is never modified.
        """
        batch, length, dim = inputs_embeds.shape
        routing = TokenRouting(gen_mask)
        bias = attention_bias(attn_mask, inputs_embeds.dtype, self.config)
        cos, sin = self.rotary_emb(position_ids, inputs_embeds.dtype)
        h = inputs_embeds.reshape(batch * length, dim)
        new_kv = []
        for i, layer in enumerate(self.layers):
            layer_past = (past.keys[i], past.values[i]) if past is not None else None
            h, kv = layer(h, routing, batch, cos, sin, bias, layer_past)
            if return_kv:
                new_kv.append(kv)
        h = routing(h, self.norm, self.norm_moe_gen)
        return h.view(batch, length, dim), (new_kv if return_kv else None)


class Qwen2MoTForCausalLM(nn.Module):
    """``language_model``: the decoder (``model``) and the untied ``lm_head``."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen2MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, std: float = 0.02) -> None:
        """Qwen2's initialisation: N(0, std) weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    nn.init.zeros_(bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    @torch.no_grad()
    def copy_und_to_gen(self) -> None:
        """Copy every understanding weight into its ``_moe_gen`` twin (BAGEL's ``copy_init_moe``)."""
        params = dict(self.named_parameters())
        for name, param in params.items():
            if "_moe_gen" in name:
                continue
            for twin in _gen_twin_names(name):
                if twin in params:
                    params[twin].copy_(param)


def _gen_twin_names(name: str) -> list[str]:
    """Possible ``_moe_gen`` names of an understanding parameter name."""
    parts = name.split(".")
    twins = []
    for i, part in enumerate(parts[:-1]):
        if part in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "mlp", "input_layernorm",
                    "post_attention_layernorm", "norm"):
            twins.append(".".join(parts[:i] + [part + "_moe_gen"] + parts[i + 1:]))
    return twins
