"""``cohort``: a BIDS dataset (two subjects, one with a session) gives a BIDS derivatives dataset with
provenance sidecars; a folder tree with a corrupt file records that file as failed and synthesizes
the rest (exit 1); a CSV manifest names inputs, targets and outputs per row; a rerun skips finished
unchanged items and redoes an interrupted one, a changed input or changed settings; ``--threads 1``
bounds the pools the run used (read back from the manifest); bad usage exits 2."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import write_series

import engine.io as io
from engine.cohort import manifest
from engine.io.volume import Volume
from main import main

ROUTES = (("T1", "T2"), ("T1", "FLAIR"), ("T2", "FLAIR"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from engine.inference.random_model import write_random_model

    return write_random_model(tmp_path_factory.mktemp("models") / "tiny", routes=ROUTES, image_size=32,
                              metadata={"inference_defaults": {"steps": 1}})


def head(modality: str, seed: int = 0) -> Volume:
    """A 4-slice 24² phantom: a bright square of noisy tissue on a dark background."""
    rng = np.random.default_rng(seed)
    array = np.zeros((4, 24, 24), np.float32)
    array[:, 4:20, 4:20] = 500 + 50 * rng.standard_normal((4, 16, 16))
    return Volume(array=array, spacing=(2.0, 2.0, 3.0), modality=modality, unit="a.u.")


def cohort(model, *args: str) -> int:
    return main(["cohort", *args, "--model", str(model), "--device", "cpu", "--quiet"])


def records(out: Path) -> dict[str, dict]:
    return {r["item"]: r for r in map(json.loads, (out / manifest.MANIFEST).read_text().splitlines())}


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_bids_dataset_gives_a_derivatives_dataset_with_provenance(model, tmp_path, capsys, one_torch_thread):
    bids = tmp_path / "bids"
    io.save(head("T1", 1), bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    io.save(head("T2", 2), bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")      # the target itself: not an input
    io.save(head("T1", 3), bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    io.save(head("T1", 4), bids / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii.gz")
    io.save(head("FLAIR", 5), bids / "sub-03" / "anat" / "sub-03_FLAIR.nii.gz")   # no source: not applicable
    (bids / "dataset_description.json").write_text('{"Name": "study", "BIDSVersion": "1.10.0"}')
    out = bids / "derivatives" / "synermedgen"

    assert cohort(model, str(bids), "--target", "FLAIR", "-o", str(out)) == 0
    report = summary(capsys)
    assert (report["succeeded"], report["not_applicable"], report["failed"]) == (3, 1, 0)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "SynerMedGen Studio"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert written == ["sub-01/anat/sub-01_desc-synthetic_FLAIR.nii.gz", "sub-02/anat/sub-02_desc-synthetic_FLAIR.nii.gz",
                       "sub-02/ses-2/anat/sub-02_ses-2_desc-synthetic_FLAIR.nii.gz"]
    sidecar = json.loads((out / "sub-02/ses-2/anat/sub-02_ses-2_desc-synthetic_FLAIR.json").read_text())
    assert sidecar["SourceFile"] == "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz" and sidecar["Route"] == "T1→FLAIR"
    assert sidecar["Model"] == "random-tiny" and "research use only" in sidecar["Description"]
    assert sidecar["Settings"]["steps"] == 1
    result = io.load(out / written[2])
    assert result.synthetic and result.array.shape == (4, 24, 24) and result.spacing == pytest.approx((2.0, 2.0, 3.0))
    state = records(out)
    assert {r["status"] for k, r in state.items() if k != "sub-03"} == {"done"}
    assert state["sub-03"]["status"] == "not-applicable" and "no image of a modality" in state["sub-03"]["error"]
    assert cohort(model, str(bids), "--target", "FLAIR", "-o", str(out)) == 0              # a rerun: the same
    assert (summary(capsys)["skipped"], records(out)["sub-03"]["status"]) == (3, "not-applicable")


def test_a_folder_tree_with_a_corrupt_file_records_it_and_goes_on(model, tmp_path, capsys, one_torch_thread):
    tree = tmp_path / "study"
    io.save(head("T1", 1), tree / "alice" / "t1.nii.gz")
    io.save(head("T1", 2), tree / "bob" / "scans" / "t1_mprage.nii.gz")
    stored = (head("T1", 3).array / 2).astype(np.int16)
    write_series(tree / "dave" / "dicom", stored, spacing=(2.0, 2.0, 3.0), direction=np.eye(3).ravel())
    (tree / "carol").mkdir()
    (tree / "carol" / "t1.nii.gz").write_bytes(b"not a NIfTI file at all" * 10)
    out = tmp_path / "out"

    assert cohort(model, str(tree), "--target", "T2", "--source", "T1", "-o", str(out)) == 3
    report = summary(capsys)
    assert (report["succeeded"], report["skipped"], report["failed"]) == (3, 0, 1)
    state = records(out)
    bad = state["carol/t1.nii.gz"]
    assert bad["status"] == "failed" and "carol/t1.nii.gz" in bad["error"]
    assert state["alice/t1.nii.gz"]["output"] == "alice/t1_synthetic-T2.nii.gz"
    assert (out / "bob/scans/t1_mprage_synthetic-T2.nii.gz").is_file()
    assert (out / "bob/scans/t1_mprage_synthetic-T2.json").is_file()
    dicom = io.load(out / "dave/dicom/fixture_series_synthetic-T2.nii.gz")          # a DICOM series: by its description
    assert dicom.synthetic and dicom.array.shape == stored.shape
    assert not list(out.glob("cohort-manifest.rank-*"))          # the parts are merged


def test_a_csv_manifest_names_targets_sources_and_outputs_per_row(model, tmp_path, capsys, one_torch_thread):
    io.save(head(None, 1), tmp_path / "in" / "a.nii.gz")
    io.save(head("T2", 2), tmp_path / "in" / "b_T2.nii.gz")      # NIfTI: the name gives the modality
    rows = ["input,target,source,output", "in/a.nii.gz,T2,T1,synth/a_T2.nii.gz", "in/b_T2.nii.gz,FLAIR,,",
            "in/missing.nii.gz,T2,T1,", "in/a.nii.gz,T9,T1,"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"

    assert cohort(model, str(tmp_path / "list.csv"), "-o", str(out)) == 3
    assert summary(capsys)["failed"] == 2
    state = records(out)
    assert state["in/a.nii.gz → T2"]["status"] == "done" and (out / "synth/a_T2.nii.gz").is_file()
    assert state["in/b_T2.nii.gz → FLAIR"]["route"] == "T2→FLAIR"
    assert (out / "in/b_T2_synthetic-FLAIR.nii.gz").is_file()
    assert "missing.nii.gz" in state["in/missing.nii.gz → T2"]["error"]
    assert "unknown modality 'T9'" in state["in/a.nii.gz → T9"]["error"]


def test_a_rerun_skips_finished_items_and_redoes_interrupted_or_changed_ones(model, tmp_path, capsys,
                                                                            one_torch_thread):
    tree = tmp_path / "study"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        io.save(head("T1", seed), tree / f"{name}.nii.gz")
    out = tmp_path / "out"
    assert cohort(model, str(tree), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    capsys.readouterr()
    # a kill while b was synthesized: its last record says "started" (in this process's part)
    state = records(out)
    started = {**state["b.nii.gz"], "status": "started", "time": manifest.now()}
    (out / "cohort-manifest.rank-0.jsonl").write_text(json.dumps(started) + "\n")
    before = {n: (out / f"{n}_synthetic-T2.nii.gz").stat().st_mtime_ns for n in "abc"}
    os.utime(tree / "c.nii.gz", ns=(before["c"] + 10**9, before["c"] + 10**9))    # c's input changed

    assert cohort(model, str(tree), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    report = summary(capsys)
    assert (report["succeeded"], report["skipped"]) == (2, 1)
    assert (out / "a_synthetic-T2.nii.gz").stat().st_mtime_ns == before["a"]
    assert (out / "b_synthetic-T2.nii.gz").stat().st_mtime_ns != before["b"]
    assert {r["status"] for r in records(out).values()} == {"done", "skipped"}

    assert cohort(model, str(tree), "--target", "T2", "--source", "T1", "-o", str(out), "--seed", "7") == 0    # other settings
    assert summary(capsys)["succeeded"] == 3


def test_threads_bound_every_pool_the_run_used(model, tmp_path, capsys):
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    from engine.cohort.threads import thread_counts

    io.save(head("T1"), tmp_path / "a.nii.gz")
    run = ("--target", "T2", "--source", "T1", "-o")
    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(2)                                     # two threads everywhere, whatever the machine
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        with threadpool_limits(limits=2):
            blas = thread_counts()["blas"]
            assert cohort(model, str(tmp_path / "a.nii.gz"), *run, str(tmp_path / "free")) == 0
            assert records(tmp_path / "free")["a.nii.gz"]["threads"] == {**thread_counts(), "blas": blas}
            assert records(tmp_path / "free")["a.nii.gz"]["threads"]["torch"] == 2
            capsys.readouterr()
            assert cohort(model, str(tmp_path / "a.nii.gz"), *run, str(tmp_path / "one"), "--threads", "1") == 0
            used = records(tmp_path / "one")["a.nii.gz"]["threads"]
            assert summary(capsys)["threads"] == used
            assert used["torch"] == used["itk"] == used["reader_itk"] == 1 and used["blas"] == min(blas, 1)
            assert used["reader_blas"] <= 1                                  # the reader process too
            assert thread_counts()["torch"] == thread_counts()["itk"] == 2        # put back after the run
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def test_max_memory_bounds_the_batch_planner(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1"), tmp_path / "a.nii.gz")
    run = (str(tmp_path / "a.nii.gz"), "--target", "T2", "--source", "T1", "-o")
    assert cohort(model, *run, str(tmp_path / "free")) == 0
    assert records(tmp_path / "free")["a.nii.gz"]["batch_size"] == 4            # every body slice in one batch
    assert cohort(model, *run, str(tmp_path / "tight"), "--max-memory", "64K") == 0
    assert records(tmp_path / "tight")["a.nii.gz"]["batch_size"] == 1


@pytest.mark.parametrize("args, message", [
    (("--target", "T2"), "no such file or folder"),
    (("--threads", "0", "--target", "T2"), "--threads must be at least 1"),
    (("--max-memory", "lots", "--target", "T2"), "--max-memory 'lots'"),
])
def test_bad_usage_exits_2_with_one_line(model, tmp_path, capsys, args, message):
    io.save(head("T1"), tmp_path / "in" / "a.nii.gz")
    where = str(tmp_path / "nowhere") if message == "no such file or folder" else str(tmp_path / "in")
    assert cohort(model, where, "-o", str(tmp_path / "out"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_tree_holding_only_the_target_is_bad_usage(model, tmp_path, capsys):
    io.save(head("T2"), tmp_path / "in" / "scan_T2.nii.gz")
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "-o", str(tmp_path / "out")) == 2
    assert "nothing to synthesize" in capsys.readouterr().err


def test_a_csv_without_the_input_column_is_bad_usage(model, tmp_path, capsys):
    (tmp_path / "list.csv").write_text("file,target\na.nii.gz,T2\n")
    assert cohort(model, str(tmp_path / "list.csv"), "-o", str(tmp_path / "out")) == 2
    assert "list.csv: the first line must name the columns" in capsys.readouterr().err


def test_the_next_volume_is_read_while_one_is_synthesized(model, tmp_path, one_torch_thread):
    import threading

    from engine.cohort.items import Cohort, CohortItem
    from engine.cohort.runner import run_cohort
    from engine.inference import Synthesizer

    read = {n: threading.Event() for n in "abc"}
    readers: set[str] = set()
    overlapped: list[bool] = []

    def reader(name: str):
        def load() -> Volume:
            readers.add(threading.current_thread().name)
            read[name].set()
            return head("T1")
        return load

    def on_event(event: dict) -> None:
        if event["event"] == "progress" and event["item"] == "a" and not overlapped:
            overlapped.append(read["b"].wait(timeout=20))             # a is being synthesized: b gets read meanwhile

    items = tuple(CohortItem(key=n, path=n, target="T2", output=f"{n}.nii.gz", source="T1", loader=reader(n))
                  for n in "abc")
    synth = Synthesizer(model, device="cpu")
    summary = run_cohort(Cohort("tree", str(tmp_path), items), synth, tmp_path / "out", synth.default_settings(),
                         identity={}, on_event=on_event)
    assert summary.succeeded == 3 and overlapped == [True]
    assert threading.current_thread().name not in readers                # never on the synthesizing thread


def test_cancelling_leaves_the_item_in_flight_started_for_the_next_run(model, tmp_path, one_torch_thread):
    from engine.cohort.items import discover
    from engine.cohort.runner import run_cohort
    from engine.inference import Synthesizer
    from engine.jobs import Cancelled, CancelToken

    for name in "ab":
        io.save(head("T1"), tmp_path / "in" / f"{name}.nii.gz")
    found = discover(tmp_path / "in", "T2", "T1")
    synth = Synthesizer(model, device="cpu")
    token = CancelToken()
    with pytest.raises(Cancelled):
        run_cohort(found, synth, tmp_path / "out", synth.default_settings(), identity={}, cancel=token,
                   on_event=lambda e: token.cancel() if e["event"] == "progress" else None)
    assert manifest.read_state(tmp_path / "out")["a.nii.gz"]["status"] == "started"
    assert not (tmp_path / "out" / "a_synthetic-T2.nii.gz").exists()
    summary = run_cohort(found, synth, tmp_path / "out", synth.default_settings(), identity={})
    assert (summary.succeeded, summary.skipped) == (2, 0)


def test_a_second_run_on_the_same_output_folder_exits_2_naming_the_holder(model, tmp_path, capsys, one_torch_thread):
    from engine.cohort.lock import OutputLock

    io.save(head("T1"), tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    args = (str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out))
    with OutputLock(out):                                   # a run in progress (flock: per open file, so per run)
        assert cohort(model, *args) == 2
        err = capsys.readouterr().err.strip()
        assert f"pid {os.getpid()}" in err and str(out) in err and len(err.splitlines()) == 1
        assert not (out / manifest.MANIFEST).exists() and not list(out.glob("cohort-manifest.rank-*"))
    assert cohort(model, *args) == 0                        # released: the next run goes ahead …
    capsys.readouterr()
    with OutputLock(out):                                   # … and releases it after merging
        pass


def test_a_rerun_redoes_an_item_whose_output_column_changed_or_whose_sidecar_is_gone(model, tmp_path, capsys,
                                                                                     one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    io.save(head("T1", 2), tmp_path / "in" / "b.nii.gz")
    out = tmp_path / "out"
    csv = tmp_path / "list.csv"
    csv.write_text("input,target,source,output\nin/a.nii.gz,T2,T1,first/a.nii.gz\nin/b.nii.gz,T2,T1,b.nii.gz\n")
    assert cohort(model, str(csv), "-o", str(out)) == 0
    capsys.readouterr()
    csv.write_text("input,target,source,output\nin/a.nii.gz,T2,T1,second/a.nii.gz\nin/b.nii.gz,T2,T1,b.nii.gz\n")
    (out / "b.json").unlink()                                # the output without its provenance

    assert cohort(model, str(csv), "-o", str(out)) == 0
    assert (summary(capsys)["succeeded"], records(out)["in/a.nii.gz → T2"]["output"]) == (2, "second/a.nii.gz")
    assert (out / "second/a.nii.gz").is_file() and (out / "second/a.json").is_file() and (out / "b.json").is_file()


@pytest.mark.parametrize("source, target, expected", [
    ("sub-01_ses-1_acq-mprage_run-2_T1w.nii.gz", "T1CE", "sub-01_ses-1_acq-mprage_ce-gadolinium_run-2_desc-synthetic_T1w.nii.gz"),
    ("sub-01_acq-fast_ce-gd_rec-norm_run-1_T1w.nii", "T2", "sub-01_acq-fast_rec-norm_run-1_desc-synthetic_T2w.nii.gz"),
    ("sub-01_task-rest_acq-x_T1w.nii.gz", "T1CE", "sub-01_task-rest_acq-x_ce-gadolinium_desc-synthetic_T1w.nii.gz"),
    ("sub-01_ses-2_T1w.nii.gz", "T1CE", "sub-01_ses-2_ce-gadolinium_desc-synthetic_T1w.nii.gz"),
])
def test_derivative_names_follow_the_bids_entity_order(source, target, expected):
    from engine.cohort.bids import derivative_name

    assert derivative_name(source, target) == ("anat", expected)


def test_a_study_moved_elsewhere_is_not_redone(model, tmp_path, capsys, one_torch_thread):
    for name, seed in (("a", 1), ("b", 2)):
        io.save(head("T1", seed), tmp_path / "mount1" / "study" / f"{name}.nii.gz")
    out = tmp_path / "out"
    run = ("--target", "T2", "--source", "T1", "-o", str(out))
    assert cohort(model, str(tmp_path / "mount1" / "study"), *run) == 0
    capsys.readouterr()
    (tmp_path / "mount2").mkdir()
    (tmp_path / "mount1" / "study").rename(tmp_path / "mount2" / "study")       # keeps sizes and times

    assert cohort(model, str(tmp_path / "mount2" / "study"), *run) == 0
    report = summary(capsys)
    assert (report["succeeded"], report["skipped"]) == (0, 2)


def test_a_cohort_item_is_synthesized_and_described_as_synthesize_does_it(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    assert main(["synthesize", str(tmp_path / "in" / "a.nii.gz"), "--target", "T2", "--source", "T1", "-o",
                 str(tmp_path / "alone.nii.gz"), "--model", str(model), "--device", "cpu", "--quiet"]) == 0
    report = summary(capsys)
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(tmp_path / "out")) == 0
    capsys.readouterr()
    alone, item = io.load(tmp_path / "alone.nii.gz"), io.load(tmp_path / "out" / "a_synthetic-T2.nii.gz")
    assert np.array_equal(alone.array, item.array) and alone.notes == item.notes
    import nibabel

    descrip = [nibabel.load(p).header["descrip"] for p in (tmp_path / "alone.nii.gz", tmp_path / "out/a_synthetic-T2.nii.gz")]
    assert descrip[0] == descrip[1]
    sidecar = json.loads((tmp_path / "out" / "a_synthetic-T2.json").read_text())
    assert sidecar["InputWarnings"] == report["input_warnings"] and sidecar["Route"] == report["route"]
    assert sidecar["BenchmarkWarnings"] == report["benchmark_warnings"]
    assert sidecar["SourceFile"] == "a.nii.gz" and sidecar["InputNotes"] == report["input_notes"]


def test_a_csv_row_cannot_write_outside_the_output_folder_or_over_an_input(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    original = (tmp_path / "in" / "a.nii.gz").read_bytes()
    rows = ["input,target,source,output", "in/a.nii.gz,T2,T1,../in/a.nii.gz", "in/a.nii.gz,FLAIR,T1,/tmp/x.nii.gz",
            "in/a.nii.gz,T2,T1,ok/../../escape.nii.gz"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "list.csv"), "-o", str(out)) == 3
    state = records(out)
    assert all(r["status"] == "failed" and "must be a path inside the output folder" in r["error"]
               for r in state.values()), state
    assert (tmp_path / "in" / "a.nii.gz").read_bytes() == original and not (tmp_path / "escape.nii.gz").exists()
    # an output folder that is the input's own folder: a row naming the input as its output is refused
    (tmp_path / "in" / "list.csv").write_text("input,target,source,output\na.nii.gz,T2,T1,a.nii.gz\n")
    capsys.readouterr()
    assert cohort(model, str(tmp_path / "in" / "list.csv"), "-o", str(tmp_path / "in")) == 3
    (row,) = records(tmp_path / "in").values()
    assert "is an input of this cohort; not overwritten" in row["error"]
    assert (tmp_path / "in" / "a.nii.gz").read_bytes() == original


def test_a_rerun_after_a_kill_skips_what_was_finished_and_redoes_the_rest(model, tmp_path, capsys, one_torch_thread):
    import signal
    import subprocess
    import sys

    tree = tmp_path / "study"
    for k in range(6):
        io.save(head("T1", k), tree / f"s{k}.nii.gz")
    out = tmp_path / "out"
    command = [sys.executable, str(Path(__file__).resolve().parents[2] / "main.py"), "cohort", str(tree), "--target",
               "T2", "--source", "T1", "-o", str(out), "--model", str(model), "--device", "cpu", "--threads", "1",
               "--json"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in run.stdout:                       # kill -9 as soon as the first volume is written
            record = json.loads(line)
            if record.get("event") == "item" and record.get("status") == "done":
                run.send_signal(signal.SIGKILL)
                break
    finally:
        run.kill()
        run.wait(60)
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    part = [json.loads(line) for line in manifest.part_path(out, 0).read_text().splitlines()]
    done = {r["output"]: (out / r["output"]).stat().st_mtime_ns for r in part if r["status"] == "done"}
    assert 1 <= len(done) < 6

    assert cohort(model, str(tree), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    report = summary(capsys)
    assert (report["skipped"], report["succeeded"], report["failed"]) == (len(done), 6 - len(done), 0)
    assert all((out / name).stat().st_mtime_ns == when for name, when in done.items())     # not written again
    assert len(list(out.glob("*_synthetic-T2.nii.gz"))) == 6 and not list(out.rglob("*.part*"))
    assert {r["status"] for r in records(out).values()} == {"done", "skipped"}


def test_a_model_folder_moved_with_its_times_is_the_same_model_and_an_edited_one_is_not(tmp_path):
    import shutil

    folder = tmp_path / "a" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"0" * 64)
    before = manifest.model_fingerprint(folder)
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "model", copy_function=shutil.copy2)
    assert manifest.model_fingerprint(moved) == before
    (moved / "model.safetensors").write_bytes(b"1" * 65)
    assert manifest.model_fingerprint(moved) != before


def test_a_tree_holding_an_earlier_run_s_manifest_and_tables_has_no_failed_items(model, tmp_path, capsys,
                                                                                 one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o",
                  str(tmp_path / "in" / "run1")) == 0                  # leaves run1/cohort-manifest.jsonl behind
    (tmp_path / "in" / "participants.tsv").write_text("participant_id\tage\nsub-01\t41\n")
    capsys.readouterr()
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(tmp_path / "run2")) == 0
    assert set(records(tmp_path / "run2")) == {"a.nii.gz"}


def test_a_csv_row_picks_one_series_of_a_folder_holding_several(model, tmp_path, capsys, one_torch_thread):
    from dicom_fixtures import anatomical

    stored = anatomical()[:4]
    write_series(tmp_path / "study", stored, series_uid="1.2.3.4.1", seed=1)
    write_series(tmp_path / "study", stored[:, ::-1].copy(), series_uid="1.2.3.4.2", seed=2)
    rows = ["input,target,source,series", "study,T2,T1,1.2.3.4.1", "study,T2,T1,1.2.3.4.2", "study,T2,T1,"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "list.csv"), "-o", str(out)) == 3
    state = records(out)
    assert {k: r["status"] for k, r in state.items()} == {"study#1.2.3.4.1 → T2": "done", "study#1.2.3.4.2 → T2": "done",
                                                          "study → T2": "failed"}
    assert "pick one with --series (in a cohort CSV: its series column)" in state["study → T2"]["error"]
    first, second = (io.load(out / state[f"study#1.2.3.4.{k} → T2"]["output"]) for k in (1, 2))
    assert first.shape == second.shape == stored.shape and not np.array_equal(first.array, second.array)


def test_naming_a_source_the_headers_never_say_explains_how_to_list_such_volumes(model, tmp_path, capsys):
    io.save(head("T2", 1), tmp_path / "in" / "a_T2.nii.gz")
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "no volume whose header or name says T1" in err and "CSV manifest with source T1" in err


def test_two_inputs_of_one_name_in_a_folder_both_get_an_output(model, tmp_path, capsys, one_torch_thread):
    from dicom_fixtures import anatomical

    stored = anatomical()[:4]
    write_series(tmp_path / "in" / "pt", stored, series_uid="1.2.3.4.1", seed=1)         # both "fixture series"
    write_series(tmp_path / "in" / "pt", stored[:, ::-1].copy(), series_uid="1.2.3.4.2", seed=2)
    io.save(head("T1", 1), tmp_path / "in" / "t1.nii")
    io.save(head("T1", 2), tmp_path / "in" / "t1.nii.gz")
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    state = records(out)
    assert len(state) == 4 and len({r["output"] for r in state.values()}) == 4
    assert all((out / r["output"]).is_file() for r in state.values())
    again = records(out)
    capsys.readouterr()
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    assert {k: r["output"] for k, r in records(out).items()} == {k: r["output"] for k, r in again.items()}   # stable


def test_objects_of_a_study_that_hold_no_image_are_not_applicable_not_failed(model, tmp_path, capsys,
                                                                              one_torch_thread):
    import shutil

    from dicom_fixtures import PYDICOM_FILES

    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    shutil.copy(PYDICOM_FILES / "rtstruct.dcm", tmp_path / "in" / "rtstruct.dcm")     # beside it in an RT study
    shutil.copy(PYDICOM_FILES / "rtplan_truncated.dcm", tmp_path / "in" / "plan.dcm")
    shutil.copy(PYDICOM_FILES / "MR_truncated.dcm", tmp_path / "in" / "broken.dcm")   # an image that cannot be read
    (tmp_path / "in" / "LOCKFILE").write_text("locked by the burning software\n")        # a disc's own files
    (tmp_path / "in" / "notes.dcm").write_text("named as DICOM, but is not: a damaged image\n")
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 3
    status = {k: r["status"] for k, r in records(out).items()}
    assert status == {"a.nii.gz": "done", "rtstruct.dcm": "not-applicable", "plan.dcm": "not-applicable",
                      "LOCKFILE": "not-applicable", "broken.dcm": "failed", "notes.dcm": "failed"}
    assert summary(capsys)["not_applicable"] == 3


def test_a_volume_that_is_no_input_is_listed_as_not_applicable_saying_why(model, tmp_path, capsys,
                                                                         one_torch_thread):
    """The real T2 beside a T1 (target T2) and a FLAIR when the source named is T1: rows that say why
    they were left out, where they had vanished from the manifest without a word."""
    for name, modality in (("a_T1.nii.gz", "T1"), ("a_T2.nii.gz", "T2"), ("a_FLAIR.nii.gz", "FLAIR")):
        io.save(head(modality, 1), tmp_path / "in" / name)
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    rows = records(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "a_T1.nii.gz": "done", "a_T2.nii.gz": "not-applicable", "a_FLAIR.nii.gz": "not-applicable"}
    assert "a T2 already (the target's modality)" in rows["a_T2.nii.gz"]["error"]
    assert "a FLAIR, not the source named (T1)" in rows["a_FLAIR.nii.gz"]["error"]
    assert summary(capsys)["not_applicable"] == 2


def test_a_localizer_or_a_diffusion_series_in_a_study_is_not_applicable_even_with_the_source_named(model, tmp_path, capsys,
                                                                           one_torch_thread):
    """A series of no modality is taken as the source named: a study's localizer had been synthesized as
    a T1 (it had even been guessed T1 without the source named)."""
    def scout(ds, k):
        ds.SeriesDescription, ds.ImageType = "localizer", ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    write_series(tmp_path / "in" / "scout", (head("T1", 2).array[:3] * 2).astype(np.int16), per_slice=scout)
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    rows = records(out)
    assert sorted(r["status"] for r in rows.values()) == ["done", "not-applicable"]
    (left,) = [r for r in rows.values() if r["status"] == "not-applicable"]
    assert "marks it a localizer" in left["error"]

    def diffusion(ds, k):
        ds.SeriesDescription, ds.ImageType = "ep2d_diff_3scan_trace_p2", ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]

    write_series(tmp_path / "in" / "dwi", (head("T1", 3).array[:3] * 2).astype(np.int16), per_slice=diffusion)
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    (dwi,) = [r for k, r in records(out).items() if k.startswith("dwi")]
    assert dwi["status"] == "not-applicable" and "a diffusion series" in dwi["error"]


def test_csv_rows_whose_outputs_are_one_file_or_share_a_sidecar_or_repeat_a_row_fail_saying_so(
        model, tmp_path, capsys, one_torch_thread):
    """./sct/a and sct/a are one file; c.nii and c.nii.gz one c.json; a row repeating another's input and
    target is no second output: each had been written over another row's or dropped, every row 'done'."""
    for k in range(6):
        io.save(head("T1", k), tmp_path / f"p{k}.nii.gz")
    rows = ["input,target,source,output", "p0.nii.gz,T2,T1,./sct/a.nii.gz", "p1.nii.gz,T2,T1,sct/a.nii.gz",
            "p2.nii.gz,T2,T1,sct/c.nii", "p3.nii.gz,T2,T1,sct/c.nii.gz", "p4.nii.gz,T2,T1,sct//e.nii.gz",
            "p4.nii.gz,T2,T1,sct/f.nii.gz"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "list.csv"), "-o", str(out)) == 3
    status = {k: (r["status"], r["error"]) for k, r in records(out).items()}
    assert [status[f"p{k}.nii.gz → T2"][0] for k in (0, 2, 4)] == ["done"] * 3
    assert {r["model"] for r in records(out).values()} == {"random-tiny"}      # which model each row's run used
    assert "already written for p0.nii.gz → T2" in status["p1.nii.gz → T2"][1]
    assert "(or its provenance file) is already written for p2.nii.gz → T2" in status["p3.nii.gz → T2"][1]
    assert "repeats line 6's input and target" in status["p4.nii.gz → T2 (line 7)"][1]
    assert json.loads((out / "sct" / "a.json").read_text())["SourceFile"] == "p0.nii.gz"
    assert (out / "sct" / "e.nii.gz").exists() and not (out / "sct" / "f.nii.gz").exists()


