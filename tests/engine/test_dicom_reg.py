"""Spatial registrations stored beside images (DICOM REG): a planning system's matrix is read for both
directions between its frames, a matrix that is not rigid or a REG naming one frame is refused with
the reason, and a folder's REG objects are found among its images (preparing a dataset applies them:
test_dataset_prepare.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from dicom_fixtures import rotation, write_series
from dicom_objects import write_registration

from engine.io.dicom_reg import find_registrations, frame_matrix, read_registration

PLANNING, DAILY, OTHER = "1.2.3.100", "1.2.3.200", "1.2.3.300"


def rigid(angle: float, shift) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([0.2, 0.1, 1.0], angle)
    matrix[:3, 3] = shift
    return matrix


def test_a_stored_matrix_is_read_for_both_directions_between_its_frames(tmp_path):
    m = rigid(0.1, (12.5, -30.0, 4.0))
    registration, problem = read_registration(write_registration(tmp_path / "reg.dcm", PLANNING, {DAILY: m}))
    assert problem == "" and registration.frame == PLANNING and registration.description == "CBCT to planning CT"
    assert np.allclose(registration.between(DAILY, PLANNING), m, atol=1e-5)
    assert np.allclose(registration.between(PLANNING, DAILY), np.linalg.inv(m), atol=1e-5)
    assert registration.between(DAILY, OTHER) is None
    assert frame_matrix([registration], OTHER, PLANNING) is None
    matrix, by = frame_matrix([registration], DAILY, PLANNING)
    assert by is registration and np.allclose(matrix, m, atol=1e-5)


def test_two_moving_frames_of_one_reg_are_related_through_its_own(tmp_path):
    a, b = rigid(0.1, (5.0, 0.0, 0.0)), rigid(-0.2, (0.0, 7.0, 1.0))
    registration, _ = read_registration(write_registration(tmp_path / "reg.dcm", PLANNING, {DAILY: a, OTHER: b}))
    assert np.allclose(registration.between(DAILY, OTHER), np.linalg.inv(b) @ a, atol=1e-5)


def test_a_matrix_that_is_not_rigid_or_a_reg_of_one_frame_is_not_used_and_says_why(tmp_path):
    scaled = rigid(0.1, (1.0, 2.0, 3.0)) @ np.diag([1.1, 1.0, 1.0, 1.0])
    registration, problem = read_registration(write_registration(tmp_path / "scaled.dcm", PLANNING, {DAILY: scaled},
                                                                 kind="AFFINE"))
    assert registration is None and "not rigid" in problem
    registration, problem = read_registration(write_registration(tmp_path / "alone.dcm", PLANNING, {}))
    assert registration is None and "relating no other frame of reference" in problem
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert read_registration(tmp_path / "notes.txt") == (None, "")


def test_a_frame_without_a_matrix_named_twice_or_deformable_is_never_taken_for_the_same_room(tmp_path):
    """An item naming its frame without a matrix had been read as the identity: the CBCT "placed" as if
    both frames were one room's coordinates."""
    import pydicom

    from engine.io.dicom_reg import DEFORMABLE_REGISTRATION, registration_from

    path = write_registration(tmp_path / "reg.dcm", PLANNING, {DAILY: rigid(0.1, (5.0, 0.0, 0.0))})
    ds = pydicom.dcmread(path)
    del ds.RegistrationSequence[1].MatrixRegistrationSequence
    assert registration_from(ds, path) == (None, f"frame {DAILY} is named without a matrix; not used")
    ds = pydicom.dcmread(path)
    ds.RegistrationSequence.append(ds.RegistrationSequence[1])
    assert "named twice" in registration_from(ds, path)[1]
    ds = pydicom.dcmread(path)
    del ds.FrameOfReferenceUID
    assert "no frame of reference of its own" in registration_from(ds, path)[1]
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = DEFORMABLE_REGISTRATION
    assert "deformable" in registration_from(ds, path)[1]


def test_a_folder_s_registrations_are_found_among_its_images(tmp_path):
    write_series(tmp_path / "CT", np.zeros((3, 8, 8), np.int16))
    write_registration(tmp_path / "REG" / "good.dcm", PLANNING, {DAILY: rigid(0.05, (1.0, 1.0, 1.0))})
    write_registration(tmp_path / "REG" / "scaled.dcm", PLANNING, {DAILY: np.diag([2.0, 2.0, 2.0, 1.0])})
    found, problems = find_registrations(tmp_path)
    assert [r.describe() for r in found] == ["good.dcm (CBCT to planning CT)"]
    assert len(problems) == 1 and "scaled.dcm" in problems[0]



