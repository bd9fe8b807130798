"""One run per output folder: ``OUT/.cohort.lock``, held (an OS file lock: ``fcntl`` on POSIX,
``msvcrt`` on Windows) by rank 0 from before the manifest is read until after it is merged. The
OS drops the lock when its process dies, so a killed run never leaves a stale one; the file holds
the holder's host and process id, which a second run names when it is refused."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from types import TracebackType

LOCK = ".cohort.lock"


class CohortBusy(ValueError):
    """Another run holds the output folder (bad usage: the CLI exits 2 with this one line)."""


class OutputLock:
    """``with OutputLock(out):`` — the exclusive lock of ``out``, or :class:`CohortBusy` naming its holder."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            try:
                holder = self.path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
            except OSError:
                holder = "another process"
            raise CohortBusy(f"{self.path.parent}: another cohort run ({holder}) is writing to this output "
                             f"folder; wait for it to end or choose another folder") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


if sys.platform == "win32":
    import msvcrt

    _BYTE = 1 << 20         # a byte past the holder line, so a refused run can still read that line

    def _lock(fd: int) -> None:
        os.lseek(fd, _BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
