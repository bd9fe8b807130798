"""The fuzzing harness (engine.io.fuzz) and a short seeded slice of it: mutated real files never
end in a traceback, a crash, a hang or an error that does not name the file."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from engine.io.fuzz import runner
from engine.io.fuzz.mutate import mutate
from engine.io.fuzz.seeds import package_seeds

pytest.importorskip("resource")                  # POSIX only: fork and rlimits


def test_an_input_is_replayed_from_its_seed_and_index():
    data = package_seeds()[0].read_bytes()
    one = mutate(data, "x.dcm", np.random.default_rng([7, 42]))
    assert mutate(data, "x.dcm", np.random.default_rng([7, 42])) == one
    assert mutate(data, "x.dcm", np.random.default_rng([7, 43])) != one


def test_the_harness_tells_a_crash_and_an_unnamed_error_from_a_clean_error(tmp_path, monkeypatch):
    def crash(_path, _reference=None):
        os.kill(os.getpid(), signal.SIGSEGV)
    monkeypatch.setattr(runner, "attempt", crash)
    fd, pid = runner._start(str(tmp_path / "x.nii"), 1 << 30, 5.0)
    assert runner._finish(fd, pid)["outcome"] == "crash"
    missing = tmp_path / "nothing_here.nii"
    assert runner.attempt.__name__ == "crash"
    monkeypatch.undo()
    assert runner.attempt(str(missing))["outcome"] == "clean error"
    (tmp_path / "bad.nii").write_bytes(b"\x00" * 10)
    outcome = runner.attempt(str(tmp_path / "bad.nii"))
    assert outcome["outcome"] == "clean error" and "bad.nii" in outcome["message"]


@pytest.mark.slow
def test_a_seeded_slice_of_mutated_files_ends_only_in_loads_and_clean_errors():
    report = runner.run_fuzz(300, seed=0, timeout_s=20.0)
    assert report["failures"] == 0, runner.to_text(report)
    assert report["outcomes"]["load"] > 0 and report["outcomes"]["clean error"] > 0
    assert set(report["by_kind"]) >= {"nifti", "mha", "nrrd", "dicom", "png"}
    assert report["peak_within_budget"]


def test_an_allocation_failing_after_the_memory_guard_counts_as_out_of_memory_not_a_clean_error(tmp_path, monkeypatch):
    from engine import io
    from engine.io import catalog
    from engine.io.errors import VolumeIOError

    path = tmp_path / "v.nrrd"

    def native_bad_alloc(p, cancel=None):
        try:
            raise RuntimeError("ITK ERROR: std::bad_alloc")            # the native reader under RLIMIT_AS
        except RuntimeError:
            raise VolumeIOError(p, "the voxel data cannot be read; is the file truncated?") from None
    monkeypatch.setattr(io, "scan", native_bad_alloc)
    assert runner.attempt(str(path))["outcome"] == "out of memory"
    monkeypatch.undo()
    io.save(io.Volume(np.zeros((20, 20, 20), np.float32)), path)
    monkeypatch.setattr(catalog, "available_memory", lambda: 1 << 10)   # the guard refuses: that is clean
    assert runner.attempt(str(path))["outcome"] == "clean error"
