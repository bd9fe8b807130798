"""Preparing a trainable paired dataset from what researchers have: volumes and DICOM series that are
not named by a modality (any folder tree inside a subject folder) mapped to modalities by the user,
and volumes that do not line up registered rigidly onto the subject's reference. The result is a new
folder in the paired layout (SUBJECT/MODALITY.nii.gz, dataset.json recording where each volume came
from and how it was moved); the original dataset is only read."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import modalities
from engine.io.catalog import SeriesEntry
from engine.io.itk_files import file_kind
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop
from engine.tasks.registration import RigidRegistration, overlay, register_rigid, resample_rigid
from engine.tasks.validation import (
    DATASET_JSON,
    DatasetError,
    Finding,
    ValidationReport,
    modality_from_name,
    subject_entries,
    subject_entry,
)

MAPPABLE = ("unknown_modality", "unmapped_dicom")       # findings whose volumes a user can map to a modality
MISALIGNED = ("no_overlap", "other_frame", "misaligned", "resampled")   # findings whose volume may need registering
PREPARED_KEY = "prepared"
SELF_CONTAINED = (".nii.gz", ".nii", ".mha", ".nrrd")   # volume files copied as they are (not .mhd/.nhdr + data)


@dataclass(frozen=True)
class SeriesChoice:
    """A volume or DICOM series in a subject folder that no name maps to a modality."""

    subject: str
    entry: SeriesEntry

    @property
    def guess(self) -> str | None:
        return self.entry.modality if self.entry.modality in modalities.MODALITIES else None

    def describe(self) -> str:
        e = self.entry
        shape = "×".join(str(s) for s in reversed(e.shape_zyx))
        where = Path(e.paths[0]).parent.name if e.kind == "dicom" and e.paths else Path(e.key).name
        return f"{e.description or where} ({e.kind}, {shape}, {len(e.paths)} file{'s' if len(e.paths) != 1 else ''})"


@dataclass(frozen=True)
class Misaligned:
    """A volume whose grid differs from its subject's reference, with what validation said of it."""

    subject: str
    modality: str
    path: str
    reference: str
    kind: str                            # a MISALIGNED finding's kind: left out as it is, or resampled by header
    reason: str

    @property
    def key(self) -> tuple[str, str]:
        return self.subject, self.modality

    @property
    def needs_it(self) -> bool:
        """Whether it is left out unless registered (the wizard ticks it): not merely on another grid."""
        return self.kind != "resampled"

    def describe(self) -> str:
        where = {"no_overlap": "does not overlap it", "other_frame": "lies in another frame of reference",
                 "misaligned": "lies off it as the headers place them"}.get(
            self.kind, "lies on another grid (now resampled by header)")
        return f"{self.subject}: {self.modality} onto {Path(self.reference).name} — {where}"


@dataclass(frozen=True)
class RegisteredVolume:
    """One registration done while preparing, with its central-slice overlays (fixed green, moving
    magenta) before (header geometry only) and after."""

    subject: str
    modality: str
    reference: str                       # the modality it was registered onto
    registration: RigidRegistration
    before: np.ndarray = field(repr=False)
    after: np.ndarray = field(repr=False)
    left_out: bool = False               # not applied, and no pair as its header places it: not written

    def describe(self) -> str:
        what = self.registration.describe()
        return f"{what}; the volume is left out" if self.left_out else what


@dataclass
class PreparedDataset:
    root: Path
    registered: list[RegisteredVolume] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # subjects left with fewer than two volumes


def mappable(report: ValidationReport) -> list[Finding]:
    """What validation found that a user can map to modalities: volumes no name maps (a problem; in a
    BIDS dataset, images of another suffix, a note) and loose DICOM files."""
    return [f for f in report.problems + report.notes if f.kind in MAPPABLE]


