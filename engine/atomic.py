"""Atomic output for every writer (volumes, model folders, checkpoints, reports): write to a
temporary name beside the target, flush it to the disk, then rename it over the target, so a
reader never sees half a file and a full disk, a read-only folder or a kill at any instant leaves
the previous good output in place.

Temporary names carry the writing process's id (``.NAME.PID-RANDOM.part…``, a replaced folder
``….old``); leftovers of a process that is gone are removed by the next write of the same target,
and :func:`recover_folder` puts back the newest complete folder after a kill between the two
renames that replace a folder."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# errors that mean "the output could not be stored here", whatever file they name
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class OutputError(OSError):
    """An output could not be written; ``str()`` is one line naming the target and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def plain_file_mode() -> int:
    """The permissions a plainly created file gets (0o666 less the umask): what every output is given,
    whatever its writer made (``mkstemp`` and safetensors make files private)."""
    return 0o666 & ~_umask()


def _suffix(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(double):
            return name[-len(double):]
    return path.suffix


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason += ": the disk (or the quota) may be full"
    return reason


def _output_error(path: Path, exc: OSError, kept: bool) -> OutputError:
    if isinstance(exc, OutputError):
        return exc
    tail = "; the previous version is kept" if kept else ""
    return OutputError(path, f"could not be written ({_reason(exc)}){tail}")


def _prepare(path: Path, tidy: bool = True) -> None:
    """The target's folder exists and is writable; stale leftovers of earlier writes are removed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(path.parent, f"the folder cannot be created ({_reason(exc)})") from None
    if tidy:
        remove_leftovers(path)


def _create_error(path: Path, exc: OSError) -> OutputError:
    why = f"the folder is read-only: {exc.strerror or exc}" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
        else _reason(exc)
    return OutputError(path, f"cannot be written in {path.parent} ({why})")


def check_writable(path: str | Path) -> None:
    """:class:`OutputError` when nothing can be created where ``path`` would be written — its folder, or
    the nearest one above it that exists (the missing ones would be made there): a read-only disk or
    folder, a system folder. Found before long work, by making and removing a file there."""
    path = Path(path).absolute()
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        handle, name = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        raise _create_error(folder / path.name, exc) from None


def _is_storage_error(exc: BaseException, tmp: Path) -> bool:
    """Whether ``exc`` is a failure to store the output (not, say, a missing input file)."""
    if not isinstance(exc, OSError) or isinstance(exc, OutputError):
        return False
    name = str(exc.filename or "")
    return exc.errno in _STORAGE_ERRORS or (bool(name) and name.startswith(str(tmp)))


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int | None = None, *, tidy: bool = True,
                sync_parent: bool = True) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; on success flush it to the disk and rename
    it onto ``path`` with the permissions a plainly created file would get (``mkstemp`` makes it
    private), or ``mode`` (e.g. 0o600 for a file holding secrets: it is never readable by others).

    On any exception the temporary file is removed and ``path`` is left as it was; a failure to
    store the output (a full disk, a read-only folder) raises :class:`OutputError` naming ``path``.

    A writer of many files into one folder passes ``tidy=False`` and ``sync_parent=False`` and does
    both once for the folder (:func:`remove_leftovers_in`, :func:`sync_folder`): each file stays
    atomic and flushed, without listing the folder and flushing it again for every file.
    """
    path = Path(path)
    _prepare(path, tidy)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=f".part{_suffix(path)}", dir=path.parent)
    except OSError as exc:
        raise _create_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    _IN_FLIGHT.add(tmp_path.name)
    kept = path.exists()
    try:
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, plain_file_mode() if mode is None else mode)
                sync_file(tmp_path)
            os.replace(tmp_path, path)
            if sync_parent:
                sync_folder(path.parent)
        except OSError as exc:
            if _is_storage_error(exc, tmp_path):
                raise _output_error(path, exc, kept) from None
            raise
    finally:
        _IN_FLIGHT.discard(tmp_path.name)
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success flush every file in it to the disk and put it where
    ``path`` is (which must not be a file nor a symbolic link), with the permissions a plainly
    created folder would get (``mkdtemp`` makes it private)."""
    path = Path(path)
    check_folder_target(path)
    _prepare(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".part", dir=path.parent))
    except OSError as exc:
        raise _create_error(path, exc) from None
    _IN_FLIGHT.add(tmp.name)
    kept = path.exists()
    try:
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            _sync_tree(tmp)
            _replace_folder(tmp, path)
        except OSError as exc:
            if _is_storage_error(exc, tmp):
                raise _output_error(path, exc, kept) from None
            raise
    finally:
        _IN_FLIGHT.discard(tmp.name)
        if tmp.exists():
            shutil.rmtree(tmp)


def check_folder_target(path: str | Path) -> None:
    """Refuse to write a folder over a file or a symbolic link (writing would follow the link
    into another folder, or replace the link the user made)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(path, "is a symbolic link; choose a real folder (a link is never followed or replaced)")
    if path.exists() and not path.is_dir():
        raise OutputError(path, "exists and is not a folder")


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is; if the final rename fails, the old folder is put back.
    A kill between the two renames leaves both folders beside the target: see :func:`recover_folder`."""
    if not target.exists():
        os.replace(new, target)
        sync_folder(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old", dir=target.parent))
    _IN_FLIGHT.add(old.name)
    try:
        os.rmdir(old)
        os.replace(target, old)
        try:
            os.replace(new, target)
        except OSError:
            os.replace(old, target)
            raise
        sync_folder(target.parent)
        shutil.rmtree(old)
    finally:
        _IN_FLIGHT.discard(old.name)


# -- flushing to the disk -------------------------------------------------------------------------
def sync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (a full disk can first show here); Windows needs
    the file open for writing, POSIX does not (a copied file may be read-only)."""
    if sys.platform == "win32":   # a statement, not an expression: type checkers skip the other platform
        flags = os.O_RDWR | os.O_BINARY
    else:
        flags = os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to the disk; Windows cannot open a folder."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            sync_file(Path(folder) / name)
        sync_folder(folder)