def test_scanning_a_folder_keeps_its_registrations_and_lists_an_unusable_one_as_skipped(tmp_path):
    import engine.io as io

    write_series(tmp_path / "CT", np.zeros((3, 8, 8), np.int16))
    write_registration(tmp_path / "good.dcm", PLANNING, {DAILY: rigid(0.05, (1.0, 1.0, 1.0))})
    write_registration(tmp_path / "scaled.dcm", PLANNING, {DAILY: np.diag([2.0, 2.0, 2.0, 1.0])})
    catalog = io.scan(tmp_path)
    assert len(catalog.entries) == 1 and [r.describe() for r in catalog.registrations] == [
        "good.dcm (CBCT to planning CT)"]
    reasons = {Path(s.path).name: s.reason for s in catalog.skipped}
    assert "good.dcm" not in reasons and reasons["scaled.dcm"].startswith("the registration of frame")
    assert "not rigid" in reasons["scaled.dcm"] and "scaled.dcm" not in reasons["scaled.dcm"]   # the path once


def test_a_registration_alone_is_said_to_be_one_and_kept_when_asked(tmp_path):
    """A REG file or a folder of REGs had been "not a supported image": now said what it is and where it is
    used, and ``keep_registrations`` (the app's opening) gives a catalog of them instead of the error."""
    import pytest

    import engine.io as io

    reg = write_registration(tmp_path / "REG" / "REG0001.dcm", PLANNING, {DAILY: rigid(0.05, (1.0, 1.0, 1.0))})
    for path in (reg, reg.parent):
        with pytest.raises(io.VolumeIOError, match=r"spatial registration\(s\) \(DICOM REG: REG0001.dcm \(CBCT to "
                                                   r"planning CT\)\), not an image \(synthesize --reference takes"):
            io.scan(path)
        catalog = io.scan(path, keep_registrations=True)
        assert catalog.entries == [] and [r.frame for r in catalog.registrations] == [PLANNING]
    (tmp_path / "notes.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(io.VolumeIOError, match="not a DICOM file"):         # no REG: refused as before
        io.scan(tmp_path / "notes.dcm", keep_registrations=True)


def test_two_registrations_of_one_pair_that_disagree_are_both_refused_and_agreeing_ones_used(tmp_path):
    """The first by file name had been applied silently, however wrong."""
    import pytest

    from engine.io.dicom_reg import ConflictingRegistrations

    right = rigid(0.05, (10.0, 0.0, 0.0))
    first, _ = read_registration(write_registration(tmp_path / "a_wrong.dcm", PLANNING, {DAILY: rigid(0.35, (50.0, 0, 0))}))
    second, _ = read_registration(write_registration(tmp_path / "b_right.dcm", PLANNING, {DAILY: right}))
    with pytest.raises(ConflictingRegistrations, match="a_wrong.dcm and .*b_right.dcm place frame"):
        frame_matrix([first, second], DAILY, PLANNING)
    again, _ = read_registration(write_registration(tmp_path / "c_again.dcm", PLANNING, {DAILY: right @ rigid(
        0.001, (0.2, 0.0, 0.0))}))
    matrix, by = frame_matrix([second, again], DAILY, PLANNING)            # within 1 mm and 0.5°: one placement
    assert by is second and np.allclose(matrix, right, atol=1e-5)


def test_registrations_are_looked_for_in_the_scans_folders_and_their_patient_folder(tmp_path):
    """INPUT PAT01/CBCT and REF PAT01/CT, the REG in PAT01/REG: found through their common folder (at most
    two levels up), never by walking far above them."""
    from engine.io.dicom_reg import registrations_beside

    patient = tmp_path / "export" / "PAT01"
    write_series(patient / "CT", np.zeros((3, 8, 8), np.int16))
    write_series(patient / "CBCT", np.zeros((3, 8, 8), np.int16))
    write_registration(patient / "REG" / "reg.dcm", PLANNING, {DAILY: rigid(0.05, (1.0, 1.0, 1.0))})
    write_registration(tmp_path / "elsewhere.dcm", PLANNING, {OTHER: rigid(0.05, (1.0, 1.0, 1.0))})
    found, problems = registrations_beside([patient / "CBCT", patient / "CT"])
    assert [Path(r.path).name for r in found] == ["reg.dcm"] and problems == []
    far = tmp_path / "a" / "b" / "c"
    write_series(far, np.zeros((3, 8, 8), np.int16))
    found, _ = registrations_beside([far, patient / "CT"])                   # common folder: tmp_path, too far up
    assert found == []


def test_registrations_are_compared_where_the_scan_lies_not_at_the_frames_origin(tmp_path):
    """0.3° apart agree at the origin but place a scan 700 mm from it 3.7 mm apart: not the same placement."""
    import pytest

    from engine.io.dicom_reg import ConflictingRegistrations

    one, _ = read_registration(write_registration(tmp_path / "a.dcm", PLANNING, {DAILY: rigid(0.0, (5.0, 0, 0))}))
    two, _ = read_registration(write_registration(tmp_path / "b.dcm", PLANNING, {DAILY: rigid(np.radians(0.3),
                                                                                                 (5.0, 0, 0))}))
    assert frame_matrix([one, two], DAILY, PLANNING) is not None                       # at the origin: alike
    with pytest.raises(ConflictingRegistrations, match="where the scan lies"):
        frame_matrix([one, two], DAILY, PLANNING, at=np.array([[700.0, 0.0, 0.0], [700.0, 50.0, 0.0]]))
