"""Differentiable image losses of the ``vae`` stage (SSIM with a Gaussian window, the Gaussian
posterior's KL) and the PSNR used to report reconstruction quality. Images are in [0, 1]."""
from __future__ import annotations

import torch
import torch.nn.functional as F

_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of (B, C, H, W) images in [0, 1] (per-image mean, then batch
    mean), with a separable Gaussian window and reflect padding so small images work."""
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2]) | 1
    g = _gaussian_window(window, sigma, x.device, torch.float32)
    kx = g.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    x, y = x.float(), y.float()
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    s = ((2 * mx * my + _C1) * (2 * cov + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return s.flatten(1).mean(1).mean()


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, 1)) summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float())
    return kl.flatten(1).sum(1).mean()


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (over the whole batch)."""
    mse = float((x.float() - y.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()
