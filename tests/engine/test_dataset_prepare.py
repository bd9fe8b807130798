"""Preparing a trainable dataset from what researchers have: rigid registration recovers a known
motion between two contrasts of real anatomy; DICOM series in a folder tree and oddly named files are
mapped to modalities; misaligned volumes are registered onto the subject's reference; the result is a
new paired folder recording where each volume came from, written atomically, never over the source
or over a folder it did not make."""
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from training_support import unprepared_data

from engine.io import load as io_load
from engine.io import save
from engine.io.dicom_reg import find_registrations
from engine.io.itk_files import load_file, volume_from_sitk, volume_to_sitk
from engine.jobs import Cancelled, CancelToken
from engine.tasks import prepare
from engine.tasks.phantoms import write_phantom_subject
from engine.tasks.prepare import find_unnamed_series, misaligned_volumes, placements, plan_subjects, prepare_dataset
from engine.tasks.registration import overlay, register_rigid, resample_rigid
from engine.tasks.validation import DatasetError, validate_dataset

DEMO_BRAIN = Path(__file__).resolve().parents[2] / "resources" / "demo" / "brain"
SHAPE = (10, 32, 32)


def _half(path):
    """A demo volume at half resolution (3.25 mm): real anatomy, a quick registration."""
    return volume_from_sitk(sitk.Shrink(volume_to_sitk(load_file(path)), [2, 2, 2]))


def test_rigid_registration_recovers_a_known_motion_between_contrasts():
    t1, t2 = _half(DEMO_BRAIN / "T1.nii.gz"), _half(DEMO_BRAIN / "T2.nii.gz")
    centre = np.asarray(t1.origin) + np.asarray(t1.spacing) * np.asarray(t1.size_xyz) / 2
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre.tolist())
    motion.SetRotation(0.08, -0.05, 0.12)                          # 4.6°, −2.9°, 6.9°
    motion.SetTranslation((7.0, -5.0, 4.0))
    image = sitk.Resample(volume_to_sitk(t2), volume_to_sitk(t2), motion, sitk.sitkLinear, float(t2.array.min()))
    moved = t2.with_array(sitk.GetArrayFromImage(image))

    found = register_rigid(t1, moved)
    rng = np.random.default_rng(0)
    points = centre + rng.uniform(-50, 50, (100, 3))                # inside the head
    error = [np.linalg.norm(np.asarray(motion.TransformPoint(found.transform().TransformPoint(p.tolist()))) - p)
             for p in points]
    assert np.median(error) < 1.0, found.describe()                 # under a third of a voxel
    assert found.mi_after > found.mi_before
    back = resample_rigid(moved, t1, found)
    assert back.same_grid(t1) and back.modality == t2.modality
    before_corr = np.corrcoef(moved.array.ravel(), t2.array.ravel())[0, 1]
    after_corr = np.corrcoef(back.array.ravel(), t2.array.ravel())[0, 1]
    assert after_corr > 0.95 > before_corr
    image = overlay(t1, back)
    assert image.dtype == np.uint8 and image.shape[-1] == 3 and image[..., 0].max() > 0
    # the same seed, the same transform: seed 0 had been SimpleITK's "wall clock", each run sampling anew
    # (up to 0.1° and 1.6 mm apart), so one prepare command could write two different datasets
    again = register_rigid(t1, moved)
    assert np.allclose(again.moving_to_fixed(), found.moving_to_fixed(), rtol=0, atol=1e-6)   # threads: ~1e-8
    far = [register_rigid(t1, moved, seed=2**32 - 1).moving_to_fixed() for _ in range(2)]   # had overflowed
    assert np.allclose(far[0], far[1], rtol=0, atol=1e-6)


def test_registration_can_be_cancelled(tmp_path):
    t1 = load_file(write_phantom_subject(tmp_path / "s", ("T1",), shape=SHAPE)["T1"])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        register_rigid(t1, t1, cancel=token)


