"""`python main.py synthesize / identify / evaluate` end to end on small files and a tiny random model:
outputs keep the input's geometry and the target's units; bad requests exit 2 with one clear
line and leave no output behind."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

import engine.io as io
from engine.inference.random_model import write_random_model
from engine.io.volume import Volume
from engine.tasks.phantoms import phantom_labels, phantom_volume, write_phantom_dataset
from main import main

ROUTES = (("T1", "T2"), ("T1", "CT"), ("CBCT", "CT"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("model") / "tiny", routes=ROUTES, image_size=32,
                              metadata={"inference_defaults": {"steps": 2}})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An oblique, anisotropic, non-square T1 NIfTI and the matching CT."""
    folder = tmp_path_factory.mktemp("inputs")
    labels = phantom_labels((6, 18, 22), seed=1)
    c, s = math.cos(0.4), math.sin(0.4)
    geometry = dict(spacing=(0.9, 1.2, 3.0), origin=(-40.0, 12.0, 7.5), direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    t1 = Volume(phantom_volume(labels, "T1", 1), modality="T1", unit="a.u.", **geometry)
    ct = Volume(phantom_volume(labels, "CT", 1), modality="CT", unit="HU", **geometry)
    return io.save(t1, folder / "subject_T1.nii.gz"), io.save(ct, folder / "subject_CT.nii.gz")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_synthesize_writes_the_input_grid_in_hounsfield_units(capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    out_file = tmp_path / "sct.nii.gz"
    code, out, err = run(capsys, "synthesize", t1, "--target", "ct", "-o", out_file, "--model", model_dir,
                         "--device", "cpu", "--reference", ct)
    assert code == 0, err
    report = json.loads(out)
    assert report["route"] == "T1→CT" and report["steps"] == 2 and report["unit"] == "HU"
    assert report["plane"] == "auto" and report["sliced"] == "axial"      # what auto chose: the thick z slices
    source, result = io.load(t1), io.load(out_file)
    assert result.same_grid(source) and result.shape == source.shape
    assert -1024.0 <= result.array.min() and result.array.max() <= 2000.0
    metrics = report["metrics"]
    assert metrics["modality"] == "CT" and metrics["unit"] == "HU"
    assert {"psnr_db", "ssim_x100", "mae"} <= set(metrics["whole"]) and metrics["body"]["mae"] > 0
    assert "%" in err                                           # progress went to stderr


def test_the_reference_is_scored_on_the_slices_of_the_plane_synthesis_cut(capsys, model_dir, tmp_path):
    from engine.evaluation import score_volume
    from engine.inference import plane_axis

    labels = phantom_labels((12, 18, 22), seed=2)                 # coronal slices of 12 × 22 pixels: SSIM needs ≥ 11
    geometry = dict(spacing=(0.9, 1.2, 3.0), origin=(-40.0, 12.0, 7.5))
    t1 = io.save(Volume(phantom_volume(labels, "T1", 1), modality="T1", unit="a.u.", **geometry), tmp_path / "t1.nii.gz")
    ct = io.save(Volume(phantom_volume(labels, "CT", 1), modality="CT", unit="HU", **geometry), tmp_path / "ct.nii.gz")
    code, out, err = run(capsys, "synthesize", t1, "--target", "ct", "-o", tmp_path / "sct.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--plane", "coronal", "--reference", ct)
    assert code == 0, err
    result, reference = io.load(tmp_path / "sct.nii.gz"), io.load(ct)
    axis = plane_axis(result, "coronal")
    assert axis != plane_axis(result, "auto")
    coronal, axial = (score_volume(result, reference, "CT", axis=a).to_dict() for a in (axis, None))
    assert coronal["whole"]["ssim_x100"] != axial["whole"]["ssim_x100"]
    assert json.loads(out)["metrics"]["whole"]["ssim_x100"] == pytest.approx(coronal["whole"]["ssim_x100"], abs=1e-6)


def test_dicom_in_dicom_out_stays_in_the_study_with_the_input_geometry(capsys, model_dir, inputs, tmp_path):
    dicom_in = io.save(io.load(inputs[0]), tmp_path / "t1_dicom", description="T1 axial")
    code, out, err = run(capsys, "synthesize", dicom_in, "--target", "T2", "--source", "T1", "-o",
                         tmp_path / "dicom_out", "--model", model_dir, "--device", "cpu", "--batch-size", "2",
                         "--quiet")
    assert code == 0 and err == ""
    source, result = io.load(dicom_in), io.load(tmp_path / "dicom_out")
    assert result.same_grid(source, tol=1e-3) and result.modality == "T2"
    assert result.dicom["StudyInstanceUID"] == source.dicom["StudyInstanceUID"]
    assert result.dicom["SeriesInstanceUID"] != source.dicom["SeriesInstanceUID"]
    assert result.dicom["SeriesDescription"].startswith("synthetic T2 from T1")


def test_a_nifti_converted_to_dicom_and_its_synthetic_share_one_study_and_frame_of_reference(
        capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    common = ["--model", model_dir, "--device", "cpu", "--quiet"]
    assert run(capsys, "convert", t1, tmp_path / "t1_dicom")[0] == 0
    assert run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "t2_dicom", *common)[0] == 0
    assert run(capsys, "convert", t1, tmp_path / "again")[0] == 0
    assert run(capsys, "convert", ct, tmp_path / "ct_dicom")[0] == 0
    first = {name: pydicom.dcmread(sorted((tmp_path / name).iterdir())[0])
             for name in ("t1_dicom", "t2_dicom", "again", "ct_dicom")}
    for key in ("StudyInstanceUID", "FrameOfReferenceUID"):
        assert getattr(first["t1_dicom"], key) == getattr(first["t2_dicom"], key) == getattr(first["again"], key)
        assert getattr(first["ct_dicom"], key) != getattr(first["t1_dicom"], key)        # another scan: its own
    assert first["t1_dicom"].SeriesInstanceUID != first["again"].SeriesInstanceUID       # each export a new series


def test_anonymised_synthesis_refuses_a_burned_in_source_unless_accepted_and_keeps_no_identity(
        capsys, model_dir, inputs, tmp_path):
    identity = {"PatientName": "Doe^Jane", "PatientID": "PID-734521", "PatientBirthDate": "19610412",
                "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.111", "BurnedInAnnotation": "YES"}
    source = io.load(inputs[0])
    dicom_in = io.save(source.replace(dicom=identity), tmp_path / "t1_dicom", description="Jane Doe T1")
    common = ["--target", "T2", "--source", "T1", "--model", model_dir, "--device", "cpu", "--quiet"]
    code, out, err = run(capsys, "synthesize", dicom_in, "-o", tmp_path / "refused", "--anonymise", *common)
    assert code == 2 and "BurnedInAnnotation YES" in err and "--accept-burned-in" in err
    assert not (tmp_path / "refused").exists()
    code, out, err = run(capsys, "synthesize", dicom_in, "-o", tmp_path / "anon", "--anonymise",
                         "--accept-burned-in", *common)
    assert code == 0, err
    files = sorted((tmp_path / "anon").iterdir())
    first = pydicom.dcmread(files[0])
    assert first.PatientIdentityRemoved == "YES" and first.BurnedInAnnotation == "YES"
    assert first.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert first.StudyInstanceUID != identity["StudyInstanceUID"]
    assert first.SeriesDescription == "synthetic T2 from T1 — research use only"
    for path in files:
        assert not any(s in path.read_bytes() for s in (b"Doe", b"Jane", b"PID-734521", b"19610412"))
    code, out, err = run(capsys, "synthesize", dicom_in, "-o", tmp_path / "anon.nii", "--anonymise",
                         "--accept-burned-in", *common)
    assert code == 0, err
    assert b"Jane" not in (tmp_path / "anon.nii").read_bytes() and "Jane" not in out
    sidecar = (tmp_path / "anon.json").read_text()           # the provenance names no input either
    assert "SourceFile" not in json.loads(sidecar) and "t1_dicom" not in sidecar and "Jane" not in sidecar


def test_the_output_gets_a_provenance_sidecar_that_never_replaces_a_file_it_did_not_write(
        capsys, model_dir, inputs, tmp_path):
    t1, _ = inputs
    common = ["--target", "T2", "--model", model_dir, "--device", "cpu", "--quiet", "--steps", "2", "--seed", "7"]
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "sub-01_T2w.nii.gz", *common)
    assert code == 0, err
    sidecar = tmp_path / "sub-01_T2w.json"
    assert json.loads(out)["provenance"] == str(sidecar)
    record = json.loads(sidecar.read_text())
    assert record["Synthetic"] and record["Route"] == "T1→T2" and record["SourceFile"] == "subject_T1.nii.gz"
    assert record["Summary"].endswith("synthetic T2 from T1 (random-tiny, 2 steps)")       # as the header describes it
    assert record["Settings"]["steps"] == 2 and record["Settings"]["seed"] == 7
    assert "research use only" in record["Description"] and str(t1.parent) not in sidecar.read_text()
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "sub-01_T2w.nii.gz", *common)   # its own: again
    assert code == 0, err

    (tmp_path / "sub-02_T2w.json").write_text('{"RepetitionTime": 4.2}')       # a real scan's BIDS sidecar
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "sub-02_T2w.nii.gz", *common)
    assert code == 2 and "sub-02_T2w.json: exists and was not written by SynerMedGen Studio" in err
    assert not (tmp_path / "sub-02_T2w.nii.gz").exists()
    assert json.loads((tmp_path / "sub-02_T2w.json").read_text()) == {"RepetitionTime": 4.2}
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "dicom_t2.dcm", *common)   # a DICOM folder's
    assert code == 0 and json.loads(out)["provenance"] == str(tmp_path / "dicom_t2.json")