def find_unnamed_series(report: ValidationReport, progress: ProgressFn = noop,
                        cancel: CancelToken | None = None) -> tuple[list[SeriesChoice], list[str]]:
    """Every volume or DICOM series of the subjects whose validation found unnamed content (a folder
    or file not named by a modality, loose DICOM files), outside the modality-named files and folders;
    and the messages of subject folders that could not be scanned."""
    import engine.io as io

    subjects = sorted({f.subject for f in mappable(report) if f.subject})
    choices, errors = [], []
    for i, subject in enumerate(subjects):
        check_cancel(cancel)
        progress(Progress(i, len(subjects), f"looking for series in {subject}"))
        folder = Path(report.folders[subject])
        try:
            catalog = io.scan(folder, cancel=cancel)
        except io.VolumeIOError as exc:
            errors.append(str(exc))
            continue
        for entry in catalog.entries:
            first = Path(entry.paths[0] if entry.paths else entry.key).relative_to(folder)
            named = (folder.joinpath(*first.parts[:i + 1]) for i in range(len(first.parts)))
            if not any(modality_from_name(part)[0] for part in named):     # T1/…, anat/sub-01_T1w.nii.gz
                choices.append(SeriesChoice(subject, entry))
    progress(Progress(len(subjects), len(subjects), "series found"))
    return choices, errors


def misaligned_volumes(report: ValidationReport) -> list[Misaligned]:
    """Volumes on another grid than their subject's reference (left out when they do not overlap it
    at all, resampled by header geometry otherwise): the candidates for rigid registration."""
    found = []
    for finding in report.problems + report.notes:
        if finding.kind in MISALIGNED and finding.reference:
            modality = modality_from_name(Path(finding.path))[0]
            if modality:
                found.append(Misaligned(finding.subject, modality, finding.path, finding.reference, finding.kind,
                                        finding.message))
    return found


def _sources(report: ValidationReport, mapping: Mapping[SeriesChoice, str],
             register: Iterable[Misaligned]) -> dict[str, dict[str, str | SeriesEntry]]:
    """Per subject, modality → a path or a series: the usable volumes, the volumes to register, and
    the mapped series. ValueError when two volumes of a subject would be the same modality."""
    sources: dict[str, dict[str, str | SeriesEntry]] = {s.name: dict(s.files) for s in report.subjects}
    left_out = {f.path for f in report.problems}
    for subject in {c.subject for c in mapping} - set(sources):       # its one named volume pairs with a series
        for entry in subject_entries(Path(report.folders[subject]), report.bids):
            modality = modality_from_name(entry)[0]
            if modality and str(entry) not in left_out and (entry.is_dir() or file_kind(entry)):
                sources.setdefault(subject, {}).setdefault(modality, str(entry))

    def add(subject: str, modality: str, source, what: str) -> None:
        held = sources.setdefault(subject, {})
        if modality in held and held[modality] != source:
            other = held[modality]
            named = other.description if isinstance(other, SeriesEntry) else other
            raise ValueError(f"subject {subject!r}: {what} and {named} would both be its {modality}; "
                             "map only one volume to each modality")
        held[modality] = source

    for m in register:
        reference_modality = modality_from_name(Path(m.reference))[0]
        assert reference_modality is not None, "a subject's reference volume is named by its modality (validation)"
        add(m.subject, reference_modality, m.reference, m.reference)
        add(m.subject, m.modality, m.path, m.path)
    for choice, modality in mapping.items():
        if modality:
            add(choice.subject, modalities.canonical(modality), choice.entry, choice.describe())
    return sources


def _load(source):
    from engine.tasks.dataset import load_volume

    return source.load() if isinstance(source, SeriesEntry) else load_volume(source)


def _copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)            # same file system: no second copy of the voxels
    except OSError:
        shutil.copy2(source, target)


