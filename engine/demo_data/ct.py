"""CT subjects and their simulated cone-beam CT, on the same grid and in HU.

The CT is the real head CT, deformed. The CBCT is derived from it slice by slice in linear
attenuation (μ/μ_water = 1 + HU/1000):
1. view-aliasing streaks of a sparse-view filtered back-projection (N views over 180°). For a
   parallel beam the reconstruction from N views is the image convolved with the point-spread
   function h_N(x) = (π/N)·Σᵢ g(x·nᵢ), g the Ram-Lak ramp kernel; the streaks are the image
   convolved with h_N − h_M (M = 720 views, alias-free over the field), added by FFT and
   high-passed (the finite kernel window otherwise leaks a slowly varying offset);
2. cupping (scatter and beam hardening depress the centre): μ·(1 − c·(1 − r²/R²)); c < 0 is
   capping (an over-corrected centre, brighter); and a smooth random scatter shading;
3. detector ring artefacts (thin concentric rings about the rotation axis);
4. noise (slightly correlated, as after reconstruction filtering);
5. a linear HU miscalibration (scale, offset);
6. a cylindrical field of view: outside it −1000 HU, just inside it a truncation brightening
   (or darkening, for a negative amplitude).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import fft, ndimage

from engine.demo_data.grid import Grid, upsample_lattice

AIR_HU = -1000.0


@dataclass(frozen=True)
class CBCTSpec:
    """Ranges of the per-subject CBCT degradations (uniform draws)."""

    views: tuple[int, int] = (40, 160)
    streak_gain: tuple[float, float] = (0.2, 1.0)
    cupping: tuple[float, float] = (-0.06, 0.10)          # < 0: capping (the centre brightened)
    scatter_shading: tuple[float, float] = (0.005, 0.03)  # std of the smooth multiplicative field
    rings: tuple[int, int] = (0, 6)                       # count, inclusive
    ring_hu: tuple[float, float] = (5.0, 30.0)
    noise_hu: tuple[float, float] = (5.0, 25.0)
    hu_scale: tuple[float, float] = (0.90, 1.10)
    hu_offset: tuple[float, float] = (-150.0, 150.0)
    fov_radius_mm: tuple[float, float] = (80.0, 130.0)
    fov_shift_mm: float = 5.0
    truncation_hu: tuple[float, float] = (-60.0, 150.0)   # < 0: the edge darkened

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CBCTSpec":
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**values)


def _ramlak(n_half: int) -> np.ndarray:
    """The Ram-Lak kernel on integer detector offsets −n_half…n_half (unit bin)."""
    n = np.arange(-n_half, n_half + 1)
    g = np.zeros(n.shape, np.float64)
    g[n == 0] = 0.25
    odd = n % 2 == 1
    g[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return g


def sparse_view_psf(size: tuple[int, int], views: int) -> np.ndarray:
    """h_N on a (2·ny, 2·nx) pixel grid centred at (ny, nx): the filtered back-projection
    point-spread function of ``views`` parallel projections over 180° (pixel = detector bin)."""
    ny, nx = 2 * size[0], 2 * size[1]
    y, x = np.mgrid[-size[0]:ny - size[0], -size[1]:nx - size[1]].astype(np.float64)
    n_half = int(np.ceil(np.hypot(ny, nx))) + 2
    g = _ramlak(n_half)
    offsets = np.arange(-n_half, n_half + 1, dtype=np.float64)
    h = np.zeros((ny, nx), np.float64)
    for theta in np.arange(views) * np.pi / views:
        s = x * np.cos(theta) + y * np.sin(theta)
        h += np.interp(s.ravel(), offsets, g).reshape(s.shape)
    return h * (np.pi / views)


@functools.lru_cache(maxsize=4)
def _reference_psf(size: tuple[int, int]) -> np.ndarray:
    return sparse_view_psf(size, 720)


def streaks(mu: np.ndarray, views: int) -> np.ndarray:
    """The view-aliasing error of an N-view reconstruction of each axial slice of ``mu``
    (z, y, x): slices ∗ (h_N − h_720), by FFT with zero padding."""
    size = mu.shape[1:]
    kernel = sparse_view_psf(size, views) - _reference_psf(size)
    shape = kernel.shape
    k_hat = fft.rfft2(np.fft.ifftshift(kernel), s=shape)
    m_hat = fft.rfft2(mu, s=shape, axes=(1, 2))
    out = fft.irfft2(m_hat * k_hat[None], s=shape, axes=(1, 2))[:, : size[0], : size[1]]
    # the kernel is cut to a finite window, which leaks a slowly varying offset: keep only the
    # line pattern (the low frequencies are the cupping model's business)
    out -= ndimage.gaussian_filter(out, (0.0, 6.0, 6.0), mode="nearest")
    return out.astype(np.float32)


def _radial(grid: Grid, centre_xy) -> np.ndarray:
    """Distance (mm) of every voxel column from the rotation axis through ``centre_xy`` (LPS)."""
    pts = grid.points()[:2, 0]
    return np.hypot(pts[0] - centre_xy[0], pts[1] - centre_xy[1]).astype(np.float32)


def simulate_cbct(ct_hu: np.ndarray, grid: Grid, rng: np.random.Generator,
                  spec: CBCTSpec = CBCTSpec()) -> tuple[np.ndarray, dict]:
    """A CBCT of the same head on the same grid (HU) and the parameters drawn."""
    u = lambda r: float(rng.uniform(*r))   # noqa: E731
    views = int(rng.integers(spec.views[0], spec.views[1] + 1))
    centre = grid.centre()
    axis_xy = centre[:2] + rng.uniform(-spec.fov_shift_mm, spec.fov_shift_mm, size=2)
    params: dict[str, Any] = {"views": views, "streak_gain": u(spec.streak_gain), "cupping": u(spec.cupping),
                              "scatter_shading": u(spec.scatter_shading), "noise_hu": u(spec.noise_hu),
                              "hu_scale": u(spec.hu_scale), "hu_offset": u(spec.hu_offset),
                              "fov_radius_mm": u(spec.fov_radius_mm), "truncation_hu": u(spec.truncation_hu),
                              "rotation_axis_lps_mm": [round(float(v), 2) for v in axis_xy]}
    mu = np.clip(1.0 + ct_hu / 1000.0, 0.0, None).astype(np.float32)
    # 1. view aliasing
    mu = mu + params["streak_gain"] * streaks(mu, views)
    # 2. cupping + smooth scatter shading
    r = _radial(grid, axis_xy)
    R = params["fov_radius_mm"]
    cup = 1.0 - params["cupping"] * np.clip(1.0 - (r / R) ** 2, 0.0, None)
    lattice = 4
    coarse = rng.normal(0.0, params["scatter_shading"], size=(lattice,) * 3)
    shading = upsample_lattice(coarse, mu.shape)
    mu = mu * cup[None] * (1.0 + shading)
    hu = (mu - 1.0) * 1000.0
    # 3. rings about the rotation axis
    n_rings = int(rng.integers(spec.rings[0], spec.rings[1] + 1))
    ring_r = rng.uniform(5.0, R, size=n_rings)
    ring_a = rng.uniform(*spec.ring_hu, size=n_rings) * rng.choice([-1.0, 1.0], size=n_rings)
    width = max(0.6, 0.5 * grid.spacing[0])
    ring = np.zeros_like(r)
    for rr, a in zip(ring_r, ring_a):
        ring += a * np.exp(-0.5 * ((r - rr) / width) ** 2)
    inside_body = ct_hu > -400.0
    hu = hu + np.where(inside_body, ring[None], 0.0)
    params["rings"] = [[round(float(rr), 1), round(float(a), 1)] for rr, a in zip(ring_r, ring_a)]
    # 4. noise
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), (0.0, 0.8, 0.8))
    noise *= params["noise_hu"] / max(float(noise.std()), 1e-6)
    hu = hu + noise
    # 5. HU miscalibration
    hu = params["hu_scale"] * hu + params["hu_offset"]
    # 6. field of view
    edge = np.exp(-np.clip(R - r, 0.0, None) / 4.0)
    hu = hu + np.where(inside_body, params["truncation_hu"] * edge[None], 0.0)
    hu = np.where((r <= R)[None], hu, AIR_HU)
    hu = np.clip(hu, -1024.0, 3071.0).astype(np.float32)
    params = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in params.items()}
    return hu, params