def test_the_provenance_names_the_whole_series_and_says_when_the_input_was_itself_synthetic(
        capsys, model_dir, inputs, tmp_path):
    t1, _ = inputs
    common = ["--target", "T2", "--source", "T1", "--model", model_dir, "--device", "cpu", "--quiet", "--steps", "1"]
    folder = io.save(io.load(t1), tmp_path / "t1_dicom", description="T1 axial")
    uid = io.load(folder).dicom["SeriesInstanceUID"]
    code, out, err = run(capsys, "synthesize", folder, "-o", tmp_path / "a.nii.gz", "--series", uid[:12], *common)
    assert code == 0, err
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["SourceSeries"] == uid and record["SourceName"] == "T1 axial" and "SourceSynthetic" not in record
    made = io.save(io.load(t1).replace(synthetic=True, derived_from="CT"), tmp_path / "made_T1.nii.gz")
    code, out, err = run(capsys, "synthesize", made, "-o", tmp_path / "b.nii.gz", *common)
    assert code == 0, err
    assert f"warning: {made}: the input is itself synthetic (synthetic T1 from CT)" in err
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["SourceSynthetic"] == "synthetic T1 from CT"
    assert any(n.startswith("the input is itself synthetic") for n in record["Notes"])


@pytest.mark.parametrize("argv, message", [
    (["--target", "XRAY"], "unknown modality 'XRAY'"),
    (["--target", "FLAIR", "--source", "T1"], "does not support T1→FLAIR; its routes: T1→T2, T1→CT, CBCT→CT"),
    (["--target", "T2", "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
    (["--target", "T2", "--backend", "onnx", "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
])
def test_bad_requests_exit_2_with_a_clear_message_and_no_output(capsys, model_dir, inputs, tmp_path, argv, message):
    out_file = tmp_path / "never.nii.gz"
    code, out, err = run(capsys, "synthesize", inputs[0], "-o", out_file, "--model", model_dir, *argv)
    assert code == 2 and message in err and err.startswith("error:")
    assert not out_file.exists() and list(tmp_path.iterdir()) == []


def test_missing_model_exits_2_and_says_how_to_get_one(capsys, inputs, tmp_path):
    code, out, err = run(capsys, "synthesize", inputs[0], "--target", "T2", "-o", tmp_path / "x.nii.gz",
                         "--model", tmp_path / "no_model")
    assert code == 2 and "no model at" in err and "train" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_identify_prints_a_modality_of_the_model_with_probabilities(capsys, model_dir, inputs):
    code, out, err = run(capsys, "identify", inputs[0], "--model", model_dir, "--device", "cpu", "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["modality"] in ("T1", "T2", "CT", "CBCT") and found["header_modality"] == "T1"
    assert math.isclose(sum(found["probabilities"].values()), 1.0, abs_tol=1e-5)
    code, out, err = run(capsys, "identify", inputs[0], "--model", model_dir, "--device", "cpu")
    assert code == 0 and "confidence" in out


def test_source_auto_uses_identification_and_stops_when_unsure(capsys, model_dir, inputs, tmp_path, monkeypatch):
    from engine.inference import Identification, Synthesizer

    sure = Identification("CBCT", 0.9, {"T1": 0.05, "CBCT": 0.9, "CT": 0.05}, True)
    monkeypatch.setattr(Synthesizer, "identify", lambda self, volume, **kw: sure)
    code, out, err = run(capsys, "synthesize", inputs[0], "--target", "CT", "--source", "auto", "-o",
                         tmp_path / "auto.nii.gz", "--model", model_dir, "--device", "cpu", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["route"] == "CBCT→CT" and report["identified"]["confidence"] == 0.9
    assert report["source_floor"] is None                          # the card records none
    code, out, err = run(capsys, "synthesize", inputs[0], "--target", "CT", "--source", "CBCT", "-o",
                         tmp_path / "floored.nii.gz", "--model", model_dir, "--device", "cpu", "--quiet",
                         "--source-floor", "0")
    assert code == 0, err
    assert json.loads(out)["source_floor"].startswith("source floor 0 (as asked)")

    unsure = Identification("T2", 0.0, {"T1": 0.3, "T2": 0.4, "CT": 0.3}, False, "no understanding training")
    monkeypatch.setattr(Synthesizer, "identify", lambda self, volume, **kw: unsure)
    anonymous = io.save(io.load(inputs[0]).replace(modality=None), tmp_path / "anonymous.mha")
    code, out, err = run(capsys, "synthesize", anonymous, "--target", "CT", "--source", "auto", "-o",
                         tmp_path / "unsure.nii.gz", "--model", model_dir, "--device", "cpu", "--quiet")
    assert code == 2 and "anonymous.mha: cannot identify its modality reliably" in err and "--source" in err
    assert not (tmp_path / "unsure.nii.gz").exists()


def test_sampling_options_reach_the_sampler(capsys, model_dir, inputs, tmp_path):
    t1, _ = inputs
    code, out, err = run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "a.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--steps", "3", "--guidance", "1", "1",
                         "--start-from-source", "0.8", "--batch-size", "2", "--solver", "heun", "--shift", "1.5",
                         "--guided-filter", "1.5", "--guided-filter-depth", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == 3 and report["guidance"] == [1.0, 1.0] and report["start_from_source"] == 0.8
    assert report["guided_filter"] == 1.5 and report["guided_filter_depth"] == 1.0
    assert report["batch_size"] == 2 and report["solver"] == "heun" and report["shift"] == 1.5
    assert report["plane"] == "auto"
    code, out, err = run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "d.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--plane", "coronal", "--batch-size", "4")
    assert code == 0 and json.loads(out)["plane"] == "coronal", err
    code, out, err = run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "c.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--solver", "rk45")
    assert code == 2 and "unknown solver 'rk45'" in err and not (tmp_path / "c.nii.gz").exists()
    code, out, err = run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "b.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--start-from-source", "1.5")
    assert code == 2 and "start_from_source" in err and not (tmp_path / "b.nii.gz").exists()
    code, out, err = run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "b.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--guided-filter", "-2")
    assert code == 2 and "guided_filter must be a radius" in err and not (tmp_path / "b.nii.gz").exists()


def test_evaluate_prints_a_per_route_table(capsys, model_dir, tmp_path):
    root = write_phantom_dataset(tmp_path / "data", subjects=2, modality_names=("T1", "T2"), shape=(8, 24, 24),
                                 split={"train": ["sub01"], "test": ["sub02", "ct01"]})
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--device", "cpu",
                         "--max-slices", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {r["route"] for r in result["routes"]} == {"T1→T2", "CBCT→CT"}
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--device", "cpu",
                         "--max-slices", "1")
    assert code == 0 and "T1→T2" in out and "PSNR" in out
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", tmp_path / "nothing")
    assert code == 2 and "error:" in err

    (root / "sub03").mkdir()                                  # a copy of sub02 under another name: left out, said
    for path in (root / "sub02").iterdir():
        (root / "sub03" / path.name).write_bytes(path.read_bytes())
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--device", "cpu",
                         "--max-slices", "1", "--json")
    assert code == 0 and "warning: dataset: left out:" in err and "subject 'sub03' left out" in err
    assert any("subject 'sub03' left out" in line for line in json.loads(out)["left_out"])


