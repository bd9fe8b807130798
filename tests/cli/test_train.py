"""``python main.py train``: the help documents every stage, Stage I then Stage II run from the
command line on a paired folder and leave loadable model folders, and bad input stops before
training with one clear message naming the culprit (exit 2)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from training_support import PX, ROOT, damage_voxels, phantom_data, run_train, subprocess_env, train_command

from cli import run_cli
from engine.model import load_model_dir
from engine.training.config import STAGES, TARGET_EMBEDDING


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory.mktemp("phantoms"))


def test_help_documents_every_stage():
    proc = subprocess.run(train_command("--help"), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for stage in STAGES:
        assert f"{stage}:" in text
    for phrase in ("Trains:", "Frozen:", "Loss:", "cross-entropy", "rectified-flow", "--fresh", "checkpoint-last",
                   "torchrun", '"event": "cancelled"'):
        assert phrase in text, phrase


def test_size_choices_are_the_model_presets():
    from cli.train import PRESET_NAMES
    from engine.model.config import PRESETS

    assert PRESET_NAMES == tuple(PRESETS)


@pytest.mark.slow
def test_stage_one_then_stage_two_from_the_command_line(data, tmp_path):
    common = ["--data", str(data), "--steps", "2", "--batch-size", "2", "--image-size", str(PX), "--threads", "1",
              "--eval-samples", "2"]
    rc, stage1, err = run_train(*common, "--stage", "understanding", "--out", str(tmp_path / "s1"))
    assert rc == 0, err
    assert [r["event"] for r in stage1][0] == "start" and stage1[-1]["event"] == "done"
    steps = [r for r in stage1 if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all({"loss", "lr", "eta_s", "samples_per_s", "steps"} <= set(r) for r in steps)
    assert set(next(r for r in stage1 if r["event"] == "eval")["accuracy"]) == {"CTS", "MI", "TIA"}

    rc, stage2, err = run_train(*common, "--stage", "generation", "--init", str(tmp_path / "s1"),
                                "--out", str(tmp_path / "s2"), "--preview-every", "1", "--preview-steps", "2",
                                "--target-embedding", "--timestep-shift", "3")
    assert rc == 0, err
    assert "VAE was never trained" in err                        # a warning on stderr, not a refusal
    previews = [r for r in stage2 if r["event"] == "preview"]
    assert previews and all((tmp_path / "s2" / "previews").joinpath(r["path"].rsplit("/", 1)[-1]).exists()
                            for r in previews)
    loaded = load_model_dir(tmp_path / "s2")
    card = loaded.metadata
    assert [s["stage"] for s in card["recipe"]["stages"]] == ["understanding", "generation"]
    assert loaded.config.target_modalities == TARGET_EMBEDDING
    assert load_model_dir(tmp_path / "s1").config.target_modalities == ()
    assert loaded.config.timestep_shift == 3.0 and load_model_dir(tmp_path / "s1").config.timestep_shift == 1.0
    history = [json.loads(line) for line in (tmp_path / "s2" / "progress.jsonl").read_text().splitlines()]
    assert history == stage2


def _bad(capsys, *args: str) -> str:
    code = run_cli(["train", *args])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("error: ")
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert out and out[-1]["event"] == "error" and out[-1]["phase"] == "setup"
    return captured.err


def test_bad_input_stops_before_training_with_the_culprit_named(data, tmp_path, capsys):
    base = ["--stage", "understanding", "--steps", "1", "--image-size", str(PX), "--threads", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _bad(capsys, "--data", str(empty), "--out", str(tmp_path / "o1"), *base)
    assert "no usable pairs" in err and str(empty) in err

    single = tmp_path / "single"                             # one modality per subject: no pair
    shutil.copytree(data / "sub01", single / "sub01", ignore=shutil.ignore_patterns("T2*", "FLAIR*"))
    err = _bad(capsys, "--data", str(single), "--out", str(tmp_path / "o2"), *base)
    assert "only one usable modality" in err and "sub01" in err

    unknown = tmp_path / "unknown"                           # a file named by no modality
    shutil.copytree(data, unknown)
    (unknown / "sub02" / "T2.nii.gz").rename(unknown / "sub02" / "T2W.nii.gz")
    err = _bad(capsys, "--data", str(unknown), "--out", str(tmp_path / "o3"), *base)
    assert "T2W.nii.gz" in err and "unknown modality" in err and "--skip-invalid" in err

    err = _bad(capsys, "--data", str(data), "--out", str(tmp_path / "o4"), "--init", str(empty), *base)
    assert "--init" in err and str(empty) in err and "neither a SynerMedGen model folder" in err
    err = _bad(capsys, "--data", str(data), "--out", str(tmp_path / "o4b"), "--timestep-shift", "0", *base)
    assert "timestep_shift must be a number > 0" in err
    err = _bad(capsys, "--data", str(data), "--out", str(tmp_path / "o5"), *base[:-4], "--image-size", "36")
    assert "--image-size 36" in err and "multiple of 8" in err
    err = _bad(capsys, "--data", str(data), "--out", str(tmp_path / "o6"), *base, "--routes", "T1:T9")
    assert "T9" in err and "unknown modality" in err
    (tmp_path / "arch.json").write_text('{"llm": {"hidden_size": 64}}')
    err = _bad(capsys, "--data", str(data), "--out", str(tmp_path / "o7"), *base, "--model-config",
               str(tmp_path / "arch.json"))
    assert "--model-config" in err and "arch.json" in err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))   # nothing written


def test_a_model_no_run_is_writing_is_never_replaced_without_fresh(data, tmp_path, capsys):
    from engine.inference.random_model import write_random_model

    colleague = write_random_model(tmp_path / "colleague", routes=(("T1", "T2"),), image_size=PX,
                                   metadata={"name": "Dr X's T1→T2"})
    before = {p.name: p.read_bytes() for p in colleague.iterdir()}
    base = ["--data", str(data), "--stage", "generation", "--steps", "1", "--batch-size", "2", "--image-size", str(PX),
            "--threads", "1", "--eval-samples", "2", "--preview-every", "100"]
    err = _bad(capsys, *base, "--out", str(colleague))
    assert f"--out {colleague} holds a model (Dr X's T1→T2)" in err and "--fresh" in err
    assert {p.name: p.read_bytes() for p in colleague.iterdir()} == before
    assert run_cli(["train", *base, "--out", str(colleague), "--fresh"]) == 0, capsys.readouterr().err
    assert (colleague / "checkpoint-last").is_dir()
    assert run_cli(["train", *base, "--out", str(colleague), "--steps", "2"]) == 0, capsys.readouterr().err  # resumes


def test_runs_and_models_from_before_physical_scale_slicing_keep_their_slicing(tmp_path):
    """A recorded config without pixel_mm / augment is the fitted, unrandomized run it was; the recipe
    does not reuse such an entry for a 4 mm one; --init of a fitted model keeps fitting by default."""
    import argparse

    from cli.train import _pixel_mm
    from engine.inference.random_model import write_random_model
    from engine.recipe import _changed_option
    from engine.training.config import DEFAULT_PIXEL_MM, TrainConfig

    old = {k: v for k, v in TrainConfig(data="d", stage="vae", out="o").to_dict().items()
           if k not in ("pixel_mm", "augment")}
    config = TrainConfig.from_dict(old)
    assert config.pixel_mm == 0.0 and config.augment is False
    assert "pixel_mm 0.0" in _changed_option(old, {"pixel_mm": 4.0})
    fitted = write_random_model(tmp_path / "fitted", routes=(("T1", "T2"),), image_size=32)
    scaled = write_random_model(tmp_path / "scaled", routes=(("T1", "T2"),), image_size=32,
                                metadata={"pixel_mm": 2.5})
    args = lambda **kw: argparse.Namespace(**{"pixel_mm": None, "init": None, **kw})    # noqa: E731
    assert _pixel_mm(args()) == DEFAULT_PIXEL_MM
    assert _pixel_mm(args(init=str(fitted))) == 0.0 and _pixel_mm(args(init=str(scaled))) == 2.5
    assert _pixel_mm(args(init=str(scaled), pixel_mm=3.0)) == 3.0


def test_a_pair_resampled_onto_its_reference_is_said_on_stderr_and_in_the_start_record(data, tmp_path, capsys):
    import engine.io as io

    shrunk = tmp_path / "data"
    shutil.copytree(data, shrunk)
    t2 = io.load(shrunk / "sub01" / "T2.nii.gz")            # a header with a wrong spacing: the T2 shrinks
    io.save(t2.replace(spacing=tuple(s / 3 for s in t2.spacing)), shrunk / "sub01" / "T2.nii.gz")
    code = run_cli(["train", "--data", str(shrunk), "--stage", "understanding", "--steps", "1", "--batch-size", "2",
                    "--image-size", str(PX), "--threads", "1", "--eval-samples", "2", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    start = next(json.loads(line) for line in captured.out.splitlines() if '"start"' in line)
    said = [w for w in start["warnings"] if "sub01" in w and "T2.nii.gz" in w and "resampled" in w]
    assert said and "wrong spacing or origin" in said[0] and f"warning: {said[0]}" in captured.err


def test_a_csv_or_file_given_as_the_dataset_is_called_a_file(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("source,target\na.nii.gz,b.nii.gz\n")
    err = _bad(capsys, "--data", str(pairs), "--stage", "understanding", "--steps", "1", "--out", str(tmp_path / "o"))
    assert f"{pairs}: is a file; a paired dataset is a folder with one folder per subject" in err


def test_voxel_data_damaged_past_the_header_stops_training_or_with_skip_invalid_leaves_its_subject_out(
        data, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(data, damaged)
    volume = damage_voxels(damaged / "sub02" / "T2.nii.gz")
    args = ["--data", str(damaged), "--stage", "generation", "--size", "tiny", "--steps", "1", "--batch-size", "2",
            "--image-size", str(PX), "--threads", "1"]
    assert run_cli(["train", *args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err                       # after the note that it lies on a finer grid
    assert f"error: {damaged}: 1 problem(s)" in err and f"{volume}: cannot be loaded" in err
    assert "add --skip-invalid" in err
    assert not (tmp_path / "refused" / "model.safetensors").exists()

    assert run_cli(["train", *args, "--out", str(tmp_path / "model"), "--skip-invalid"]) == 0
    err = capsys.readouterr().err
    assert f"skipped: {volume}: cannot be loaded" in err
    card = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert "sub02" not in [s for part in card["data"]["split"].values() for s in part]
    assert [(s["subject"], s["path"]) for s in card["data"]["skipped"]] == [("sub02", "sub02/T2.nii.gz")]
