"""The local cache of retrieved instances: ``ROOT/SERVER_STUDY_UID/SERIES_UID/SOP_INSTANCE_UID.dcm``
(each server's apart: :meth:`Cache.of_server`).
The root is the user's alone (0o700: instances hold patient data) and always a folder this code
creates: the app's own (``pacs`` in its cache folder) or a ``synermedgen-pacs`` subfolder of a
folder the user names (``--cache DIR``, ``$SYNERMEDGEN_PACS_CACHE``), whose permissions are never
changed; a root that exists open to others is refused. Each instance is written
atomically (a ``.part`` file renamed into place), so a cancelled or killed retrieve leaves only
whole instances and the next one fetches just the missing ones, and ends holding exactly the
instances the PACS lists and those it sent (:meth:`Cache.settle`); a retrieve writes a series inside
:meth:`Cache.receiving`, which removes killed retrieves' leftovers and flushes the folder to the
disk once for the series, not once per instance (a 2000-slice CT, a cache on NFS); :func:`prune`
keeps the cache under its size limit (default 20 GiB), removing the series used longest ago first."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from engine import paths
from engine.atomic import atomic_file, remove_leftovers_in, sync_folder

DEFAULT_LIMIT_BYTES = 20 * 1024**3
CACHE_DIR_ENV = "SYNERMEDGEN_PACS_CACHE"
SUBFOLDER = "synermedgen-pacs"        # the private cache inside a folder the user names
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
SUFFIX = ".dcm"


def file_name(uid: str) -> str:
    """A UID as a file name; anything that is not a UID (a server's junk, '../') becomes a hash."""
    uid = str(uid).strip().rstrip("\x00")
    if _UID.fullmatch(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:32]


def default_root() -> Path:
    """A ``synermedgen-pacs`` folder in ``$SYNERMEDGEN_PACS_CACHE``, else a ``pacs`` folder in the
    app's cache folder (engine.paths)."""
    given = os.environ.get(CACHE_DIR_ENV)
    return Path(given) / SUBFOLDER if given else paths.cache_dir() / "pacs"


def parse_size(text: str) -> int:
    """A size limit as bytes: a number of bytes or with a unit, ``500M``, ``20G``, ``1.5T``
    (powers of 1024); ValueError naming the text otherwise."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"cache limit {text!r}: give a positive size such as 500M, 20G or 1.5T")
    return int(float(match[1]) * units[match[2].upper()])


class Cache:
    """The cache in ``folder`` (in a private ``synermedgen-pacs`` subfolder of it; default:
    :func:`default_root`), created private on first use, kept within ``limit_bytes``."""

    def __init__(self, folder: str | Path | None = None, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self.root = Path(folder) / SUBFOLDER if folder else default_root()
        self.limit_bytes = limit_bytes
        self.prefix = ""                     # whose instances (:meth:`of_server`)

    def of_server(self, key: str) -> Cache:
        """This cache as it holds one server's instances: two servers may hold different images under
        the same UIDs (a test PACS beside the clinical one, a UID generator reused), so each server's
        are filed apart (``ROOT/SERVERHASH_STUDY/SERIES``); the size limit is the whole cache's."""
        view = copy.copy(self)
        view.prefix = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12] + "_"
        return view

    def ensure(self) -> Path:
        """Create the root (0o700); one that exists must be a folder of this user's that others
        cannot open (ValueError naming it otherwise; its permissions are never changed)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ValueError(f"{self.root}: the PACS cache folder cannot be created ({exc.strerror or exc})") from None
        info = self.root.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{self.root}: the PACS cache must be a folder, not a file or a link")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            raise ValueError(f"{self.root}: the PACS cache folder is open to other users (mode {mode:o}) and it "
                             "holds patient data; make it private (chmod 700) or choose another cache folder")
        return self.root

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return self.root / f"{self.prefix}{file_name(study_uid)}" / file_name(series_uid)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.series_dir(study_uid, series_uid) / f"{file_name(sop_uid)}{SUFFIX}"

    def touch(self, study_uid: str, series_uid: str) -> Path:
        """Mark a series as just used (what :meth:`prune` removes last); returns its folder."""
        folder = self.series_dir(study_uid, series_uid)
        os.utime(folder)
        return folder

    def settle(self, study_uid: str, series_uid: str, sop_uids: Iterable[str], before: Collection[str]) -> Path:
        """End a retrieve: of the instances cached ``before`` it (:meth:`cached`), those the PACS no
        longer lists (``sop_uids``: the series was replaced there) are removed — read beside the new
        ones they were old images or a second volume — while what this retrieve received stays, listed
        or not (a PACS may cap how many images a query lists); the folder is marked as just used."""
        folder = self.series_dir(study_uid, series_uid)
        stale = set(before) - {file_name(uid) for uid in sop_uids}
        for name in stale:
            (folder / f"{name}{SUFFIX}").unlink(missing_ok=True)
        if stale:
            sync_folder(folder)
        return self.touch(study_uid, series_uid)

    def cached(self, study_uid: str, series_uid: str) -> set[str]:
        """The file names (:func:`file_name` of a SOPInstanceUID) of a series' instances that are
        already whole in the cache; compare them with ``file_name(uid)``, see :meth:`missing`."""
        folder = self.series_dir(study_uid, series_uid)
        try:
            names = os.listdir(folder)
        except OSError:
            return set()
        return {n[:-len(SUFFIX)] for n in names if n.endswith(SUFFIX) and not n.startswith(".")}

    def missing(self, study_uid: str, series_uid: str, sop_uids: Iterable[str],
                have: Collection[str] | None = None) -> list[str]:
        """The SOPInstanceUIDs of ``sop_uids`` not yet whole in the cache, in their order (``have``:
        what :meth:`cached` just returned, saving a second listing of the folder)."""
        have = self.cached(study_uid, series_uid) if have is None else have
        return [uid for uid in sop_uids if file_name(uid) not in have]

    @contextlib.contextmanager
    def receiving(self, study_uid: str, series_uid: str) -> Iterator[Path]:
        """Around the :meth:`write` calls of one retrieve of a series: first removes what killed
        retrieves left in its folder, at the end flushes the folder's new names to the disk."""
        self.ensure()
        folder = self.series_dir(study_uid, series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftovers_in(folder)
        try:
            yield folder
        except BaseException:
            with contextlib.suppress(OSError):
                sync_folder(folder)          # the whole instances received so far stay
            raise
        sync_folder(folder)

    def write(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Store one encoded instance (a DICOM file's bytes) atomically and flushed to the disk;
        call it inside :meth:`receiving`, which tidies and flushes the folder once."""
        path = self.instance_path(study_uid, series_uid, sop_uid)
        with atomic_file(path, tidy=False, sync_parent=False) as tmp:
            tmp.write_bytes(data)
        return path

    def _series(self) -> list[tuple[float, Path, int]]:
        """(last use, folder, bytes) of every cached series."""
        if not self.root.is_dir():
            return []
        series = []
        for study in self.root.iterdir():
            if study.is_dir() and not study.is_symlink():
                for folder in study.iterdir():
                    if folder.is_dir() and not folder.is_symlink():
                        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                        series.append((folder.stat().st_mtime, folder, size))
        return series

    def prune(self, keep: Collection[Path] = ()) -> list[Path]:
        """Remove whole series, least recently used first, until the cache is within its limit;
        the series in ``keep`` (just retrieved) stay. Returns the removed series folders."""
        series = self._series()
        total = sum(size for _, _, size in series)
        removed = []
        for _, folder, size in sorted(series, key=lambda item: item[0]):
            if total <= self.limit_bytes:
                break
            if folder in keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            total -= size
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
        return removed
