"""engine.atomic: outputs appear whole or not at all, and with the permissions a plainly created
file or folder would get (the temporary ones are private)."""
from __future__ import annotations

import os
import stat
import sys

import pytest

from engine.atomic import OutputError, atomic_file, atomic_folder, recover_folder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_permissions_not_the_temporary_ones(tmp_path, umask_022):
    with atomic_file(tmp_path / "report.json") as tmp:
        tmp.write_text("{}")
    with atomic_folder(tmp_path / "model") as folder:
        (folder / "weights.bin").write_bytes(b"x")
    assert _mode(tmp_path / "report.json") == 0o644
    assert _mode(tmp_path / "model") == 0o755


def test_a_failure_leaves_the_old_output_and_no_temporary_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "model") as folder:
            (folder / "new").write_text("new")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["old"]


def test_a_full_disk_keeps_the_old_file_and_names_the_target(tmp_path):
    from faults import disk_full_after

    target = tmp_path / "report.json"
    target.write_text("good")
    with pytest.raises(OutputError) as err, disk_full_after(1000):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"x" * 5000)
    assert str(target) in str(err.value) and "the previous version is kept" in str(err.value)
    assert "\n" not in str(err.value)
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_read_only_folder_is_a_clear_error(tmp_path, monkeypatch):
    from faults import read_only

    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder, monkeypatch):
        with pytest.raises(OutputError, match=r"ro/a\.txt: cannot be written in .*ro \(the folder is read-only"):
            with atomic_file(folder / "a.txt") as tmp:
                tmp.write_text("x")
        with pytest.raises(OutputError, match=r"ro/sub: the folder cannot be created \(Read-only file system"):
            with atomic_folder(folder / "sub" / "model"):
                pass
    assert list(folder.iterdir()) == []


def test_stale_temporary_files_of_killed_writers_are_removed_but_not_those_of_live_ones(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / f".a.txt.{dead}-abc.part.txt", tmp_path / ".a.txt.old1234.part.txt",
             tmp_path / f".a.txt.{os.getpid()}-def.part.txt"]      # a killed process with this id (containers)
    live = tmp_path / f".a.txt.{os.getppid()}-xyz.part.txt"
    for p in [*stale, live]:
        p.write_text("half")
    (tmp_path / f".model.{dead}-q.old").mkdir()
    with atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("new")
    with atomic_folder(tmp_path / "model"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "a.txt", "model"])


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_symlinked_folder_is_neither_followed_nor_replaced(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        with atomic_folder(link) as folder:
            (folder / "new").write_text("x")
    assert link.is_symlink() and [p.name for p in real.iterdir()] == ["keep"]


def test_recover_folder_puts_back_the_newest_complete_version(tmp_path):
    dead = _dead_pid()
    old = tmp_path / f".ckpt.{dead}-a.old"
    new = tmp_path / f".ckpt.{dead}-b.part"
    half = tmp_path / f".ckpt.{dead}-c.part"
    for folder, step in ((old, 1), (new, 2), (half, None)):
        folder.mkdir()
        if step is not None:
            (folder / "step").write_text(str(step))

    def rank(folder):
        return int((folder / "step").read_text()) if (folder / "step").exists() else None
    assert recover_folder(tmp_path / "ckpt", rank) == tmp_path / "ckpt"
    assert (tmp_path / "ckpt" / "step").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
