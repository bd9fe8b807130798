"""The worker bridge: a plain fn(progress, cancel) runs off the UI thread, reports progress,
can be cancelled, turns failures into messages, and never blocks the UI thread."""
import threading
import time

import numpy as np
import pytest
from PySide6.QtCore import QTimer

from app.errors import describe_error
from app.workers import TaskRunner
from engine.io import VolumeIOError
from engine.jobs import Progress

HEARTBEAT_MS = 10
MAX_UI_GAP_S = 0.100


@pytest.fixture
def runner(qtbot):
    runner = TaskRunner()
    yield runner
    assert runner.shutdown(10000)


def busy_work(steps: int, seen_threads: list):
    """About 20 ms of CPU work per step in Python and numpy, reporting each step."""
    def fn(progress, cancel):
        seen_threads.append(threading.get_ident())
        rng = np.random.default_rng(0)
        total = 0.0
        for step in range(steps):
            cancel.raise_if_cancelled()
            total += float(np.sort(rng.normal(size=200_000))[5])
            total += sum(i * i for i in range(100_000)) * 1e-12       # holds the GIL
            progress(Progress(step + 1, steps, f"step {step + 1}"))
        return total
    return fn


def test_work_runs_off_the_ui_thread_with_progress_and_the_ui_never_blocks(qtbot, runner):
    beats: list[float] = []
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
    heartbeat.start(HEARTBEAT_MS)
    threads, progress, results = [], [], []
    runner.run(busy_work(50, threads), progressed=progress.append, finished=results.append)
    qtbot.waitUntil(lambda: bool(results), timeout=60000)
    heartbeat.stop()
    assert threads and threads[0] != threading.get_ident()
    assert progress and progress[-1].done == 50 and progress[-1].fraction == 1.0
    assert all(a.done < b.done for a, b in zip(progress, progress[1:]))
    gaps = np.diff(beats)
    assert len(beats) > 20
    assert gaps.max() < MAX_UI_GAP_S, f"the UI thread was blocked for {1000 * gaps.max():.0f} ms"


def test_a_task_can_be_cancelled(qtbot, runner):
    progress, outcome = [], []
    task = runner.run(busy_work(100_000, []), progressed=progress.append,
                      finished=lambda r: outcome.append("finished"), cancelled=lambda: outcome.append("cancelled"))
    qtbot.waitUntil(lambda: bool(progress), timeout=20000)
    task.cancel()
    qtbot.waitUntil(lambda: bool(outcome), timeout=20000)
    assert outcome == ["cancelled"]
    qtbot.waitUntil(lambda: runner.running == 0, timeout=5000)


def test_failures_become_messages_naming_the_file(qtbot, runner):
    messages = []

    def fails(progress, cancel):
        raise VolumeIOError("/data/scan.nii.gz", "the voxel data cannot be read")

    runner.run(fails, failed=messages.append)
    qtbot.waitUntil(lambda: bool(messages), timeout=10000)
    assert messages == ["/data/scan.nii.gz: the voxel data cannot be read"]
    assert describe_error(OSError(28, "No space left on device", "/out/x.nii.gz")) == \
        "/out/x.nii.gz: No space left on device"
    assert describe_error(KeyError("spacing")) == "KeyError: 'spacing'"
