"""Whose scan is it: what two volumes' identities say about scoring one against the other —
the DICOM patient and frame of reference, the world their coordinates are in (a NIfTI file's
scanner or standard space), one grid, one subject by file name (BIDS entities, or the paired
layout's folder of files named by their modality)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydicom.uid import generate_uid

from engine import modalities
from engine.io import bids
from engine.io.volume import Volume

# a Volume's ``dicom`` key (our private block's element 0x05 on disk): YES when its Frame of Reference UID
# was drawn by this app from the voxels of a scan that had none, so it names no scanner's frame
DERIVED_FRAME = "StudioDerivedFrame"
# a Volume's ``dicom`` key (our private block's element 0x06 on disk): YES when its Study (and Frame of Reference)
# UID was drawn by this app from the voxels of a scan that had none (``engine.io.dicom_write.derived_identity``),
# PATIENT once drawn again with the patient named for it (:func:`patient_keyed`)
DERIVED_STUDY = "StudioDerivedStudy"
STANDARD_SPACES = frozenset({"Talairach", "MNI", "template"})
# IDs that name no one: what anonymisers and test exports put where the patient's ID was
PLACEHOLDER_IDS = frozenset({"", "0", "-", "NA", "N/A", "NONE", "NULL", "UNKNOWN", "ANON", "ANONYMOUS", "ANONYMIZED",
                             "ANONYMISED", "REMOVED", "PATIENT", "TEST", "ID"})


def _de_identified(volume: Volume) -> bool:
    """Whether the scan says its identity was removed (PatientIdentityRemoved YES): its IDs and UIDs were
    replaced, so they neither match nor differ from another scan's in any way that tells."""
    return _removed(volume.dicom)


def _removed(tags: Mapping[str, str]) -> bool:
    return str(tags.get("PatientIdentityRemoved", "")).strip().upper() == "YES"


def stated_patient(tags: Mapping[str, str]) -> str:
    """The PatientID DICOM tags state, "" when it names no one (a placeholder) or was replaced by a
    de-identification."""
    found = str(tags.get("PatientID", "")).strip()
    return "" if _removed(tags) or found.upper() in PLACEHOLDER_IDS else found


def stated_frame(tags: Mapping[str, str]) -> str:
    """The Frame of Reference UID a scanner stated in DICOM tags, "" when none did: the one this app gives
    a NIfTI, MHA or NRRD scan's exports and synthetics (``io.dicom_write.derived_identity``, drawn from
    its voxels; ``DERIVED_FRAME`` in our private block) is no scanner's; a de-identified scan's was
    replaced."""
    if _removed(tags) or str(tags.get(DERIVED_FRAME, "")).upper() == "YES":
        return ""
    return str(tags.get("FrameOfReferenceUID", "")).strip()


def stated_name(tags: Mapping[str, str]) -> str:
    """The PatientName DICOM tags state, "" when it names no one (an anonymiser's ``ANONYMOUS``, ``^``)."""
    found = str(tags.get("PatientName", "")).strip()
    return "" if found.replace("^", "").strip().upper() in PLACEHOLDER_IDS else found


def patient_of(volume: Volume) -> str:
    """The PatientID, "" when it names no one (a placeholder) or was replaced by a de-identification."""
    return stated_patient(volume.dicom)


def other_patient(volume: Volume, other: Volume) -> str:
    """``other``'s PatientID when it names another patient than ``volume``'s ("" when it does not, or
    either names no one: a placeholder, a de-identified scan, a NIfTI)."""
    mine, theirs = patient_of(volume), patient_of(other)
    return theirs if mine and theirs and mine != theirs else ""


def scanner_frame(volume: Volume) -> str:
    """The Frame of Reference UID a scanner stated (:func:`stated_frame`; a NIfTI, MHA or NRRD scan has
    none)."""
    return stated_frame(volume.dicom)


def identity_warnings(acquired: Volume, reference: Volume) -> list[str]:
    """What the DICOM identities of ``acquired`` (the input synthesis started from, or the test volume
    itself: a synthetic carries its input's identity) and ``reference`` say against scoring one with
    the other: another patient, another frame of reference. Nothing when either is not known."""
    warnings = []
    theirs = other_patient(acquired, reference)
    if theirs:
        warnings.append(f"the reference is another patient's scan (PatientID {theirs!r}, the input's "
                        f"{patient_of(acquired)!r}): the scores compare two people")
    if different_worlds(acquired.space, reference.space):
        warnings.append(f"the reference's coordinates are in {reference.space} space, the input's in {acquired.space} "
                        "space: the scores compare anatomy at the same coordinates of two different worlds")
    mine, theirs = scanner_frame(acquired), scanner_frame(reference)
    if mine and theirs and mine != theirs:
        warnings.append("the reference was acquired in another frame of reference than the input "
                        "(FrameOfReferenceUID differs): unless it was registered to the input, the scores compare "
                        "anatomy that is not aligned")
    return warnings


def names_no_patient(volume: Volume) -> bool:
    """Whether ``volume`` names no patient (a NIfTI, MHA or NRRD scan; a placeholder ID and no name) and
    was not de-identified: one :func:`named_patient` may name."""
    return not (_de_identified(volume) or patient_of(volume) or stated_name(volume.dicom))


