"""Paired-dataset validation (names, unreadable files, pairs, geometry), splits, loading and slices."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine.split import hash_split
from engine.tasks import DatasetError, PairedDataset, validate_dataset
from engine.tasks.phantoms import phantom_labels, phantom_volume, write_phantom_dataset, write_phantom_subject

SHAPE = (24, 32, 32)
SPACING = (1.0, 1.0, 2.0)


def _write_regridded(array: np.ndarray, path, spacing, origin, size) -> None:
    """Resample a volume that lives on the standard grid onto another grid, then write it."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin)
    sitk.WriteImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32), str(path))


@pytest.fixture(scope="module")
def messy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    write_phantom_dataset(root, subjects=4, shape=SHAPE, spacing=SPACING)
    (root / "dataset.json").unlink()                          # no dataset.json: hash split
    write_phantom_subject(root / "sub01", ["T1"], shape=SHAPE, spacing=SPACING, suffix=".mha")
    (root / "sub01" / "T1.mha").rename(root / "sub01" / "T3.mha")                               # unknown name
    write_phantom_subject(root / "sub03", ["T1"], shape=SHAPE, spacing=SPACING, suffix=".mha")   # second T1
    (root / "sub02" / "PD.nii.gz").write_bytes(b"this is not a NIfTI file at all")              # unreadable
    (root / "sub02" / "notes.txt").write_text("scanner notes")                                  # ignored quietly
    write_phantom_subject(root / "lonely", ["T1"], shape=SHAPE, spacing=SPACING)                 # one modality
    # overlapping but different grid: T2 on a coarser, shifted grid → resampled onto T1's
    write_phantom_subject(root / "regrid", ["T1", "FLAIR"], shape=SHAPE, spacing=SPACING, seed=7)
    t2 = phantom_volume(phantom_labels(SHAPE, 7), "T2", 7)
    _write_regridded(t2, root / "regrid" / "T2.nii.gz", (1.5, 1.5, 2.5), (2.0, -3.0, 4.0), (22, 22, 18))
    # misaligned: T2 far away in physical space → left out, the subject keeps only T1 and is skipped
    write_phantom_subject(root / "faraway", ["T1"], shape=SHAPE, spacing=SPACING, seed=9)
    write_phantom_subject(root / "faraway", ["T2"], shape=(20, 30, 30), spacing=SPACING, origin=(500.0, 500.0, 500.0))
    return root


def _finding(findings, kind, path_end):
    hits = [f for f in findings if f.kind == kind and f.path.endswith(path_end)]
    assert hits, f"no {kind} finding for {path_end}: {[str(f) for f in findings]}"
    return hits[0]


def test_validation_report_names_each_problem_and_file(messy_root):
    report = validate_dataset(messy_root)
    assert sorted(report.subjects_found) == ["ct01", "faraway", "lonely", "regrid", "sub01", "sub02", "sub03", "sub04"]
    assert sorted(s.name for s in report.subjects) == ["ct01", "regrid", "sub01", "sub02", "sub03", "sub04"]

    unknown = _finding(report.problems, "unknown_modality", "sub01/T3.mha")
    assert "unknown modality 'T3'" in str(unknown) and "T3.mha" in str(unknown)
    unreadable = _finding(report.problems, "unreadable", "sub02/PD.nii.gz")
    assert "PD.nii.gz" in str(unreadable)
    duplicate = _finding(report.problems, "duplicate_modality", "sub03/T1.nii.gz")
    assert "T1.mha" in duplicate.message
    lonely = _finding(report.problems, "single_modality", "lonely")
    assert "only one" in lonely.message and "T1" in lonely.message
    far = _finding(report.problems, "no_overlap", "faraway/T2.nii.gz")
    assert "T1.nii.gz" in far.message and "overlap" in far.message
    _finding(report.problems, "single_modality", "faraway")
    assert not any("notes.txt" in f.path for f in report.problems + report.notes)

    resampled = _finding(report.notes, "resampled", "regrid/T2.nii.gz")
    assert "T1" in resampled.message
    regrid = next(s for s in report.subjects if s.name == "regrid")
    assert regrid.resample == ("T2",) and regrid.reference == "T1"

    assert report.modalities_per_subject()["sub02"] == ("T1", "T2", "FLAIR")
    assert ("T1", "FLAIR") in report.routes and ("CBCT", "CT") in report.routes
    assert ("T1", "PD") not in report.routes
    assert report.route_counts()[("CT", "CBCT")] == 1
    text = report.summary()
    assert "T3.mha" in text and "PD.nii.gz" in text and "lonely" in text
    json.dumps(report.to_dict())


