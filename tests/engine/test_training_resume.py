"""A run that is killed or cancelled picks up where its last checkpoint left it: re-running the same
command continues the loss curve of an uninterrupted run bit for bit (model, EMA, optimizer,
schedule, step, RNG and data position all restored); SIGTERM or a STOP file checkpoints and stops
(exit 130); a finished run is not trained again, ``--fresh`` starts over."""
from __future__ import annotations

import json
import signal
import subprocess

import pytest
from training_support import (
    PX,
    ROOT,
    phantom_data,
    records,
    run_train,
    step_losses,
    subprocess_env,
    tiny_config,
    train_command,
)

from cli import run_cli
from engine.jobs import Cancelled
from engine.model import load_model_dir
from engine.training.config import TARGET_EMBEDDING
from engine.training.protocol import STOP_FILE
from engine.training.state import load_state
from engine.training.trainer import train

STEPS = 6


def _args(data, out) -> list[str]:
    return ["--data", str(data), "--stage", "generation", "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "2", "--image-size", str(PX), "--lr", "1e-3", "--checkpoint-every", "2",
            "--checkpoint-seconds", "0", "--preview-every", "0", "--eval-samples", "2", "--threads", "1",
            "--target-embedding"]          # model overrides (a tuple) survive state.json as they compare on resume


def _run_until(args: list[str], stop_when, sig: int, timeout: float = 120) -> tuple[int, list[dict]]:
    """Start the command, read its records, send ``sig`` once ``stop_when(record)`` holds."""
    proc = subprocess.Popen(train_command(*args), cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen: list[dict] = []
    try:
        for line in proc.stdout:
            seen.append(json.loads(line))
            if stop_when(seen[-1]):
                proc.send_signal(sig)
                break
        seen += [json.loads(line) for line in proc.stdout if line.strip()]
        return proc.wait(timeout=timeout), seen
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_killed_and_cancelled_runs_resume_the_uninterrupted_loss_curve(tmp_path):
    data = phantom_data(tmp_path / "data")
    reference: list[dict] = []
    train(tiny_config(data, tmp_path / "reference", "generation", steps=STEPS, lr=1e-3, checkpoint_every=2,
                      model_overrides={"target_modalities": TARGET_EMBEDDING}), reference.append)
    expected = step_losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    out = tmp_path / "run"
    # 1. SIGKILL right after the step-2 checkpoint: at most the steps since then are lost
    rc, first = _run_until(_args(data, out), lambda r: r["event"] == "checkpoint" and r["step"] == 2, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert load_state(out).state.step in (2, 4)
    load_model_dir(out)                           # the model folder beside the checkpoint is usable

    # 2. rerun: it resumes; SIGTERM after its first step writes a checkpoint and exits 130
    rc, second = _run_until(_args(data, out), lambda r: r["event"] == "step", signal.SIGTERM)
    assert rc == 130
    assert second[0]["event"] == "resumed" and second[0]["step"] in (2, 4)
    cancelled = [r for r in second if r["event"] == "cancelled"]
    assert cancelled and load_state(out).state.step == cancelled[0]["step"]
    assert load_model_dir(out).metadata["recipe"]["stages"][-1]["status"] == "cancelled"

    # 3. rerun to the end
    rc, third, _ = run_train(*_args(data, out))
    assert rc == 0 and third[0]["event"] == "resumed" and third[-1]["event"] == "done"

    for part in (first, second, third):
        for step, loss in step_losses(part).items():
            assert loss == expected[step], f"step {step}: {loss} after resuming, {expected[step]} uninterrupted"
    assert set(step_losses(first)) | set(step_losses(second)) | set(step_losses(third)) == set(expected)
    # the progress file keeps every record of every session, with the resume points marked
    events = [json.loads(line)["event"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events.count("resumed") == 2 and events[-1] == "done"


def test_a_finished_run_is_not_trained_again_and_fresh_starts_over(tmp_path, capsys):
    data = phantom_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--stage", "understanding", "--out", str(out), "--steps", "2",
            "--batch-size", "1", "--image-size", str(PX), "--eval-samples", "1", "--threads", "1"]

    def cli(*extra: str) -> tuple[int, list[dict], str]:
        code = run_cli(args + list(extra))
        captured = capsys.readouterr()
        return code, records(captured.out), captured.err

    assert cli()[0] == 0
    rc, again, _ = cli()
    assert rc == 0 and again[0]["event"] == "resumed" and not step_losses(again) and again[-1]["event"] == "done"
    args[4] = "generation"
    rc, _, err = cli()
    assert rc == 2 and "holds a 'understanding' run" in err and "--fresh" in err
    args[4] = "understanding"
    rc, _, err = cli("--lr", "0.01")
    assert rc == 2 and "lr: None → 0.01" in err
    rc, fresh, _ = cli("--fresh")
    assert rc == 0 and fresh[0]["event"] == "start" and sorted(step_losses(fresh)) == [1, 2]


def test_a_stop_file_checkpoints_and_cancels_like_a_signal(tmp_path):
    data = phantom_data(tmp_path / "data")
    out = tmp_path / "run"
    seen: list[dict] = []

    def emit(record: dict) -> None:
        seen.append(record)
        if record["event"] == "step" and record["step"] == 1:
            (out / STOP_FILE).touch()

    with pytest.raises(Cancelled):
        train(tiny_config(data, out, "understanding", steps=5), emit)
    assert [r["event"] for r in seen][-2:] == ["checkpoint", "cancelled"]
    assert load_state(out).state.step == 1 and not (out / STOP_FILE).exists()


class _Killed(Exception):
    pass


def test_progress_records_are_not_repeated_after_a_resume(tmp_path):
    """The run dies after step 3 (its checkpoint is at step 2): the rerun does step 3 again and
    the records of the lost step 3 are gone, not doubled."""
    data = phantom_data(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", "generation", steps=4, checkpoint_every=2)

    def die_after_step_3(record):
        if record["event"] == "step" and record["step"] == 3:
            raise _Killed()
    with pytest.raises(_Killed):
        train(cfg, die_after_step_3)
    with open(tmp_path / "run" / "progress.jsonl", "a") as f:
        f.write('{"event": "step", "st')                  # a record cut short by the kill
    train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["event"] == "step"] == [1, 2, 3, 4]
    assert [r["event"] for r in logged if r["event"] in ("start", "resumed", "done")] == ["start", "resumed", "done"]
