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
from engine.io.dicom_reg import (
    ConflictingRegistrations,
    StoredRegistration,
    find_registrations,
    frame_matrix,
    frames_differ,
    stored_matrix,
)
from engine.io.identity import other_patient, patient_of
from engine.io.itk_files import file_kind
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop
from engine.tasks.registration import (
    RigidRegistration,
    overlay,
    register_rigid,
    resample_rigid,
    stored_registration,
)
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
UNRELATED = "no spatial registration relates them; "     # why a volume in another frame is not placed as stored
SET_ASIDE = "the stored registrations were set aside; "   # … when the user set the dataset's REGs aside
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
    split_subjects: dict[str, str] = field(default_factory=dict)  # a subject made per repeated volume → its origin
    notes: list[str] = field(default_factory=list)       # spatial registrations found but not used, and why

    def describe_split(self) -> str:
        """The subjects made one per repeated volume, by the subject they came from ("" when none)."""
        made: dict[str, list[str]] = {}
        for name, origin in self.split_subjects.items():
            made.setdefault(origin, []).append(name)
        return "; ".join(f"{origin} became {', '.join(names)}" for origin, names in made.items())


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


@dataclass(frozen=True)
class Unit:
    """One subject of the prepared dataset: ``name``, made from the dataset's subject ``origin`` (its
    own name, or ``ORIGIN_CBCT_2`` when several volumes of one modality were mapped there: one subject
    per volume, sharing the others), modality → source."""

    name: str
    origin: str
    held: Mapping[str, str | SeriesEntry]

    @property
    def split(self) -> bool:
        return self.name != self.origin


@dataclass
class Plan:
    """The prepared dataset's subjects, the dataset's subjects left out with the reason, and the series
    left out of a subject that is prepared (another patient's, filed in its folder)."""

    units: list[Unit] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)     # series key → why it is left out

    @property
    def notes(self) -> list[str]:
        """What the plan leaves out, as the prepared dataset's notes say it."""
        return list(self.dropped.values()) + [f"{subject}: {reason}: left out" for subject, reason in self.left_out.items()]


def _owner(held: Mapping[str, list]) -> tuple[str | None, list]:
    """Whose scans a subject's volumes are, by the PatientIDs of its DICOM series: the patient of its
    reference modality's series (the first in registry order; else of all its series) and the series
    of other patients, as (modality, series); None and the reason when the reference's series name
    several patients (a folder per modality holding every patient's scans)."""
    def ids(found) -> set[str]:
        return {s.patient_id for s in found if isinstance(s, SeriesEntry) and s.patient_id}

    reference = next(m for m in modalities.MODALITIES if m in held)
    named = ids(held[reference]) or set().union(*(ids(found) for found in held.values()))
    if len(named) > 1:
        listed = "; ".join(f"{pid}: " + ", ".join(_named(s) for found in held.values() for s in found
                                                 if isinstance(s, SeriesEntry) and s.patient_id == pid)
                           for pid in sorted(named))
        return None, [f"its {'series' if not ids(held[reference]) else reference + ' series'} belong to "
                      f"{len(named)} patients ({listed}): prepare needs one folder per patient (a folder per modality "
                      "holding every patient's scans cannot be paired)"]
    owner = next(iter(named), "")
    return owner, [(m, s) for m, found in held.items() for s in found
                   if owner and isinstance(s, SeriesEntry) and s.patient_id and s.patient_id != owner]


def _partner(modality: str) -> str:
    """What a lone repeated modality lacks: a CT for CBCTs, another contrast for MR."""
    return "planning CT" if modality == "CBCT" else "scan of another modality"


