"""Atomic output for every writer (volumes, model folders, checkpoints, reports): write to a
temporary name beside the target, then rename over it, so a reader never sees half a file."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _suffix(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(double):
            return name[-len(double):]
    return path.suffix


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; on success rename it onto ``path`` with
    the permissions a plainly created file would get (``mkstemp`` makes it private).

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{_suffix(path)}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` (which must not be a file), with
    the permissions a plainly created folder would get (``mkdtemp`` makes it private)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _replace_folder(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is; if the final rename fails, the old folder is put back."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old)