def test_a_rerun_redoes_an_item_whose_detached_voxel_file_changed(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.mha")
    header = (tmp_path / "in" / "a.mha")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(header)), str(tmp_path / "in" / "a_T1.mhd"))   # a.mhd + a_T1.raw / .zraw
    header.unlink()
    out = tmp_path / "out"
    args = (str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out))
    assert cohort(model, *args) == 0
    data = next(p for p in (tmp_path / "in").iterdir() if p.suffix in (".raw", ".zraw"))
    sitk.WriteImage(sitk.GetImageFromArray(head("T1", 2).array), str(tmp_path / "other.mhd"))
    replaced = next(p for p in tmp_path.iterdir() if p.suffix in (".raw", ".zraw"))
    data.write_bytes(replaced.read_bytes())                           # another scan's voxels, the header untouched
    capsys.readouterr()
    assert cohort(model, *args) == 0
    assert summary(capsys)["succeeded"] == 1                           # not skipped as unchanged


def test_an_item_failing_on_a_rerun_says_its_earlier_output_is_still_there(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    io.save(head("T1", 2), tmp_path / "in" / "b.nii.gz")
    out = tmp_path / "out"
    args = (str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out))
    assert cohort(model, *args) == 0
    (tmp_path / "in" / "a.nii.gz").write_bytes(b"not a NIfTI any more")
    assert cohort(model, *args) == 3
    row = records(out)["a.nii.gz"]
    assert row["status"] == "failed" and "is still the earlier run's output, made from the input as it was then" \
        in row["error"]


