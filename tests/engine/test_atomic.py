"""engine.atomic: outputs appear whole or not at all, and with the permissions a plainly created
file or folder would get (the temporary ones are private)."""
from __future__ import annotations

import os
import stat
import sys

import pytest

from engine.atomic import atomic_file, atomic_folder

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
