"""Checking a paired dataset folder before anything trains (docs/evaluation.md's layout: one folder per
subject, or a BIDS dataset whose sessions are the subjects): which subjects and modalities are there,
which routes they give, what is wrong with which file, and the split (sessions of one participant in
one part)."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import modalities
from engine.files import file_digest
from engine.io import bids, is_dicom_file
from engine.io.identity import different_worlds, scanner_frame
from engine.io.itk_files import SUFFIXES, file_kind, header_grid
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop
from engine.split import TEST_FRACTION, VAL_FRACTION, check_fractions, hash_split

SPLITS = ("train", "val", "test")
DATASET_JSON = "dataset.json"
LOW_OVERLAP = 0.5            # a partner covering less of the reference grid is said to be worth checking
# where a user maps series and registers volumes: the app and the command line
PREPARING = "the fine-tuning wizard's Map series and align volumes page, or python main.py prepare"
LOW_OVERLAP_HINT = (": a partial slab, or a wrong spacing or origin in one header? check both, or register it "
                    f"({PREPARING})")
_IGNORED_SUFFIXES = {".json", ".txt", ".md", ".csv", ".tsv", ".raw", ".zraw", ".log", ".yaml", ".yml", ".bval",
                     ".bvec"}


class DatasetError(ValueError):
    """The dataset cannot be used; the message lists what was found and what is wrong."""


@dataclass(frozen=True)
class Finding:
    """A problem (something left out) or a note (something done) about one file or folder."""

    kind: str            # unknown_modality, unreadable, single_modality, no_overlap, other_space, resampled, …
    path: str
    message: str
    subject: str = ""
    reference: str = ""  # no_overlap / other_space / resampled: the volume ``path`` was compared with

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "message": self.message, "subject": self.subject,
                "reference": self.reference}


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in LPS millimetres (sizes and spacing in x, y, z order) and the world its coordinates
    are in (:data:`engine.io.volume.SPACES`: a NIfTI transform's code; DICOM: the scanner's)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    space: str = "scanner"
    frame: str = ""                # a scanner's FrameOfReferenceUID (a DICOM folder's; none for a volume file)

    def same_grid(self, other: Geometry) -> bool:
        return (self.size == other.size and np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=1e-4)
                and np.allclose(self.origin, other.origin, atol=1e-2)
                and np.allclose(self.direction, other.direction, atol=1e-4))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS box around the grid's voxel edges: (lower corner, upper corner)."""
        d = np.asarray(self.direction, float).reshape(3, 3) @ np.diag(self.spacing)
        corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in self.size])))
        points = corners @ d.T + np.asarray(self.origin)
        return points.min(axis=0), points.max(axis=0)

    def overlap_fraction(self, other: Geometry) -> float:
        """Share of this grid's box that ``other``'s box covers (0 = disjoint)."""
        lo_a, hi_a = self.bounds()
        lo_b, hi_b = other.bounds()
        inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None)
        return float(np.prod(inter) / max(np.prod(hi_a - lo_a), 1e-12))

    def describe(self) -> str:
        size = "×".join(str(s) for s in self.size)
        spacing = "×".join(f"{s:g}" for s in self.spacing)
        origin = ", ".join(f"{o:g}" for o in self.origin)
        return f"{size} voxels of {spacing} mm at ({origin})"