def test_the_series_column_tags_the_output_of_a_folder_named_after_a_uid(tmp_path):
    from engine.cohort.items import csv_items, unique_outputs

    (tmp_path / "list.csv").write_text("input,target,source,series\n1.2.840.5,T2,T1,1.2.3.1\n1.2.840.5,T2,T1,1.2.3.2\n")
    items = unique_outputs(csv_items(tmp_path / "list.csv", None, None))
    assert sorted(i.output for i in items) == ["1.2.840-1-2-3-1_synthetic-T2.nii.gz", "1.2.840-1-2-3-2_synthetic-T2.nii.gz"]
    assert not any(i.error for i in items)


def test_an_item_with_nothing_to_do_takes_no_output_name(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "t1.nii.gz")
    (tmp_path / "in" / "t1").write_text("not an image, and no suffix: a disc's own file\n" * 5)
    out = tmp_path / "out"
    assert cohort(model, str(tmp_path / "in"), "--target", "T2", "--source", "T1", "-o", str(out)) == 0
    assert {k: r["status"] for k, r in records(out).items()} == {"t1.nii.gz": "done", "t1": "not-applicable"}


def test_a_sidecar_names_no_folder_above_the_study(model, tmp_path, capsys, one_torch_thread):
    import pydicom

    tree = tmp_path / "Doe^Jane" / "study"                    # the folders above a study may name the patient
    paths = write_series(tree / "dicom", (head("T1", 3).array / 2).astype(np.int16), spacing=(2.0, 2.0, 3.0),
                         direction=np.eye(3).ravel())
    ds = pydicom.dcmread(paths[1])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless      # claims JPEG 2000, holds raw bytes
    ds.PixelData = pydicom.encaps.encapsulate([bytes(64)])
    ds.save_as(paths[1], enforce_file_format=True)

    assert cohort(model, str(tree), "--target", "T2", "--source", "T1", "-o", str(tmp_path / "out")) == 0
    capsys.readouterr()
    sidecar = (tmp_path / "out" / "dicom" / "fixture_series_synthetic-T2.json").read_text()
    notes = json.loads(sidecar)["InputNotes"]
    assert any(n.startswith("unreadable slice 2 of 4") and f"dicom/{paths[1].name}:" in n for n in notes)
    assert "Doe^Jane" not in sidecar and str(tmp_path) not in sidecar