def plan_subjects(report: ValidationReport, mapping: Mapping[SeriesChoice, str],
                  register: Iterable[Misaligned] = ()) -> Plan:
    """The prepared dataset's subjects: per dataset subject, the usable volumes, the volumes to register
    and the mapped series. Where several volumes of one modality were given to a subject (daily CBCTs
    beside one planning CT), one subject per such volume, each with the subject's other volumes,
    numbered in the order their headers date them (then as listed). A subject is left out, with the
    reason, when the repeated modality is its reference (the first in registry order: a planning CT
    twice is a mapping mistake, CBCTs alone have nothing to pair with), when volumes of two modalities
    repeat (no way to pair them), or when its series are several patients' (a folder per modality)."""
    sources: dict[str, dict[str, list[str | SeriesEntry]]] = {
        s.name: {m: [path] for m, path in s.files.items()} for s in report.subjects}
    left_out = {f.path for f in report.problems}
    for subject in {c.subject for c in mapping} - set(sources):       # its one named volume pairs with a series
        for entry in subject_entries(Path(report.folders[subject]), report.bids):
            modality = modality_from_name(entry)[0]
            if modality and str(entry) not in left_out and (entry.is_dir() or file_kind(entry)):
                sources.setdefault(subject, {}).setdefault(modality, [str(entry)])

    def add(subject: str, modality: str, source) -> None:
        found = sources.setdefault(subject, {}).setdefault(modality, [])
        if source not in found:
            found.append(source)

    for m in register:
        reference_modality = modality_from_name(Path(m.reference))[0]
        assert reference_modality is not None, "a subject's reference volume is named by its modality (validation)"
        add(m.subject, reference_modality, m.reference)
        add(m.subject, m.modality, m.path)
    for choice, modality in mapping.items():
        if modality:
            add(choice.subject, modalities.canonical(modality), choice.entry)
    taken = {name.lower() for name in sources}            # folder names: one on a case-insensitive disk
    plan = Plan()
    for subject, held in sorted(sources.items()):
        owner, strays = _owner(held)                      # by PatientID: names are spelt many ways
        if owner is None:
            plan.left_out[subject] = strays[0]
            continue
        for modality, stray in strays:                    # another patient's series filed here: that one out
            held[modality] = [s for s in held[modality] if s is not stray]
            plan.dropped[stray.key] = (f"{subject}: its {modality} {_named(stray)} is patient {stray.patient_id!r}'s "
                                       f"series, not {owner!r}'s: left out")
        held = {m: found for m, found in held.items() if found}
        several = [m for m in modalities.MODALITIES if len(held.get(m, ())) > 1]
        if not several:
            plan.units.append(Unit(subject, subject, {m: found[0] for m, found in held.items()}))
            continue
        listed = {m: ", ".join(_named(s) for s in held[m]) for m in several}
        if len(several) > 1:
            plan.left_out[subject] = (f"several volumes of {' and of '.join(several)} "
                                      f"({'; '.join(f'{m}: {v}' for m, v in listed.items())}): one modality may have "
                                      "several (one subject each, sharing the others), not two")
            continue
        repeated = several[0]
        if repeated == next(m for m in modalities.MODALITIES if m in held):
            others = [m for m in held if m != repeated]
            plan.left_out[subject] = (
                f"{listed[repeated]} would all be its {repeated}, " + (
                    "the volume the others are paired with: map one volume to each modality (only a modality "
                    f"paired with {repeated} — daily CBCTs beside a planning CT — may repeat, one subject each)"
                    if others else f"with no other modality to pair them with (no {_partner(repeated)}?)"))
            continue
        shared = {m: found[0] for m, found in held.items() if m != repeated}
        dated = sorted(enumerate(held[repeated]), key=lambda item: (_acquired(item[1]) or "~", item[0]))
        names = [f"{subject}_{repeated}_{k}" for k in range(1, len(dated) + 1)]
        clash = next((name for name in names if name.lower() in taken), None)
        if clash:
            plan.left_out[subject] = (f"its {repeated} volumes would make subject {clash!r}, which the dataset has "
                                      "already: rename that folder")
            continue
        plan.units += [Unit(name, subject, {**shared, repeated: source}) for name, (_, source) in zip(names, dated)]
    return plan


@dataclass(frozen=True)
class Placement:
    """How preparing will place a series acquired in another frame of reference than its subject's
    ``reference`` modality: by the ``stored`` registration, else (``why`` none does) from its
    intensities when ``search``, else left out."""

    reference: str
    stored: StoredRegistration | None
    why: str = ""
    search: bool = True

    def short(self) -> str:
        """A few words: ``by REG0001.dcm``, ``from its intensities`` or ``left out``."""
        if self.stored is not None:
            return f"by {Path(self.stored.path).name}"
        return "from its intensities" if self.search else "left out"

    def describe(self) -> str:
        return f"in another frame of reference than its {self.reference}: " + (
            f"placed by the stored registration {self.stored.describe()}" if self.stored is not None
            else _fallback(self.why, self.search))