def test_unnamed_series_and_misaligned_volumes_are_found(tmp_path):
    report = validate_dataset(unprepared_data(tmp_path))
    assert {s.name for s in report.subjects} == {"sub01", "sub02", "sub03", "sub04"}
    choices, errors = find_unnamed_series(report)
    assert errors == []
    found = {(c.subject, c.entry.description if c.entry.kind == "dicom" else Path(c.entry.key).name): c.guess
             for c in choices}
    assert found == {("sub09", "t1_mprage_sag"): "T1", ("sub09", "t2_tse_tra"): "T2",
                     ("sub10", "3d_pd_weighted.nii.gz"): "PD"}
    misaligned, = misaligned_volumes(report)
    assert (misaligned.subject, misaligned.modality, Path(misaligned.reference).name) == ("sub04", "FLAIR",
                                                                                           "T1.nii.gz")


def test_prepare_writes_a_paired_dataset_with_its_provenance(tmp_path):
    data = unprepared_data(tmp_path)
    report = validate_dataset(data)
    choices, _ = find_unnamed_series(report)
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    progress = []
    prepared = prepare_dataset(report, tmp_path / "prepared", mapping={c: c.guess for c in choices},
                               register=misaligned_volumes(report), progress=progress.append)
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before       # only read
    assert progress[-1].fraction == 1.0 and prepared.skipped == []

    again = validate_dataset(prepared.root)
    assert again.problems == [] and again.notes == []                       # every volume named, on one grid
    assert {s.name: s.modalities for s in again.subjects} == {
        "sub01": ("T1", "T2", "FLAIR"), "sub02": ("T1", "T2", "FLAIR"), "sub03": ("T1", "T2", "FLAIR"),
        "sub04": ("T1", "T2", "FLAIR"), "sub09": ("T1", "T2"), "sub10": ("T1", "PD")}
    registered, = prepared.registered
    assert (registered.subject, registered.modality, registered.reference) == ("sub04", "FLAIR", "T1")
    assert np.allclose(registered.registration.translation, (60.0, 0.0, 0.0), atol=1.0)
    assert registered.before.shape == registered.after.shape == (32, 32, 3)
    meta = json.loads((prepared.root / "dataset.json").read_text())
    volumes = meta["prepared"]["volumes"]
    assert meta["name"] == "phantoms" and meta["anatomy"]["sub01"] == "brain" and meta["prepared"]["from"] == str(data)
    assert volumes["sub04"]["FLAIR"]["registered_onto"] == "T1"
    assert volumes["sub09"]["T2"]["series"] and volumes["sub09"]["T2"]["from"].startswith(str(data / "sub09" / "study"))
    assert volumes["sub10"]["PD"]["from"] == str(data / "sub10" / "3d_pd_weighted.nii.gz")
    assert (prepared.root / "sub01" / "T1.nii.gz").read_bytes() == (data / "sub01" / "T1.nii.gz").read_bytes()

    # the same folder again: replaced (it is ours); a choice leaving sub10's PD out drops sub10
    again = prepare_dataset(report, tmp_path / "prepared", mapping={c: c.guess if c.subject == "sub09" else ""
                                                                    for c in choices})
    assert again.skipped == ["sub10"] and not (tmp_path / "prepared" / "sub10").exists()
    assert not (tmp_path / "prepared" / "sub04" / "FLAIR.nii.gz").exists()       # not registered this time


def test_prepare_never_writes_over_data_it_did_not_make(tmp_path):
    data = unprepared_data(tmp_path)
    report = validate_dataset(data)
    choices, _ = find_unnamed_series(report)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not prepared by SynerMedGen"):
        prepare_dataset(report, tmp_path / "mine")
    with pytest.raises(ValueError, match="inside the dataset"):
        prepare_dataset(report, data / "prepared")
    both_t1 = {c: "T1" for c in choices if c.subject == "sub09"}     # sub09: two T1s and nothing else
    prepared = prepare_dataset(report, tmp_path / "both_t1", mapping=both_t1)
    assert not (prepared.root / "sub09").exists() and any(
        n.startswith("sub09: ") and "would all be its T1, with no other modality to pair them with" in n
        for n in prepared.notes)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        prepare_dataset(report, tmp_path / "out", cancel=token)
    assert not (tmp_path / "out").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no half-written folder left


