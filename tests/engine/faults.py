"""Fault injection for the writers' tests: a full disk for native and Python writes alike (a file
size limit: every write past it fails with EFBIG, as on a full disk) and a kill at a chosen
instant (a forked child that exits on the spot, running no cleanup, as ``kill -9`` would)."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

resource = pytest.importorskip("resource")       # POSIX only


@contextlib.contextmanager
def disk_full_after(n_bytes: int) -> Iterator[None]:
    """Writes past ``n_bytes`` into any file fail (EFBIG) while the block runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def killed_at(k: int, work: Callable[[], None], patch: Callable[[Callable[[], None]], None]) -> bool:
    """Run ``work`` in a forked child; ``patch(tick)`` installs hooks that call ``tick()`` at each
    instant worth a kill; the child exits on the spot at the ``k``-th. Returns whether the kill
    happened (False: ``work`` ended before the ``k``-th instant)."""
    pid = os.fork()
    if pid == 0:                                               # the child: never returns
        calls = [0]

        def tick() -> None:
            calls[0] += 1
            if calls[0] == k:
                os._exit(9)
        try:
            patch(tick)
            work()
        except BaseException:                                  # noqa: BLE001 - reported by the exit code
            os._exit(1)
        os._exit(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            assert code in (0, 9), f"the child failed (exit {code})"
            return code == 9
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child hung")


@contextlib.contextmanager
def read_only(folder, monkeypatch) -> Iterator[None]:
    """Creating anything inside ``folder`` fails as on a read-only filesystem (EROFS); a real
    ``chmod`` would not stop root, who runs these tests in containers."""
    import errno

    root = str(folder)

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call
    monkeypatch.setattr(os, "open", refuse(os.open))
    monkeypatch.setattr(os, "mkdir", refuse(os.mkdir))
    yield
    monkeypatch.undo()
