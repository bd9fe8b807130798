"""One volume on another's grid: geometry and identity kept, voxels outside its field of view marked
and filled with its smallest finite value, the same volume when the grids agree."""
from __future__ import annotations

import numpy as np
import pytest

from engine.io import Volume
from engine.io.resample import inside, resample_onto


def _ct() -> Volume:
    array = np.where(np.indices((12, 20, 20))[1] > 4, 40.0, -1000.0).astype(np.float32)
    return Volume(array, spacing=(1.0, 1.0, 2.0), modality="CT", unit="HU", name="CT")


def test_resampling_keeps_geometry_and_marks_outside_voxels():
    grid = _ct().replace(name="sCT")
    shifted = _ct().replace(origin=(0.0, 10.0, 0.0), notes=("from scanner A",))
    shifted.array[0, 0, 0] = np.nan
    moved = resample_onto(shifted, grid)
    assert moved.same_grid(grid) and (moved.name, moved.modality, moved.unit) == ("CT", "CT", "HU")
    assert moved.notes == ("from scanner A", "resampled onto the grid of sCT")
    covered = inside(shifted, grid)
    assert not covered[:, :10, :].any() and covered[:, 10:, :].all()
    assert np.all(moved.array[:, :10, :] == -1000.0)                       # outside: its smallest finite value
    np.testing.assert_allclose(moved.array[:, 15:, :], 40.0)               # y 15… here is y 5… there
    np.testing.assert_allclose(moved.array[1:, 10:15, :], -1000.0)


def test_a_volume_already_on_the_grid_comes_back_as_it_is():
    ct = _ct()
    assert resample_onto(ct, ct.replace(name="other")) is ct and inside(ct, ct).all()


def test_onto_thicker_slices_averaged_is_the_slab_not_the_slice_at_its_centre():
    """A 1 mm CBCT brought onto a CT's 3 mm slices had been sampled at their centres (aliased)."""
    fine = np.zeros((30, 4, 4), np.float32)
    fine[::2] = 100.0                                           # alternate 1 mm slices: a pattern finer than 3 mm
    volume = Volume(fine, spacing=(1.0, 1.0, 1.0), modality="CBCT", unit="HU")
    grid = Volume(np.zeros((10, 4, 4), np.float32), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 1.0))
    sampled = resample_onto(volume, grid).array[2:-2]
    averaged = resample_onto(volume, grid, average=True).array[2:-2]
    assert np.ptp(sampled) == pytest.approx(100.0)              # each thick slice one thin one: 0 or 100
    assert np.all(np.abs(averaged - 50.0) < 12.0)               # each the mean of its slab
    same = Volume(fine, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.5))
    assert np.allclose(resample_onto(volume, same, average=True).array[1:-1], resample_onto(volume, same).array[1:-1])