def test_evaluate_measures_target_agreement_when_asked(capsys, tmp_path):
    model = write_random_model(tmp_path / "m", routes=(("T1", "T2"), ("T1", "FLAIR")), image_size=32,
                               metadata={"inference_defaults": {"steps": 2}})
    root = write_phantom_dataset(tmp_path / "data", subjects=2, modality_names=("T1", "T2", "FLAIR"), shape=(8, 24, 24),
                                 ct_subject=False, split={"train": ["sub01"], "test": ["sub02"]})
    common = ("evaluate", "--model", model, "--data", root, "--device", "cpu", "--max-slices", "1", "--target-agreement")
    code, out, err = run(capsys, *common, "--json")
    assert code == 0, err
    agreement = json.loads(out)["target_agreement"]
    assert agreement["subjects"] == 1 and all(-1.0 <= agreement[k] <= 1.0 for k in ("synthetic", "real"))
    code, out, err = run(capsys, *common)
    assert (f"target agreement: {agreement['synthetic']:.3f} (the real scans: {agreement['real']:.3f}; 1 subject, one "
            "central slice each") in out
    code, out, err = run(capsys, *common, "--routes", "T1:T2")                  # one target per source: nothing to compare
    assert code == 0 and "target agreement: not measured" in out


def test_evaluate_leaves_out_a_pair_in_two_different_worlds_and_says_so(capsys, model_dir, tmp_path):
    root = write_phantom_dataset(tmp_path / "data", subjects=2, modality_names=("T1", "T2"), shape=(8, 24, 24),
                                 ct_subject=False, split={"test": ["sub01", "sub02"]})
    t2 = root / "sub02" / "T2.nii.gz"                                  # beside T1, but in MNI coordinates
    moved = io.load(t2)
    io.save(moved.replace(space="MNI", origin=tuple(o + 2.0 for o in moved.origin)), tmp_path / "mni.nii.gz").replace(t2)
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--device", "cpu",
                         "--max-slices", "1", "--json")
    assert code == 0, err
    said = f"{t2}: its coordinates are in MNI space, T1.nii.gz's in scanner space"
    assert f"warning: dataset: left out: {said}" in err
    result = json.loads(out)
    assert any(line.startswith(said) for line in result["left_out"])
    assert {s["subject"] for s in result["subjects"]} == {"sub01"}         # not scored across the two worlds