def test_a_bids_dataset_is_prepared_with_its_images_of_other_suffixes_mapped_and_its_sessions_kept_together(tmp_path):
    root = tmp_path / "bids"
    for session, seed, origin in (("sub-01/ses-1", 1, (0.0, 0.0, 0.0)), ("sub-01/ses-2", 2, (0.0, 0.0, 0.0)),
                                  ("sub-02", 3, (60.0, 0.0, 0.0))):
        name = session.replace("/", "_")
        made = write_phantom_subject(tmp_path / "made" / name, ("T1", "PD"), shape=SHAPE, seed=seed)
        far = write_phantom_subject(tmp_path / "far" / name, ("T2",), shape=SHAPE, seed=seed, origin=origin)
        anat = root / session / "anat"
        anat.mkdir(parents=True)
        for path, suffix in ((made["T1"], "T1w"), (made["PD"], "T2starw"), (far["T2"], "T2w")):
            (anat / f"{name}_{suffix}.nii.gz").write_bytes(path.read_bytes())
    (root / "dataset_description.json").write_text('{"Name": "two participants", "BIDSVersion": "1.10.0"}')

    report = validate_dataset(root)
    assert {s.name: s.modalities for s in report.subjects} == {"sub-01_ses-1": ("T1", "T2"),
                                                               "sub-01_ses-2": ("T1", "T2")}
    misaligned, = misaligned_volumes(report)          # sub-02's T2 lies 60 mm away: a candidate, named by its suffix
    assert (misaligned.subject, misaligned.modality, Path(misaligned.reference).name) == ("sub-02", "T2",
                                                                                           "sub-02_T1w.nii.gz")
    choices, errors = find_unnamed_series(report)      # the T2starw images, for the user to map
    assert errors == [] and sorted((c.subject, Path(c.entry.key).name) for c in choices) == [
        (s, f"{s}_T2starw.nii.gz") for s in ("sub-01_ses-1", "sub-01_ses-2", "sub-02")]

    prepared = prepare_dataset(report, tmp_path / "prepared", mapping={c: "PD" for c in choices})
    again = validate_dataset(prepared.root)
    assert {s.name: s.modalities for s in again.subjects} == {
        "sub-01_ses-1": ("T1", "T2", "PD"), "sub-01_ses-2": ("T1", "T2", "PD"), "sub-02": ("T1", "PD")}
    meta = json.loads((prepared.root / "dataset.json").read_text())
    assert meta["name"] == "two participants"
    assert meta["subjects"] == {"sub-01_ses-1": {"participant": "sub-01"}, "sub-01_ses-2": {"participant": "sub-01"}}
    assert again.participants == {"sub-01_ses-1": "sub-01", "sub-01_ses-2": "sub-01"}   # still split together


DEMO_HEAD = DEMO_BRAIN.parent / "head"


def test_a_cbct_s_padding_is_no_mid_grey_air_and_is_left_out_of_the_registration_metric():
    """With −3024 HU outside a CBCT's field of view as the 1st percentile, air had been scaled mid-grey:
    a daily CBCT registered onto its planning CT ended 15 mm off, its mutual information lower."""
    from engine.tasks.registration import _registration_image

    cbct = load_file(DEMO_HEAD / "CBCT.nii.gz").replace(modality="CBCT")
    y, x = np.indices(cbct.shape[1:])
    outside = np.hypot(y - cbct.shape[1] / 2, x - cbct.shape[2] / 2) > 0.3 * cbct.shape[2]
    padded = cbct.with_array(np.where(outside[None], np.float32(-3024.0), cbct.array))
    image, mask = _registration_image(padded)
    scaled, kept = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask).astype(bool)
    air = (padded.array < -900) & ~outside[None]
    assert np.median(scaled[air]) < 0.05 and np.array_equal(kept, ~np.broadcast_to(outside, kept.shape))
    assert _registration_image(load_file(DEMO_HEAD / "CT.nii.gz").replace(modality="CT"))[1] is None