def _check_out(root: Path, out: Path) -> None:
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: the prepared dataset cannot lie inside the dataset it is made from ({root})")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
        try:
            ours = PREPARED_KEY in json.loads((out / DATASET_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            ours = False
        if any(out.iterdir()) and not ours:
            raise ValueError(f"{out}: exists and was not prepared by SynerMedGen; choose a new folder")


def prepare_dataset(report: ValidationReport, out: str | Path, *, mapping: Mapping[SeriesChoice, str] | None = None,
                    register: Iterable[Misaligned] = (), seed: int = 0, progress: ProgressFn = noop,
                    cancel: CancelToken | None = None) -> PreparedDataset:
    """Write the paired dataset made of ``report``'s usable volumes, the series ``mapping`` names
    (choice → modality; "" leaves one out) and the ``register``ed volumes (rigid, onto the subject's
    first modality in registry order, resampled onto its grid) into ``out``, atomically: a failed or
    cancelled run leaves ``out`` as it was. Other volumes are linked or copied unchanged (DICOM
    folders converted to NIfTI). ``out`` may be an earlier result of this function (replaced)."""
    from engine.atomic import atomic_folder
    from engine.io import save

    root, out = Path(report.root), Path(out)
    _check_out(root, out)
    register = list(register)
    moved = {m.key: m for m in register}
    sources = _sources(report, mapping or {}, register)
    result = PreparedDataset(out)
    try:
        meta = json.loads((root / DATASET_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    record: dict[str, dict[str, dict]] = {}
    with atomic_folder(out) as tmp:
        for i, (subject, held) in enumerate(sorted(sources.items())):
            check_cancel(cancel)
            progress(Progress(i, len(sources), f"preparing {subject}"))
            if len(held) < 2:
                result.skipped.append(subject)
                continue
            order = [m for m in modalities.MODALITIES if m in held]
            (tmp / subject).mkdir()
            reference = None
            for modality in order:
                source = held[modality]
                entry = record.setdefault(subject, {})[modality] = {
                    "from": source.paths[0] if isinstance(source, SeriesEntry) and source.paths else str(source)}
                if isinstance(source, SeriesEntry):
                    entry["series"] = source.key
                if (subject, modality) in moved:
                    reference = reference or _load(held[order[0]])
                    volume = _load(source)
                    registration = register_rigid(reference, volume, seed=seed, cancel=cancel)
                    unmoved = resample_rigid(volume, reference)
                    # a registration that aligns worse than the headers do is not applied (it is shown, saying so);
                    # a volume that is no pair as its header places it is then left out, not trained on
                    left_out = not registration.improved and moved[(subject, modality)].needs_it
                    after = resample_rigid(volume, reference, registration) if registration.improved else unmoved
                    result.registered.append(RegisteredVolume(subject, modality, order[0], registration,
                                                              overlay(reference, unmoved), overlay(reference, after),
                                                              left_out))
                    entry["registered_onto" if registration.improved else "registration_not_applied"] = order[0]
                    entry["registration"] = registration.to_dict()
                    if left_out:
                        entry["left_out"] = True
                        continue
                    save(after, tmp / subject / f"{modality}.nii.gz",
                         description=f"{modality} registered" if registration.improved else modality)
                elif isinstance(source, str) and source.lower().endswith(SELF_CONTAINED):
                    suffix = next(s for s in SELF_CONTAINED if source.lower().endswith(s))
                    _copy(Path(source), tmp / subject / f"{modality}{suffix}")
                else:
                    save(_load(source).replace(modality=modality), tmp / subject / f"{modality}.nii.gz",
                         description=modality)
        for subject in [name for name, volumes in record.items()          # a volume left out left one alone
                        if sum(not v.get("left_out") for v in volumes.values()) < 2]:
            shutil.rmtree(tmp / subject)
            del record[subject]
            result.skipped.append(subject)
        if not record:
            raise DatasetError(f"{root}: nothing to prepare: no subject would have two volumes")
        written = {k: meta[k] for k in ("name", "anatomy", "split") if k in meta}
        written.setdefault("name", report.name)
        kept = {name: {k: v for k, v in (("source", subject_entry(meta, name, "source")),
                                         ("participant", report.participants.get(name, ""))) if v} for name in record}
        if any(kept.values()):      # sources (leave-one-source-out) and sessions' participants (the split)
            written["subjects"] = {name: entry for name, entry in kept.items() if entry}
        written[PREPARED_KEY] = {"from": str(root), "volumes": record}
        (tmp / DATASET_JSON).write_text(json.dumps(written, indent=2), encoding="utf-8")
        progress(Progress(len(sources), len(sources), "dataset prepared"))
    return result