def test_split_is_by_subject_deterministic_and_complete(messy_root):
    a, b = validate_dataset(messy_root, seed=3), validate_dataset(messy_root, seed=3)
    assert a.split == b.split
    parts = [set(v) for v in a.split.values()]
    usable = {s.name for s in a.subjects}
    assert set().union(*parts) == usable and sum(len(p) for p in parts) == len(usable)
    assert len(a.split["val"]) >= 1 and len(a.split["test"]) >= 1
    names = [f"case{i:03d}" for i in range(100)]
    split = hash_split(names, seed=1)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (80, 10, 10)
    assert hash_split(names, seed=1) == split and hash_split(names, seed=2) != split
    assert len(hash_split(["a", "b", "c"], 0)["val"]) == 1
    wider = hash_split(names, seed=1, val_fraction=0.25, test_fraction=0.0)
    assert (len(wider["train"]), len(wider["val"]), len(wider["test"])) == (75, 25, 0)
    assert hash_split(["a", "b", "c", "d", "e"], 0, val_fraction=0.0)["val"] == []
    assert len(hash_split(["a", "b", "c", "d", "e"], 0, 0.4, 0.4)["train"]) == 1        # one subject always trains
    with pytest.raises(ValueError, match="fractions"):
        validate_dataset(messy_root, val_fraction=0.6, test_fraction=0.5)


def test_split_from_dataset_json(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", subjects=4, shape=SHAPE, spacing=SPACING,
                                 split={"train": ["sub01", "sub02", "sub03"], "test": ["sub03", "sub04"],
                                        "val": ["ghost"]})
    report = validate_dataset(root)
    assert report.name == "phantoms"
    assert report.split["test"] == ["sub03", "sub04"]
    assert report.split["train"] == ["ct01", "sub01", "sub02"]          # ct01 unlisted → train (noted)
    assert report.split["val"] == []
    assert any(f.kind == "split" and "sub03" in f.message for f in report.problems)
    assert any("ghost" in f.message for f in report.notes) and any("ct01" in f.message for f in report.notes)
    paired = PairedDataset(report)
    assert paired.subject_names("test") == ["sub03", "sub04"] and paired.anatomy("ct01") == "head"
    assert paired.routes("test") == [(a, b) for a in ("T1", "T2", "FLAIR") for b in ("T1", "T2", "FLAIR") if a != b]


def test_leaving_out_a_source_makes_it_the_test_split_and_keeps_it_out_of_train_and_val(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", subjects=4, shape=SHAPE, spacing=SPACING,
                                 split={"train": ["ct01", "sub01", "sub02"], "val": ["sub03"], "test": ["sub04"]},
                                 sources={"sub01": "siteA", "sub02": "siteB", "sub03": "siteA", "sub04": "siteB",
                                          "ct01": "siteC"})
    paired = PairedDataset.open(root)
    assert paired.sources() == ["siteA", "siteB", "siteC"] and paired.subject("sub03").source == "siteA"
    held = paired.leave_out("siteA")
    assert held.subject_names("train") == ["ct01", "sub02"] and held.subject_names("val") == []
    assert held.subject_names("test") == ["sub01", "sub03"]            # all of the source, whatever its split
    assert paired.subject_names("train") == ["ct01", "sub01", "sub02"]  # the original is untouched
    assert held.routes("test") and held.volume("sub01", "T1").array.shape == paired.volume("sub01", "T1").array.shape
    with pytest.raises(DatasetError, match=r"no subject comes from the source 'siteD'; its sources: siteA, siteB, siteC"):
        paired.leave_out("siteD")
    only = write_phantom_dataset(tmp_path / "one", subjects=2, shape=SHAPE, spacing=SPACING, ct_subject=False,
                                 split={"train": ["sub01"], "test": ["sub02"]}, sources={"sub01": "x", "sub02": "y"})
    with pytest.raises(DatasetError, match="leaves no training subject"):
        PairedDataset.open(only).leave_out("x")


