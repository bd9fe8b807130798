"""Spatial registrations stored beside images (DICOM Spatial Registration objects, Modality REG): how
a planning system or a linac's imaging software placed one frame of reference in another — a daily
CBCT's frame in its planning CT's — so that a volume acquired in one frame can be placed in the other
exactly as the clinic approved it, not guessed from intensities.

Each item of a REG's RegistrationSequence names a frame of reference and the matrices (4×4, row-major,
applied in the order of the MatrixSequence) that take its coordinates into the REG's own frame; only
rigid transforms (rotation and translation; ``RIGID`` and a ``RIGID_SCALE`` / ``AFFINE`` matrix that
is one) are used."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.io.identity import scanner_frame
from engine.io.volume import Volume
from engine.jobs import CancelToken, check_cancel

SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.1"     # Spatial Registration Storage (SOP Class UID)
DEFORMABLE_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.3"   # Deformable Spatial Registration Storage
RIGID_TOLERANCE = 1e-3           # |RᵀR − I| and |det R − 1| of a matrix taken for a rotation
AGREEMENT_MM, AGREEMENT_DEGREES = 1.0, 0.5   # two REGs of one pair of frames closer than this agree
NO_REGISTRATION = "no spatial registration (DICOM REG) relating the two frames of reference was found"
COMMON_LEVELS = 2               # how far above a scan's folder registrations are looked for
_NOT_DICOM = (".nii", ".nii.gz", ".mha", ".mhd", ".raw", ".nrrd", ".nhdr", ".json", ".txt", ".csv", ".png", ".jpg")


@dataclass(frozen=True)
class StoredRegistration:
    """One REG object: ``frames`` maps each frame of reference it registers (its own included, as the
    identity) to the rigid 4×4 matrix taking that frame's LPS millimetres into the REG's frame."""

    path: str
    frame: str
    frames: Mapping[str, np.ndarray] = field(repr=False)
    description: str = ""
    uid: str = ""                        # its SOPInstanceUID

    def between(self, moving: str, fixed: str) -> np.ndarray | None:
        """The 4×4 matrix taking ``moving``-frame coordinates into ``fixed``-frame ones, or None when
        this REG does not register both."""
        if moving not in self.frames or fixed not in self.frames:
            return None
        return np.linalg.inv(self.frames[fixed]) @ self.frames[moving]

    def describe(self) -> str:
        return f"{Path(self.path).name}" + (f" ({self.description})" if self.description else "")


def _rigid(matrix: np.ndarray) -> bool:
    rotation = matrix[:3, :3]
    return (np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0), atol=RIGID_TOLERANCE)
            and np.allclose(rotation.T @ rotation, np.eye(3), atol=RIGID_TOLERANCE)
            and abs(np.linalg.det(rotation) - 1.0) < RIGID_TOLERANCE)


def registration_from(ds, path: str | Path) -> tuple[StoredRegistration | None, str]:
    """The spatial registration in the DICOM header ``ds`` (read from ``path``) and "" — or None and why
    it is not one we use, without the path ("" for a header that is no registration at all). An item naming its frame
    without a matrix, a frame named twice, a matrix that is not rigid and a deformable registration are
    refused, each saying so: none may pass for "the same room coordinates"."""
    sop = str(ds.get("SOPClassUID", ""))
    if sop == DEFORMABLE_REGISTRATION:
        return None, "a deformable spatial registration; only rigid ones are applied, so not used"
    if sop != SPATIAL_REGISTRATION:
        return None, ""
    own = str(ds.get("FrameOfReferenceUID", "")).strip()
    if not own:
        return None, "a spatial registration that states no frame of reference of its own; not used"
    frames: dict[str, np.ndarray] = {own: np.eye(4)}
    named: set[str] = set()
    try:
        for item in ds.get("RegistrationSequence", []):
            frame = str(item.get("FrameOfReferenceUID", "")).strip()
            if not frame:                   # the images named one by one (ReferencedImageSequence): not followed
                continue
            steps = [step for registration in item.get("MatrixRegistrationSequence", [])
                     for step in registration.get("MatrixSequence", [])]
            if not steps:
                return None, f"frame {frame} is named without a matrix; not used"
            if frame in named:
                return None, f"frame {frame} is named twice; not used"
            named.add(frame)
            total = np.eye(4)
            for step in steps:
                values = [float(v) for v in step.get("FrameOfReferenceTransformationMatrix", [])]
                if len(values) != 16:
                    return None, f"a registration matrix holds {len(values)} values, not 16; not used"
                total = np.asarray(values).reshape(4, 4) @ total
            if not _rigid(total):
                return None, (f"the registration of frame {frame} is not rigid (scaled or sheared); "
                              "not used")
            frames[frame] = total
    except (TypeError, ValueError, AttributeError) as exc:
        return None, f"a damaged spatial registration ({exc}); not used"
    if len(frames) < 2:
        return None, ("a spatial registration relating no other frame of reference to its own (images "
                      "named one by one are not followed); not used")
    return StoredRegistration(str(path), own, frames, str(ds.get("SeriesDescription", "")).strip(),
                              str(ds.get("SOPInstanceUID", "")).strip()), ""


def read_registration(path: str | Path) -> tuple[StoredRegistration | None, str]:
    """:func:`registration_from` the file ``path`` (None and "" for a file that is no DICOM)."""
    import pydicom

    try:
        sop = str(pydicom.dcmread(str(path), specific_tags=["SOPClassUID"]).get("SOPClassUID", ""))
        if sop not in (SPATIAL_REGISTRATION, DEFORMABLE_REGISTRATION):
            return None, ""                # most of a folder's files: read no further than their class
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:                   # noqa: BLE001 — not DICOM, damaged: no registration here
        return None, ""
    return registration_from(ds, path)


def find_registrations(folder: str | Path, cancel: CancelToken | None = None, *, recursive: bool = True
                       ) -> tuple[list[StoredRegistration], list[str]]:
    """Every spatial registration in the files of ``folder`` (and below it, when ``recursive``), and why
    any REG found was not used."""
    found, problems = [], []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            check_cancel(cancel)
            if name.startswith(".") or name.lower().endswith(_NOT_DICOM) or not os.path.isfile(
                    os.path.join(directory, name)):             # a pipe or a device would block the read
                continue
            registration, problem = read_registration(Path(directory) / name)
            if registration is not None:
                found.append(registration)
            elif problem:
                problems.append(f"{Path(directory) / name}: {problem}")
    return found, problems


def registrations_beside(paths: Iterable[str | Path], cancel: CancelToken | None = None
                         ) -> tuple[list[StoredRegistration], list[str]]:
    """The spatial registrations stored with the scans at ``paths``: in each folder given and below it,
    beside each file given (its folder only), and in the folder holding them all when it lies above
    them, at most :data:`COMMON_LEVELS` above each (a patient folder holding CT/, CBCT/ and REG/) — never
    a file system's root, the home folder or one above it."""
    given = [Path(p).resolve() for p in paths]
    places = [(p, True) if p.is_dir() else (p.parent, False) for p in given]
    try:
        common = Path(os.path.commonpath([folder for folder, _ in places]))
    except ValueError:                  # other drives
        common = None
    if (common is not None and all(common != folder and len(folder.relative_to(common).parts) <= COMMON_LEVELS
                                   for folder, _ in places)
            and common != Path(common.anchor) and not Path.home().resolve().is_relative_to(common)):
        places.append((common, True))
    found: list[StoredRegistration] = []
    problems: list[str] = []
    walked: list[Path] = []
    for folder, deep in sorted(places, key=lambda place: (len(place[0].parts), not place[1])):
        if any(folder.is_relative_to(done) for done in walked) or not folder.is_dir():
            continue
        if deep:
            walked.append(folder)
        more, why = find_registrations(folder, cancel, recursive=deep)
        found += [r for r in more if r.path not in {f.path for f in found}]
        problems += [p for p in why if p not in problems]
    return found, problems


