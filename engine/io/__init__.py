"""Volume input/output: scan a file or folder for volumes, load one, save one.

    catalog = scan(path)            # every volume / DICOM series / 2-D picture found, and what was skipped
    volume = load(path, series=...) # one Volume in physical units with its geometry
    save(volume, out)               # .nii/.nii.gz/.mha/.nrrd file, or a DICOM series folder
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.atomic import OutputError, check_writable
from engine.exports import lazy_exports
from engine.io.catalog import Catalog, SeriesEntry
from engine.io.errors import Skipped, VolumeIOError, special_file
from engine.io.image_files import image_kind, scan_image
from engine.io.itk_files import (
    DETACHED,
    SUFFIXES,
    file_kind,
    load_file,
    scan_file,
    scan_volume_of,
    write_file,
    write_problem,
)
from engine.io.volume import Volume
from engine.jobs import CancelToken, ProgressFn, check_cancel, noop

if TYPE_CHECKING:
    from engine.io.deidentify import Anonymiser

# loaded on first use: de-identification (pydicom's anonymisation tables) and resampling (scipy)
__getattr__, _LAZY = lazy_exports(__name__, {"Anonymiser": "deidentify", "burned_in": "deidentify", "is_bids": "bids",
                                             "inside": "resample", "resample_onto": "resample",
                                             "identity_warnings": "identity", "kinship": "identity",
                                             "named_patient": "identity", "names_no_patient": "identity",
                                             "data_files": "data_size", "frames_differ": "dicom_reg",
                                             "in_frame_of": "dicom_reg", "registrations_beside": "dicom_reg",
                                             "find_registrations": "dicom_reg", "read_registration": "dicom_reg",
                                             "NO_REGISTRATION": "dicom_reg"})
__all__ = ["Catalog", "SeriesEntry", "Skipped", "Volume", "VolumeIOError", "check_output", "file_kind",
           "is_dicom_file", "load", "openable_name", "other_format", "path_key", "save", "scan", "written_keys", *_LAZY]

_NOT_IMAGES = {".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".py", ".xml", ".html", ".pdf", ".zip", ".gif",
               ".svg", ".log", ".ini", ".yaml", ".yml", ".raw", ".zraw", ".bval", ".bvec", ".sh", ".bat", ".exe",
               ".mat", ".npy", ".npz", ".h5", ".doc", ".docx", ".xls", ".xlsx"}


# formats this app does not read, by suffix: named in the error, never parsed as DICOM
_OTHER_FORMATS = {".hdr": "an Analyze 7.5 or NIfTI-1 pair header (.hdr + .img)",
                  ".img": "the voxel file of an Analyze 7.5 or NIfTI-1 pair (.hdr + .img)",
                  ".mnc": "a MINC volume", ".mgz": "a FreeSurfer MGH volume", ".mgh": "a FreeSurfer MGH volume",
                  ".par": "a Philips PAR/REC header", ".rec": "the voxel file of a Philips PAR/REC pair",
                  ".gz": "a gzip-compressed file", ".bz2": "a bzip2-compressed file"}


def other_format(path: str | Path) -> str | None:
    """Why a file of a known format this app does not read is not opened (None for any other file)."""
    kind = _OTHER_FORMATS.get(Path(path).suffix.lower())
    if kind is None or file_kind(path) or is_dicom_file(path):
        return None
    advice = "decompress it first" if kind.endswith("compressed file") else \
        "convert it to NIfTI first (e.g. nibabel's nib-convert, FreeSurfer's mri_convert or dcm2niix)"
    return (f"{kind}: not a format this app reads ({', '.join(SUFFIXES)}, DICOM or a 2-D picture); {advice}")


def is_dicom_file(path: str | Path) -> bool:
    """A DICOM Part 10 file (the "DICM" marker after the 128-byte preamble), whatever its suffix says."""
    try:
        with open(path, "rb") as fp:
            return fp.read(132)[128:] == b"DICM"
    except OSError:
        return False


def openable_name(name: str) -> bool:
    """Whether a file of this name may hold something ``scan`` opens: a volume file, a 2-D picture,
    or DICOM (``.dcm``/``.ima``, DICOMDIR, no suffix at all, or a UID-like name ending in digits)."""
    suffix = Path(name).suffix.lower()
    return bool(file_kind(name) or image_kind(name) or suffix in (".dcm", ".dicom", ".ima")
                or name.upper() == "DICOMDIR" or not suffix or suffix[1:].isdigit())


def _volume_index(path: str | Path) -> tuple[Path, int] | None:
    """``FILE#INDEX`` naming one volume of a 4-D file: (FILE, INDEX), else None."""
    text = str(path)
    if "#" not in Path(text).name or not file_kind(text.rpartition("#")[0]):
        return None
    text, _, index = text.rpartition("#")
    if not index.isdigit():
        raise VolumeIOError(path, f"volume index {index!r} after '#' is not a number")
    return Path(text), int(index)