def test_evaluate_scores_the_split_training_held_out_and_writes_its_result(capsys, model_dir, tmp_path):
    root = write_phantom_dataset(tmp_path / "data", subjects=4, modality_names=("T1", "T2"), shape=(8, 24, 24),
                                 ct_subject=False)
    from engine.tasks.validation import validate_dataset

    held_out = validate_dataset(root, seed=5, val_fraction=0.5, test_fraction=0.0).split["val"]
    assert len(held_out) == 2
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--device", "cpu", "--split", "val",
                         "--split-seed", "5", "--val-fraction", "0.5", "--test-fraction", "0", "--max-slices", "1",
                         "--out", tmp_path / "result.json")
    written = json.loads((tmp_path / "result.json").read_text())
    assert code == 0 and "T1→T2" in out and written["split"] == "val"
    assert sorted({s["subject"] for s in written["subjects"]}) == held_out
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--val-fraction", "0.7",
                         "--test-fraction", "0.4", "--out", tmp_path / "bad.json")
    assert code == 2 and "fractions" in err and not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("command", ["synthesize", "convert"])
def test_an_output_type_that_cannot_be_written_is_refused_before_the_input_is_read(capsys, model_dir, tmp_path, command):
    never = tmp_path / "missing-input.nii.gz"                   # not read at all: the output is refused first
    argv = [never, "-o", tmp_path / "out.png", "--target", "T2", "--model", model_dir] if command == "synthesize" \
        else [never, tmp_path / "out.png"]
    code, out, err = run(capsys, command, *argv)
    assert code == 2 and "out.png: unknown output type; use .nii.gz, .nii, .mha, .nrrd" in err
    assert "missing-input" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["synthesize", "convert"])