class ConflictingRegistrations(ValueError):
    """Two stored registrations relate the same frames differently: neither can be trusted."""


def _agree(a: np.ndarray, b: np.ndarray, at: np.ndarray) -> bool:
    """Whether two rigid matrices place alike: within AGREEMENT_DEGREES of rotation and AGREEMENT_MM of
    displacement at the points ``at`` (n, 3) — where the scan lies, not the frame's origin, which may be
    hundreds of millimetres from the patient."""
    turn = np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    moved = [(at @ m[:3, :3].T + m[:3, 3]) for m in (a, b)]
    return (np.degrees(np.arccos(turn)) <= AGREEMENT_DEGREES
            and float(np.max(np.linalg.norm(moved[0] - moved[1], axis=1))) <= AGREEMENT_MM)


def frame_matrix(registrations: Iterable[StoredRegistration], moving: str, fixed: str, at: np.ndarray | None = None
                 ) -> tuple[np.ndarray, StoredRegistration] | None:
    """The matrix taking ``moving``-frame coordinates into ``fixed``-frame ones, with the REG it comes
    from (the first by path of those that agree, compared at the points ``at`` of the moving frame: a
    scan's corners; its origin when None); None when none registers both frames.
    :class:`ConflictingRegistrations` naming them when two relate the frames differently."""
    points = np.zeros((1, 3)) if at is None else np.asarray(at, float).reshape(-1, 3)
    found = [(matrix, r) for r in registrations if (matrix := r.between(moving, fixed)) is not None]
    for matrix, other in found[1:]:
        if not _agree(found[0][0], matrix, points):
            raise ConflictingRegistrations(
                f"the spatial registrations {found[0][1].path} and {other.path} place frame {moving} differently "
                f"in frame {fixed} (by more than {AGREEMENT_MM:g} mm where the scan lies, or {AGREEMENT_DEGREES:g}°): "
                "neither is used")
    return found[0] if found else None


