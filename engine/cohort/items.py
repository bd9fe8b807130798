"""The units of a cohort run (:class:`CohortItem`: one input volume, its target and its output) and
finding them: a folder tree through the same scanner as ``info`` (outputs mirror the tree), a CSV
manifest (``input,target[,source,output,series]``), or a BIDS dataset (:mod:`engine.cohort.bids`)."""
from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine import modalities
from engine.io.bids import is_bids
from engine.io.volume import Volume

OUTPUT_SUFFIX = ".nii.gz"
CSV_COLUMNS = ("input", "target", "source", "output", "series")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

Routes = Collection[tuple[str, str]]


@dataclass(frozen=True)
class CohortItem:
    """One volume to synthesize. ``key`` names it in the run manifest (stable across runs: the input's
    path relative to the cohort's root); ``output`` is relative to the output folder; ``source`` is a
    modality name, "auto" (the model identifies it) or None (the file's header or name says);
    ``files`` are the input's files, whose sizes and times tell a rerun whether it changed; ``error``
    is a problem found before loading (the item is recorded as failed with it); ``not_applicable``
    says why there is nothing to do for it (recorded as ``not-applicable``: neither done nor failed)."""

    key: str
    path: str
    target: str
    output: str
    source: str | None = None
    series: str | None = None
    files: tuple[str, ...] = ()
    error: str = ""
    not_applicable: str = ""
    loader: Callable[[], Volume] | None = field(default=None, compare=False, repr=False)

    def load(self) -> Volume:
        if self.loader is not None:
            return self.loader()
        import engine.io as io

        return io.load(self.path, series=self.series)


@dataclass(frozen=True)
class Cohort:
    """What a cohort input holds: its ``convention`` ("bids", "tree" or "csv"), its root folder and
    the items, sorted by key."""

    convention: str
    root: str
    items: tuple[CohortItem, ...]