def test_the_output_cannot_be_the_input(capsys, model_dir, inputs, command):
    before = inputs[0].read_bytes()
    argv = [inputs[0], "-o", inputs[0], "--target", "T2", "--model", model_dir] if command == "synthesize" \
        else [inputs[0], inputs[0]]
    code, out, err = run(capsys, command, *argv)
    assert code == 2 and "is the input it would be made from" in err and inputs[0].read_bytes() == before


def test_what_loading_assumed_is_told_on_stderr_and_in_the_json(capsys, model_dir, tmp_path):
    import data_store  # pydicom-data: an enhanced MR whose frames lost their geometry

    code, out, err = run(capsys, "synthesize", Path(data_store.__file__).parent / "data" / "emri_small.dcm", "--source", "T1", "--target", "T2",
                         "-o", tmp_path / "t2.nii.gz", "--model", model_dir, "--device", "cpu")
    assert code == 0, err
    assumed = "no ImagePositionPatient / ImageOrientationPatient: origin 0 and identity orientation assumed"
    assert f"note: input: {assumed}" in err and assumed in json.loads(out)["input_notes"]


def test_the_output_cannot_be_the_input_as_a_dicom_folder_a_volume_of_it_or_the_reference(capsys, model_dir, inputs,
                                                                                         tmp_path):
    t1, ct = inputs
    io.save(io.load(t1), tmp_path / "series")                   # a DICOM series folder
    before = sorted(p.read_bytes() for p in (tmp_path / "series").iterdir())
    code, _out, err = run(capsys, "convert", tmp_path / "series", tmp_path / "series.dcm")
    assert code == 2 and "is the input it would be made from" in err
    assert sorted(p.read_bytes() for p in (tmp_path / "series").iterdir()) == before
    code, _out, err = run(capsys, "synthesize", f"{t1}#0", "-o", t1, "--target", "T2", "--model", model_dir)
    assert code == 2 and "is the input it would be made from" in err
    ref_before = ct.read_bytes()
    code, _out, err = run(capsys, "synthesize", t1, "-o", ct, "--reference", ct, "--target", "T2", "--model", model_dir)
    assert code == 2 and "is the input it would be made from" in err and ct.read_bytes() == ref_before


def test_a_bad_reference_fails_before_the_work_and_an_unscorable_one_after_it_says_the_output_is_kept(
        capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    bad = tmp_path / "ref.nii.gz"
    bad.write_bytes(b"not an image")
    code, _out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "a.nii.gz", "--model", model_dir,
                          "--device", "cpu", "--reference", bad)
    assert code == 2 and str(bad) in err and "slice" not in err and not (tmp_path / "a.nii.gz").exists()
    # 6 slices cut coronally are 6 pixels tall: too small for SSIM's 11 × 11 window
    code, _out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "b.nii.gz", "--model", model_dir,
                          "--device", "cpu", "--plane", "coronal", "--reference", ct)
    assert code == 2 and "b.nii.gz is written, but it could not be scored against" in err and "11×11" in err
    assert io.load(tmp_path / "b.nii.gz").same_grid(io.load(t1))