def test_a_registration_that_aligns_worse_than_the_headers_is_shown_but_not_applied():
    from engine.tasks.registration import RigidRegistration

    worse = RigidRegistration((0.0, 0.0, 0.1), (3.0, 0.0, 0.0), (0.0, 0.0, 0.0), mi_before=0.41, mi_after=0.37)
    assert not worse.improved and worse.describe().endswith("so not applied")


def test_a_planning_ct_and_its_daily_cbcts_become_one_subject_per_cbct_of_one_participant(tmp_path):
    """A planning system's export: one DICOM folder per patient holding the planning CT and several daily
    CBCTs. Mapped (two or three series to CBCT), the patient becomes one subject per CBCT, each beside
    the CT (written once), all of one participant, so that they land in one part of the split."""
    data = tmp_path / "export"
    for patient, seed, fractions in (("PAT01", 1, (1, 8, 15)), ("PAT02", 2, (1, 8))):
        ct = write_phantom_subject(tmp_path / "made" / patient, ("CT",), shape=SHAPE, seed=seed)["CT"]
        save(load_file(ct).replace(modality="CT"), data / patient / "series0", description="planning CT")
        for fx in fractions:
            cbct = write_phantom_subject(tmp_path / f"fx{fx}" / patient, ("CBCT",), shape=SHAPE, seed=seed + fx)
            folder = save(load_file(cbct["CBCT"]).replace(modality="CBCT"), data / patient / f"series{fx}",
                          description=f"CBCT fx{fx}")
            for path in folder.iterdir():                           # acquired on day fx, as a linac dates it
                ds = pydicom.dcmread(path)
                ds.AcquisitionDate, ds.AcquisitionTime = f"202403{fx:02d}", "081500"
                ds.save_as(path)
    (data / "dataset.json").write_text(json.dumps({"name": "rt", "anatomy": {"PAT01": "head", "*": "head"},
                                                   "split": {"train": ["PAT01"], "val": ["PAT02"], "test": []}}))
    report = validate_dataset(data)
    choices, _ = find_unnamed_series(report)
    assert sorted((c.subject, c.entry.description, c.guess) for c in choices) == [
        ("PAT01", "CBCT fx1", "CBCT"), ("PAT01", "CBCT fx15", "CBCT"), ("PAT01", "CBCT fx8", "CBCT"),
        ("PAT01", "planning CT", "CT"), ("PAT02", "CBCT fx1", "CBCT"), ("PAT02", "CBCT fx8", "CBCT"),
        ("PAT02", "planning CT", "CT")]
    prepared = prepare_dataset(report, tmp_path / "prepared", mapping={c: c.guess for c in choices})
    names = ["PAT01_CBCT_1", "PAT01_CBCT_2", "PAT01_CBCT_3", "PAT02_CBCT_1", "PAT02_CBCT_2"]
    assert prepared.split_subjects == {n: n[:5] for n in names} and prepared.skipped == []
    volumes = json.loads((prepared.root / "dataset.json").read_text())["prepared"]["volumes"]
    assert [volumes[n]["CBCT"]["description"] for n in names[:3]] == ["CBCT fx1", "CBCT fx8", "CBCT fx15"]  # by date
    assert volumes["PAT01_CBCT_2"]["CBCT"]["acquired"] == "20240308 081500"
    cts = {(prepared.root / n / "CT.nii.gz").read_bytes() for n in names[:3]}
    assert len(cts) == 1                                                    # the one planning CT, written once
    cbcts = {load_file(prepared.root / n / "CBCT.nii.gz").array.tobytes() for n in names[:3]}
    assert len(cbcts) == 3                                                  # each subject its own CBCT

    meta = json.loads((prepared.root / "dataset.json").read_text())
    assert meta["subjects"] == {n: {"participant": n[:5]} for n in names}
    assert meta["split"] == {"train": names[:3], "val": names[3:], "test": []}
    assert meta["anatomy"] == {"*": "head", **{n: "head" for n in names[:3]}}
    again = validate_dataset(prepared.root)
    assert again.problems == [] and sorted(s.name for s in again.subjects) == names
    assert again.split["train"] == names[:3] and again.split["val"] == names[3:]
    assert again.participants == {n: n[:5] for n in names}

    # the planning CT twice (a series mapped wrongly) is no pair of pairs, nor are two modalities repeated:
    # those patients are left out, saying why, the others prepared
    fx8 = next(c for c in choices if c.subject == "PAT02" and c.entry.description == "CBCT fx8")
    twice = prepare_dataset(report, tmp_path / "twice", mapping={c: c.guess for c in choices} | {fx8: "CT"})
    assert not (twice.root / "PAT02_CBCT_1").exists() and (twice.root / "PAT01_CBCT_1").exists()
    assert "PAT02: planning CT, CBCT fx8 would all be its CT, the volume the others are paired with" in twice.notes[0]
    fx1 = next(c for c in choices if c.subject == "PAT01" and c.entry.description == "CBCT fx1")
    twice = prepare_dataset(report, tmp_path / "twice", mapping={c: c.guess for c in choices} | {fx1: "CT"})
    assert not (twice.root / "PAT01_CBCT_1").exists() and "PAT01: several volumes of CT and of CBCT" in twice.notes[0]