def placements(plan: Plan, registrations: Iterable[StoredRegistration], search: bool = True,
               set_aside: bool = False) -> dict[tuple[str, str], Placement]:
    """How preparing will place each mapped DICOM series whose frame of reference its scanner stated
    differently from its subject's reference series' — (subject, modality) → its placement — from
    the headers alone (nothing is read): by a stored registration relating the frames (unless the
    user ``set_aside`` the dataset's), else from its intensities (``search``), else left out."""
    registrations = [] if set_aside else list(registrations)
    found = {}
    for unit in plan.units:
        order = [m for m in modalities.MODALITIES if m in unit.held]
        reference = unit.held[order[0]]
        for modality in order[1:]:
            source = unit.held[modality]
            if not (isinstance(reference, SeriesEntry) and isinstance(source, SeriesEntry) and reference.frame
                    and source.frame and reference.frame != source.frame):
                continue
            try:
                stored = frame_matrix(registrations, source.frame, reference.frame)
            except ConflictingRegistrations as exc:
                stored, why = None, f"{exc}; "
            else:
                why = SET_ASIDE if set_aside else UNRELATED
            found[(unit.name, modality)] = Placement(order[0], stored[1] if stored else None, why, search)
    return found


def _fallback(why: str, search: bool) -> str:
    """What becomes of a volume no stored registration places, after ``why`` ("…; ")."""
    return why + ("registered from its intensities" if search else
                  "left out (registering from intensities was not asked for)")


def _acquired(source) -> str:
    return source.acquired if isinstance(source, SeriesEntry) else ""


def _key(source) -> str:
    return source.key if isinstance(source, SeriesEntry) else str(source)


def _named(source) -> str:
    if isinstance(source, SeriesEntry):
        return source.description or (Path(source.paths[0]).parent.name if source.paths else source.key)
    return str(source)


def _dicom(source) -> bool:
    """Whether a source is a DICOM series (a mapped one, or a subject's modality folder)."""
    return source.kind == "dicom" if isinstance(source, SeriesEntry) else Path(source).is_dir()


def _another_patient(reference: Volume, volume: Volume) -> str:
    """What says ``volume`` is another patient's scan than ``reference`` ("" when nothing does): their
    DICOM PatientIDs differ (placeholders and de-identified scans say nothing)."""
    theirs = other_patient(reference, volume)
    return f"patient {theirs!r}'s scan, not {patient_of(reference)!r}'s" if theirs else ""


def _register(reference: Volume, volume: Volume, stored: list[StoredRegistration], seed: int,
              cancel: CancelToken | None, search: bool) -> tuple[RigidRegistration | None, str]:
    """``volume`` onto ``reference``: by a spatial registration stored beside them that relates their
    frames of reference (the clinic's own placement), else — with ``search`` — found from their
    intensities; None when neither. With it, why no stored one placed it when two disagreed ("…; ")."""
    try:
        found, why = stored_matrix(volume, reference, stored), ""
    except ConflictingRegistrations as exc:           # the clinic's placement is not known: found, or out
        found, why = None, f"{exc}; "
    if found is not None:
        matrix, by = found
        return stored_registration(reference, volume, matrix, by), why
    return (register_rigid(reference, volume, seed=seed, cancel=cancel) if search else None), why


def _record(source) -> dict:
    """What ``dataset.json`` records of where a prepared volume came from."""
    entry = {"from": source.paths[0] if isinstance(source, SeriesEntry) and source.paths else str(source)}
    if isinstance(source, SeriesEntry):
        entry["series"] = source.key
        entry.update({key: value for key, value in (("description", source.description),
                                                    ("acquired", source.acquired)) if value})
    return entry


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


