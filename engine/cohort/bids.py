"""BIDS in and out: the items of a BIDS dataset (``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``, the
modality from the suffix: :mod:`engine.io.bids`) and the names of a BIDS derivatives dataset of synthetic images
(``sub-X[_ses-Y]_desc-synthetic_<suffix>.nii.gz``, its ``dataset_description.json``)."""
from __future__ import annotations

import json
from pathlib import Path

from engine.cohort.items import CohortItem, Routes, input_files, wanted_source
from engine.io.bids import DATATYPES, SUFFIX_MODALITY, modality_of, sessions, split_name
from engine.version import version

BIDS_VERSION = "1.10.0"
MODALITY_SUFFIX = {m: s for s, m in SUFFIX_MODALITY.items()} | {"T1CE": "T1w"}
CONTRAST_ENTITY = "ce-gadolinium"        # the T1w entity of a contrast-enhanced T1 (T1CE)
DESC = "desc-synthetic"
# the order BIDS gives entities in a file name (the specification's entity table); ``desc`` is last
ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir",
                "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording",
                "chunk", "seg", "res", "den", "label", "desc")


def _entity_rank(entity: str) -> int:
    """Where ``key-value`` goes in a BIDS name (an entity BIDS does not list: just before ``desc``)."""
    key = entity.split("-", 1)[0]
    return ENTITY_ORDER.index(key) if key in ENTITY_ORDER else len(ENTITY_ORDER) - 1


def derivative_name(source_name: str, target: str) -> tuple[str, str]:
    """(datatype folder, file name) of the synthetic ``target`` made from the BIDS image
    ``source_name``: its entities (less ``ce-`` and ``desc-``; ``ce-gadolinium`` for a T1CE) with
    ``desc-synthetic`` and the target's suffix, in the BIDS entity order, e.g.
    ``sub-01_ses-1_acq-mprage_run-2_T1w.nii.gz`` → T1CE: ("anat",
    ``sub-01_ses-1_acq-mprage_ce-gadolinium_run-2_desc-synthetic_T1w.nii.gz``)."""
    entities, _suffix, _ext = split_name(source_name)
    kept = [e for e in entities if not e.startswith(("ce-", "desc-"))]
    if target == "T1CE":
        kept.append(CONTRAST_ENTITY)
    ordered = sorted([*kept, DESC], key=_entity_rank)       # stable: unlisted entities keep their order
    return ("pet" if target == "PET" else "anat"), "_".join([*ordered, MODALITY_SUFFIX[target]]) + ".nii.gz"


def bids_items(root: Path, target: str, source: str | None, routes: Routes | None) -> list[CohortItem]:
    """The items of a BIDS dataset: in each subject (and session) the images of one source modality
    — ``source`` when named, else the first the model has a route from to ``target`` (in the order of
    its routes) — each giving one derivative. A session without such an image is an item that is not
    applicable, saying why (BIDS sessions need not hold every modality)."""
    order = [s for s, t in routes or () if t == target]
    items = []
    for session in sessions(root):
        images = sorted(f for d in DATATYPES if (session / d).is_dir() for f in (session / d).iterdir()
                        if f.is_file() and modality_of(f.name))
        present = {modality_of(f.name) for f in images}
        candidates = [m for m in present if wanted_source(m, target, source, routes)]
        chosen = source if source and source != "auto" else min(
            candidates, key=lambda m: order.index(m) if m in order else len(order), default=None)
        relative = session.relative_to(root).as_posix()
        picked = [f for f in images if modality_of(f.name) == chosen and chosen in candidates]
        if not picked:
            wanted = f"{chosen} image" if chosen else f"image of a modality the model turns into {target}"
            items.append(CohortItem(key=relative, path=str(session), target=target, output="", source=source,
                                    not_applicable=f"{session}: no {wanted} in {'/'.join(DATATYPES)}"))
            continue
        for f in picked:
            datatype, name = derivative_name(f.name, target)
            items.append(CohortItem(key=f.relative_to(root).as_posix(), path=str(f), target=target,
                                    output=f"{relative}/{datatype}/{name}",
                                    source=chosen if source != "auto" else "auto", files=tuple(input_files(f))))
    return items


def dataset_description(target: str, model: str) -> dict:
    """The derivatives dataset's ``dataset_description.json``."""
    return {
        "Name": f"SynerMedGen synthetic {target}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "SynerMedGen Studio",
            "Version": version(),
            "Description": f"cross-modality synthesis with the model {model}; synthetic images — research use "
                           "only, not for diagnosis",
        }],
    }


def write_dataset_description(out: Path, target: str, model: str) -> Path:
    """Write (atomically) ``out/dataset_description.json``."""
    from engine.atomic import atomic_file

    path = Path(out) / "dataset_description.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(dataset_description(target, model), indent=2) + "\n", encoding="utf-8")
    return path