def discover(path: str | Path, target: str | None, source: str | None = None, routes: Routes | None = None,
             exclude: str | Path | None = None) -> Cohort:
    """The cohort in ``path``: a ``.csv`` file is a manifest, a folder with ``dataset_description.json``
    or ``sub-*`` folders a BIDS dataset, anything else a folder tree (or one file). ``routes`` (the
    model's) leave out volumes of a modality the model cannot turn into ``target`` when ``source`` is
    not given; nothing under ``exclude`` (the output folder) is an input. ValueError when ``path`` does
    not exist or a manifest is malformed."""
    from engine.cohort import bids

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    target = modalities.canonical(target) if target else None
    source = _asked_source(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        cohort = Cohort("csv", str(path.parent), unique_outputs(csv_items(path, target, source)))
    elif target is None:
        raise ValueError("--target is required (a CSV manifest may name it per row instead)")
    elif is_bids(path):
        cohort = Cohort("bids", str(path), unique_outputs(bids.bids_items(path, target, source, routes)))
    else:
        root = path if path.is_dir() else path.parent
        cohort = Cohort("tree", str(root), unique_outputs(tree_items(path, target, source, routes, exclude)))
    if not cohort.items:
        raise ValueError(f"{path}: nothing to synthesize for {target or 'a target'} — {_none_found(source, target)}")
    return cohort


def _none_found(source: str | None, target: str | None) -> str:
    """Why a tree or BIDS dataset gave no input, and what to do."""
    if source and source != "auto":
        return (f"no volume whose header or name says {source} (or names no modality), and one that says "
                f"{target} is never an input; a {source} whose header names another modality (a CBCT stored "
                "as DICOM Modality CT, told apart only by a series description such as CBCT, cone beam, OBI or "
                f"XVI) can be listed in a CSV manifest with source {source}")
    return ("no volume of a modality the model has a route from (a volume of the target's own modality is "
            "never an input); name the inputs' modality with --source")


def _asked_source(source: str | None) -> str | None:
    if source is None or source.strip().lower() == "auto":
        return source and "auto"
    return modalities.canonical(source)


def wanted_source(modality: str | None, target: str, source: str | None, routes: Routes | None) -> bool:
    """Whether a volume of ``modality`` (None: unknown) is an input for ``target``: never the target
    itself; with ``source`` named, that modality (or an unknown one, taken as it); else a modality the
    model has a route from (every one when ``routes`` is None)."""
    return not not_an_input(modality, target, source, routes)


def not_an_input(modality: str | None, target: str, source: str | None, routes: Routes | None) -> str:
    """Why a volume of ``modality`` is no input for ``target`` ("" when it is one; :func:`wanted_source`)."""
    if modality == target:
        return f"a {target} already (the target's modality): never an input"
    if source and source != "auto":
        return "" if modality in (None, source) else f"a {modality}, not the source named ({source})"
    if modality is None or routes is None or (modality, target) in routes:
        return ""
    return f"a {modality}: the model has no route from {modality} to {target}"


def strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[:-len(suffix)]
    return Path(name).stem


def mirrored_output(relative: str, target: str) -> str:
    """A mirrored tree's output for an input at ``relative``: beside it, ``NAME_synthetic-TARGET.nii.gz``."""
    rel = Path(relative)
    return (rel.parent / f"{strip_image_suffix(rel.name)}_synthetic-{target}{OUTPUT_SUFFIX}").as_posix()


def relative(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (POSIX form), its name alone when it is on another drive."""
    root = Path(root)
    try:
        return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()
    except ValueError:                   # another drive (Windows)
        return Path(path).name


def _inside(path: str | Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def tree_items(path: Path, target: str, source: str | None, routes: Routes | None,
               exclude: str | Path | None = None) -> list[CohortItem]:
    """One item per volume or DICOM series the ``info`` scanner finds under ``path`` (volumes marked
    synthetic and anything under ``exclude`` left out); beside the inputs, a volume of the target's
    modality, of another source than the one named or of one the model has no route from is an item
    that is not applicable, saying why, as is a series of no anatomy (a localizer, a CT map); a file the scanner could not read is an item that failed, with
    the scanner's reason, and one that holds no image (an RT structure set, a report) is not applicable."""
    import engine.io as io

    root = path if path.is_dir() else path.parent
    excluded = Path(exclude) if exclude else None
    catalog = io.scan(path)
    items = []
    left_out = []
    for entry in catalog.entries:
        first = entry.paths[0] if entry.paths else entry.key
        if _inside(first, excluded):
            continue
        if entry.kind == "dicom":
            folder = relative(Path(first).parent, root)
            name = "".join(c if c.isalnum() or c in "-." else "_" for c in entry.description).strip("_") or "series"
            key, output = f"{folder}#{entry.key}", mirrored_output(f"{folder}/{name}", target)
        else:
            key = relative(first, root) + (entry.key[len(str(first)):] if entry.key.startswith(str(first)) else "")
            output = mirrored_output(key.replace("#", "-"), target)
        if entry.synthetic:                 # an output of this app (an earlier run's): never an input
            continue
        why = entry.not_anatomy or not_an_input(entry.modality, target, source, routes)
        if why:                             # listed, so the manifest says what was left out and why
            left_out.append(CohortItem(key=key, path=first, target=target, output="", source=source,
                                       files=tuple(entry.paths), not_applicable=f"{entry.description}: {why}"))
            continue
        items.append(CohortItem(key=key, path=first, target=target, output=output, source=source,
                                files=tuple(entry.paths), loader=_entry_loader(entry)))
    items = _told_apart(items) + (left_out if items else [])     # no input at all: discover refuses, saying why
    for skipped in catalog.skipped:
        if _inside(skipped.path, excluded):
            continue
        key = relative(skipped.path, root)
        why = f"{skipped.path}: {skipped.reason}"
        items.append(CohortItem(key=key, path=skipped.path, target=target, output=mirrored_output(key, target),
                                source=source, files=(skipped.path,), error="" if skipped.not_an_image else why,
                                not_applicable=why if skipped.not_an_image else ""))
    return sorted(items, key=lambda i: i.key)


def _entry_loader(entry) -> Callable[[], Volume]:
    return lambda: entry.load()


def _tagged(output: str, tag: str) -> str:
    """A mirrored output with ``tag`` before its ``_synthetic-TARGET`` ending."""
    head, _, tail = output.rpartition("_synthetic-")
    return f"{head}-{tag}_synthetic-{tail}"


def _told_apart(items: list[CohortItem]) -> list[CohortItem]:
    """Items whose mirrored outputs would share a name (two series of one description in a folder,
    ``t1.nii`` beside ``t1.nii.gz``) each get a short, stable tag of their key before the suffix."""
    import hashlib

    keys = [output_key(item.output) for item in items]
    names = Counter(keys)
    out = []
    for item, key in zip(items, keys):
        if names[key] > 1:
            item = replace(item, output=_tagged(item.output, hashlib.sha1(item.key.encode()).hexdigest()[:6]))
        out.append(item)
    return out


def csv_items(path: Path, target: str | None, source: str | None) -> list[CohortItem]:
    """One item per row of a CSV manifest ``input,target[,source,output,series]`` (paths relative to
    the CSV's folder; an empty target or source takes ``--target`` / ``--source``; an empty output
    mirrors the input; ``series`` picks one DICOM series of a folder holding several, as
    ``--series`` does). A row that names no input or an unknown modality is an item that failed."""
    folder = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in reader.fieldnames or ()]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV manifest ({exc})") from None
    if "input" not in columns:
        raise ValueError(f"{path}: the first line must name the columns {','.join(CSV_COLUMNS)} "
                         f"(input required; found {','.join(columns) or 'nothing'})")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {', '.join(unknown)}; use {','.join(CSV_COLUMNS)}")
    if "target" not in columns and target is None:
        raise ValueError(f"{path}: no target column and no --target")
    items = []
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        given = row.get("input", "")
        where = f"{path}, line {line}"
        error, row_target, row_source = "", row.get("target") or target or "", row.get("source") or source
        try:
            row_target = modalities.canonical(row_target) if row_target else ""
            row_source = _asked_source(row_source)
        except ValueError as exc:
            error = f"{where}: {exc}"
        if not given:
            error = error or f"{where}: no input"
        elif not row_target:
            error = error or f"{where}: no target (column or --target)"
        full = Path(given) if Path(given).is_absolute() else folder / given
        where_in = relative(full, folder) if given else f"line-{line}"
        if where_in.startswith("../"):                 # an input outside the CSV's folder: by its name
            where_in = Path(given).name
        series = row.get("series") or None
        named = f"{given or f'line {line}'}{f'#{series}' if series else ''}"   # one folder, several series
        key = f"{named} → {row_target or '?'}"
        repeated = first_line.get(key)              # one output per input and target: never dropped unsaid
        first_line.setdefault(key, line)
        if repeated is not None:
            key = f"{key} (line {line})"
        mirrored = mirrored_output(where_in, row_target or "unknown")
        output = row.get("output") or (_tagged(mirrored, series.replace(".", "-")) if series else mirrored)
        output = Path(output).as_posix() if output else output      # ./a and a, a//b and a/b: one file
        if not error and not _inside_out(output):
            error = (f"{where}: the output {output!r} must be a path inside the output folder (relative, without "
                     "'..'), so a row cannot write over another file")
        if not error and repeated is not None:
            error = f"{where}: repeats line {repeated}'s input and target ({named} → {row_target})"
        items.append(CohortItem(key=key, path=str(full), target=row_target, output=output, source=row_source,
                                series=series, files=tuple(input_files(full)), error=error))
    return items


def _inside_out(output: str) -> bool:
    """Whether a row's output, taken relative to the output folder, stays inside it."""
    path = Path(output)
    return bool(output) and not path.is_absolute() and not path.drive and ".." not in path.parts


def input_files(path: Path) -> list[str]:
    """The files of an input: itself with the data file its header names (``.mhd`` / ``.nhdr`` +
    ``.raw``), or every file under a folder (sorted)."""
    from engine.io import data_files

    if path.is_dir():
        return sorted(str(Path(r) / n) for r, _d, names in os.walk(path) for n in names)
    return [str(p) for p in data_files(path)] if path.exists() else []


def output_key(output: str) -> str:
    """What two outputs must not share: the files an output makes, its provenance sidecar included
    (``a.nii`` and ``a.nii.gz`` share ``a.json``; a DICOM folder ``a`` and ``a.mha`` too), as the
    file system compares names (case-insensitively on Windows and macOS)."""
    from engine.inference.sidecar import sidecar_path

    key = os.path.normcase(os.path.normpath(str(sidecar_path(output))))
    return key.casefold() if sys.platform == "darwin" else key


def unique_outputs(items: Iterable[CohortItem]) -> tuple[CohortItem, ...]:
    """The items sorted by key; an item whose output another already writes (or whose key repeats)
    fails with the reason instead of overwriting it."""
    seen: dict[str, str] = {}
    keys: set[str] = set()
    out = []
    for item in sorted(items, key=lambda i: i.key):
        if item.key in keys:
            continue
        keys.add(item.key)
        if item.not_applicable:                   # writes nothing: takes no name
            out.append(item)
            continue
        taken = seen.get(output_key(item.output))
        if taken is not None and not item.error:
            item = replace(item, error=f"{item.path}: its output {item.output} (or its provenance file) is already "
                                       f"written for {taken}")
        elif not item.error:
            seen[output_key(item.output)] = item.key
        out.append(item)
    return tuple(out)