def test_notes_name_an_input_outside_the_root_from_its_own_folder(tmp_path):
    from engine.inference.sidecar import folders_cut

    local = folders_cut(tmp_path / "elsewhere" / "Doe^Jane" / "ct.nii", tmp_path / "csvs")
    assert local([f"name it as {tmp_path}/elsewhere/Doe^Jane/ct.nii#INDEX", f"{tmp_path}/csvs/a/b.dcm: bad",
                  "0.5/1 mm", f"/mnt{tmp_path}/csvs/x.nii: elsewhere"]) == [
        "name it as ct.nii#INDEX", "a/b.dcm: bad", "0.5/1 mm", f"/mnt{tmp_path}/csvs/x.nii: elsewhere"]


def test_a_json_there_that_this_app_did_not_write_is_never_replaced(model, tmp_path, capsys, one_torch_thread):
    io.save(head("T1", 1), tmp_path / "in" / "a.nii.gz")
    (tmp_path / "list.csv").write_text("input,target,source,output\nin/a.nii.gz,T2,T1,sub-01_T2w.nii.gz\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01_T2w.json").write_text('{"RepetitionTime": 4.2}')          # a real scan's BIDS sidecar
    assert cohort(model, str(tmp_path / "list.csv"), "-o", str(out)) == 3
    (row,) = records(out).values()
    assert row["status"] == "failed" and "sub-01_T2w.json: exists and was not written by" in row["error"]
    assert (out / "sub-01_T2w.json").read_text() == '{"RepetitionTime": 4.2}' and not (out / "sub-01_T2w.nii.gz").exists()
