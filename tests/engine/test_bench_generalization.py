"""The generalization sets of ``bench quality`` (engine.evaluation.shifts / generalization): each
shift gives the intended geometry and shifts the reference identically, the out-of-range CBCT lies
outside the training ranges whatever they are, the real-data hold-out is found and refuses to be
training data, and the Markdown labels every set with an identity row. (The end-to-end run with the
quick recipe is checked in test_bench_quality.py.)"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.demo_data.ct import CBCTSpec
from engine.evaluation import generalization as gen
from engine.evaluation import shifts
from engine.evaluation.synthesis_eval import score_volume
from engine.io.volume import Volume
from engine.tasks import PairedDataset, holdout
from engine.tasks.phantoms import phantom_labels, phantom_volume, write_phantom_dataset


def _volume(modality: str, spacing=(0.8, 0.8, 2.0), shape=(12, 48, 40), origin=(5.0, -7.0, 3.0)) -> Volume:
    labels = phantom_labels(shape, seed=0)
    return Volume(phantom_volume(labels, modality, 0), spacing=spacing, origin=origin, modality=modality,
                  unit="HU" if modality in ("CT", "CBCT") else "a.u.")


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> PairedDataset:
    root = write_phantom_dataset(tmp_path_factory.mktemp("gen") / "data", subjects=2, modality_names=("T1", "T2"),
                                 shape=(12, 40, 48), spacing=(0.8, 0.8, 2.0),
                                 split={"train": ["sub01"], "test": ["sub02", "ct01"]})
    return PairedDataset.open(root)


def _physical_extent(volume: Volume) -> np.ndarray:
    return np.asarray(volume.spacing) * np.asarray(volume.size_xyz)


# -- shifts ---------------------------------------------------------------------------------------
def test_the_crop_is_a_smaller_field_of_view_on_the_same_grid_points():
    volume = _volume("T1")
    shift = shifts.crop(volume, "T1")
    cropped = shift(volume)
    assert cropped.spacing == volume.spacing and cropped.shape[0] == volume.shape[0]       # slices kept
    assert cropped.shape[1] < volume.shape[1] and cropped.shape[2] < volume.shape[2]
    (z0, z1), (y0, y1), (x0, x1) = shifts.crop_box(volume, "T1")
    np.testing.assert_allclose(cropped.array, volume.array[z0:z1, y0:y1, x0:x1], atol=1e-3)   # no interpolation
    np.testing.assert_allclose(cropped.index_to_lps() @ [0, 0, 0, 1], volume.index_to_lps() @ [x0, y0, z0, 1])
    # the body fills the slice: its bounding box + 2 mm (3 pixels of 0.8 mm) reaches the edges
    from engine import modalities
    body = modalities.body_mask(cropped.array, "T1")
    assert body.any(axis=(0, 2))[3] and body.any(axis=(0, 1))[-4]


def test_the_pad_is_a_wider_field_of_view_with_background_and_the_same_spacing():
    for modality, air in (("T2", 0.0), ("CT", -1000.0)):
        volume = _volume(modality)
        padded = shifts.pad(volume)(volume)
        assert padded.spacing == volume.spacing and padded.shape[0] == volume.shape[0]
        assert padded.shape[1:] == (round(48 * 1.6), round(40 * 1.6))
        oy, ox = (padded.shape[1] - 48) // 2, (padded.shape[2] - 40) // 2
        np.testing.assert_allclose(padded.array[:, oy:oy + 48, ox:ox + 40], volume.array, atol=1e-3)
        assert padded.array[:, 0, 0].tolist() == [air] * volume.shape[0]
        # the same physical place: the original first voxel sits at index (ox, oy, 0) of the padded grid
        np.testing.assert_allclose(padded.index_to_lps() @ [ox, oy, 0, 1], volume.index_to_lps() @ [0, 0, 0, 1])


def test_the_coarser_version_has_larger_pixels_thicker_slices_and_the_same_extent():
    volume = _volume("T1")
    coarse = shifts.coarser(volume)(volume)
    assert coarse.spacing[0] == pytest.approx(0.8 * 1.5, rel=0.05) and coarse.spacing[2] == pytest.approx(4.0)
    assert coarse.shape == (6, 32, round(40 / 1.5))
    np.testing.assert_allclose(_physical_extent(coarse), _physical_extent(volume), atol=1e-6)
    # the outer edges of the field of view coincide
    first_edge = lambda v: v.index_to_lps() @ [-0.5, -0.5, -0.5, 1]    # noqa: E731
    np.testing.assert_allclose(first_edge(coarse), first_edge(volume), atol=1e-6)


@pytest.mark.parametrize("key", list(shifts.SHIFTS))
def test_every_shift_moves_source_and_reference_identically(paired, key):
    shifted = gen.shifted_set(paired, "test", key, [("T1", "T2"), ("CBCT", "CT")])
    assert sorted(shifted.subject_names()) == ["ct01", "sub02"]
    for subject, (a, b) in (("sub02", ("T1", "T2")), ("ct01", ("CBCT", "CT"))):
        source, reference = shifted.volume(subject, a), shifted.volume(subject, b)
        original = paired.volume(subject, a)
        assert source.same_grid(reference) and not source.same_grid(original)
        # the two scores on the shifted grid need no resampling: exactly the same voxels
        assert score_volume(reference, reference, b).whole.ssim == pytest.approx(100.0)
        assert shifted.details[subject]["to"]["shape_zyx"] == list(source.shape)
    if key == "fov_pad":                                 # each modality's own background outside
        assert shifted.volume("ct01", "CT").array[0, 0, 0] == shifted.volume("ct01", "CBCT").array[0, 0, 0] == -1000.0
        assert shifted.volume("sub02", "T1").array[0, 0, 0] == shifted.volume("sub02", "T2").array[0, 0, 0] == 0.0
    assert shifted.subject("sub02").routes == (("T1", "T2"),)


# -- CBCT outside the training ranges ---------------------------------------------------------------
def _outside(value_range: tuple, training_range: tuple) -> bool:
    """Whether ``value_range`` (lo, hi) lies entirely outside ``training_range`` (no overlap)."""
    return value_range[1] < training_range[0] or value_range[0] > training_range[1]


def _assert_outside(specs: dict, training: CBCTSpec) -> None:
    for side, spec in specs.items():
        for name in shifts.OUT_OF_RANGE_RULES:
            assert _outside(getattr(spec, name), getattr(training, name)), (side, name, getattr(spec, name))
        for name in shifts.KEPT_IN_RANGE:
            assert getattr(spec, name) == getattr(training, name)
    above, below = specs["above"], specs["below"]
    for name in ("hu_offset", "hu_scale", "cupping"):     # signed calibrations: beyond either end
        assert min(getattr(above, name)) > max(getattr(training, name))
        assert max(getattr(below, name)) < min(getattr(training, name))


def test_the_out_of_range_cbct_lies_outside_the_training_ranges():
    training = CBCTSpec()
    _assert_outside(gen.shifts.out_of_range_specs(), training)
    # derived, not copied: other training ranges give other shifted ones, still outside
    other = dataclasses.replace(training, hu_offset=(-20.0, 400.0), noise_hu=(2.0, 60.0), views=(90, 200),
                                cupping=(0.0, 0.3), hu_scale=(0.5, 1.5))
    moved = shifts.out_of_range_specs(other)
    _assert_outside(moved, other)
    assert moved["above"].hu_offset != shifts.out_of_range_specs()["above"].hu_offset


def test_the_simulated_cbct_is_drawn_outside_the_training_ranges_and_is_seeded(paired):
    volumes = gen.cbct_set(paired, "test")
    assert volumes.subject_names() == ["ct01 (above)", "ct01 (below)"]
    first = volumes.volume("ct01 (above)", "CBCT")
    assert first.same_grid(paired.volume("ct01", "CT")) and first.modality == "CBCT"
    training = CBCTSpec()
    for subject in volumes.subject_names():
        volumes.volume(subject, "CBCT")
        params = volumes.details[subject]["params"]
        assert not training.views[0] <= params["views"] <= training.views[1]
        assert not training.hu_offset[0] <= params["hu_offset"] <= training.hu_offset[1]
        assert not training.noise_hu[0] <= params["noise_hu"] <= training.noise_hu[1]
    again = gen.cbct_set(paired, "test").volume("ct01 (above)", "CBCT")
    np.testing.assert_array_equal(again.array, first.array)


def test_the_cbct_s_own_error_and_the_fraction_removed(paired):
    assert gen.error_removed(100.0, 40.0) == pytest.approx(0.6)
    assert gen.error_removed(100.0, 150.0) == pytest.approx(-0.5) and gen.error_removed(0.0, 1.0) is None
    from engine.baselines import IntensityMatch
    volumes = gen.cbct_set(paired, "test")
    own = gen.cbct_as_is(IntensityMatch.fit(paired, 32), volumes, 2)
    assert own["ct_mae_hu_body"] > 100.0             # ±300 HU offset, ×1.2 / ×0.8 scale


# -- the real-data hold-out ------------------------------------------------------------------------
def test_the_hold_out_finds_a_real_head_ct_outside_the_repository():
    found = holdout.holdout_paths("CT")
    assert found, "no real head CT found in pydicom / pydicom-data"
    folders = holdout.package_folders()
    for item, path in found:                              # read in place from the installed package
        assert folders[item.package] in path.parents and "site-packages" in path.parts
    item, path = found[0]
    volume = gen.load_holdout(item, path)
    assert volume.modality == "CT" and volume.unit == "HU" and min(volume.shape[1:]) >= 256
    assert volume.array.min() >= -1024.0 and volume.array.max() > 500.0        # air and bone
    real, listed = gen.real_ct_set()
    assert len(real.subject_names()) == 2 * sum("error" not in f for f in listed) >= 2
    assert real.volume(real.subject_names()[0], "CBCT").same_grid(real.volume(real.subject_names()[0], "CT"))


# -- printing -----------------------------------------------------------------------------------------
def _row(key: str, ssim, mae, removed=None) -> dict:
    return {"key": key, "label": f"{key} label", "mr_ssim_body": ssim, "ct_mae_hu_body": mae,
            "ct_error_removed": removed}


def test_the_markdown_has_a_labelled_block_per_set_with_an_identity_row():
    report = {"routes": ["T1→T2", "CBCT→CT"], "max_slices": 4,
              "rows": [{"key": "identity", "label": "identity label"}, {"key": "stage12", "label": "stage12 label"}],
              "cbct_specs": {s: v.to_dict() for s, v in shifts.out_of_range_specs().items()},
              "cbct_kept_in_range": list(shifts.KEPT_IN_RANGE), "cbct_widest": list(shifts.WIDEST),
              "sets": [{"key": "fov_crop", "label": gen.SET_LABELS["fov_crop"], "cbct": {"ct_mae_hu_body": 50.0},
                        "rows": [_row("identity", 40.0, 30.0, 0.4), _row("stage12", 60.0, 20.0, 0.6)]},
                       {"key": "real_ct", "label": gen.SET_LABELS["real_ct"], "skipped": "no CT"}],
              "holdout": {"ct": [{"file": "pydicom-data:693_UNCR.dcm", "what": "head CT"}], "not_used": "x"},
              "real_mr": {"files": [{"file": "nibabel:anatomical.nii", "what": "brain MR", "header": None,
                                     "identify": {"modality": "T2", "reliable": False}, "round_trip": "T1→T2→T1",
                                     "rows": {"identity": 90.0, "stage12": 50.0}}]}}
    text = "\n".join(gen.markdown_lines(report))
    assert "| set | method | MR SSIM (body) | CBCT→CT MAE HU (body) | CBCT's own MAE HU | CBCT error removed |" in text
    assert f"| {gen.SET_LABELS['fov_crop']} | identity label | 40.0 | 30.0 | 50.0 | 40 % |" in text
    assert f"| {gen.SET_LABELS['fov_crop']} | stage12 label | 60.0 | 20.0 | 50.0 | 60 % |" in text
    assert f"| {gen.SET_LABELS['real_ct']} | — (no CT) |" in text
    assert "| nibabel:anatomical.nii (brain MR) | — | T2 (guess) | T1→T2→T1 | 90.0 | 50.0 |" in text
    assert "self-consistency, not correctness" in text
    assert gen.markdown_lines(None) == []