def test_a_reference_covering_part_of_the_output_says_how_much_and_one_covering_none_is_not_scored(
        capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    reference = io.load(ct)
    slab = io.save(reference.replace(array=reference.array[:3].copy()), tmp_path / "slab.nii.gz")     # 3 of 6 slices
    common = ["--target", "CT", "--model", model_dir, "--device", "cpu", "--quiet"]
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "a.nii.gz", "--reference", slab, *common)
    assert code == 0, err
    assert 0.4 < json.loads(out)["reference_coverage"] < 0.6 and "slab.nii.gz covers 50 % of the output's grid" in err
    assert "only that part is scored" in err
    # the uncovered half is not scored (no fill value counted): the scores are those of the covered slices
    from engine.evaluation import score_volume

    covered_slices = score_volume(io.load(tmp_path / "a.nii.gz"), reference, "CT", slices=[0, 1, 2]).to_dict()
    assert json.loads(out)["metrics"]["whole"] == pytest.approx(covered_slices["whole"])
    far = io.save(reference.replace(origin=(900.0, 900.0, 900.0)), tmp_path / "far.nii.gz")
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "b.nii.gz", "--reference", far, *common)
    assert code == 2 and "b.nii.gz is written, but it could not be scored" in err and "does not overlap" in err


def test_a_dicom_output_folder_holding_the_input_slice_is_refused(capsys, model_dir, inputs, tmp_path):
    series = io.save(io.load(inputs[0]), tmp_path / "t1_series")       # a series this app wrote
    before = sorted(p.name for p in series.iterdir())
    one_slice = sorted(series.iterdir())[2]
    code, _out, err = run(capsys, "synthesize", one_slice, "--source", "T1", "--target", "T2", "-o", series,
                          "--model", model_dir, "--device", "cpu")
    assert code == 2 and f"holds {one_slice}, the input it would be made from" in err
    assert sorted(p.name for p in series.iterdir()) == before


def test_the_description_is_cut_only_where_a_field_is_short(capsys, inputs, tmp_path):
    long_name = "SynerMedGen fine-tuned on the radiotherapy department's own CBCT pairs, 2026"
    model = write_random_model(tmp_path / "long", routes=ROUTES, image_size=32,
                               metadata={"inference_defaults": {"steps": 2}, "name": long_name})
    code, _out, err = run(capsys, "synthesize", inputs[0], "--source", "T1", "--target", "CT", "-o",
                          tmp_path / "sct", "--model", model, "--device", "cpu")
    assert code == 0, err
    first = pydicom.dcmread(sorted((tmp_path / "sct").iterdir())[0])
    assert f"({long_name}, 2 steps)" in first.DerivationDescription and f"({long_name}, 2 steps)" in first.ImageComments
    assert len(first.SeriesDescription) <= 64


def test_a_synthetic_reference_is_scored_but_said_to_be_no_ground_truth(capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    code, _out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "sct.nii.gz", "--model",
                          model_dir, "--device", "cpu")
    assert code == 0, err
    code, out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "again.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--reference", tmp_path / "sct.nii.gz")
    assert code == 0, err
    assert "reference is synthetic (made by a model, not acquired)" in err
    report = json.loads(out)
    assert report["reference_synthetic"] is True and report["metrics"]["whole"]["mae"] == 0.0   # the same model, seed
    code, out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "third.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--reference", ct)
    assert code == 0 and json.loads(out)["reference_synthetic"] is False and "is synthetic" not in err


def test_the_do_nothing_baseline_is_scored_beside_the_synthetic(capsys, model_dir, inputs, tmp_path):
    from engine.evaluation import histogram_matched, score_volume
    from engine.modalities import body_mask

    t1, ct = inputs
    code, out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "sct.nii.gz", "--model",
                         model_dir, "--device", "cpu", "--quiet", "--reference", ct)
    assert code == 0, err
    report = json.loads(out)
    source, reference = io.load(t1), io.load(ct)
    mask = body_mask(reference.array, "CT")
    expected = score_volume(histogram_matched(source, reference, mask), reference, "CT").to_dict()
    assert report["do_nothing"]["body"] == pytest.approx(expected["body"])
    # a random model is worse than doing nothing, and is told so
    assert report["worse_than_doing_nothing"] and "doing nothing) scores better on" in err
    assert report["reference_warnings"] == []


