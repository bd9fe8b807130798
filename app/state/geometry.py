"""Plane geometry: which index axis each screen axis of an axial/coronal/sagittal view shows
(permute and flip only, no resampling, radiological convention), the orientation letters at the
edges, and the mapping between view millimetres, voxel indices and patient LPS millimetres."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.io import Volume


class Plane(str, Enum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


# LPS axes: 0 = x (towards the patient's Left), 1 = y (Posterior), 2 = z (Superior).
# Per plane: the LPS axis through the slices, then for the screen's column and row axes the LPS
# axis shown and its sign pointing screen-right / screen-down.
_LAYOUT = {
    Plane.AXIAL: (2, (0, +1), (1, +1)),      # patient's right on screen left, anterior up
    Plane.CORONAL: (1, (0, +1), (2, -1)),    # right on the left, superior up
    Plane.SAGITTAL: (0, (1, +1), (2, -1)),   # anterior on the left, superior up
}
_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


def nearest_axes(direction: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each LPS axis, the index axis (0=x, 1=y, 2=z) most aligned with it, and the sign."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    perm = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[a, p[a]]) for a in range(3)))
    signs = tuple(1 if d[a, perm[a]] >= 0 else -1 for a in range(3))
    return tuple(perm), signs


def direction_letters(vector: np.ndarray, threshold: float = 0.3) -> str:
    """Letters of the directions a vector points to, strongest first: e.g. ``L`` or ``LA``."""
    v = np.asarray(vector, dtype=float)
    order = np.argsort(-np.abs(v))
    big = [i for i in order if abs(v[i]) >= threshold * abs(v[order[0]])]
    return "".join(_LETTERS[(int(i), 1 if v[i] > 0 else -1)] for i in big)


@dataclass(frozen=True)
class PlaneGeometry:
    """One plane of one volume. View coordinates are millimetres from the image's top-left
    corner; pixel (column c, row r) covers [c·du, (c+1)·du] × [r·dv, (r+1)·dv]."""

    plane: Plane
    normal_axis: int
    col_axis: int
    col_flip: bool
    row_axis: int
    row_flip: bool
    size_xyz: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray              # 4×4 index (x, y, z) → LPS mm

    @classmethod
    def of(cls, volume: Volume, plane: Plane | str) -> PlaneGeometry:
        plane = Plane(plane)
        perm, signs = nearest_axes(volume.direction_matrix)
        normal, (col_lps, col_sign), (row_lps, row_sign) = _LAYOUT[plane]
        return cls(plane, perm[normal], perm[col_lps], signs[col_lps] != col_sign,
                   perm[row_lps], signs[row_lps] != row_sign, volume.size_xyz, volume.spacing,
                   volume.index_to_lps())

    @property
    def n_slices(self) -> int:
        return self.size_xyz[self.normal_axis]

    @property
    def image_shape(self) -> tuple[int, int]:
        """(rows, columns) of a slice image."""
        return (self.size_xyz[self.row_axis], self.size_xyz[self.col_axis])

    @property
    def pixel_size(self) -> tuple[float, float]:
        """(width, height) of one screen pixel in mm."""
        return (self.spacing[self.col_axis], self.spacing[self.row_axis])

    @property
    def extent(self) -> tuple[float, float]:
        """(width, height) of the slice image in mm."""
        rows, cols = self.image_shape
        du, dv = self.pixel_size
        return (cols * du, rows * dv)

    def slice_image(self, array_zyx: np.ndarray, k: int) -> np.ndarray:
        """Slice ``k`` as a (rows, columns) image oriented for the screen."""
        index: list[object] = [slice(None)] * 3
        index[2 - self.normal_axis] = int(k)
        image = array_zyx[tuple(index)]
        remaining = [j for j in (2, 1, 0) if j != self.normal_axis]
        if remaining[0] != self.row_axis:
            image = image.T
        if self.row_flip:
            image = image[::-1]
        if self.col_flip:
            image = image[:, ::-1]
        return image

    def _along(self, axis: int, flip: bool, value: float) -> float:
        return self.size_xyz[axis] - 1 - value if flip else value

    def view_to_index(self, u: float, v: float, k: float) -> np.ndarray:
        """View mm (u right, v down) on slice ``k`` → continuous voxel index (x, y, z)."""
        du, dv = self.pixel_size
        index = np.zeros(3)
        index[self.col_axis] = self._along(self.col_axis, self.col_flip, u / du - 0.5)
        index[self.row_axis] = self._along(self.row_axis, self.row_flip, v / dv - 0.5)
        index[self.normal_axis] = k
        return index

    def index_to_view(self, index_xyz: np.ndarray) -> tuple[float, float, float]:
        """Continuous voxel index → (u mm, v mm, continuous slice number)."""
        du, dv = self.pixel_size
        col = self._along(self.col_axis, self.col_flip, float(index_xyz[self.col_axis]))
        row = self._along(self.row_axis, self.row_flip, float(index_xyz[self.row_axis]))
        return ((col + 0.5) * du, (row + 0.5) * dv, float(index_xyz[self.normal_axis]))

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        return np.linalg.solve(self.affine, np.append(np.asarray(lps, dtype=float), 1.0))[:3]

    def index_to_lps(self, index_xyz: np.ndarray) -> np.ndarray:
        return (self.affine @ np.append(np.asarray(index_xyz, dtype=float), 1.0))[:3]

    def slice_of(self, lps: np.ndarray) -> int:
        """The slice nearest to a point (clipped into the volume)."""
        k = self.lps_to_index(lps)[self.normal_axis]
        return int(np.clip(np.rint(k), 0, self.n_slices - 1))

    def edge_labels(self) -> dict[str, str]:
        """Orientation letters for the ``left``, ``right``, ``top`` and ``bottom`` edges."""
        d = self.affine[:3, :3] / np.asarray(self.spacing)
        right = d[:, self.col_axis] * (-1 if self.col_flip else 1)
        down = d[:, self.row_axis] * (-1 if self.row_flip else 1)
        return {"left": direction_letters(-right), "right": direction_letters(right),
                "top": direction_letters(-down), "bottom": direction_letters(down)}