@dataclass(frozen=True)
class SubjectInfo:
    """A usable subject: its files per modality (registry order; the first gives the grid)."""

    name: str
    folder: str
    files: dict[str, str]
    anatomy: str = ""
    resample: tuple[str, ...] = ()          # modalities resampled onto the first one's grid
    source: str = ""                        # where it came from (site, scanner, template): leave-one-source-out

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.files)

    @property
    def reference(self) -> str:
        return next(iter(self.files))

    @property
    def routes(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.files for b in self.files if a != b]


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found. ``usable`` is False when no pair remains."""

    root: str
    name: str
    subjects: list[SubjectInfo] = field(default_factory=list)
    subjects_found: list[str] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    split: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    folders: dict[str, str] = field(default_factory=dict)   # every subject found → its folder
    participants: dict[str, str] = field(default_factory=dict)  # a subject → its person, where one has several
    bids: bool = False                                      # the subjects are a BIDS dataset's sessions

    @property
    def usable(self) -> bool:
        return bool(self.routes)

    @property
    def modalities(self) -> list[str]:
        present = {m for s in self.subjects for m in s.modalities}
        return [m for m in modalities.MODALITIES if m in present]

    @property
    def routes(self) -> list[tuple[str, str]]:
        present = {r for s in self.subjects for r in s.routes}
        order = list(modalities.MODALITIES)
        return sorted(present, key=lambda r: (order.index(r[0]), order.index(r[1])))

    def route_counts(self) -> dict[tuple[str, str], int]:
        return {r: sum(r in s.routes for s in self.subjects) for r in self.routes}

    def modalities_per_subject(self) -> dict[str, tuple[str, ...]]:
        return {s.name: s.modalities for s in self.subjects}

    def training_problem(self) -> str | None:
        """Why a usable dataset leaves nothing to train on, with the fix; None when subjects train (or when
        nothing is usable: :meth:`error_message` says why)."""
        if not self.usable or self.split["train"]:
            return None
        val, test = len(self.split["val"]), len(self.split["test"])
        return (f"No subject is left for training: the split holds out all {len(self.subjects)} usable subject(s) "
                f"(validation {val}, test {test}). Add subjects with two modalities, hold out fewer (lower the "
                "validation and test shares), or, where dataset.json lists the split, name training subjects in it.")

    def summary(self) -> str:
        """A few lines for people: counts, routes, split, then each problem and note."""
        lines = [f"{self.name}: {len(self.subjects)} usable of {len(self.subjects_found)} subjects, "
                 f"modalities {', '.join(self.modalities) or 'none'}",
                 "routes: " + (", ".join(f"{a}→{b} ({n})" for (a, b), n in self.route_counts().items()) or "none"),
                 "split: " + ", ".join(f"{k} {len(v)}" for k, v in self.split.items())]
        lines += [f"problem: {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "root": self.root, "name": self.name, "subjects_found": list(self.subjects_found),
            "subjects": {s.name: {"modalities": list(s.modalities), "anatomy": s.anatomy,
                                  "resampled": list(s.resample)} for s in self.subjects},
            "routes": [list(r) for r in self.routes], "split": {k: list(v) for k, v in self.split.items()},
            "problems": [p.to_dict() for p in self.problems], "notes": [n.to_dict() for n in self.notes],
        }

    def error_message(self) -> str:
        found = ", ".join(f"{s}" for s in self.subjects_found) or "no subject folders"
        lines = [f"{self.root}: no usable pairs. A pair needs two modalities of the same subject, in one "
                 f"folder per subject named like T1.nii.gz, T2.nii.gz, FLAIR.nii.gz or CT/ (a DICOM folder), "
                 f"or in a BIDS session (sub-01/[ses-1/]anat/sub-01_T1w.nii.gz, …_T2w.nii.gz).",
                 f"subjects found: {found}"]
        lines += [f"  - {p}" for p in self.problems[:30]]
        if len(self.problems) > 30:
            lines.append(f"  … and {len(self.problems) - 30} more problems")
        return "\n".join(lines)


# -- reading names and geometry ------------------------------------------------------------
def modality_from_name(path: Path) -> tuple[str | None, str]:
    """(canonical modality or None, the name stem) for a file or DICOM folder named by its modality
    (``T1.nii.gz``, ``CT/``) or a BIDS image named by its suffix (``sub-01_T1w.nii.gz``)."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    try:
        return modalities.canonical(name), name
    except ValueError:
        return bids.modality_of(path.name), name


def subject_entries(folder: Path, in_bids: bool) -> list[Path]:
    """What a subject folder holds: its files and folders; in a BIDS session, its files and those of its
    image datatype folders (``anat``, ``pet``), not its other datatypes (``func``, ``dwi``, …)."""
    entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name.lower())
    if not in_bids:
        return entries
    inner = [p for d in bids.DATATYPES if (folder / d).is_dir() for p in subject_entries(folder / d, False)]
    return [p for p in entries if p.is_file()] + inner


# how a modality's DICOM folder holding several series is resolved (a dataset has no --series)
ONE_SERIES = (f"moving the others out (one series per modality folder), or renaming the folder so that no modality "
              f"names it and mapping its series ({PREPARING})")


