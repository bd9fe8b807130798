"""Small building blocks shared by the model: RMSNorm, rotary embedding, SwiGLU MLP, BAGEL's fixed
2-D sin-cos position table, the timestep embedder and the MLP connector.
"""
from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def activation(name: str) -> nn.Module:
    """The activation named in a config (Hugging Face spelling)."""
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unsupported activation {name!r}")


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, cast back, then multiplied by the weight (Qwen2)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Qwen2 rotate-half RoPE from explicit position ids; ``inv_freq`` is a non-persistent float32 buffer."""

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def _inv_freq(self, device: torch.device | None) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.theta ** exponents)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute ``inv_freq`` in float32 (after a meta-device build or a dtype cast)."""
        self.inv_freq = self._inv_freq(torch.device(device) if device is not None else self.inv_freq.device)

    def _apply(self, fn, recurse: bool = True):  # exact float32 values after .to(bf16) or .to_empty()
        super()._apply(fn, recurse)
        self.reset_buffers(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (*position_ids.shape, head_dim), computed in float32."""
        freqs = position_ids.to(torch.float32)[..., None] * self.inv_freq.to(position_ids.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, seq, head_dim) with cos/sin (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) · up(x)), no biases (Qwen2MLP)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def sincos_2d_table(grid_side: int, dim: int) -> torch.Tensor:
    """BAGEL's fixed table, row n = r·G + c: [sin(cω), cos(cω), sin(rω), cos(rω)], ω_k = 10000^(−4k/D)."""
    if dim % 4:
        raise ValueError("sin-cos table needs a dimension divisible by 4")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_side, dtype=torch.float64)
    rows = coords.repeat_interleave(grid_side)  # r for n = r·G + c
    cols = coords.repeat(grid_side)  # c
    col_args, row_args = cols[:, None] * omega, rows[:, None] * omega
    table = torch.cat([col_args.sin(), col_args.cos(), row_args.sin(), row_args.cos()], dim=1)
    return table.to(torch.float32)


class PositionEmbedding(nn.Module):
    """Fixed 2-D sin-cos embedding stored as a frozen parameter ``pos_embed`` [G², D], as in BAGEL."""

    def __init__(self, max_num_patch_per_side: int, hidden_size: int) -> None:
        super().__init__()
        self.max_num_patch_per_side = max_num_patch_per_side
        self.hidden_size = hidden_size
        self.pos_embed = nn.Parameter(torch.zeros(max_num_patch_per_side ** 2, hidden_size), requires_grad=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.pos_embed.is_meta:
            return
        table = sincos_2d_table(self.max_num_patch_per_side, self.hidden_size)
        with torch.no_grad():
            self.pos_embed.copy_(table.to(self.pos_embed.device, self.pos_embed.dtype))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of unscaled t ∈ [0, 1], cos half first then sin (BAGEL / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t → 256-dim sinusoid → Linear, SiLU, Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t.reshape(-1), self.frequency_embedding_size)
        return self.mlp(emb.to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class MLPConnector(nn.Module):
    """ViT width → LLM width: fc1, activation, fc2 (BAGEL's ``MLPconnector``)."""

    def __init__(self, in_dim: int, out_dim: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = activation(act)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