def check_size(path: str | Path, expected: int) -> None:
    """Raise :class:`OutputError` unless ``path`` holds ``expected`` bytes (a write cut short)."""
    size = os.stat(path).st_size
    if size != expected:
        raise OutputError(path, f"holds {size} of the {expected} bytes written: the disk may be full")


def native_os_error(exc: Exception, path: str | Path) -> OSError | None:
    """The OSError behind a native library's error that gives it only as text ("… (os error 28)",
    as Rust libraries such as safetensors do), naming ``path``; None for any other error."""
    match = re.search(r"\(os error (\d+)\)", str(exc))
    return OSError(int(match[1]), os.strerror(int(match[1])), str(path)) if match else None


# -- leftovers of interrupted writes --------------------------------------------------------------
def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _leftover_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)-)?[^.]+\.(?:part|old)(?:\..*)?")


_ANY_LEFTOVER = re.compile(r"\..+\.(?:(\d+)-)?[^.]+\.(?:part|old)(?:\..*)?")


_IN_FLIGHT: set[str] = set()      # this process's temporary names now being written


def _process_alive(pid: int, name: str) -> bool:
    """Whether the write that made ``name`` may still be running. A name with this process's id
    but not in flight is a killed predecessor's (a container restarts its process as the same id)."""
    if pid == os.getpid():
        return name in _IN_FLIGHT
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True                   # another user's process, or a platform that cannot tell
    return True


def leftovers(path: str | Path) -> list[Path]:
    """Temporary files and folders that earlier writes of ``path`` left behind when they were
    killed (their process is gone); those of writes still running are not listed."""
    path = Path(path)
    pattern = _leftover_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return _stale(path.parent, names, pattern)


def _stale(folder: Path, names: list[str], pattern: re.Pattern[str]) -> list[Path]:
    found = []
    for name in names:
        match = pattern.fullmatch(name)
        if match and not (match[1] and _process_alive(int(match[1]), name)):
            found.append(folder / name)
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_leftovers(path: str | Path) -> None:
    """Remove what killed writes of ``path`` left behind (stale ``.part`` / ``.old`` names)."""
    for stale in leftovers(path):
        _remove(stale)


def remove_leftovers_in(folder: str | Path) -> None:
    """Remove what killed writes of any target in ``folder`` left behind, listing it once."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for stale in _stale(folder, names, _ANY_LEFTOVER):
        _remove(stale)


def recover_folder(path: str | Path, rank: Callable[[Path], Any]) -> Path | None:
    """After a kill while :func:`atomic_folder` replaced ``path``: put the newest complete version
    in its place and remove the other leftovers. ``rank(folder)`` says how new a complete folder
    is (a sortable value, e.g. a step) or None when it is incomplete. The candidates are ``path``
    and the leftovers of killed writes (the new folder, complete or not, and the replaced old one).
    Returns ``path`` when a complete version is in place, else None."""
    path = Path(path)
    candidates = [p for p in [path, *leftovers(path)] if p.is_dir() and not p.is_symlink()]
    ranked = [(r, p) for p in candidates if (r := rank(p)) is not None]
    best = max(ranked, key=lambda item: (item[0], item[1] == path), default=(None, None))[1]
    if best is not None and best != path:
        if path.exists():
            old = path.with_name(f"{_prefix(path)}recovered.old")      # stale if this is killed too
            os.replace(path, old)
            os.replace(best, path)
            shutil.rmtree(old)
        else:
            os.replace(best, path)
        sync_folder(path.parent)
    remove_leftovers(path)
    return path if best is not None else None