def scan(path: str | Path, cancel: CancelToken | None = None, *, keep_registrations: bool = False) -> Catalog:
    """Find every loadable volume in a file, a folder (recursively) or a DICOMDIR; ``FILE#INDEX``
    names one volume of a 4-D file.

    Unreadable files inside a folder are reported in ``Catalog.skipped``; the good series still
    load. 2-D pictures (PNG, JPEG, TIFF, BMP) in a folder are listed only when it holds no volume
    or DICOM series (so a study's screenshots do not crowd it). A path that does not exist, or
    holds no image at all, raises :class:`VolumeIOError` — unless ``keep_registrations`` and it holds
    spatial registrations (DICOM REG): then a Catalog of those alone.
    """
    picked = _volume_index(path)
    if picked is not None:
        return scan_volume_of(*picked)
    path = Path(path)
    if not path.exists():
        raise VolumeIOError(path, "no such file or folder")
    special = special_file(path)
    if special:
        raise VolumeIOError(path, f"is {special}, not a file or folder")
    if path.is_file():
        if file_kind(path):
            return scan_file(path)
        if image_kind(path):
            return scan_image(path)
        other = other_format(path)
        if other:
            raise VolumeIOError(path, other)
        from engine.io import dicom_read

        catalog = dicom_read.scan_dicom([path], cancel=cancel)
        if not catalog.entries:
            if keep_registrations and catalog.registrations:
                return catalog
            reason = catalog.skipped[0].reason if catalog.skipped else (
                _registrations_only(catalog) or "not a supported image")
            raise VolumeIOError(path, reason)
        return catalog

    catalog = Catalog()
    candidates: list[Path] = []
    pictures: list[Path] = []
    n_files = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            check_cancel(cancel)
            if name.startswith("."):
                continue
            n_files += 1
            f = Path(root) / name
            special = special_file(f)
            if special:
                catalog.skipped.append(Skipped(str(f), f"{special}, not a file; skipped"))
            elif file_kind(f):
                try:
                    catalog.extend(scan_file(f))
                except VolumeIOError as exc:
                    catalog.skipped.append(Skipped(str(f), exc.problem))
            elif image_kind(f):
                pictures.append(f)
            elif f.suffix.lower() in _NOT_IMAGES:
                continue
            elif other := other_format(f):
                catalog.skipped.append(Skipped(str(f), f"{other}; skipped"))
            else:
                candidates.append(f)
    if candidates:
        from engine.io import dicom_read

        catalog.extend(dicom_read.scan_dicom(candidates, cancel=cancel))
    for f in pictures if not catalog.entries else ():
        check_cancel(cancel)
        try:
            catalog.extend(scan_image(f))
        except VolumeIOError as exc:
            catalog.skipped.append(Skipped(str(f), exc.problem))
    if not catalog.entries:
        if keep_registrations and catalog.registrations:
            return catalog
        detail = f"{n_files} files looked at" if n_files else "the folder is empty"
        if catalog.skipped:
            detail += "; " + "; ".join(str(s) for s in catalog.skipped[:3])
        raise VolumeIOError(path, f"no readable image volumes found ({detail})" + (
            f"; it holds {_registrations_only(catalog)}" if catalog.registrations else ""))
    return catalog


def _registrations_only(catalog: Catalog) -> str:
    """What a path holding spatial registrations and no image holds, said for a user ("" when none)."""
    if not catalog.registrations:
        return ""
    named = ", ".join(r.describe() for r in catalog.registrations[:3])
    more = f" and {len(catalog.registrations) - 3} more" if len(catalog.registrations) > 3 else ""
    return (f"spatial registration(s) (DICOM REG: {named}{more}), not an image (synthesize --reference takes "
            "one with --registration REG; the app's comparison uses one once opened)")


def load(path: str | Path, series: str | None = None, progress: ProgressFn = noop,
         cancel: CancelToken | None = None, *,
         pick_with: str = "--series (in a cohort CSV: its series column)") -> Volume:
    """Load one volume. ``series`` picks a DICOM series (UID or unique prefix) or, for a 4-D file,
    ``FILE#INDEX``; it is required when the path holds several, which the error lists, saying to pick
    one with ``pick_with`` (what names this path's series: the command's option)."""
    picked = _volume_index(path)
    if picked is not None:
        return load_file(picked[0], picked[1], progress=progress, cancel=cancel)
    catalog = scan(path, cancel=cancel)
    if series is not None:
        try:
            entry = catalog.find(series)
        except KeyError as exc:
            raise VolumeIOError(path, str(exc.args[0])) from None
    elif len(catalog.entries) == 1:
        entry = catalog.entries[0]
    else:
        raise VolumeIOError(path, f"holds {len(catalog.entries)} series, pick one with {pick_with}: "
                                  f"{_listing(catalog.entries)}")
    return entry.load(progress, cancel)