def stored_matrix(volume: Volume, other: Volume, registrations: Iterable[StoredRegistration]
                  ) -> tuple[np.ndarray, StoredRegistration] | None:
    """The matrix taking ``volume``'s frame of reference into ``other``'s, from the first of
    ``registrations`` (in path order) that relates the two frames their scanners stated directly (a
    chain of registrations is not followed), with that registration; None when they share a frame, a
    frame is not known, or none relates them; :class:`ConflictingRegistrations` when two disagree."""
    if not frames_differ(volume, other):
        return None
    return frame_matrix(registrations, scanner_frame(volume), scanner_frame(other), _corners(volume))


def _corners(volume: Volume) -> np.ndarray:
    """The 8 corners of ``volume``'s grid in its frame's millimetres (LPS)."""
    indices = np.array([(*index, 1.0) for index in itertools.product(*[(0, n - 1) for n in reversed(volume.shape)])])
    return (indices @ volume.index_to_lps().T)[:, :3]


def frames_differ(volume: Volume, other: Volume) -> bool:
    """Whether two scans' scanners placed them in different frames of reference (their coordinates name
    other places in the room): only frames a scanner stated count."""
    mine, theirs = scanner_frame(volume), scanner_frame(other)
    return bool(mine and theirs and mine != theirs)


def placed(volume: Volume, matrix: np.ndarray, frame: str, by: str) -> Volume:
    """``volume`` with its header geometry moved by ``matrix`` (rigid, 4×4, its frame → ``frame``): the
    same voxels, now in ``frame``'s coordinates, with a note saying by what."""
    rotation, shift = matrix[:3, :3], matrix[:3, 3]
    direction = rotation @ volume.direction_matrix
    origin = rotation @ np.asarray(volume.origin, dtype=float) + shift
    return volume.replace(origin=tuple(float(v) for v in origin), direction=tuple(float(v) for v in direction.ravel()),
                          dicom={**volume.dicom, "FrameOfReferenceUID": frame}, other_world=None,   # another world now
                          notes=(*volume.notes, f"placed in the frame of reference of the scan it is compared with by "
                                                f"the spatial registration {by}"))


def in_frame_of(volume: Volume, other: Volume, registrations: Iterable[StoredRegistration]) -> tuple[Volume, str]:
    """``volume`` placed in ``other``'s frame of reference by the first of ``registrations`` relating the
    two frames their scanners stated, with a note saying so; unchanged and "" when they share a frame,
    a frame is not known, or no registration relates them (the identity check then warns); unchanged,
    with the note naming them, when two registrations disagree."""
    try:
        found = stored_matrix(volume, other, registrations)
    except ConflictingRegistrations as exc:
        return volume, str(exc)
    if found is None:
        return volume, ""
    matrix, by = found
    return placed(volume, matrix, scanner_frame(other), by.describe()), (
        f"{volume.name or 'the reference'} was acquired in another frame of reference: placed in the other scan's "
        f"by the spatial registration {by.describe()}")