def _prepared_json(report: ValidationReport, meta: dict, record: dict[str, dict[str, dict]],
                   origin: Mapping[str, str]) -> dict:
    """The prepared dataset's ``dataset.json``: the original's name, anatomy and split, each subject's
    source and participant (a subject made per repeated volume inherits its origin's, and its origin is
    its participant: the scans of one patient land in one part), and where every volume came from."""
    def per_origin(names: Iterable[str]) -> list[str]:
        return [name for o in names for name in record if origin[name] == o]

    written: dict = {"name": meta.get("name") or report.name}
    anatomy = meta.get("anatomy")
    if isinstance(anatomy, Mapping):
        written["anatomy"] = {**{k: v for k, v in anatomy.items() if k == "*"},
                              **{name: anatomy[origin[name]] for name in record if origin[name] in anatomy}}
    elif anatomy is not None:
        written["anatomy"] = anatomy
    if isinstance(meta.get("split"), Mapping):
        written["split"] = {part: per_origin(names) if isinstance(names, list) else names
                            for part, names in meta["split"].items()}
    kept = {name: {k: v for k, v in (("source", subject_entry(meta, origin[name], "source")),
                                     ("participant", report.participants.get(origin[name], "")
                                      or (origin[name] if origin[name] != name else ""))) if v}
            for name in record}
    if any(kept.values()):      # sources (leave-one-source-out) and sessions' participants (the split)
        written["subjects"] = {name: entry for name, entry in kept.items() if entry}
    written[PREPARED_KEY] = {"from": str(report.root), "volumes": record}
    return written