def _listing(entries) -> str:
    """The series a pick chooses from, those of a known modality first, as many whole ones as an error
    line holds; how many more there are and where to see them all."""
    ranked = sorted(entries, key=lambda e: e.modality is None)
    shown: list[str] = []
    for e in ranked:
        item = f"{e.key} ({e.description}, {e.modality or '?'})"
        if shown and len("; ".join([*shown, item])) > MAX_LISTING:
            break
        shown.append(item)
    rest = len(ranked) - len(shown)
    return "; ".join(shown) + (f"; and {rest} more (`info` lists every series)" if rest else "")


def check_output(path: str | Path, inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse, before any work, an output path :func:`save` cannot write: a suffix that is neither a
    volume file's nor a DICOM series folder's (none, ``.dcm`` or ``.dicom``, which the folder drops),
    one of the ``inputs`` it was made from, a DICOM series folder holding one of them (writing a
    series replaces its folder: a slice of the input named as the input, the input's own folder) or
    files other than an earlier export, and a place where nothing can be created (a read-only folder)."""
    path = Path(path)
    sources = [Path((_volume_index(i) or (i,))[0]) for i in inputs]
    if written_keys(path) & {path_key(s) for s in sources}:
        raise VolumeIOError(path, "is the input it would be made from; choose another output")
    if not file_kind(path):
        folder = path_key(path.with_suffix("") if path.suffix.lower() in _DICOM_SUFFIXES else path)
        inside = next((s for s in sources if folder in {path_key(p) for p in s.resolve().parents}), None)
        if inside is not None:
            raise VolumeIOError(path, f"holds {inside}, the input it would be made from (a DICOM series replaces "
                                      "its folder); choose another output")
    problem = write_problem(path) if file_kind(path) else ""
    if problem:
        raise VolumeIOError(path, problem)
    if not file_kind(path) and path.suffix and path.suffix.lower() not in _DICOM_SUFFIXES:
        raise VolumeIOError(path, f"unknown output type; use {', '.join(s for s in SUFFIXES if s not in DETACHED)} "
                                  "or a folder for a DICOM series")
    if not file_kind(path):
        from engine.io.dicom_write import check_series_target

        check_series_target(path.with_suffix("") if path.suffix.lower() in _DICOM_SUFFIXES else path)
    try:
        check_writable(path)
    except OutputError as exc:
        raise VolumeIOError(path, exc.problem) from None


_DICOM_SUFFIXES = (".dcm", ".dicom")          # an output path ending so is a DICOM series folder without it
MAX_LISTING = 420             # characters of series listed in an error (its line holds MAX_PROBLEM, 600)


def path_key(path: str | Path) -> str:
    """A path as a comparison key (resolved, case as the platform compares it)."""
    return os.path.normcase(str(Path(path).resolve()))


def written_keys(path: str | Path) -> set[str]:
    """The :func:`path_key` of what :func:`save` writes for ``path``: the file, or for a DICOM series
    the folder (``x.dcm`` writes the folder ``x``)."""
    path = Path(path)
    return {path_key(path), path_key(path.with_suffix("") if path.suffix.lower() in _DICOM_SUFFIXES else path)}


def save(volume: Volume, path: str | Path, *, description: str = "", anonymise: bool | Anonymiser = False,
         progress: ProgressFn = noop, cancel: CancelToken | None = None) -> Path:
    """Write ``volume`` atomically: a file by its suffix, or a DICOM series into a folder
    (any path without an image suffix). ``description`` names what made it (e.g. the
    synthesis route); a synthetic volume is marked in every format's header (engine.io.synthetic_mark).
    ``anonymise`` (True, or an Anonymiser shared by one export session) de-identifies to the DICOM
    Basic Profile (engine.io.deidentify); a file's header then holds only our own description."""
    path = Path(path)
    if file_kind(path):
        if anonymise:
            from engine.io.deidentify import as_anonymiser

            anonymiser = as_anonymiser(anonymise)
            assert anonymiser is not None, "anonymise is true"
            volume, description = anonymiser.prepare(volume, path)
        return write_file(volume, path, description=description)
    check_output(path)
    from engine.io.dicom_write import write_dicom_series

    folder = path.with_suffix("") if path.suffix else path
    return write_dicom_series(volume, folder, series_description=description, anonymise=anonymise,
                              progress=progress, cancel=cancel)