def test_a_cbct_in_its_own_frame_of_reference_is_placed_by_the_stored_registration_else_registered(tmp_path,
                                                                                                  monkeypatch):
    """A linac's CBCT is written in its own frame of reference, with a REG object giving the clinic's
    placement in the planning CT's. Its header coordinates name other places in the room: written as
    they are, the pair would be millimetres or metres off. Prepared, a mapped series is placed by the REG
    (exactly); a CBCT folder that validation left out for its frame, with no REG beside it, is registered
    from its intensities."""
    from dicom_fixtures import rotation
    from dicom_objects import in_own_frame, write_registration

    planning, daily = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2"
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([0.0, 0.0, 1.0], np.radians(6.0))
    matrix[:3, 3] = (9.0, -6.0, 4.0)
    data, shape = tmp_path / "export", (12, 40, 40)
    truth = {}
    for patient in ("PAT01", "PAT02", "PAT03"):                        # frame UIDs are each patient's own
        made = write_phantom_subject(tmp_path / "made" / patient, ("CT", "CBCT"), shape=shape, seed=3)
        identity = {"PatientID": patient, "StudyInstanceUID": "1.2.3.5", "FrameOfReferenceUID": planning + patient[-1]}
        ct = load_file(made["CT"]).replace(modality="CT", dicom=identity)
        cbct = load_file(made["CBCT"]).replace(modality="CBCT")
        truth[patient] = cbct.array
        named = patient == "PAT02"                                       # PAT02/CT/, PAT02/CBCT/; the others to map
        save(ct, data / patient / ("CT" if named else "s1"), description="planning CT")
        daily_scan = (cbct.replace(dicom=identity) if patient == "PAT03" else
                      in_own_frame(cbct, matrix, daily + patient[-1], patient))
        save(daily_scan, data / patient / ("CBCT" if named else "s2"), description="CBCT fx1")   # PAT03: one frame
    write_registration(data / "PAT01" / "reg" / "REG0001.dcm", planning + "1", {daily + "1": matrix})

    report = validate_dataset(data)
    assert [(m.subject, m.modality, m.kind) for m in misaligned_volumes(report)] == [("PAT02", "CBCT", "other_frame")]
    reg_folder, = [f for f in report.problems + report.notes if f.path == str(data / "PAT01" / "reg")]
    assert reg_folder.kind == "not_an_image" and "REG" in reg_folder.message     # not "unknown modality 'reg'"
    choices, _ = find_unnamed_series(report)
    assert sorted(c.subject for c in choices) == ["PAT01", "PAT01", "PAT03", "PAT03"]
    plan = plan_subjects(report, {c: c.guess for c in choices}, misaligned_volumes(report))   # said before preparing
    ahead = placements(plan, find_registrations(data)[0])
    assert {key: how.describe() for key, how in ahead.items()} == {("PAT01", "CBCT"): (
        "in another frame of reference than its CT: placed by the stored registration REG0001.dcm (CBCT to planning "
        "CT)")}
    assert ahead[("PAT01", "CBCT")].short() == "by REG0001.dcm"
    unplaced = placements(plan, [], search=False)[("PAT01", "CBCT")]
    assert "no spatial registration relates them; left out" in unplaced.describe() and unplaced.short() == "left out"
    assert placements(plan, [])[("PAT01", "CBCT")].short() == "from its intensities"
    prepared = prepare_dataset(report, tmp_path / "prepared", mapping={c: c.guess for c in choices},
                               register=misaligned_volumes(report))
    by_subject = {r.subject: r for r in prepared.registered}
    assert sorted(by_subject) == ["PAT01", "PAT02"] and prepared.notes == []
    stored, found = by_subject["PAT01"].registration, by_subject["PAT02"].registration
    assert stored.stored == "REG0001.dcm (CBCT to planning CT)" and stored.improved
    assert "by the stored registration REG0001.dcm" in stored.describe()
    assert "translation (9.0, -6.0, 4.0) mm from its frame into the reference's" in stored.describe()  # as stored
    assert np.allclose(stored.moving_to_fixed(), matrix, atol=1e-6)
    assert found.stored == "" and found.improved
    for patient in ("PAT01", "PAT02"):
        placed = load_file(prepared.root / patient / "CBCT.nii.gz")
        inside = truth[patient] > -500                                   # the head, away from the grid's edges
        error = np.abs(placed.array - truth[patient])[inside]
        assert np.median(error) < (2.0 if patient == "PAT01" else 15.0), (patient, np.median(error))
    meta = json.loads((prepared.root / "dataset.json").read_text())["prepared"]["volumes"]
    assert meta["PAT01"]["CBCT"]["registration"]["stored"] == stored.stored
    # the REGs a caller found already (prepare's listing) are used, not looked for again; why one was not, said
    with monkeypatch.context() as patched:
        patched.setattr(prepare, "find_registrations", lambda *a: pytest.fail("the dataset walked for REGs again"))
        given = prepare_dataset(report, tmp_path / "given", mapping={c: c.guess for c in choices},
                                register=misaligned_volumes(report),
                                registrations=(find_registrations(data)[0], ["REG0002.dcm: deformable"]))
    assert given.notes == ["REG0002.dcm: deformable"]
    assert {r.subject: r.registration.stored for r in given.registered}["PAT01"] == stored.stored
    # without the REG and without registering from intensities (prepare --register none): left out, said
    (data / "PAT01" / "reg" / "REG0001.dcm").unlink()
    checked = validate_dataset(data)
    again = prepare_dataset(checked, tmp_path / "unregistered", mapping={c: c.guess for c in choices},
                            register=misaligned_volumes(checked), search=False)
    assert sorted(again.skipped) == ["PAT01", "PAT02"] and again.registered == []
    assert [n.split(":")[0] for n in again.notes if "no spatial registration relates them; left out" in n] == [
        "PAT01", "PAT02"]
    assert np.allclose(meta["PAT01"]["CBCT"]["registration"]["matrix_moving_to_fixed"], matrix, atol=1e-6)
    assert meta["PAT01"]["CBCT"]["registered_onto"] == "CT"


