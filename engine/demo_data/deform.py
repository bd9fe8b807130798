"""Many "subjects" from one anatomy: a random small affine (rotation, scale, shift) composed with
a smooth elastic displacement field (random control-point displacements on a coarse lattice,
cubic-spline upsampled), and resampling of a template's maps onto a subject grid through it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.demo_data.grid import Grid, lps_to_index, sample, upsample_lattice, xyz


@dataclass(frozen=True)
class DeformationSpec:
    """Ranges the random subject transforms are drawn from."""

    max_rotation_deg: tuple[float, float, float] = (6.0, 6.0, 10.0)   # about the x (L), y (P), z (S) axes
    scale_range: tuple[float, float] = (0.92, 1.08)                     # overall head size
    anisotropy: float = 0.04                                            # extra per-axis scale (±)
    max_shift_mm: float = 4.0
    elastic_mm: float = 3.0                                             # std of control-point displacements
    control_spacing_mm: float = 40.0

    def to_dict(self) -> dict:
        return {"max_rotation_deg": list(self.max_rotation_deg), "scale_range": list(self.scale_range),
                "anisotropy": self.anisotropy, "max_shift_mm": self.max_shift_mm, "elastic_mm": self.elastic_mm,
                "control_spacing_mm": self.control_spacing_mm}

    @classmethod
    def from_dict(cls, d: dict) -> "DeformationSpec":
        return cls(tuple(d["max_rotation_deg"]), tuple(d["scale_range"]), d["anisotropy"], d["max_shift_mm"],
                   d["elastic_mm"], d["control_spacing_mm"])


@dataclass(frozen=True, eq=False)
class SubjectTransform:
    """Maps a point of the subject grid to the template: p_src = c_src + A⁻¹(p + u(p) − c_out − t),
    with A = R·diag(scale) the subject's rotation and size and u the elastic field (mm, on a
    coarse lattice spanning the subject grid)."""

    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    elastic: np.ndarray            # (3, cz, cy, cx) displacements in mm, components x, y, z

    def matrix(self) -> np.ndarray:
        ax, ay, az = np.deg2rad(self.rotation_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        return rz @ ry @ rx @ np.diag(self.scale)

    def displacement(self, grid: Grid) -> np.ndarray:
        """The elastic field on every voxel of ``grid`` (3, z, y, x), mm."""
        return np.stack([upsample_lattice(c, grid.shape) for c in self.elastic])

    def source_points(self, grid: Grid, centre_out, centre_src) -> np.ndarray:
        """Template LPS point for each voxel of the subject ``grid`` (3, z, y, x)."""
        pts = grid.points() + self.displacement(grid)
        pts -= (np.asarray(centre_out) + np.asarray(self.shift_mm)).astype(np.float32)[:, None, None, None]
        inv = np.linalg.inv(self.matrix()).astype(np.float32)
        out = np.tensordot(inv, pts, axes=1)
        out += np.asarray(centre_src, np.float32)[:, None, None, None]
        return out

    def to_dict(self) -> dict:
        return {"rotation_deg": [round(float(v), 3) for v in self.rotation_deg],
                "scale": [round(float(v), 4) for v in self.scale],
                "shift_mm": [round(float(v), 3) for v in self.shift_mm],
                "elastic_rms_mm": round(float(np.sqrt(np.mean(self.elastic ** 2))), 3)}


def identity_transform() -> SubjectTransform:
    return SubjectTransform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.zeros((3, 2, 2, 2), np.float32))


def random_transform(rng: np.random.Generator, grid: Grid,
                     spec: DeformationSpec = DeformationSpec()) -> SubjectTransform:
    """A random subject transform for ``grid`` drawn from ``spec``."""
    rotation = xyz(rng.uniform(-m, m) for m in spec.max_rotation_deg)
    size = rng.uniform(*spec.scale_range)
    scale = xyz(size * (1.0 + rng.uniform(-spec.anisotropy, spec.anisotropy)) for _ in range(3))
    shift = xyz(rng.uniform(-spec.max_shift_mm, spec.max_shift_mm) for _ in range(3))
    extent = np.asarray(grid.shape, float) * np.asarray(grid.spacing[::-1])
    lattice = tuple(int(max(3, np.ceil(e / spec.control_spacing_mm) + 1)) for e in extent)
    elastic = rng.normal(0.0, spec.elastic_mm, size=(3, *lattice)).astype(np.float32)
    # fix the displacement's mean to zero: the affine part already carries the shift
    elastic -= elastic.mean(axis=(1, 2, 3), keepdims=True)
    return SubjectTransform(rotation, scale, shift, elastic)


def resample_maps(maps: dict[str, np.ndarray], source_grid: Grid, points_lps: np.ndarray,
                  modes: dict[str, tuple[str, float]] | None = None) -> dict[str, np.ndarray]:
    """Trilinear samples of each source map at ``points_lps`` (3, z, y, x); ``modes`` gives a
    map's (boundary mode, fill value), default constant 0 outside the source."""
    index = lps_to_index(source_grid, points_lps)
    modes = modes or {}
    out = {}
    for key, array in maps.items():
        mode, cval = modes.get(key, ("constant", 0.0))
        out[key] = sample(array, index, order=1, mode=mode, cval=cval)
    return out
