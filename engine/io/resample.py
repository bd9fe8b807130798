"""One volume brought onto another's voxel grid in physical space (identity transform, linear
interpolation): for scoring against a reference, for a dataset's subject grid, for the comparison."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from engine.io.itk_files import volume_to_sitk
from engine.io.volume import Volume


def _grid(grid: Volume) -> sitk.Image:
    image = sitk.Image([int(s) for s in grid.size_xyz], sitk.sitkFloat32)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def resample_onto(volume: Volume, grid: Volume, note: str = "") -> Volume:
    """``volume`` on ``grid``'s voxels, keeping its own modality, unit, name and notes (plus ``note``,
    by default one naming the grid); outside its field of view: its smallest finite value. The same
    volume when the grids already agree."""
    if volume.same_grid(grid):
        return volume
    finite = volume.array[np.isfinite(volume.array)]
    background = float(finite.min()) if finite.size else 0.0
    moved = sitk.Resample(volume_to_sitk(volume), _grid(grid), sitk.Transform(), sitk.sitkLinear, background,
                          sitk.sitkFloat32)
    note = note or f"resampled onto the grid of {grid.name or 'the reference'}"
    return grid.with_array(sitk.GetArrayFromImage(moved).astype(np.float32, copy=False), name=volume.name,
                           modality=volume.modality, unit=volume.unit, source=volume.source,
                           notes=(*volume.notes, note), dicom={})


def inside(volume: Volume, grid: Volume) -> np.ndarray:
    """The mask of ``grid``'s voxels that lie inside ``volume``'s field of view."""
    if volume.same_grid(grid):
        return np.ones(grid.shape, dtype=bool)
    ones = volume_to_sitk(volume.with_array(np.ones(volume.shape, np.float32)))
    moved = sitk.Resample(ones, _grid(grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved) > 0.5