def test_another_patients_scan_and_disagreeing_registrations_are_not_trained_on(tmp_path):
    """A CBCT of another patient filed in this one's folder had been paired with its CT; of two REGs
    relating one pair of frames differently, the first by name had been applied, however wrong."""
    from dicom_fixtures import rotation
    from dicom_objects import in_own_frame, write_registration

    data, shape = tmp_path / "export", (12, 40, 40)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([0.0, 0.0, 1.0], np.radians(4.0))
    matrix[:3, 3] = (5.0, 3.0, -2.0)
    wrong = matrix.copy()
    wrong[:3, 3] += (25.0, 0.0, 0.0)
    for patient, cbct_owner in (("PAT05", "PAT06"), ("PAT07", "PAT07")):
        made = write_phantom_subject(tmp_path / "made" / patient, ("CT", "CBCT"), shape=shape, seed=5)
        frame = f"1.2.826.0.1.3680043.10.5.{patient[-1]}"
        ct = load_file(made["CT"]).replace(modality="CT", dicom={"PatientID": patient, "StudyInstanceUID": "1.2.3.7",
                                                                  "FrameOfReferenceUID": frame, "PatientName": "Doe^John"})
        named = patient == "PAT05"                        # PAT05/CT/ and PAT05/CBCT/; PAT07's series to map
        save(ct, data / patient / ("CT" if named else "s1"), description="planning CT")
        cbct = in_own_frame(load_file(made["CBCT"]).replace(modality="CBCT"), matrix, frame + ".9", cbct_owner)
        cbct = cbct.replace(dicom={**cbct.dicom, "PatientName": "DOE^JOHN"})     # one patient, spelt another way
        save(cbct, data / patient / ("CBCT" if named else "s2"), description="CBCT fx1")
        if patient == "PAT07":                                # in REG/ of another folder of the export, twice
            write_registration(data / "REG" / "a.dcm", frame, {frame + ".9": wrong})
            write_registration(data / "REG" / "b.dcm", frame, {frame + ".9": matrix})
    report = validate_dataset(data)
    choices, _ = find_unnamed_series(report)
    prepared = prepare_dataset(report, tmp_path / "prepared", mapping={c: c.guess for c in choices},
                               register=misaligned_volumes(report))
    assert prepared.skipped == ["PAT05"]
    assert any(n.startswith("PAT05: its CBCT (") and n.endswith("is patient 'PAT06''s scan, not 'PAT05''s: left out")
               for n in prepared.notes)
    conflict, = [n for n in prepared.notes if n.startswith("PAT07")]
    assert "a.dcm and" in conflict and "b.dcm place frame" in conflict and "neither is used" in conflict
    registered, = prepared.registered                         # PAT07: found from its intensities instead
    assert registered.registration.stored == "" and registered.registration.improved
    assert np.allclose(registered.registration.moving_to_fixed()[:3, 3], matrix[:3, 3], atol=1.5)   # not 25 mm off

    # one stray series of another patient among PAT07's: only it is left out, PAT07's pair prepared
    save(io_load(data / "PAT05" / "CBCT"), data / "PAT07" / "s3", description="CBCT fx2")
    checked = validate_dataset(data)
    again = prepare_dataset(checked, tmp_path / "again", mapping={c: c.guess for c in find_unnamed_series(checked)[0]},
                            register=misaligned_volumes(checked))
    assert (again.root / "PAT07" / "CBCT.nii.gz").exists()
    assert "PAT07: its CBCT CBCT fx2 is patient 'PAT06''s series, not 'PAT07''s: left out" in again.notes
    # planning CTs of two patients in one folder (a folder per modality, not per patient): whose is unknown
    ct = io_load(data / "PAT07" / "s1")
    save(ct.replace(dicom={**ct.dicom, "PatientID": "PAT08", "SeriesInstanceUID": ""}), data / "PAT07" / "s4",
         description="planning CT of PAT08")
    checked = validate_dataset(data)
    with pytest.raises(DatasetError, match="PAT07: its CT series belong to 2 patients \\(PAT07: CBCT fx1, planning CT; "
                                           "PAT08: planning CT of PAT08\\)"):
        prepare_dataset(checked, tmp_path / "again", mapping={c: c.guess for c in find_unnamed_series(checked)[0]},
                        register=misaligned_volumes(checked))