def read_volume(path: Path):
    """A dataset's volume file or DICOM series folder, in physical units (a folder of several series says
    how to pick one in a dataset)."""
    from engine.io import load
    from engine.io.itk_files import load_file

    return load_file(path) if path.is_file() and file_kind(path) else load(path, pick_with=ONE_SERIES)


def read_geometry(path: Path, deep: bool = False) -> Geometry:
    """The grid of a volume file (header only unless ``deep``) or of a DICOM folder (loaded)."""
    if path.is_dir() or deep:
        volume = read_volume(path)
        return Geometry(volume.size_xyz, volume.spacing, volume.origin, volume.direction, volume.space,
                        scanner_frame(volume))
    size, spacing, origin, direction, space = header_grid(path)   # the header, and voxel data as long as it promises
    if len(size) != 3:
        raise ValueError(f"is a {len(size)}-D image; each modality needs one 3-D volume")
    sx, sy, sz = size
    return Geometry((int(sx), int(sy), int(sz)), (spacing[0], spacing[1], spacing[2]),
                    (origin[0], origin[1], origin[2]), direction, space)


# -- the checks ------------------------------------------------------------------------------
def _not_an_image(path: Path) -> str:
    """What a DICOM file holding no image is ("RTSTRUCT: a structure set (contours), skipped"), "" for an
    image or a file that cannot be told."""
    from engine.io.dicom_scan import NotReadable, no_image_reason, read_header

    try:
        ds, state = read_header(path)
    except (NotReadable, OSError):
        return ""
    return no_image_reason(ds, state) or ""


def _read_dataset_json(root: Path, report: ValidationReport) -> dict:
    path = root / DATASET_JSON
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the top level must be an object")
        return data
    except (ValueError, OSError) as exc:
        report.problems.append(Finding("dataset_json", str(path), f"ignored, not valid JSON ({exc})"))
        return {}


def _anatomy_of(meta: dict, subject: str) -> str:
    anatomy = meta.get("anatomy", "")
    if isinstance(anatomy, dict):
        return str(anatomy.get(subject, anatomy.get("*", "")))
    return str(anatomy or "")


def subject_entry(meta: dict, subject: str, key: str) -> str:
    """``dataset.json``'s ``subjects[subject][key]`` (``source``, ``participant``), or ""."""
    entry = (meta.get("subjects") or {}).get(subject) if isinstance(meta.get("subjects"), dict) else None
    return str(entry.get(key) or "") if isinstance(entry, dict) else ""


