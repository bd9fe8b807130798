"""``python main.py prepare``: the wizard's Map series and align volumes page on the command line. It
lists what there is to map and register without writing; --map rules (first match wins, "-" leaves a
series out) and --guesses map the series; --register chooses what is registered; the prepared dataset
is checked; bad input stops with one line and writes nothing."""
from __future__ import annotations

import json
import shutil

import pytest
from training_support import phantom_data, unprepared_data

from cli import run_cli
from engine.tasks import validate_dataset


def test_list_shows_the_series_to_map_and_the_volumes_to_register_and_writes_nothing(tmp_path, capsys):
    data = unprepared_data(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_cli(["prepare", str(data), "--list", "--map", "*t2_tse*=T2"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(",")[0].strip(): line for line in out.splitlines()}         # "sub09: t2_tse_tra (dicom"
    assert lines["sub09: t2_tse_tra (dicom"].endswith(" → T2 (--map *t2_tse*=T2)")
    assert lines["sub09: t1_mprage_sag (dicom"].endswith(" → left out (no rule matched; --guesses would take its "
                                                          "guess, T1)")
    assert "sub10: 3d_pd_weighted.nii.gz" in out
    assert "sub04: FLAIR onto T1.nii.gz → register" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_rules_map_series_register_what_is_needed_and_the_result_is_checked(tmp_path, capsys):
    data = unprepared_data(tmp_path)
    out = tmp_path / "prepared"
    code = run_cli(["prepare", str(data), "-o", str(out), "--map", "*mprage*=T1", "--map", "sub09/study/*=T2",
                    "--map", "*planning*=CT"])
    assert code == 0
    printed = capsys.readouterr()
    assert "warning: --map *planning*=CT matched no series" in printed.err
    assert "sub04: FLAIR onto T1: registered from its intensities: rotation" in printed.out and "left out (fewer than two volumes): sub10" in printed.out
    report = validate_dataset(out)
    assert report.problems == []
    assert {s.name: s.modalities for s in report.subjects}["sub09"] == ("T1", "T2")
    assert "FLAIR" in {s.name: s.modalities for s in report.subjects}["sub04"]
    assert "sub10" not in {s.name for s in report.subjects}         # no rule, no --guesses: its PD stays out


def test_guesses_map_the_rest_and_register_none_leaves_a_misaligned_volume_out(tmp_path, capsys):
    data = unprepared_data(tmp_path)
    out = tmp_path / "prepared"
    assert run_cli(["prepare", str(data), "-o", str(out), "--guesses", "--map", "*mprage*=-", "--register", "none",
                    "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    modality = {s["series"].split(" ")[0]: s["modality"] for s in result["series"]}
    assert modality == {"t2_tse_tra": "T2", "t1_mprage_sag": None, "3d_pd_weighted.nii.gz": "PD"}
    assert [r["registered"] for r in result["register"]] == [False]
    prepared = result["prepared"]
    assert prepared["registered"] == [] and prepared["no_training"] is None
    assert "sub09" in prepared["skipped"]                    # its T1 left out by the rule: one volume
    subjects = prepared["check"]["subjects"]
    assert subjects["sub10"]["modalities"] == ["T1", "PD"] and "FLAIR" not in subjects["sub04"]["modalities"]


def test_a_dataset_with_nothing_to_prepare_is_left_alone(tmp_path, capsys):
    data = phantom_data(tmp_path / "pairs")
    assert run_cli(["prepare", str(data), "-o", str(tmp_path / "out")]) == 0
    assert "nothing to map or register" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rule, message", [("*mprage*", "a rule is PATTERN=MODALITY"),
                                           ("*mprage*=T3", "unknown modality")])
def test_a_rule_that_is_no_rule_stops_before_anything_is_read(tmp_path, capsys, rule, message):
    with pytest.raises(SystemExit) as stopped:
        run_cli(["prepare", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"), "--map", rule])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_output_folder_or_no_dataset_is_one_line_and_nothing_written(tmp_path, capsys):
    data = unprepared_data(tmp_path)
    assert run_cli(["prepare", str(data), "--guesses"]) == 2
    assert "say where to write the prepared dataset (-o OUT)" in capsys.readouterr().err
    assert run_cli(["prepare", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "no usable pairs" in err and len(err.strip().splitlines()) >= 1
    assert not (tmp_path / "out").exists()


def test_an_export_that_needs_mapping_is_not_said_to_train_as_it_is(tmp_path, capsys):
    """No rule and no --guesses on a folder whose series all need mapping had printed "trains as it is"."""
    data = unprepared_data(tmp_path)
    for name in ("sub01", "sub02", "sub03", "sub04"):                    # leave only the subjects to map
        shutil.rmtree(data / name)
    assert run_cli(["prepare", str(data), "-o", str(tmp_path / "out")]) == 2
    assert "nothing to train on as it is" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_list_shows_the_subjects_repeated_volumes_will_make_and_backslash_paths_match(tmp_path, capsys):
    data = unprepared_data(tmp_path)
    shutil.copy(data / "sub10" / "3d_pd_weighted.nii.gz", data / "sub10" / "pd_repeat.nii.gz")
    assert run_cli(["prepare", str(data), "--list", "--map", "sub09\\study\\series0=T1",
                    "--map", "sub09\\study\\series1=T2", "--map", "*pd*=PD"]) == 0
    out = capsys.readouterr().out
    assert "10 files), " in out and " → T1 (--map sub09\\study\\series0=T1)" in out      # with its date
    assert "one subject per repeated volume" in out
    assert "  sub10_PD_1: T1 T1.nii.gz, PD 3d_pd_weighted.nii.gz" in out
    assert "  sub10_PD_2: T1 T1.nii.gz, PD pd_repeat.nii.gz" in out


def test_a_series_in_its_own_frame_is_placed_by_the_stored_registration_unless_told_to_ignore_it(tmp_path, capsys):
    """A REG the user does not trust (the wizard's overlay or --list showed it wrong) could not be set aside."""
    import numpy as np
    from dicom_objects import in_own_frame, write_registration

    from engine.io import load, save
    from engine.tasks import write_phantom_subject

    data = tmp_path / "export"
    c, s = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))
    matrix = np.array([[c, -s, 0, 8.0], [s, c, 0, -5.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])     # linac → CT scanner
    planning, daily = "1.2.826.0.1.3680043.10.7.1", "1.2.826.0.1.3680043.10.7.2"
    for patient, seed in (("PAT01", 3), ("PAT02", 4)):
        made = write_phantom_subject(tmp_path / "made" / patient, ("CT", "CBCT"), shape=(12, 40, 40), seed=seed)
        ct = load(made["CT"]).replace(modality="CT", dicom={"PatientID": patient, "StudyInstanceUID": "1.2.3.8",
                                                            "FrameOfReferenceUID": planning + patient[-1]})
        save(ct, data / patient / "s1", description="planning CT")
        cbct = in_own_frame(load(made["CBCT"]).replace(modality="CBCT"), matrix, daily + patient[-1], patient)
        save(cbct, data / patient / "s2", description="CBCT fx1")
        write_registration(data / patient / "reg" / "REG0001.dcm", planning + patient[-1], {daily + patient[-1]: matrix})
    assert run_cli(["prepare", str(data), "--list", "--guesses"]) == 0
    assert "PAT01/CBCT: in another frame of reference than its CT: placed by the stored registration REG0001.dcm" \
        in capsys.readouterr().out
    assert run_cli(["prepare", str(data), "-o", str(tmp_path / "out"), "--guesses", "--ignore-registrations",
                    "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["registrations_set_aside"] and result["placements"]["PAT01/CBCT"].endswith(
        "the stored registrations were set aside; registered from its intensities")
    assert {r["subject"]: r.get("stored", "") for r in result["prepared"]["registered"]} == {"PAT01": "", "PAT02": ""}
    assert run_cli(["prepare", str(data), "-o", str(tmp_path / "placed"), "--guesses", "--json"]) == 0
    placed = json.loads(capsys.readouterr().out)["prepared"]["registered"]
    assert [r["stored"] for r in placed] == ["REG0001.dcm (CBCT to planning CT)"] * 2
    assert run_cli(["prepare", str(data), "--list", "--ignore-registrations", "--register", "none"]) == 2
    assert "would leave out every series in another frame" in capsys.readouterr().err
