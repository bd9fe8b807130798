"""The synthesis process: the engine (torch, the loaded model) runs in a child process, so model
code never holds the GUI's Python lock (the UI stays responsive) and a crash or out-of-memory
cannot take the viewer down. ``EngineProcess.synthesize(request, progress, cancel)`` is a plain
blocking call for a worker thread; the child is started on first use and keeps the model loaded."""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from typing import TYPE_CHECKING

from app.errors import UserFacingError, describe_error, is_expected
from app.synthesis import SynthesisRequest, run_synthesis
from engine.jobs import Cancelled, CancelToken, Progress, ProgressFn

if TYPE_CHECKING:
    from engine.io import Volume

log = logging.getLogger(__name__)

POLL_S = 0.05
SEND_INTERVAL_S = 0.05          # the child sends at most ~20 progress reports a second


class _SharedCancel(CancelToken):
    """A cancel token backed by a multiprocessing Event the GUI process sets."""

    def __init__(self, event) -> None:
        self._event = event


def serve(conn, cancel_event) -> None:
    """The child's loop: one request at a time until told to quit (or the pipe closes)."""
    token = _SharedCancel(cancel_event)
    while True:
        try:
            kind, request = conn.recv()
        except (EOFError, OSError):
            return
        if kind == "quit":
            return
        last = [0.0]

        def progress(p: Progress) -> None:
            now = time.monotonic()
            if p.done >= p.total or now - last[0] >= SEND_INTERVAL_S:
                last[0] = now
                conn.send(("progress", p))

        try:
            volume = run_synthesis(request, progress, token)
        except Cancelled:
            conn.send(("cancelled", None))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the GUI as a message
            if not is_expected(exc):
                log.error("synthesis failed", exc_info=exc)          # a bug: its traceback on the terminal
            conn.send(("failed", describe_error(exc)))
        else:
            conn.send(("done", volume))


class SynthesisFailed(UserFacingError):
    """The synthesis process reported a failure; the message is meant for the user."""


class EngineProcess:
    """The GUI's handle on the synthesis process: one request at a time, from a worker thread."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")     # never fork a process that runs Qt
        self._process = None
        self._conn = None
        self._cancel = self._context.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        process = self._process          # read once: a worker thread may reset it
        return process.pid if process is not None and process.is_alive() else None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve, args=(child, self._cancel), daemon=True,
                                        name="synermedgen-synthesis")
        try:
            process.start()
        finally:
            child.close()
        self._process, self._conn = process, parent

    def synthesize(self, request: SynthesisRequest, progress: ProgressFn, cancel: CancelToken) -> Volume:
        """Run ``request`` in the child; blocks the calling (worker) thread until it ends."""
        with self._lock:
            self._ensure_started()
            self._cancel.clear()
            self._conn.send(("synthesize", request))
            while True:
                if cancel.cancelled:
                    self._cancel.set()
                if not self._conn.poll(POLL_S):
                    if not self._process.is_alive():
                        raise self._died()
                    continue
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    raise self._died() from None
                if kind == "progress":
                    progress(payload)
                elif kind == "done":
                    return payload
                elif kind == "cancelled":
                    raise Cancelled()
                else:
                    raise SynthesisFailed(payload)

    def _died(self) -> SynthesisFailed:
        self._process.join(1.0)
        code = self._process.exitcode
        self._conn.close()
        self._process = self._conn = None
        return SynthesisFailed(f"the synthesis process stopped unexpectedly (exit code {code}); "
                               "it may have run out of memory")

    def close(self, timeout_s: float = 3.0) -> None:
        """Ask the child to quit (ending a running synthesis first) and wait for it."""
        if self._process is None:
            return
        self._cancel.set()
        if self._process.is_alive():
            try:
                self._conn.send(("quit", None))
            except (OSError, ValueError):
                pass
            self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout_s)
        self._conn.close()
        self._process = self._conn = None