def test_a_reference_of_another_patient_is_warned_of_before_the_work(capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    mine = io.load(t1)
    source = io.save(mine.replace(dicom={**mine.dicom, "PatientID": "PAT-1"}), tmp_path / "t1_dicom")
    other = io.load(ct)
    other = io.save(other.replace(dicom={**other.dicom, "PatientID": "SOMEONE-ELSE"}), tmp_path / "ct_dicom")
    code, out, err = run(capsys, "synthesize", source, "--source", "T1", "--target", "CT", "-o", tmp_path / "sct.nii.gz",
                         "--model", model_dir, "--device", "cpu", "--quiet", "--reference", other)
    assert code == 0, err
    assert "another patient's scan (PatientID 'SOMEONE-ELSE', the input's 'PAT-1')" in err
    assert err.index("another patient's") < err.index("doing nothing")        # said before the work
    assert any("another patient's" in w for w in json.loads(out)["reference_warnings"])


def test_a_reference_holding_several_series_is_picked_with_reference_series(capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    study = tmp_path / "study"
    io.save(io.load(t1), study / "t1")
    io.save(io.load(ct), study / "ct")
    keys = {e.modality: e.key for e in io.scan(study).entries}
    common = ["--target", "CT", "--model", model_dir, "--device", "cpu", "--quiet"]
    code, _out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "a.nii.gz", "--reference", study, *common)
    assert code == 2 and f"{study}: holds 2 series, pick one with --reference-series: " in err
    assert keys["CT"] in err and keys["T1"] in err and not (tmp_path / "a.nii.gz").exists()     # said before the work
    code, out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "a.nii.gz", "--reference", study,
                         "--reference-series", keys["CT"], *common)
    assert code == 0, err
    assert json.loads(out)["reference_warnings"] == [] and json.loads(out)["metrics"]["modality"] == "CT"
    code, _out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "b.nii.gz", "--reference-series", keys["CT"],
                          *common)
    assert code == 2 and "--reference-series and --registration go with --reference" in err
    code, _out, err = run(capsys, "synthesize", t1, "-o", tmp_path / "c.nii.gz", "--reference", study,
                          "--reference-series", keys["T1"], "--target", "T2", "--model", model_dir, "--quiet")
    named = io.scan(study).find(keys["T1"]).description
    assert f"warning: {study} [{named}]: " in err                       # which of the folder's series said it


def test_a_reference_of_another_modality_than_the_target_is_refused_or_warned_of_before_the_work(
        capsys, model_dir, inputs, tmp_path):
    t1, ct = inputs
    common = ["--model", model_dir, "--device", "cpu", "--quiet"]
    t1_dicom = io.save(io.load(t1), tmp_path / "t1_dicom")            # its header says MR
    code, _out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "a.nii.gz", "--reference",
                          t1_dicom, *common)                           # MR for CT: nothing to score
    assert code == 2 and not (tmp_path / "a.nii.gz").exists()
    assert f"{t1_dicom}: its modality is T1 (T1-weighted MR), but the synthesis makes CT (computed tomography)" in err
    # only its file name says MR (a name can mislead: a CT named after the T1 it was registered to)
    code, out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "a.nii.gz", "--reference", t1,
                         *common)
    assert code == 0 and "unless its file name misleads" in err
    # another MR contrast (its name may mislead) and an unknown modality: scored, but said before the work
    code, out, err = run(capsys, "synthesize", t1, "--target", "T2", "-o", tmp_path / "b.nii.gz", "--reference", t1,
                         *common)
    assert code == 0, err
    assert f"warning: {t1}: its modality is T1, not T2" in err and err.index("its modality") < err.index("doing nothing")
    assert any(w.startswith("its modality is T1, not T2") for w in json.loads(out)["reference_warnings"])
    unnamed = io.save(io.load(ct).replace(modality=None, unit=""), tmp_path / "reference.nii.gz")   # says none
    code, out, err = run(capsys, "synthesize", t1, "--target", "CT", "-o", tmp_path / "c.nii.gz", "--reference",
                         unnamed, *common)
    assert code == 0 and "its modality is not known" in err
    assert any("its modality is not known" in w for w in json.loads(out)["reference_warnings"])


def test_an_input_whose_header_reads_as_the_target_says_how_to_name_its_real_modality(capsys, model_dir, inputs,
                                                                                      tmp_path):
    """A CBCT whose header says only CT had got "source and target are both CT", with no way out named."""
    code, _out, err = run(capsys, "synthesize", inputs[1], "--target", "CT", "-o", tmp_path / "sct.nii.gz",
                          "--model", model_dir)
    assert code == 2 and "reads as a CT by its header or name" in err and "--source CBCT" in err
    code, _out, err = run(capsys, "synthesize", inputs[1], "--source", "CBCT", "--target", "CT", "-o",
                          tmp_path / "sct.nii.gz", "--model", model_dir)
    assert code == 0, err


