"""The contract for long work: progress callbacks, cooperative cancellation, `Cancelled`.

Long engine calls look like ``fn(..., progress=noop, cancel=None)``; the GUI runs them in
workers, the CLI prints progress. Cancelling raises :class:`Cancelled`, never a bare Exception.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Progress:
    """One progress report: ``done`` of ``total`` units, with a short human message."""

    done: float
    total: float
    message: str = ""

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))


class ProgressFn(Protocol):
    def __call__(self, progress: Progress, /) -> None: ...     # called positionally: any argument name


def noop(progress: Progress) -> None:
    """The default progress callback: ignores every report."""


class Cancelled(Exception):
    """Raised inside long work when its :class:`CancelToken` was cancelled."""


class CancelToken:
    """Thread-safe flag a caller sets and long work checks between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set; a ``None`` token never cancels."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def stderr_progress(enabled: bool = True, every_s: float = 1.0) -> Callable[[Progress], None]:
    """A progress callback printing to stderr: a live line on a terminal, else a line at most
    every ``every_s`` seconds (and the last report)."""
    interactive = sys.stderr.isatty()
    last = [0.0]

    def report(p: Progress) -> None:
        if not enabled:
            return
        text = f"{100 * p.fraction:5.1f}% {p.message}"
        if interactive:
            print(f"\r{text[:100]:<100}", end="", file=sys.stderr, flush=True)
            if p.fraction >= 1.0:
                print(file=sys.stderr)
            return
        now = time.monotonic()
        if now - last[0] >= every_s or p.fraction >= 1.0:
            last[0] = now
            print(text, file=sys.stderr, flush=True)
    return report
