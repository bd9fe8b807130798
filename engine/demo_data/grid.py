"""Voxel grids in LPS millimetres and resampling of arrays between them through a point mapping
(the one place where index ↔ physical-space arithmetic happens in the demo-data builder)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.io import Volume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def xyz(values) -> tuple[float, float, float]:
    """The three floats of an (x, y, z) sequence, array or iterator."""
    x, y, z = values
    return float(x), float(y), float(z)


@dataclass(frozen=True)
class Grid:
    """Array shape (z, y, x); spacing and origin (x, y, z) in mm, LPS; direction row-major 3×3
    whose column j is the LPS direction of index axis j — the conventions of :class:`Volume`."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY

    @classmethod
    def centred(cls, centre_lps, size_xyz, voxel_mm: float) -> "Grid":
        """An axis-aligned LPS grid of ``size_xyz`` isotropic voxels centred on ``centre_lps``."""
        size = np.asarray(size_xyz, dtype=float)
        origin = np.asarray(centre_lps, dtype=float) - (size - 1) / 2.0 * voxel_mm
        return cls((int(size[2]), int(size[1]), int(size[0])), (voxel_mm,) * 3,
                   xyz(round(o, 4) for o in origin))

    @classmethod
    def of(cls, volume: Volume) -> "Grid":
        return cls(volume.shape, volume.spacing, volume.origin, volume.direction)

    def affine(self) -> np.ndarray:
        """4×4 map from a continuous (x, y, z) index to an LPS point."""
        aff = np.eye(4)
        aff[:3, :3] = np.asarray(self.direction, float).reshape(3, 3) @ np.diag(self.spacing)
        aff[:3, 3] = self.origin
        return aff

    def points(self, dtype=np.float32) -> np.ndarray:
        """LPS coordinates of every voxel centre, shape (3, z, y, x), axis 0 in x, y, z order."""
        z, y, x = (np.arange(n, dtype=np.float64) for n in self.shape)
        idx = np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=0).transpose(0, 3, 2, 1)   # (3, z, y, x)
        aff = self.affine()
        pts = np.tensordot(aff[:3, :3], idx, axes=1) + aff[:3, 3, None, None, None]
        return pts.astype(dtype)

    def centre(self) -> np.ndarray:
        z, y, x = self.shape
        return (self.affine() @ np.array([(x - 1) / 2, (y - 1) / 2, (z - 1) / 2, 1.0]))[:3]

    def box(self, centre_lps, half_mm: float) -> tuple[tuple[slice, slice, slice], "Grid"]:
        """Array slices (z, y, x) of the voxels within ``half_mm`` of ``centre_lps`` along each axis,
        clipped to the grid, and the sub-grid they form."""
        inv = np.linalg.inv(self.affine())
        c = (inv @ np.append(np.asarray(centre_lps, float), 1.0))[:3]            # x, y, z index
        h = half_mm / np.asarray(self.spacing)
        size = (self.shape[2], self.shape[1], self.shape[0])
        lo = [int(max(0, np.floor(c[i] - h[i]))) for i in range(3)]
        hi = [int(min(size[i], np.ceil(c[i] + h[i]) + 1)) for i in range(3)]
        hi = [max(h_, l_ + 1) for l_, h_ in zip(lo, hi)]
        origin = (self.affine() @ np.array([lo[0], lo[1], lo[2], 1.0]))[:3]
        sub = Grid((hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]), self.spacing, tuple(origin), self.direction)
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])), sub

    def volume(self, array: np.ndarray, **fields) -> Volume:
        return Volume(np.ascontiguousarray(array), self.spacing, self.origin, self.direction, **fields)

    def to_dict(self) -> dict:
        return {"shape_zyx": list(self.shape), "spacing_xyz_mm": list(self.spacing),
                "origin_lps_mm": list(self.origin), "direction": list(self.direction)}


def lps_to_index(grid: Grid, points: np.ndarray) -> np.ndarray:
    """Continuous array indices (z, y, x order, shape (3, …)) of LPS points of shape (3, …)."""
    inv = np.linalg.inv(grid.affine())
    flat = points.reshape(3, -1).astype(np.float64)
    idx = inv[:3, :3] @ flat + inv[:3, 3, None]
    return idx[::-1].reshape(points.shape).astype(np.float32)


def sample(array: np.ndarray, index_zyx: np.ndarray, order: int = 1, mode: str = "constant",
           cval: float = 0.0) -> np.ndarray:
    """Interpolate ``array`` at continuous indices ``index_zyx`` (3, …) — float32 out."""
    out = ndimage.map_coordinates(np.asarray(array, np.float32), index_zyx.reshape(3, -1), order=order,
                                  mode=mode, cval=cval, prefilter=False)
    return out.reshape(index_zyx.shape[1:]).astype(np.float32, copy=False)


def block_factor(grid: Grid, voxel_mm: float) -> tuple[int, int, int]:
    """Integer (z, y, x) block sizes to average a fine grid by before sampling it onto
    ``voxel_mm`` voxels (≥ 1; half the spacing ratio, so some Gaussian smoothing remains)."""
    ratio = voxel_mm / np.asarray(grid.spacing[::-1], float)
    fz, fy, fx = (int(max(1, np.floor(r / 2.0))) for r in ratio)
    return fz, fy, fx


def block_mean(array: np.ndarray, grid: Grid, factor: tuple[int, int, int]) -> tuple[np.ndarray, Grid]:
    """Average ``factor`` blocks (z, y, x); the new grid's voxel centres are the blocks' centres."""
    if factor == (1, 1, 1):
        return np.asarray(array, np.float32), grid
    fz, fy, fx = factor
    nz, ny, nx = (n // f for n, f in zip(array.shape, factor))
    a = np.asarray(array, np.float32)[: nz * fz, : ny * fy, : nx * fx]
    a = a.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    f_xyz = np.array([fx, fy, fz], float)
    shift = np.asarray(grid.direction, float).reshape(3, 3) @ (np.asarray(grid.spacing) * (f_xyz - 1) / 2.0)
    new = Grid((nz, ny, nx), xyz(np.asarray(grid.spacing) * f_xyz), xyz(np.asarray(grid.origin) + shift),
               grid.direction)
    return a, new


def anti_alias(array: np.ndarray, spacing_xyz, voxel_mm: float) -> np.ndarray:
    """Gaussian pre-filter before sampling a fine grid onto ``voxel_mm`` voxels (no-op when the
    target is not coarser)."""
    ratio = np.asarray(voxel_mm, float) / np.asarray(spacing_xyz, float)
    sigma_xyz = 0.45 * np.sqrt(np.clip(ratio ** 2 - 1.0, 0.0, None))
    if not np.any(sigma_xyz > 0.05):
        return np.asarray(array, np.float32)
    return ndimage.gaussian_filter(np.asarray(array, np.float32), sigma=tuple(sigma_xyz[::-1]), mode="nearest")


def _axis_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) cubic-spline interpolation weights, end points aligned."""
    if n_in == 1:
        return np.ones((n_out, 1))
    return ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=3, mode="nearest", grid_mode=False)


def upsample_lattice(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth field on ``shape`` (z, y, x) from values on a coarse lattice spanning it (cubic
    splines, corners aligned) — separable, so cheap for any output size."""
    wz, wy, wx = (_axis_weights(n, c) for n, c in zip(shape, coarse.shape))
    return np.einsum("zi,yj,xk,ijk->zyx", wz, wy, wx, coarse, optimize=True).astype(np.float32)
