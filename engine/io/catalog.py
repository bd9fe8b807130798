"""What a scan of a file or folder finds: one entry per loadable volume, loaded on demand."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from engine.io.errors import Skipped, VolumeIOError
from engine.io.volume import Volume
from engine.jobs import CancelToken, ProgressFn, noop

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
    patient: str = ""
    study: str = ""
    notes: tuple[str, ...] = ()
    synthetic: bool = False               # its header marks it as made by a model
    volumes: int = 1                      # > 1: a 4-D file; ``engine.io.scan("FILE#INDEX")`` lists one of them
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
            "notes": list(self.notes),
        }


@dataclass
class Catalog:
    """Everything a scan found, and what it left out (with reasons)."""

    entries: list[SeriesEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: "Catalog") -> None:
        self.entries.extend(other.entries)
        self.skipped.extend(other.skipped)

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


def available_memory() -> int | None:
    """Bytes of memory a new allocation can take without swapping (Linux: MemAvailable, which
    counts reclaimable caches; elsewhere the free pages), or None where that is unknown."""
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


def ensure_fits_in_memory(path: str, n_bytes: int) -> None:
    """Refuse, with a clear message, to load a volume that would not fit in available memory."""
    available = available_memory()
    if available is not None and n_bytes > 0.8 * available:
        raise VolumeIOError(
            path,
            f"the volume needs {n_bytes / 2**30:.1f} GiB as float32 but only {available / 2**30:.1f} GiB of "
            f"memory is available; close volumes or programs you no longer need, or use a smaller volume",
        )