def test_no_pairs_raises_a_clear_dataset_error(tmp_path):
    write_phantom_subject(tmp_path / "only" / "a", ["T1"], shape=SHAPE)
    (tmp_path / "only" / "b").mkdir()
    (tmp_path / "only" / "b" / "T7.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        PairedDataset.open(tmp_path / "only")
    message = str(info.value)
    assert "no usable pairs" in message and "T7.nii.gz" in message and "only one" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(DatasetError, match="no such"):
        PairedDataset.open(tmp_path / "missing")


def test_resampled_modality_lands_on_the_reference_grid_in_physical_units(messy_root):
    paired = PairedDataset.open(messy_root)
    t1, t2 = paired.volume("regrid", "T1"), paired.volume("regrid", "T2")
    assert t2.same_grid(t1) and t2.modality == "T2" and t2.unit == "a.u."
    truth = phantom_volume(phantom_labels(SHAPE, 7), "T2", 7)
    inside = t2.array > 1.0                          # where the coarse grid covered the reference
    assert inside.mean() > 0.3
    corr = np.corrcoef(t2.array[inside], truth[inside])[0, 1]
    assert corr > 0.8


def test_normalised_slices_and_usable_slice_selection(messy_root):
    paired = PairedDataset.open(messy_root, min_body_fraction=0.2)
    ct = paired.normalised("ct01", "CT")
    assert (ct.normalisation.lo, ct.normalisation.hi) == (-1024.0, 2000.0)
    assert ct.array.min() >= 0 and ct.array.max() <= 1
    t1 = paired.normalised("sub01", "T1")
    assert 0 < t1.normalisation.lo < t1.normalisation.hi
    assert paired.slice_axis("sub01") == 0 and paired.num_slices("sub01") == SHAPE[0]
    usable = paired.usable_slices("sub01")
    assert 0 < len(usable) < SHAPE[0]
    assert 0 not in usable and SHAPE[0] - 1 not in usable         # the phantom's empty end slices
    for m in paired.subject_modalities("sub01"):
        assert all(paired.normalised("sub01", m).body_fraction[i] >= 0.2 for i in usable)
    image = paired.model_slice("sub01", "T1", usable[0], 16)
    assert tuple(image.shape) == (1, 16, 16) and float(image.min()) >= 0 and float(image.max()) <= 1
    clone = pickle.loads(pickle.dumps(paired))
    assert np.array_equal(clone.slice("sub01", "T2", usable[0]), paired.slice("sub01", "T2", usable[0]))


def test_a_dicom_folder_counts_as_a_modality(tmp_path):
    from engine.io import save
    from engine.io.volume import Volume

    write_phantom_subject(tmp_path / "ds" / "head01", ["CBCT"], shape=SHAPE, spacing=SPACING, seed=3)
    ct = phantom_volume(phantom_labels(SHAPE, 3), "CT", 3)
    save(Volume(ct, spacing=SPACING, modality="CT", unit="HU"), tmp_path / "ds" / "head01" / "ct")
    paired = PairedDataset.open(tmp_path / "ds")
    assert paired.subject_modalities("head01") == ("CT", "CBCT") and not paired.report.problems
    volume = paired.volume("head01", "CT")
    assert volume.unit == "HU" and np.abs(volume.array - ct).max() <= 1.0       # Hounsfield units kept


def test_preloaded_slices_equal_the_lazily_computed_ones(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", subjects=3, shape=SHAPE, spacing=SPACING)
    lazy = PairedDataset.open(root)
    banked = PairedDataset.open(root)
    held = banked.preload(32)
    assert held > 0
    for subject in lazy.subject_names():
        for modality in lazy.subject_modalities(subject):
            for index in (0, lazy.num_slices(subject) // 2):
                a = lazy.model_slice(subject, modality, index, 32)
                b = banked.model_slice(subject, modality, index, 32)
                assert b.shape == a.shape == (1, 32, 32)
                assert float((a - b).abs().max()) < 1e-3          # float16 storage
        assert banked.usable_slices(subject) == lazy.usable_slices(subject)


def test_one_scan_under_two_subjects_or_two_modalities_is_left_out_with_the_reason(tmp_path):
    import shutil

    root = write_phantom_dataset(tmp_path / "data", subjects=4, ct_subject=False, shape=(6, 24, 24))
    shutil.copytree(root / "sub01", root / "sub01_copy")                  # the same subject under a second name
    shutil.copy(root / "sub02" / "T1.nii.gz", root / "sub02" / "T2.nii.gz")   # a T1 saved as the T2 too
    report = validate_dataset(root)
    found = {p.subject: p.message for p in report.problems if p.kind == "duplicate_file"}
    assert set(found) == {"sub01_copy", "sub02"}
    assert "same file as sub01's" in found["sub01_copy"] and "training and the test split" in found["sub01_copy"]
    assert "same file as its T1 (T1.nii.gz): a copy, not a pair" in found["sub02"]
    assert {s.name for s in report.subjects} == {"sub01", "sub03", "sub04"}
    assert not {"sub01_copy", "sub02"} & {n for part in report.split.values() for n in part}


def test_a_gzip_volume_cut_short_is_a_problem_of_the_header_only_check(tmp_path):
    root = write_phantom_dataset(tmp_path / "data", subjects=3, ct_subject=False, shape=(12, 48, 48))
    t2 = root / "sub02" / "T2.nii.gz"
    data = t2.read_bytes()
    t2.write_bytes(data[: len(data) // 2])            # a copy cut off: the gzip trailer's length is then any number
    report = validate_dataset(root)
    found = [p for p in report.problems if p.path == str(t2)]
    assert found and "unpacks to less: it is truncated" in found[0].message
    assert "T2" not in next(s for s in report.subjects if s.name == "sub02").modalities    # its other pair stays


def test_a_copy_among_same_size_volumes_alike_at_their_ends_is_found(tmp_path):
    import nibabel

    def volume(seed: int) -> np.ndarray:                     # background at both ends of the file, like a head
        array = np.zeros((96, 96, 48), np.float32)
        array[24:72, 24:72, 16:32] = np.random.default_rng(seed).normal(100, 10, (48, 48, 16))
        return array

    for subject, (t1, t2) in {"s1": (1, 2), "s2": (3, 4), "s3": (3, 5)}.items():     # s3's T1 is s2's
        for modality, seed in (("T1", t1), ("T2", t2)):
            (tmp_path / subject).mkdir(exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(volume(seed), np.diag([1.0, 1.0, 2.0, 1.0])),
                         str(tmp_path / subject / f"{modality}.nii"))
    report = validate_dataset(tmp_path)
    assert [s.name for s in report.subjects] == ["s1", "s2"]
    assert [(p.subject, p.kind) for p in report.problems] == [("s3", "duplicate_file")]


def _bids_images(session, images: dict[str, str], seed: int) -> None:
    """Phantom images of one BIDS session: file name (in ``anat``) → the modality drawn."""
    made = write_phantom_subject(session / "made", sorted(set(images.values())), shape=SHAPE, spacing=SPACING,
                                 seed=seed)
    (session / "anat").mkdir(parents=True, exist_ok=True)
    for name, modality in images.items():
        (session / "anat" / name).write_bytes(made[modality].read_bytes())
    for path in made.values():
        path.unlink()
    (session / "made").rmdir()


def test_a_bids_dataset_trains_its_sessions_as_subjects_keeping_each_participant_in_one_split(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "Site A T1/T2", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    for i in range(1, 7):
        if i % 2:                                           # one session, no ses- folder
            _bids_images(root / f"sub-{i:02d}", {f"sub-{i:02d}_T1w.nii.gz": "T1", f"sub-{i:02d}_T2w.nii.gz": "T2",
                                                 f"sub-{i:02d}_T2starw.nii.gz": "PD"}, seed=i)
            (root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.json").write_text("{}")
            continue
        for ses in (1, 2):
            name = f"sub-{i:02d}_ses-{ses}"
            _bids_images(root / f"sub-{i:02d}" / f"ses-{ses}", {f"{name}_run-1_T1w.nii.gz": "T1",
                                                             f"{name}_run-2_T1w.nii.gz": "T1",
                                                             f"{name}_FLAIR.nii.gz": "FLAIR"}, seed=10 * i + ses)
            (root / f"sub-{i:02d}" / f"ses-{ses}" / "func").mkdir()          # another datatype: not looked at
            (root / f"sub-{i:02d}" / f"ses-{ses}" / "func" / f"{name}_task-rest_bold.nii.gz").write_bytes(b"x")
            (root / f"sub-{i:02d}" / f"ses-{ses}" / f"{name}_scans.tsv").write_text("filename\n")
    write_phantom_subject(root / "derivatives" / "x", ["T1", "T2"], shape=SHAPE, spacing=SPACING)   # not a subject

    report = validate_dataset(root)
    assert report.bids and report.name == "Site A T1/T2"
    assert report.subjects_found == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03", "sub-04_ses-1",
                                     "sub-04_ses-2", "sub-05", "sub-06_ses-1", "sub-06_ses-2"]
    assert {s.name: s.modalities for s in report.subjects}["sub-01"] == ("T1", "T2")
    assert {s.name: s.modalities for s in report.subjects}["sub-02_ses-1"] == ("T1", "FLAIR")
    assert report.participants["sub-04_ses-2"] == "sub-04" and "sub-01" not in report.participants
    # the second run of a T1 is left out by name; an image of another suffix is a note (mappable), not a problem
    assert {(f.kind, Path(f.path).name) for f in report.problems} == {
        ("duplicate_modality", f"sub-{i:02d}_ses-{s}_run-2_T1w.nii.gz") for i in (2, 4, 6) for s in (1, 2)}
    assert {Path(f.path).name for f in report.notes if f.kind == "unknown_modality"} == {
        f"sub-{i:02d}_T2starw.nii.gz" for i in (1, 3, 5)}
    assert "T2starw" in next(str(f) for f in report.notes if f.kind == "unknown_modality")
    for seed in range(12):                      # both sessions of a participant always in one part of the split
        split = validate_dataset(root, seed=seed, val_fraction=0.3, test_fraction=0.3).split
        part = {name: p for p, names in split.items() for name in names}
        assert len(part) == 9 and all(part[f"sub-{i:02d}_ses-1"] == part[f"sub-{i:02d}_ses-2"] for i in (2, 4, 6))
    opened = PairedDataset.open(root, seed=3)
    assert set(opened.routes()) == {("T1", "T2"), ("T2", "T1"), ("T1", "FLAIR"), ("FLAIR", "T1")}
    assert opened.volume("sub-02_ses-1", "FLAIR").array.shape == SHAPE


def test_no_pairs_in_a_bids_dataset_says_how_a_bids_session_pairs(tmp_path):
    _bids_images(tmp_path / "sub-01", {"sub-01_T1w.nii.gz": "T1"}, seed=1)
    with pytest.raises(DatasetError, match=r"BIDS session \(sub-01/\[ses-1/\]anat/sub-01_T1w"):
        PairedDataset.open(tmp_path)


def test_preload_finds_voxels_damaged_past_the_header_even_past_its_memory_budget(tmp_path):
    from training_support import damage_voxels

    root = write_phantom_dataset(tmp_path / "pairs", subjects=4, shape=SHAPE, spacing=SPACING, ct_subject=False)
    volume = damage_voxels(root / "sub04" / "FLAIR.nii.gz")
    paired = PairedDataset.open(root)
    assert paired.report.problems == []                 # validation reads headers: it cannot know
    with pytest.raises(DatasetError, match="cannot be loaded"):
        paired.preload(32)
    unloadable: list = []
    paired.preload(32, budget_bytes=1, unloadable=unloadable)   # sub01 banked, the rest only read
    assert [(f.kind, f.subject, f.path) for f in unloadable] == [("unreadable", "sub04", str(volume))]
    kept = paired.without(unloadable)
    assert "sub04" not in kept.subject_names() and all("sub04" not in names for names in kept.report.split.values())
    assert kept.report.problems == unloadable and kept.usable_slices("sub01") == paired.usable_slices("sub01")


def test_a_modality_in_another_standard_space_on_another_grid_is_left_out_naming_both(tmp_path):
    import engine.io as io

    root = write_phantom_dataset(tmp_path / "data", subjects=3, modality_names=("T1", "T2", "FLAIR"), ct_subject=False)
    for subject, space, shift in (("sub01", "MNI", 0.0), ("sub02", "MNI", 3.0), ("sub03", "aligned", 3.0)):
        path = root / subject / "T2.nii.gz"                          # its header in another world
        volume = io.load(path)
        moved = volume.replace(space=space, origin=tuple(o + shift for o in volume.origin))
        io.save(moved, tmp_path / "relabelled.nii.gz").replace(path)
    report = validate_dataset(root)
    other = _finding(report.problems, "other_space", "sub02/T2.nii.gz")
    assert "in MNI space, T1.nii.gz's in scanner space" in other.message and other.reference.endswith("sub02/T1.nii.gz")
    assert report.modalities_per_subject()["sub02"] == ("T1", "FLAIR")
    # one grid, two labels (ANTs writes scanner space for an MNI-registered image): kept, and said
    assert report.modalities_per_subject()["sub01"] == ("T1", "T2", "FLAIR")
    assert "both lie on one grid" in _finding(report.notes, "other_space", "sub01/T2.nii.gz").message
    # a registration's "aligned" output may be in the scan's own coordinates: not told apart (engine.io.identity)
    assert report.modalities_per_subject()["sub03"] == ("T1", "T2", "FLAIR")
    assert [f.path for f in report.problems] == [other.path]


def test_a_pet_off_the_suv_scale_is_refused_naming_the_file_not_learnt_as_suv(tmp_path):
    """A PET whose file holds activity (thousands of Bq/ml, no unit stated) is not relabelled SUV for
    training, where its values would all have saturated the model's SUV 0–20 range."""
    for seed, name in enumerate(("a", "b")):
        write_phantom_subject(tmp_path / name, ["T1", "PET"], shape=SHAPE, spacing=SPACING, seed=seed)
    pet = tmp_path / "a" / "PET.nii.gz"
    image = sitk.ReadImage(str(pet))
    sitk.WriteImage(image * 2000.0, str(pet))
    (tmp_path / "dataset.json").write_text(json.dumps({"split": {"train": ["a", "b"]}}))
    paired = PairedDataset.open(tmp_path)
    assert paired.volume("b", "PET").unit == "SUVbw"
    with pytest.raises(DatasetError, match=r"PET\.nii\.gz: its values are in unknown, not SUVbw"):
        paired.volume("a", "PET")


def test_one_persons_planning_ct_beside_each_daily_cbct_stays_and_an_rt_object_is_a_note(tmp_path):
    """Two subjects of one participant sharing their planning CT had been left out as "one scan under two
    subject names"; an RT structure set beside the images had blocked training as unmapped DICOM."""
    import shutil

    from dicom_fixtures import PYDICOM_FILES

    root = write_phantom_dataset(tmp_path / "data", subjects=4, shape=(6, 24, 24))
    ct_subject = next(p.parent.name for p in root.glob("*/CT.nii.gz"))
    shutil.copytree(root / ct_subject, root / f"{ct_subject}_fx8")
    (root / "dataset.json").write_text(json.dumps({"subjects": {ct_subject: {"participant": "P1"},
                                                                f"{ct_subject}_fx8": {"participant": "P1"}}}))
    shutil.copy(PYDICOM_FILES / "rtstruct.dcm", root / ct_subject / "RS.dcm")
    report = validate_dataset(root)
    assert not report.problems, report.problems
    assert {ct_subject, f"{ct_subject}_fx8"} <= {s.name for s in report.subjects}
    assert any(part for part in report.split.values() if {ct_subject, f"{ct_subject}_fx8"} <= set(part))
    (note,) = [n for n in report.notes if n.kind == "not_an_image"]
    assert note.path.endswith("RS.dcm") and note.message.startswith("RTSTRUCT")
