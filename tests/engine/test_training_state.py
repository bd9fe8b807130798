"""Checkpoint replacement survives a kill at any instant: resuming finds the newest complete
checkpoint (never none, never a half-written one) and no leftovers stay behind; the progress
records of work done again after a resume are not repeated."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import engine.atomic as atomic
import engine.training.state as state_module
from engine.training.protocol import STATE_DIR
from engine.training.state import TrainingState, checkpoint_step, load_state, recover_state, save_state, trim_records

faults = pytest.importorskip("faults")


def _save(run, step: int) -> None:
    weights = {"w": torch.full((4, 4), float(step))}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    save_state(run, TrainingState(stage="generation", step=step), weights, weights, optimizer, None,
               {"next_step": step})


def _ticking(tick) -> None:
    """Hooks before every write, flush, rename and removal of a checkpoint replacement."""
    def before(fn):
        def call(*args, **kwargs):
            tick()
            return fn(*args, **kwargs)
        return call
    state_module.save_safetensors = before(state_module.save_safetensors)
    atomic.sync_file = before(atomic.sync_file)
    atomic.sync_folder = before(atomic.sync_folder)
    os.replace = before(os.replace)
    shutil.rmtree = before(shutil.rmtree)


def test_a_kill_at_any_instant_of_a_checkpoint_resumes_from_the_newest_complete_one(tmp_path):
    seen = []
    for k in range(1, 40):
        run = tmp_path / f"run{k}"
        _save(run, 1)
        if not faults.killed_at(k, lambda: _save(run, 2), _ticking):
            break
        assert (run / STATE_DIR).exists() or k > 4          # the old one stays until the new one is complete
        recover_state(run)
        loaded = load_state(run)
        assert loaded is not None, f"kill at instant {k}: no checkpoint found"
        # the four tensor files come first: killed before they are all written, the old one is kept
        assert loaded.state.step == (1 if k <= 4 else 2), f"kill at instant {k}"
        assert float(loaded.model_tensors["w"][0, 0]) == loaded.state.step
        assert sorted(p.name for p in run.iterdir()) == [STATE_DIR], f"kill at instant {k}: leftovers"
        _save(run, 3)
        assert load_state(run).state.step == 3
        seen.append(loaded.state.step)
    assert 1 in seen and 2 in seen and len(seen) >= 10     # killed before, during and after both renames


def test_a_checkpoint_with_a_file_cut_short_is_not_complete(tmp_path):
    _save(tmp_path, 5)
    folder = tmp_path / STATE_DIR
    assert checkpoint_step(folder) == 5
    model = folder / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-10])
    assert checkpoint_step(folder) is None
    with pytest.raises(ValueError, match="checkpoint is incomplete"):
        load_state(tmp_path)


def test_records_of_steps_after_the_checkpoint_and_a_cut_line_are_dropped_on_resume(tmp_path):
    path = tmp_path / "progress.jsonl"
    lines = [json.dumps(r) + "\n" for r in ({"event": "start", "step": 0}, {"event": "step", "step": 1},
                                            {"event": "step", "step": 2}, {"event": "checkpoint", "step": 2},
                                            {"event": "step", "step": 3})]
    path.write_text("".join(lines) + '{"event": "st')
    trim_records(path, 2)
    assert path.read_text() == "".join(lines[:4])


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_it(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(atomic.OutputError) as err, faults.disk_full_after(100):
        _save(tmp_path, 2)
    assert str(err.value).startswith(f"{tmp_path / STATE_DIR}: could not be written (File too large")
    assert load_state(tmp_path).state.step == 1 and sorted(p.name for p in tmp_path.iterdir()) == [STATE_DIR]
