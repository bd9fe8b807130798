"""The real-data hold-out: the images shipped as test files of pydicom, pydicom-data and nibabel
(SimpleITK's wheel ships none) are never training data, so that the benchmark's real-image rows
(``bench quality``'s generalization sets) measure what no model here has seen. The files the benchmark
scores are listed here; :func:`check_holdout_unused` keeps every test file of those packages out of a
training dataset (``train`` and the recipe call it before reading any data)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.files import file_digest


@dataclass(frozen=True)
class HoldoutFile:
    package: str            # the pip distribution that ships it
    name: str               # path inside the package's test-data folder
    kind: str               # "CT" or "MR"
    what: str


HOLDOUT_CT = (
    HoldoutFile("pydicom-data", "693_UNCR.dcm", "CT", "head CT, one 512² slice, 0.48 mm, 5 mm thick"),
    HoldoutFile("pydicom", "J2K_pixelrep_mismatch.dcm", "CT", "head CT at the skull base, one 512² slice, 0.43 mm"),
)
HOLDOUT_MR = (
    HoldoutFile("nibabel", "anatomical.nii", "MR", "brain MR, 33 × 41 × 25 voxels"),
    HoldoutFile("pydicom-data", "emri_small.dcm", "MR", "head MR, enhanced multi-frame, 10 × 64²"),
    HoldoutFile("pydicom", "MR_small.dcm", "MR", "MR, one 64² slice"),
    HoldoutFile("pydicom-data", "MR2_UNCR.dcm", "MR", "shoulder MR, one 1024² slice (not a brain)"),
)
NOT_USED = ("CT_small.dcm (a neck slice, not a head), eCT_Supplemental.dcm (bone already removed), the 16² "
            "dicomdirtests series; SimpleITK's wheel ships no images")


def package_folders() -> dict[str, Path]:
    """Each hold-out package's test-data folder (located through the installed packages)."""
    import importlib.util

    def root(module: str) -> Path | None:
        spec = importlib.util.find_spec(module)
        return Path(spec.origin).parent if spec and spec.origin else None

    folders = {"pydicom": ("pydicom", ("data", "test_files")), "pydicom-data": ("data_store", ("data",)),
               "nibabel": ("nibabel", ("tests", "data"))}
    out = {}
    for package, (module, parts) in folders.items():
        base = root(module)
        if base is not None and base.joinpath(*parts).is_dir():
            out[package] = base.joinpath(*parts)
    return out


def holdout_paths(kind: str | None = None) -> list[tuple[HoldoutFile, Path]]:
    """The hold-out files (of ``kind`` "CT" / "MR", or all) that are installed, with their paths."""
    folders = package_folders()
    out = []
    for item in HOLDOUT_CT + HOLDOUT_MR:
        if kind is not None and item.kind != kind:
            continue
        path = folders.get(item.package, Path("/nonexistent")) / item.name
        if path.is_file():
            out.append((item, path))
    return out


def check_holdout_unused(data: str | Path) -> None:
    """ValueError when the dataset folder ``data`` could train on the real-data hold-out: it lies
    inside (or holds) a hold-out package's test-data folder, or a file in it is a copy of one of that
    folder's files (same size and SHA-256: only files of a hold-out file's size are read)."""
    data = Path(data).resolve()
    folders = {package: folder.resolve() for package, folder in package_folders().items()}
    for package, folder in folders.items():
        if data == folder or folder in data.parents or data in folder.parents:
            raise ValueError(f"{data}: overlaps {package}'s test files ({folder}), the real-data hold-out, which "
                             "is never training data")
    if not data.is_dir():
        return
    held: dict[int, list[Path]] = {}
    for folder in folders.values():
        for path in folder.rglob("*"):
            if path.is_file():
                held.setdefault(path.stat().st_size, []).append(path)
    digests: dict[Path, str] = {}                        # each test file hashed once, when needed
    for file in data.rglob("*"):
        if file.is_file() and file.stat().st_size in held:
            digest = file_digest(file)
            for original in held[file.stat().st_size]:
                if original not in digests:
                    digests[original] = file_digest(original)
                if digests[original] == digest:
                    raise ValueError(f"{file} is a copy of {original}, a test file of the real-data hold-out, "
                                     "which is never training data")