def _objects_only(folder: Path, most: int = 8) -> str:
    """What a folder holding only DICOM objects that are no images is (a planning system's REG/ or
    RTSTRUCT/ folder: "REG: not an image, skipped"), "" otherwise — at its first image or other file, or
    beyond ``most`` files."""
    kinds: dict[str, None] = {}
    for count, path in enumerate(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        kind = _not_an_image(path) if count < most else ""
        if not kind:
            return ""
        kinds[kind] = None
    return "; ".join(kinds)


def _check_subject(folder: Path, subject: str, meta: dict, report: ValidationReport, deep: bool) -> SubjectInfo | None:
    found: dict[str, tuple[Path, Geometry]] = {}
    loose_dicom = 0
    for entry in subject_entries(folder, report.bids):
        if entry.is_file() and not file_kind(entry):
            if is_dicom_file(entry) or entry.suffix.lower() == ".dcm":     # (some writers leave out the preamble)
                object_kind = _not_an_image(entry)
                if object_kind:             # an RT structure set, plan, registration beside the images
                    report.notes.append(Finding("not_an_image", str(entry), object_kind,
                                                subject))
                else:
                    loose_dicom += 1
            elif entry.suffix.lower() not in _IGNORED_SUFFIXES:
                report.problems.append(Finding(
                    "unsupported_file", str(entry), "not a volume file: use .nii.gz, .nii, .mha, .nrrd "
                    "or a DICOM folder named by its modality", subject))
            continue
        modality, stem = modality_from_name(entry)
        if modality is None and report.bids:      # a BIDS image of another kind (T2starw, defacemask): a note
            suffix = bids.split_name(entry.name)[1]
            report.notes.append(Finding(
                "unknown_modality", str(entry), f"the BIDS suffix {suffix!r} names none of this model's modalities "
                f"({', '.join(bids.SUFFIX_MODALITY)}): left out; map it to one ({PREPARING})", subject))
            continue
        objects = _objects_only(entry) if modality is None and entry.is_dir() else ""
        if objects:                         # a REG/ or RTSTRUCT/ folder beside the images: nothing to map
            report.notes.append(Finding("not_an_image", str(entry), f"holds no image ({objects})", subject))
            continue
        if modality is None:
            guess = modalities.guess_from_filename(entry.name)
            hint = f"; this one {guess}?" if guess else ""
            report.problems.append(Finding(
                "unknown_modality", str(entry), f"unknown modality {stem!r}: name each volume by its "
                f"modality ({', '.join(modalities.MODALITIES)}{hint}) or map it to one ({PREPARING})", subject))
            continue
        if modality in found:
            report.problems.append(Finding(
                "duplicate_modality", str(entry), f"a second {modality} volume: left out, using "
                f"{found[modality][0].name}", subject))
            continue
        try:
            found[modality] = (entry, read_geometry(entry, deep))
        except Exception as exc:        # noqa: BLE001 — any reader failure makes the file unreadable
            message = getattr(exc, "problem", None) or str(exc)
            report.problems.append(Finding("unreadable", str(entry), f"unreadable: {message}", subject))

    if loose_dicom:
        report.problems.append(Finding(
            "unmapped_dicom", str(folder), f"{loose_dicom} DICOM files lie in the subject folder itself: map their "
            f"series to modalities ({PREPARING}), or move each series into a folder named by its "
            "modality (SUBJECT/T1/, SUBJECT/CT/)", subject))
    ordered = [m for m in modalities.MODALITIES if m in found]
    files: dict[str, str] = {}
    resample: list[str] = []
    if ordered:
        ref_path, ref_geom = found[ordered[0]]
        files[ordered[0]] = str(ref_path)
        for modality in ordered[1:]:
            path, geom = found[modality]
            if different_worlds(geom.space, ref_geom.space):
                spaces = f"its coordinates are in {geom.space} space, {ref_path.name}'s in {ref_geom.space} space"
                if geom.same_grid(ref_geom):        # one transform, two labels (ANTs writes scanner for an MNI image)
                    report.notes.append(Finding(
                        "other_space", str(path), f"{spaces}, but both lie on one grid: kept as a pair (one of the "
                        "two labels is likely wrong)", subject, str(ref_path)))
                else:
                    report.problems.append(Finding(
                        "other_space", str(path), f"{spaces}: one position in two different worlds is not one place "
                        f"in the body, so it is no pair with {ref_path.name}: left out (bring both into one space "
                        "first)", subject, str(ref_path)))
                    continue
            if geom.same_grid(ref_geom):
                files[modality] = str(path)
                continue
            overlap = ref_geom.overlap_fraction(geom)
            if overlap <= 0.0:
                report.problems.append(Finding(
                    "no_overlap", str(path), f"does not overlap {ref_path.name} in physical space "
                    f"({path.name}: {geom.describe()}; {ref_path.name}: {ref_geom.describe()}): left out", subject,
                    str(ref_path)))
                continue
            kind, misplaced = _misplaced(path, modality, geom, ref_path, ordered[0], ref_geom)
            if misplaced:
                stored = ", which apply a spatial registration (REG) stored beside it" if kind == "other_frame" else ""
                report.problems.append(Finding(kind, str(path), f"{misplaced}: left out (register it onto "
                                               f"{ref_path.name}: {PREPARING}{stored}, or a registration tool)",
                                               subject, str(ref_path)))
                continue
            files[modality] = str(path)
            resample.append(modality)
            report.notes.append(Finding(
                "resampled", str(path), f"lies on another grid than {ref_path.name} ({geom.describe()} vs "
                f"{ref_geom.describe()}); resampled onto {ordered[0]}'s grid (linear), covering "
                f"{overlap:.0%} of it" + (LOW_OVERLAP_HINT if overlap < LOW_OVERLAP and modality != "CBCT" else ""),
                subject, str(ref_path)))              # (a cone beam's field of view is smaller than its CT's)
    if len(files) >= 2:
        return SubjectInfo(subject, str(folder), files, _anatomy_of(meta, subject), tuple(resample),
                           subject_entry(meta, subject, "source"))
    if files:
        only = next(iter(files))
        report.problems.append(Finding("single_modality", str(folder), f"subject {subject!r} has only one usable "
                                       f"modality ({only}): no pair, skipped", subject))
    elif objects := _objects_only(folder, most=10000):  # a REG/ folder beside the patients' folders
        report.notes.append(Finding("not_an_image", str(folder), f"holds no image ({objects}): not a subject",
                                    subject))
    else:
        report.problems.append(Finding("empty_subject", str(folder), f"subject {subject!r} holds no usable "
                                       "volume named by a modality: skipped", subject))
    return None


def _misplaced(path: Path, modality: str, geom: Geometry, ref_path: Path, reference: str,
               ref_geom: Geometry) -> tuple[str, str]:
    """(the finding's kind, why) a volume on another grid than its subject's reference is no pair with it
    as its header places it (why "" when it is one): another scanner frame of reference ("other_frame":
    its coordinates name other places), or its anatomy lying millimetres off the reference's
    ("misaligned": a daily CBCT beside its planning CT, :mod:`engine.tasks.alignment`)."""
    if geom.frame and ref_geom.frame and geom.frame != ref_geom.frame:
        return "other_frame", (f"was acquired in another frame of reference than {ref_path.name} "
                               "(FrameOfReferenceUID differs): its coordinates name other places in the room")
    if {modalities.get(m).family for m in (modality, reference)} != {"CT"}:
        return "", ""               # MR contrasts of one session: taken as placed (reading voxels here is slow)
    from engine.tasks.alignment import misalignment

    try:
        moving, fixed = read_volume(path).replace(modality=modality), read_volume(ref_path).replace(modality=reference)
    except Exception:               # noqa: BLE001 — unreadable voxels: training's loading says so, naming the file
        return "", ""
    found = misalignment(moving, fixed)
    if found is None:
        return "", ""
    return "misaligned", (f"its anatomy lies about {found[0]:.0f} mm off {ref_path.name}'s as their headers place them (their "
            f"edges agree markedly better shifted: correlation +{found[1]:.2f}), as a scan of a patient who moved "
            "between them does")


def _drop_copies(report: ValidationReport, cancel: CancelToken | None = None) -> None:
    """Leave out a subject holding a file identical to one of another subject (one scan under two
    names would sit in the training and the test split at once; not when ``dataset.json`` gives both one
    participant, who lands in one part: a planning CT beside each daily CBCT) or to another of its own
    modalities (a copy, not a pair), each with the reason. Files of one size are told apart by sampled blocks,
    and only those alike there are read whole: identical scans are rare and cheap to find."""
    def groups(files: list[tuple[SubjectInfo, str]], sampled: bool) -> list[list[tuple[SubjectInfo, str]]]:
        found: dict[str, list[tuple[SubjectInfo, str]]] = {}
        for info, modality in files:
            check_cancel(cancel)
            try:
                found.setdefault(file_digest(info.files[modality], sampled), []).append((info, modality))
            except OSError:
                continue                   # unreadable now: loading it says so
        return [g for g in found.values() if len(g) > 1]

    def person(info: SubjectInfo) -> str:
        return report.participants.get(info.name, info.name)

    by_size: dict[int, list[tuple[SubjectInfo, str]]] = {}
    for info in report.subjects:
        for modality, name in info.files.items():
            if Path(name).is_file():
                by_size.setdefault(Path(name).stat().st_size, []).append((info, modality))
    dropped: dict[str, Finding] = {}
    for same_size in (g for g in by_size.values() if len(g) > 1):
        for alike in groups(same_size, sampled=True):
            for same in groups(alike, sampled=False):
                (first, was), *copies = same
                for info, modality in copies:
                    if info.name in dropped or (info is not first and person(info) == person(first)):
                        continue            # one person's planning CT beside each of their daily CBCTs: one split
                    why = (f"is the same file as its {was} ({Path(first.files[was]).name}): a copy, not a pair"
                           if info is first else f"is the same file as {first.name}'s {was}: one scan under two "
                           "subject names would sit in the training and the test split at once")
                    dropped[info.name] = Finding("duplicate_file", info.files[modality], f"{why}; subject "
                                                 f"{info.name!r} left out", info.name, first.files[was])
    report.problems.extend(dropped.values())
    report.subjects = [s for s in report.subjects if s.name not in dropped]


def _split_from_json(meta: dict, usable: list[str], report: ValidationReport, json_path: str) -> dict[str, list[str]]:
    given = meta.get("split") or {}
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    assigned: dict[str, str] = {}
    for part in ("test", "val", "train"):                 # on conflict the held-out part wins
        for name in given.get(part, []) or []:
            name = str(name)
            if name in assigned:
                report.problems.append(Finding("split", json_path, f"subject {name!r} is listed in both "
                                               f"{assigned[name]!r} and {part!r}; kept in {assigned[name]!r}"))
                continue
            if name not in usable:
                report.notes.append(Finding("split", json_path, f"split {part!r} lists {name!r}, which is not a "
                                            "usable subject"))
                continue
            assigned[name] = part
            split[part].append(name)
    unlisted = [s for s in usable if s not in assigned]
    if unlisted:
        split["train"].extend(unlisted)
        report.notes.append(Finding("split", json_path, f"{len(unlisted)} subjects in no split went to train: "
                                    + ", ".join(unlisted[:10]) + (" …" if len(unlisted) > 10 else "")))
    return {k: sorted(v) for k, v in split.items()}


def validate_dataset(root: str | Path, *, seed: int = 0, val_fraction: float = VAL_FRACTION,
                     test_fraction: float = TEST_FRACTION, deep: bool = False, progress: ProgressFn = noop,
                     cancel: CancelToken | None = None) -> ValidationReport:
    """Check a dataset folder without loading voxels but those of CT-family pairs on different grids
    (their alignment, :func:`_misplaced`; ``deep=True`` reads them all, catching truncated files; DICOM
    folders are always read). Never raises for dataset content; a missing
    root gives an empty report. ``dataset.json`` (optional): ``{"name": str, "anatomy": str |
    {subject: str, "*": default}, "split": {"train": [...], "val": [...], "test": [...]},
    "subjects": {subject: {"source": str}}}`` (a subject's source — site, scanner, anatomy template — is
    what ``train --leave-out`` holds out);
    without a split, :func:`hash_split` with ``seed`` and the fractions."""
    check_fractions(val_fraction, test_fraction)
    root = Path(root)
    report = ValidationReport(str(root), root.name)
    if not root.is_dir():
        report.problems.append(Finding("missing", str(root), "no such folder"))
        return report
    meta = _read_dataset_json(root, report)
    report.bids = bids.is_bids(root)
    report.name = str(meta.get("name") or (report.bids and bids.dataset_name(root)) or root.name)
    if report.bids:                 # the sessions (sub-*/ses-*), each a subject of its participant (sub-*)
        units = [(folder, *bids.session_name(root, folder)) for folder in bids.sessions(root)]
    else:
        units = [(p, p.name, subject_entry(meta, p.name, "participant")) for p in sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)]
        for stray in sorted(p for p in root.iterdir() if p.is_file() and file_kind(p)):
            report.problems.append(Finding("stray_volume", str(stray), "volume files must sit in one folder per "
                                           "subject (DATASET/SUBJECT/T1.nii.gz): ignored"))
    for i, (folder, name, participant) in enumerate(units):
        check_cancel(cancel)
        progress(Progress(i, len(units), f"checking {name}"))
        report.subjects_found.append(name)
        report.folders[name] = str(folder)
        if participant and participant != name:
            report.participants[name] = participant
        info = _check_subject(folder, name, meta, report, deep)
        if info is not None:
            report.subjects.append(info)
    progress(Progress(len(units), len(units), "dataset checked"))
    _drop_copies(report, cancel)
    usable = [s.name for s in report.subjects]
    if "split" in meta:
        report.split = _split_from_json(meta, usable, report, str(root / DATASET_JSON))
    else:
        report.split = _participant_split(usable, report.participants, seed, val_fraction, test_fraction)
    return report


def _participant_split(usable: list[str], participants: dict[str, str], seed: int, val_fraction: float,
                       test_fraction: float) -> dict[str, list[str]]:
    """:func:`hash_split` over the participants: the sessions of one person share a part (one person
    in training and in testing would measure memory, not generalization)."""
    person = {s: participants.get(s, s) for s in usable}
    drawn = hash_split(sorted(set(person.values())), seed, val_fraction, test_fraction)
    return {part: sorted(s for s in person if person[s] in held) for part, held in drawn.items()}