def prepare_dataset(report: ValidationReport, out: str | Path, *, mapping: Mapping[SeriesChoice, str] | None = None,
                    register: Iterable[Misaligned] = (), search: bool = True, seed: int = 0,
                    registrations: tuple[list[StoredRegistration], list[str]] | None = None, set_aside: bool = False,
                    progress: ProgressFn = noop, cancel: CancelToken | None = None) -> PreparedDataset:
    """Write the paired dataset made of ``report``'s usable volumes, the series ``mapping`` names
    (choice → modality; "" leaves one out; several of one modality in a subject make one subject each,
    :func:`plan_subjects`) and the ``register``ed volumes (rigid, onto the subject's first modality in
    registry order, resampled onto its grid) into ``out``, atomically: a failed or cancelled run leaves
    ``out`` as it was. A DICOM series acquired in another frame of reference than its subject's
    reference is placed by a spatial registration (DICOM REG) anywhere in the dataset folder relating
    the two frames (two that disagree: neither), else — with ``search`` — registered from its
    intensities, else left out (``register``ed volumes alike: without ``search`` only a stored
    registration moves them); another patient's series (PatientID) is left out. Other volumes
    are linked or copied unchanged (DICOM folders converted to NIfTI); a volume shared by several
    subjects is read, registered and written once. ``registrations``: what
    :func:`engine.io.find_registrations` found in the dataset folder, when the caller looked already
    (else looked for once, when a volume needs one); ``set_aside``: none is used (the user found one
    wrong), every such volume registered from its intensities. ``out`` may be an earlier result of this
    function (replaced)."""
    from engine.atomic import atomic_folder
    from engine.io import save

    root, out = Path(report.root), Path(out)
    _check_out(root, out)
    register = list(register)
    moved = {(m.subject, m.modality, m.path): m for m in register}
    plan = plan_subjects(report, mapping or {}, register)
    units = plan.units
    result = PreparedDataset(out)
    result.notes += plan.notes
    try:
        meta = json.loads((root / DATASET_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    record: dict[str, dict[str, dict]] = {}
    done: dict[tuple[str, str, str], tuple[Path | None, dict]] = {}   # (origin, modality, source) → file, record
    loaded: dict[str, Volume] = {}                       # the volumes a subject's later units share (a planning CT)
    stored: dict[str, list[StoredRegistration]] = {}    # the dataset's spatial registrations (DICOM REG), once
    with atomic_folder(out) as tmp:
        for i, unit in enumerate(units):
            check_cancel(cancel)
            subject, held = unit.name, unit.held
            progress(Progress(i, len(units), f"preparing {subject}"))
            if len(held) < 2:
                result.skipped.append(subject)
                continue

            def dataset_registrations() -> list[StoredRegistration]:
                """The dataset's REGs (frame UIDs are unique: one in another folder relates the same
                frames), looked for once and only when a volume needs one; why any was not used, said."""
                if "found" not in stored:
                    stored["found"], problems = ([], []) if set_aside else registrations or find_registrations(root, cancel)
                    result.notes.extend(problems)
                return stored["found"]

            def load(source) -> Volume:
                key = _key(source)
                if key not in loaded:
                    loaded[key] = _load(source)
                return loaded[key]

            order = [m for m in modalities.MODALITIES if m in held]
            (tmp / subject).mkdir()
            first = held[order[0]]
            for modality in order:
                source = held[modality]
                earlier = done.get((unit.origin, modality, _key(source)))
                if earlier is not None:                  # shared with an earlier subject of this patient
                    copied, entry = earlier
                    record.setdefault(subject, {})[modality] = dict(entry)
                    if copied is not None:
                        _copy(copied, tmp / subject / copied.name)
                    continue
                entry = record.setdefault(subject, {})[modality] = _record(source)
                todo = moved.get((unit.origin, modality, source)) if isinstance(source, str) else None
                scanned = modality != order[0] and _dicom(first) and _dicom(source)
                stranger = scanned and _another_patient(load(first), load(source))
                if stranger:                             # another patient's scan filed in this one's folder
                    result.notes.append(f"{subject}: its {modality} ({_named(source)}) is {stranger}: left out")
                    entry["left_out"] = True
                    done[(unit.origin, modality, _key(source))] = (None, entry)
                    continue
                other_frame = scanned and frames_differ(load(first), load(source))
                target = tmp / subject / f"{modality}.nii.gz"
                file: Path | None = target
                if todo is not None or other_frame:
                    reference, volume = load(first), load(source)
                    named = f"{subject}: its {modality} ({_named(source)})"
                    registration, why = _register(reference, volume, dataset_registrations(), seed, cancel, search)
                    unrelated = (f"lies in another frame of reference than its {order[0]} and "
                                 f"{SET_ASIDE if set_aside else UNRELATED}"
                                 if other_frame or (todo is not None and todo.kind == "other_frame")
                                 else f"does not line up with its {order[0]} as its header places it; ")
                    if registration is None:
                        result.notes.append(f"{named}: {_fallback(why or unrelated, search=False)}")
                        entry["left_out"] = True
                        done[(unit.origin, modality, _key(source))] = (None, entry)
                        continue
                    if not registration.stored and (why or (other_frame and todo is None)):
                        result.notes.append(f"{named}: {_fallback(why or unrelated, search=True)}")
                    unmoved = resample_rigid(volume, reference)
                    # a registration that aligns worse than the headers do is not applied (it is shown, saying so);
                    # a volume that is no pair as its header places it is then left out, not trained on
                    left_out = not registration.improved and (todo is None or todo.needs_it)
                    after = resample_rigid(volume, reference, registration) if registration.improved else unmoved
                    result.registered.append(RegisteredVolume(subject, modality, order[0], registration,
                                                              overlay(reference, unmoved), overlay(reference, after),
                                                              left_out))
                    entry["registered_onto" if registration.improved else "registration_not_applied"] = order[0]
                    entry["registration"] = registration.to_dict()
                    if left_out:
                        entry["left_out"] = True
                        file = None
                    else:
                        save(after.replace(modality=modality), target,
                             description=f"{modality} registered" if registration.improved else modality)
                elif isinstance(source, str) and source.lower().endswith(SELF_CONTAINED):
                    suffix = next(s for s in SELF_CONTAINED if source.lower().endswith(s))
                    file = tmp / subject / f"{modality}{suffix}"
                    _copy(Path(source), file)
                else:
                    save(load(source).replace(modality=modality), target, description=modality)
                done[(unit.origin, modality, _key(source))] = (file, entry)
            later = {_key(s) for u in units[i + 1:] if u.origin == unit.origin for s in u.held.values()}
            for key in [k for k in loaded if k not in later]:    # a daily CBCT: read for its own subject only
                del loaded[key]
        for subject in [name for name, volumes in record.items()          # a volume left out left one alone
                        if sum(not v.get("left_out") for v in volumes.values()) < 2]:
            shutil.rmtree(tmp / subject)
            del record[subject]
            result.skipped.append(subject)
        if not record:
            reasons = "".join(f"; {subject}: {reason}" for subject, reason in plan.left_out.items())
            raise DatasetError(f"{root}: nothing to prepare: no subject would have two volumes{reasons}")
        origin = {u.name: u.origin for u in units}
        result.split_subjects = {u.name: u.origin for u in units if u.split and u.name in record}
        (tmp / DATASET_JSON).write_text(json.dumps(_prepared_json(report, meta, record, origin), indent=2),
                                        encoding="utf-8")
        progress(Progress(len(units), len(units), "dataset prepared"))
    return result
