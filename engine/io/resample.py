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


def resample_onto(volume: Volume, grid: Volume, note: str = "", average: bool = False) -> Volume:
    """``volume`` on ``grid``'s voxels, keeping its own modality, unit, name and notes (plus ``note``,
    by default one naming the grid); outside its field of view: its smallest finite value. The same
    volume when the grids already agree. ``average``: where the grid's voxels are larger, each takes the
    mean over its extent (Gaussian, FWHM the difference in size) rather than the value at its centre — a
    1 mm CBCT on a CT's 3 mm slices is their slab, as the CT's own slices are."""
    if volume.same_grid(grid):
        return volume
    finite = volume.array[np.isfinite(volume.array)]
    background = float(finite.min()) if finite.size else 0.0
    source = volume.with_array(_averaged(volume, grid)) if average else volume
    moved = sitk.Resample(volume_to_sitk(source), _grid(grid), sitk.Transform(), sitk.sitkLinear, background,
                          sitk.sitkFloat32)
    note = note or f"resampled onto the grid of {grid.name or 'the reference'}"
    return grid.with_array(sitk.GetArrayFromImage(moved).astype(np.float32, copy=False), name=volume.name,
                           modality=volume.modality, unit=volume.unit, source=volume.source,
                           notes=(*volume.notes, note), dicom={})


def _averaged(volume: Volume, grid: Volume) -> np.ndarray:
    """``volume``'s array smoothed along each of its axes by what ``grid``'s voxels span there beyond its
    own (σ = √(T² − s²) / 2.355, T the grid voxel's extent along the axis); unchanged where they are not larger."""
    from scipy import ndimage

    own = np.asarray(volume.direction_matrix)                   # columns: the volume's x, y, z axes in LPS
    theirs = np.asarray(grid.direction_matrix) * np.asarray(grid.spacing)
    extent = np.abs(own.T @ theirs).sum(axis=1)                 # a grid voxel's span along each of our axes
    sigma_xyz = [np.sqrt(max(t * t - s * s, 0.0)) / 2.355 / s for t, s in zip(extent, volume.spacing)]
    if max(sigma_xyz) < 0.3:
        return np.asarray(volume.array)
    return ndimage.gaussian_filter(np.asarray(volume.array, dtype=np.float32), sigma_xyz[::-1], mode="nearest")


def inside(volume: Volume, grid: Volume) -> np.ndarray:
    """The mask of ``grid``'s voxels that lie inside ``volume``'s field of view."""
    if volume.same_grid(grid):
        return np.ones(grid.shape, dtype=bool)
    ones = volume_to_sitk(volume.with_array(np.ones(volume.shape, np.float32)))
    moved = sitk.Resample(ones, _grid(grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved) > 0.5