def named_patient(volume: Volume, patient_id: str = "", patient_name: str = "") -> Volume:
    """``volume`` naming the patient its DICOM exports (and the synthetics made from it) carry, given by
    the user for a scan that names none — a NIfTI, MHA or NRRD file holds no patient, and a planning
    system or PACS files a series by its PatientID. ValueError for a value DICOM cannot hold (LO / PN: up
    to 64 printable characters, no backslash), for a scan that names another patient (a header's identity
    is never overwritten; a placeholder ID or name names no one) and for a de-identified scan. A real
    study filed under no patient (a research archive's ``ANONYMOUS``) gets its Study UID drawn again with
    the patient named (:func:`patient_keyed`): the named exports are their patient's study, not a second
    patient in the archive's; its Frame of Reference is kept, so the archive's registrations and
    references in that frame still place it."""
    given = {"PatientID": patient_id.strip(), "PatientName": patient_name.strip()}
    given = {keyword: value for keyword, value in given.items() if value}
    if not given:
        return volume
    if _de_identified(volume):
        raise ValueError("the input's identity was removed (PatientIdentityRemoved YES): it is not named again")
    for keyword, value in given.items():
        if len(value) > 64 or "\\" in value or not value.isprintable():
            raise ValueError(f"{keyword} “{value}”: DICOM holds up to 64 printable characters, no backslash")
        if keyword == "PatientName" and ("=" in value or value.count("^") > 4):
            raise ValueError(f"PatientName “{value}”: write it Family^Given^Middle^Prefix^Suffix (at most four ^, "
                             "no =)")
        stated = patient_of(volume) if keyword == "PatientID" else stated_name(volume.dicom)
        if stated and stated != value:
            raise ValueError(f"the input names {keyword} {stated!r}: a patient is named only for a scan that "
                             "names none (--anonymise replaces an identity)")
    real_study = volume.dicom.get(DERIVED_STUDY) not in ("YES", "PATIENT") and names_no_patient(volume)
    return volume.replace(dicom=patient_keyed({**volume.dicom, **given}, real_study=real_study))


def patient_keyed(identity: dict[str, str], *, real_study: bool = False) -> dict[str, str]:
    """``identity`` with the Study and Frame of Reference UIDs this app drew from a scan's voxels
    (:data:`DERIVED_STUDY`, kept in our private block through exports) — or, with ``real_study``, the
    Study UID alone of a real study filed under no patient, named now — drawn again with the patient it
    names (its ID and name, unless placeholders): one scan exported under two patients (a typo
    corrected) is two studies, never one study of two patients, and a scan and the synthetics made from
    it, named alike, stay one study. Any other identity is returned as it is."""
    patient, name = stated_patient({"PatientID": identity.get("PatientID", "")}), stated_name(identity)
    drawn = identity.get(DERIVED_STUDY) == "YES"
    if not (drawn or real_study) or not (patient or name):
        return identity
    keyed = dict(identity)
    for uid in ("StudyInstanceUID", "FrameOfReferenceUID") if drawn else ("StudyInstanceUID",):
        if keyed.get(uid):
            keyed[uid] = generate_uid(entropy_srcs=[keyed[uid], "patient", patient, "name", name])
    keyed[DERIVED_STUDY] = "PATIENT"          # keyed once: a second naming keeps these UIDs
    return keyed


def different_worlds(a: str, b: str) -> bool:
    """Whether coordinates in spaces ``a`` and ``b`` (:data:`engine.io.volume.SPACES`) are in different
    worlds: one a standard space (Talairach, MNI, a template) and the other not that one. A scanner's and
    an "aligned" world (another image's coordinates: FLIRT's output registered to a scan) may be one, so
    they are not told apart."""
    return a != b and bool({a, b} & STANDARD_SPACES)


def _subject_of_file(path: str) -> tuple[str, ...] | None:
    """The subject a file's name and place give: a BIDS image's ``sub-`` and ``ses-`` entities within
    its dataset (the folder above its ``sub-`` folder, or above ``derivatives/``, whose labels are the raw
    data's; every dataset has a ``sub-01``), or the folder of
    a file named by its modality (the paired layout: one subject per folder)."""
    if not path:
        return None
    file = Path(path)
    entities, stem, _ext = bids.split_name(file.name)
    keys = tuple(e for e in entities if e.startswith(("sub-", "ses-")))
    subject = next((k for k in keys if k.startswith("sub-")), "")
    if subject:                 # labels are unique within one dataset only: its root is part of the subject
        where = Path(os.path.abspath(path)).parent          # not the file's link: datalad's point into .git/annex
        root = next((p.parent for p in (where, *where.parents) if p.name == subject), where)
        if root.parent.name == "derivatives" or root.parent.parent.name == "derivatives":
            root = next(p.parent for p in root.parents if p.name == "derivatives")   # a derivative: its raw data's
        return ("bids", str(root.resolve()), *keys)
    return ("folder", str(file.parent.resolve())) if not entities and _is_modality(stem) else None


def _is_modality(name: str) -> bool:
    try:
        modalities.canonical(name)
    except ValueError:
        return False
    return True


def kinship(acquired: Volume, candidate: Volume) -> int:
    """How surely ``candidate`` is a scan of the subject ``acquired`` is of, for picking a reference
    unasked (2 and above): 3 one Frame of Reference, 2 one patient (PatientID) or one subject by file
    name (BIDS ``sub-``/``ses-``, or one paired-layout folder), 1 only one grid (atlas-space datasets,
    BraTS, MNI-registered sets, put every subject on one grid), 0 not known to be — or known not to
    be: another PatientID, or coordinates in another world (MNI space beside a scanner's), outweighs
    everything else."""
    if other_patient(acquired, candidate) or different_worlds(acquired.space, candidate.space):
        return 0
    mine, theirs = patient_of(acquired), patient_of(candidate)
    if scanner_frame(acquired) and scanner_frame(acquired) == scanner_frame(candidate):
        return 3
    subject = _subject_of_file(acquired.source)
    if (mine and mine == theirs) or (subject is not None and subject == _subject_of_file(candidate.source)):
        return 2
    return 1 if acquired.same_grid(candidate) else 0
