"""Whether two scans of one subject on different grids lie in one place (engine/tasks/alignment.py): a
daily CBCT a few millimetres and degrees off its planning CT, or an MR contrast that moved, is found;
scans the headers place right are not flagged, across modalities; validation leaves such a pair out,
saying how to register it, and leaves out a volume of another frame of reference."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine.io import save
from engine.io.itk_files import load_file, volume_from_sitk, volume_to_sitk
from engine.tasks.alignment import misalignment

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo"


def on_grid(volume, size, spacing, shift_mm=(0.0, 0.0, 0.0), degrees=0.0):
    """``volume`` resampled onto a grid of ``size`` × ``spacing`` centred on it, its anatomy moved by
    ``shift_mm`` and turned ``degrees`` about z (a patient who moved between two scans)."""
    centre = np.asarray(volume.origin) + np.asarray(volume.spacing) * (np.asarray(volume.size_xyz) - 1) / 2
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin(tuple(centre - np.asarray(spacing) * (np.asarray(size) - 1) / 2))
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre.tolist())
    motion.SetRotation(0.0, 0.0, math.radians(degrees))
    motion.SetTranslation(tuple(-np.asarray(shift_mm)))
    background = float(volume.array.min())
    moved = sitk.Resample(volume_to_sitk(volume), grid, motion, sitk.sitkLinear, background)
    return volume_from_sitk(moved).replace(modality=volume.modality, unit=volume.unit)


@pytest.fixture(scope="module")
def head():
    return (load_file(DEMO / "head" / "CT.nii.gz").replace(modality="CT"),
            load_file(DEMO / "head" / "CBCT.nii.gz").replace(modality="CBCT"))


def test_a_daily_cbct_off_its_planning_ct_is_found_and_one_in_place_is_not(head):
    ct, cbct = head
    planning = on_grid(ct, (96, 96, 24), (2.6, 2.6, 3.0))
    assert misalignment(on_grid(cbct, (80, 80, 40), (2.0, 2.0, 1.0)), planning) is None
    found = misalignment(on_grid(cbct, (80, 80, 40), (2.0, 2.0, 1.0), (8.0, -6.0, 4.0), 4.0), planning)
    assert found is not None and 6.0 <= found[0] <= 16.0 and found[1] >= 0.1


def test_mr_contrasts_are_compared_by_their_edges():
    t1 = load_file(DEMO / "brain" / "T1.nii.gz").replace(modality="T1")
    t2 = load_file(DEMO / "brain" / "T2.nii.gz").replace(modality="T2")
    fixed = on_grid(t1, (64, 64, 40), (3.0, 3.0, 3.0))
    assert misalignment(on_grid(t2, (100, 100, 60), (2.0, 2.0, 2.0)), fixed) is None
    assert misalignment(on_grid(t2, (100, 100, 60), (2.0, 2.0, 2.0), (0.0, 9.0, 0.0)), fixed) is not None


def test_validation_leaves_out_a_misaligned_pair_and_one_of_another_frame_saying_how_to_register_it(tmp_path, head):
    from dicom_fixtures import write_series

    from engine.tasks import validate_dataset
    from engine.tasks.prepare import misaligned_volumes

    ct, cbct = head
    for name, shift in (("P01", (0.0, 0.0, 0.0)), ("P02", (8.0, -6.0, 4.0))):
        save(on_grid(ct, (96, 96, 24), (2.6, 2.6, 3.0)), tmp_path / "ds" / name / "CT.nii.gz")
        save(on_grid(cbct, (80, 80, 40), (2.0, 2.0, 1.0), shift, 4.0 if any(shift) else 0.0),
             tmp_path / "ds" / name / "CBCT.nii.gz")
    for modality, frame in (("CT", "1.2.3.1"), ("CBCT", "1.2.3.2")):            # two frames of reference
        moved = on_grid(ct if modality == "CT" else cbct, (32, 32, 8), (6.0, 6.0, 6.0) if modality == "CT" else (5.0, 5.0, 5.0))
        stored = np.clip(moved.array + 1024, 0, 4000).astype(np.int16)
        write_series(tmp_path / "ds" / "P03" / modality, stored, spacing=moved.spacing, origin=moved.origin,
                     direction=moved.direction, modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2",
                     intercept=-1024.0, frame_uid=frame)
    report = validate_dataset(tmp_path / "ds")
    found = {(p.subject, p.kind): p.message for p in report.problems if p.kind != "single_modality"}
    assert set(found) == {("P02", "misaligned"), ("P03", "other_frame")}, report.problems
    assert "lies about" in found[("P02", "misaligned")] and "fine-tuning wizard" in found[("P02", "misaligned")]
    assert [s.name for s in report.subjects] == ["P01"]
    assert {(m.subject, m.needs_it) for m in misaligned_volumes(report)} >= {("P02", True), ("P03", True)}


def test_a_misaligned_volume_whose_registration_is_not_applied_is_left_out_of_the_prepared_dataset(
        tmp_path, head, monkeypatch):
    """Written as its header placed it, it had passed the prepared dataset's check (one grid) and been
    trained on: the very pair validation had refused."""
    from engine.tasks import prepare, validate_dataset
    from engine.tasks.registration import RigidRegistration

    ct, cbct = head
    for name, shift in (("P01", (0.0, 0.0, 0.0)), ("P02", (8.0, -6.0, 4.0))):
        save(on_grid(ct, (96, 96, 24), (2.6, 2.6, 3.0)), tmp_path / "ds" / name / "CT.nii.gz")
        save(on_grid(cbct, (80, 80, 40), (2.0, 2.0, 1.0), shift), tmp_path / "ds" / name / "CBCT.nii.gz")
    report = validate_dataset(tmp_path / "ds")
    worse = RigidRegistration((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0), mi_before=0.40, mi_after=0.39)
    monkeypatch.setattr(prepare, "register_rigid", lambda *args, **kwargs: worse)
    ticked = [m for m in prepare.misaligned_volumes(report) if m.needs_it]              # as the wizard ticks them
    done = prepare.prepare_dataset(report, tmp_path / "prepared", register=ticked)
    (shown,) = done.registered
    assert shown.left_out and shown.describe().endswith("the volume is left out") and done.skipped == ["P02"]
    assert not (tmp_path / "prepared" / "P02").exists()
    assert [s.name for s in validate_dataset(tmp_path / "prepared").subjects] == ["P01"]