def test_evaluate_says_when_a_cbct_shows_none_of_part_of_the_ct_s_body(capsys, model_dir, tmp_path):
    """A CBCT whose field of view cut the head had been scored there too, unsaid (376 HU against the
    195 HU of the part it shows, in an audit)."""
    root = write_phantom_dataset(tmp_path / "data", subjects=1, modality_names=("T1", "T2"), shape=(8, 24, 24),
                                 split={"test": ["sub01", "ct01"]})
    cbct = io.load(root / "ct01" / "CBCT.nii.gz")
    cut = cbct.array.copy()
    cut[:, :, 14:] = -1024.0                                   # its reconstruction ends at column 14
    io.save(cbct.with_array(cut), tmp_path / "cut.nii.gz").replace(root / "ct01" / "CBCT.nii.gz")
    code, out, err = run(capsys, "evaluate", "--model", model_dir, "--data", root, "--device", "cpu",
                         "--routes", "CBCT:CT", "--json")
    assert code == 0, err
    (scored,) = json.loads(out)["subjects"]
    assert 0.1 < scored["source_unseen_share"] < 0.9
    assert f"warning: ct01: {scored['source_unseen_share']:.0%} of the CT's body lies where the CBCT shows nothing" in err


def test_a_reference_in_another_frame_of_reference_is_placed_by_the_stored_registration(capsys, model_dir, tmp_path):
    """A linac's scan is written in its own frame of reference, the planning CT in the CT scanner's, and a
    spatial registration (DICOM REG) in the export relates them: the reference is placed by it before it
    is scored (without one, the scores compare unaligned anatomy, and a warning says so)."""
    from dicom_objects import write_registration

    planning, daily = "1.2.826.0.1.3680043.10.2.1", "1.2.826.0.1.3680043.10.2.2"
    c, s = math.cos(0.3), math.sin(0.3)
    matrix = np.array([[c, -s, 0, 30.0], [s, c, 0, -12.0], [0, 0, 1, 6.0], [0, 0, 0, 1]])
    labels = phantom_labels((6, 24, 24), seed=2)
    ct = Volume(phantom_volume(labels, "CT", 2), modality="CT", unit="HU", spacing=(1.0, 1.0, 3.0),
                origin=(-12.0, -12.0, 0.0), dicom={"PatientID": "P", "StudyInstanceUID": "1.2.3.9",
                                                   "FrameOfReferenceUID": planning})
    t1 = ct.replace(array=phantom_volume(labels, "T1", 2), modality="T1", unit="a.u.",
                    origin=tuple(matrix[:3, :3].T @ (np.asarray(ct.origin) - matrix[:3, 3])),
                    direction=tuple((matrix[:3, :3].T @ np.eye(3)).ravel()),
                    dicom={**ct.dicom, "FrameOfReferenceUID": daily})
    export = tmp_path / "export"
    io.save(ct, export / "ct", description="planning CT")
    io.save(t1, export / "t1", description="t1 daily")
    keys = {e.modality: e.key for e in io.scan(export).entries}
    common = ["--target", "CT", "--model", model_dir, "--device", "cpu", "--series", keys["T1"],
              "--reference", export, "--reference-series", keys["CT"]]

    code, out, err = run(capsys, "synthesize", export, "-o", tmp_path / "unplaced.nii.gz", *common)
    assert code == 2 and "another frame of reference" in err and "does not overlap" in err    # 30 mm off: nothing
    write_registration(export / "REG0001.dcm", planning, {daily: matrix})
    code, out, err = run(capsys, "synthesize", export, "-o", tmp_path / "placed.nii.gz", *common)
    assert code == 0, err
    report = json.loads(out)
    assert "unless it was registered" not in err and "placed in the other scan's by the spatial registration " \
        "REG0001.dcm (CBCT to planning CT)" in report["reference_placed"]
    assert report["reference_coverage"] > 0.99 and report["reference_warnings"] == []

    # a REG kept elsewhere is named with --registration; a file that is none is refused before the work
    elsewhere = tmp_path / "registrations" / "REG0001.dcm"
    elsewhere.parent.mkdir()
    (export / "REG0001.dcm").rename(elsewhere)
    code, out, err = run(capsys, "synthesize", export, "-o", tmp_path / "named.nii.gz", *common,
                         "--registration", elsewhere)
    assert code == 0, err
    assert "REG0001.dcm" in json.loads(out)["reference_placed"]
    code, out, err = run(capsys, "synthesize", export, "-o", tmp_path / "bad.nii.gz", *common,
                         "--registration", tmp_path / "unplaced.nii.gz")
    assert code == 2 and "unplaced.nii.gz: not a DICOM spatial registration (REG)" in err
