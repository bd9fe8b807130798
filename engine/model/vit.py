"""The SigLIP-style vision encoder that turns an image into understanding tokens; module paths match
BAGEL's ``vit_model.vision_model.*`` keys (patch embedding stored as a Linear, learned positions).
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ViTConfig
from engine.model.layers import activation


def patchify_image(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/p)·(W/p), p·p·C), features ordered (patch-row, patch-col, channel)."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the ViT patch size {patch_size}")
    x = images.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c)


def vit_input(pixels: torch.Tensor, patch_size: int, max_patches_per_side: int, channels: int) -> torch.Tensor:
    """(n, 1, S, S) pixels in [−1, 1] → what the ViT takes: a side that is a multiple of the patch
    within the position table (bilinear, antialiased, only when S is not one already) and the ViT's
    channel count. Training and inference both call this, so they see slices the same way."""
    side = min(pixels.shape[-1] // patch_size, max_patches_per_side) * patch_size
    if side < patch_size:
        raise ValueError(f"slice size {pixels.shape[-1]} is smaller than the ViT patch {patch_size}")
    if side != pixels.shape[-1] or side != pixels.shape[-2]:
        pixels = F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return pixels.expand(-1, channels, -1, -1)


def vit_view(pixels: torch.Tensor, config) -> torch.Tensor:
    """:func:`vit_input` for the model of ``config`` (a SynerMedGenConfig): what its ViT sees."""
    return vit_input(pixels, config.vit.patch_size, config.vit_max_num_patch_per_side, config.vit.num_channels)


def grid_position_ids(rows: int, cols: int, max_per_side: int, device: torch.device | None = None) -> torch.Tensor:
    """Flattened ids r·max_per_side + c of a rows×cols token grid (BAGEL's extrapolating ids)."""
    if rows > max_per_side or cols > max_per_side:
        raise ValueError(f"token grid {rows}x{cols} exceeds the position table side {max_per_side}")
    r = torch.arange(rows, device=device)[:, None]
    c = torch.arange(cols, device=device)[None, :]
    return (r * max_per_side + c).reshape(-1)


class SiglipAttention(nn.Module):
    """Bidirectional multi-head self-attention within one image."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation(cfg.hidden_act)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipEmbeddings(nn.Module):
    """Linear patch embedding (BAGEL converts SigLIP's Conv2d) plus a learned position table."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Linear(cfg.patch_size * cfg.patch_size * cfg.num_channels, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(patches, position_ids)))


class SiglipVisionModel(nn.Module):
    """Images (B, C, H, W) in [−1, 1] of one size → tokens (B, (H/p)·(W/p), hidden)."""

    def __init__(self, cfg: ViTConfig, max_num_patch_per_side: int | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.max_num_patch_per_side = max_num_patch_per_side or cfg.num_patches_per_side
        self.vision_model = SiglipVisionTransformer(cfg)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh weights as SigLIP initialises them: positions N(0, 1/width) (PyTorch's N(0, 1)
        embedding default outweighs a patch's content ~3×), LeCun-normal patch embedding, Xavier
        attention and MLP projections, zero biases (MLP biases N(0, 1e-6)), unit layer norms."""
        width = self.config.hidden_size
        embeddings = self.vision_model.embeddings
        nn.init.normal_(embeddings.position_embedding.weight, std=width ** -0.5)
        nn.init.trunc_normal_(embeddings.patch_embedding.weight, std=embeddings.patch_embedding.in_features ** -0.5)
        nn.init.zeros_(embeddings.patch_embedding.bias)
        for layer in self.vision_model.encoder.layers:
            block = cast(SiglipEncoderLayer, layer)
            attn, mlp = block.self_attn, block.mlp
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)
            for fc in (mlp.fc1, mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
        for norm in self.modules():
            if isinstance(norm, nn.LayerNorm):
                nn.init.ones_(norm.weight)
                nn.init.zeros_(norm.bias)

    def position_ids(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        p = self.config.patch_size
        return grid_position_ids(height // p, width // p, self.max_num_patch_per_side, device)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Match the channel count (grey → repeated RGB) and the parameter dtype."""
        want = self.config.num_channels
        if images.shape[1] != want:
            if images.shape[1] == 1:
                images = images.expand(-1, want, -1, -1)
            else:
                raise ValueError(f"the ViT takes {want}-channel images, got {images.shape[1]} channels")
        return images.to(self.vision_model.embeddings.patch_embedding.weight.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.prepare(images)
        patches = patchify_image(images, self.config.patch_size)
        ids = self.position_ids(images.shape[2], images.shape[3], images.device)
        return self.vision_model(patches, ids[None].expand(images.shape[0], -1))
