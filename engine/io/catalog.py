"""What a scan of a file or folder finds: one entry per loadable volume, loaded on demand."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.io.errors import Skipped, VolumeIOError
from engine.io.volume import Volume
from engine.jobs import CancelToken, ProgressFn, noop

if TYPE_CHECKING:
    from engine.io.dicom_reg import StoredRegistration

Loader = Callable[[ProgressFn, "CancelToken | None"], Volume]


@dataclass(frozen=True)
class SeriesEntry:
    """A volume found in a file or folder: enough to list it, and a loader for its voxels."""

    key: str                              # SeriesInstanceUID (+ ".n" when split) or file path
    kind: str                             # "dicom", "nifti", "mha", "nrrd", …
    paths: tuple[str, ...]
    description: str
    modality: str | None
    shape_zyx: tuple[int, ...]
    spacing_xyz: tuple[float, ...]
    orientation: str
    patient: str = ""                     # as listed: "Name (ID)"
    patient_id: str = ""                  # its PatientID, "" when none or a placeholder (ANONYMOUS, 0, …)
    frame: str = ""                       # the FrameOfReferenceUID its scanner stated, "" when none did
    study: str = ""
    notes: tuple[str, ...] = ()
    synthetic: bool = False               # its header marks it as made by a model
    volumes: int = 1                      # > 1: a 4-D file; ``engine.io.scan("FILE#INDEX")`` lists one of them
    refusal: str = ""                     # why loading it will fail, known from the scan ("" when none is)
    not_anatomy: str = ""                 # why its values are no anatomy to synthesize from (a localizer, a CT map)
    acquired: str = ""                    # "YYYYMMDD HHMMSS" as its header dates it (acquisition, series, study)
    loader: Loader | None = field(default=None, compare=False, repr=False)

    def load(self, progress: ProgressFn = noop, cancel: CancelToken | None = None) -> Volume:
        if self.loader is None:
            raise VolumeIOError(self.paths[0] if self.paths else self.key, "this entry cannot be loaded")
        return self.loader(progress, cancel)

    def describe(self) -> dict:
        return {
            "key": self.key,
            "kind": self.kind,
            "description": self.description,
            "modality": self.modality,
            "shape_zyx": list(self.shape_zyx),
            "spacing_xyz_mm": [round(float(s), 6) for s in self.spacing_xyz],
            "orientation": self.orientation,
            "patient": self.patient,
            "study": self.study,
            "files": len(self.paths),
            "volumes": self.volumes,
            "first_file": self.paths[0] if self.paths else "",
            "synthetic": self.synthetic,
            "not_anatomy": self.not_anatomy,
            "acquired": self.acquired,
            "notes": list(self.notes),
        }


@dataclass
class Catalog:
    """Everything a scan found, and what it left out (with reasons)."""

    entries: list[SeriesEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    registrations: list[StoredRegistration] = field(default_factory=list)   # how its frames of reference relate

    def extend(self, other: Catalog) -> None:
        self.entries.extend(other.entries)
        self.skipped.extend(other.skipped)
        self.registrations.extend(other.registrations)

    def find(self, key: str) -> SeriesEntry:
        """The entry whose key equals ``key`` or, failing that, is the only one starting with it."""
        exact = [e for e in self.entries if e.key == key]
        if exact:
            return exact[0]
        prefixed = [e for e in self.entries if e.key.startswith(key)]
        if len(prefixed) == 1:
            return prefixed[0]
        known = ", ".join(e.key for e in self.entries) or "none"
        raise KeyError(f"no single series matches {key!r}; series found: {known}")


MEMORY_SHARE = 0.8                         # of the available memory one volume's reading may take at its peak


def available_memory() -> int | None:
    """Bytes of memory a new allocation can take without swapping (Linux: MemAvailable, which
    counts reclaimable caches; elsewhere the free pages) and within this process's address-space
    limit (RLIMIT_AS, as a reader process or a fuzzing child runs under), or None where unknown."""
    system = _system_available()
    room = _address_space_room()
    if system is None or room is None:
        return system if room is None else room
    return min(system, room)


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_room() -> int | None:
    """What RLIMIT_AS leaves above this process's current address space (None: no limit)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status", encoding="ascii") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, ValueError, StopIteration):
        return None
    return max(0, limit - used)


def ensure_fits_in_memory(path: str, peak_bytes: int) -> None:
    """Refuse, with a clear message, to read a volume whose reading would need ``peak_bytes`` at its
    peak (the voxels as stored, their float32 copy and any copy the reader makes; callers count
    them all) when that is more than :data:`MEMORY_SHARE` of the available memory."""
    available = available_memory()
    if available is not None and peak_bytes > MEMORY_SHARE * available:
        raise VolumeIOError(
            path,
            f"reading the volume needs {peak_bytes / 2**30:.1f} GiB at its peak (the voxels as stored, as float32 "
            f"and the reader's copies) but only {available / 2**30:.1f} GiB of memory is available; close volumes "
            f"or programs you no longer need, or use a smaller volume",
        )
