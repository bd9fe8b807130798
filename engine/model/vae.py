"""The FLUX-style convolutional autoencoder that turns images into generation latents and back; its
parameter names are FLUX's (``ae.safetensors``, no prefix). ``encode``/``decode`` apply BAGEL's
scale/shift so the rest of the model only ever sees scaled latents.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import VAEConfig


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, eps 1e-6; fewer groups only when ``channels`` is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, 1, c, h * w).transpose(2, 3)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3×3 convolution without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: ``block.{j}`` and an optional ``downsample`` / ``upsample``."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            self.add_module(name, resample)
        self._resample_name = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return getattr(self, self._resample_name)(x) if self._resample_name else x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + cfg.ch_mult
        last = len(cfg.ch_mult) - 1
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * mult
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out) for j in range(cfg.num_res_blocks)]
            self.down.append(Level(blocks, Downsample(block_out) if i != last else None, "downsample"))
        top = cfg.ch * cfg.ch_mult[-1]
        self.mid = MidBlock(top, cfg.mid_attention)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``up.{i}`` is indexed by resolution level (0 = full resolution) and run from the deepest up."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        top = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = MidBlock(top, cfg.mid_attention)
        levels: list[Level] = []
        block_in = top
        for i in reversed(range(len(cfg.ch_mult))):
            block_out = cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out) for j in range(cfg.num_res_blocks + 1)]
            levels.insert(0, Level(blocks, Upsample(block_out) if i != 0 else None, "upsample"))
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cfg.ch * cfg.ch_mult[0])
        self.conv_out = nn.Conv2d(cfg.ch * cfg.ch_mult[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """Images in [−1, 1] (B, in_channels, H, W) ↔ scaled latents (B, z_channels, H/d, W/d)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = scale·(z_raw − shift); z_raw is the posterior mean, or a draw from it if ``sample``."""
        cfg = self.config
        if x.shape[1] != cfg.in_channels:
            if x.shape[1] == 1:
                x = x.expand(-1, cfg.in_channels, -1, -1)
            else:
                raise ValueError(f"the VAE takes {cfg.in_channels}-channel images, got {x.shape[1]} channels")
        if x.shape[2] % self.downsample or x.shape[3] % self.downsample:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not a multiple of the VAE downsampling "
                             f"{self.downsample}")
        moments = self.encoder(x.to(self.encoder.conv_in.weight.dtype))
        mean, logvar = moments.chunk(2, dim=1)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return cfg.scale_factor * (z - cfg.shift_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Undo the scale/shift and decode to images (B, out_channels, H, W), nominally in [−1, 1]."""
        cfg = self.config
        z = z.to(self.decoder.conv_in.weight.dtype) / cfg.scale_factor + cfg.shift_factor
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
