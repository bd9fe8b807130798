"""The one bridge from Qt to long engine calls (Orange3-style): a plain ``fn(progress, cancel)``
runs on a pool thread; the widget only starts it and receives ``progressed`` / ``finished`` /
``failed`` / ``cancelled`` on the UI thread. Exceptions become messages that name the problem."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from app.errors import describe_error, is_expected
from engine.jobs import Cancelled, CancelToken, Progress

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.05          # at most ~20 progress signals a second reach the UI

TaskFn = Callable[[Callable[[Progress], None], CancelToken], Any]


class Task(QObject):
    """One running call. Its signals fire on the UI thread, and only while its runner exists."""

    progressed = Signal(object)     # engine.jobs.Progress
    finished = Signal(object)       # the function's result
    failed = Signal(str)            # describe_error(exception)
    cancelled = Signal()
    _reported = Signal(object, str, object)     # (task, signal name or "ended", value), from the worker

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.token = CancelToken()
        self._last_report = 0.0

    def cancel(self) -> None:
        self.token.cancel()

    def report(self, progress: Progress) -> None:
        """The progress callback handed to the function (called on the worker thread)."""
        now = time.monotonic()
        if progress.done < progress.total and now - self._last_report < PROGRESS_INTERVAL_S:
            return
        self._last_report = now
        self._reported.emit(self, "progressed", progress)


class _Runnable(QRunnable):
    def __init__(self, task: Task, fn: TaskFn) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._task, self._fn = task, fn

    def run(self) -> None:
        task = self._task
        try:
            result = self._fn(task.report, task.token)
        except Cancelled:
            task._reported.emit(task, "cancelled", None)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the user as a message
            message = describe_error(exc)
            log.debug("%s failed: %s", task.name or "task", message, exc_info=exc)     # for the log file
            if not is_expected(exc):
                log.error("%s failed: %s", task.name or "task", message)
            task._reported.emit(task, "failed", message)
        else:
            task._reported.emit(task, "finished", result)
        task._reported.emit(task, "ended", None)


class TaskRunner(QObject):
    """Starts tasks on its own thread pool and keeps them alive until they end. Reports reach
    the UI thread through the runner, so none arrives after the runner (and its window) is gone."""

    def __init__(self, parent: QObject | None = None, max_threads: int = 2) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._tasks: set[Task] = set()

    def run(self, fn: TaskFn, *, name: str = "", finished: Callable[[Any], None] | None = None,
            failed: Callable[[str], None] | None = None, progressed: Callable[[Progress], None] | None = None,
            cancelled: Callable[[], None] | None = None) -> Task:
        """Run ``fn(progress, cancel)`` off the UI thread; the callbacks are connected before it starts."""
        task = Task(name)
        for signal, slot in ((task.finished, finished), (task.failed, failed),
                             (task.progressed, progressed), (task.cancelled, cancelled)):
            if slot is not None:
                signal.connect(slot)
        task._reported.connect(self._deliver)
        self._tasks.add(task)
        self._pool.start(_Runnable(task, fn))
        return task

    def _deliver(self, task: Task, kind: str, value: Any) -> None:
        if kind == "ended":
            self._tasks.discard(task)
        elif kind == "cancelled":
            task.cancelled.emit()
        else:
            getattr(task, kind).emit(value)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel every task and wait for the threads; True when all ended in time."""
        for task in list(self._tasks):
            task.cancel()
        return self._pool.waitForDone(timeout_ms)
