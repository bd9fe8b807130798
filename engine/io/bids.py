"""The layout of a BIDS raw dataset, as read by the cohort runner and by dataset validation: its
sessions (``sub-*`` or ``sub-*/ses-*`` folders holding ``anat`` or ``pet``), the parts of an image's
name (``key-value`` entities, suffix, extension) and the modality its suffix names."""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine import modalities

DATATYPES = ("anat", "pet")
# BIDS suffix → our modality; CT and CBCT are named as the CT proposal (BEP024) names them
SUFFIX_MODALITY = {"T1w": "T1", "T2w": "T2", "FLAIR": "FLAIR", "PDw": "PD", "ct": "CT", "cbct": "CBCT", "pet": "PET"}
IMAGE_SUFFIXES = (".nii.gz", ".nii")


def is_bids(path: Path) -> bool:
    """A folder with a ``dataset_description.json``, or ``sub-*[/ses-*]`` folders holding ``anat`` or ``pet``."""
    return path.is_dir() and ((path / "dataset_description.json").is_file() or bool(sessions(path)))


def dataset_name(root: Path) -> str:
    """The ``Name`` of the dataset's ``dataset_description.json``, or "" (none, unreadable)."""
    try:
        description = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(description.get("Name") or "").strip() if isinstance(description, dict) else ""


def sessions(root: Path) -> list[Path]:
    """Every ``sub-*`` and ``sub-*/ses-*`` folder holding a datatype folder, sorted."""
    found: list[Path] = []
    for subject in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        held = sorted(p for p in subject.iterdir() if p.is_dir() and p.name.startswith("ses-"))
        found.extend(s for s in [subject, *held] if any((s / d).is_dir() for d in DATATYPES))
    return found


def session_name(root: Path, session: Path) -> tuple[str, str]:
    """(the session's name, its participant): ``sub-01`` → ("sub-01", "sub-01"); ``sub-01/ses-2`` →
    ("sub-01_ses-2", "sub-01"), the name BIDS gives the session's files."""
    parts = session.relative_to(root).parts
    return "_".join(parts), parts[0]


def split_name(name: str) -> tuple[list[str], str, str]:
    """A BIDS file name → (its ``key-value`` entities, its suffix, its extension)."""
    for ext in IMAGE_SUFFIXES:
        if name.endswith(ext):
            stem = name[:-len(ext)]
            break
    else:
        stem, ext = os.path.splitext(name)
    *entities, suffix = stem.split("_")
    return entities, suffix, ext


def modality_of(name: str) -> str | None:
    """The modality a BIDS image name gives by its suffix (a T1w with a ``ce-`` entity: T1CE); None
    for other suffixes."""
    entities, suffix, ext = split_name(name)
    if ext not in IMAGE_SUFFIXES:
        return None
    modality = SUFFIX_MODALITY.get(suffix)
    if modality == "T1" and any(e.startswith("ce-") for e in entities):
        return "T1CE"
    return modality


def name_modality(name: str) -> str | None:
    """The modality a file's name gives: a BIDS name's (``sub-…_T1w.nii.gz``: its suffix and ``ce-``
    entity only, so ``ses-post`` says nothing), else the name's guess (:func:`engine.modalities.guess_from_filename`)."""
    if name.startswith("sub-") and split_name(name)[1] in SUFFIX_MODALITY:
        return modality_of(name)
    return modalities.guess_from_filename(name)
