"""How a synthetic volume says so inside every file it is written to, and how a reader finds it
again whatever the file is named: one text ("synthetic CT from CBCT — research use only") in the
format's description (NIfTI ``descrip``, MetaImage / NRRD fields, DICOM SeriesDescription) plus
explicit fields where the format has room (MetaImage / NRRD keys, our DICOM private block)."""
from __future__ import annotations

import re
from collections.abc import Mapping

from engine import modalities
from engine.io.volume import Volume

RESEARCH_ONLY = "research use only"
DESCRIPTION_KEY = "ITK_FileNotes"              # SimpleITK writes it as NIfTI descrip / a MetaImage, NRRD field
SYNTHETIC_KEY = "SynerMedGen_synthetic"        # MetaImage / NRRD fields ("true")
DERIVED_FROM_KEY = "SynerMedGen_derived_from"
NIFTI_DESCRIP_BYTES = 79                       # descrip holds 80 bytes, the last one a NUL
DICOM_SYNTHETIC = "SYNTHETIC"                  # the value of our private element (0011,xx03)
# Our mark and nothing else: a description that opens with "synthetic <modality>" (after at most one
# parenthesised flag such as "(OOD input)") and says research use only. A third party's "Synthetic MR
# phantom" or "synthetic aperture" is not read as ours.
_FLAG = r"^\s*(?:\([^()]*\)\s*)?"
_MARK = re.compile(_FLAG + r"synthetic\s+\S+(?:\s+from\s+\S+)?\b.*\b" + re.escape(RESEARCH_ONLY),
                   re.IGNORECASE | re.DOTALL)
_ROUTE = re.compile(_FLAG + r"synthetic\s+\S+\s+from\s+([^\s,;()]+)", re.IGNORECASE)
_MADE = re.compile(_FLAG + r"synthetic\s+([^\s,;()]+)", re.IGNORECASE)
_SUFFIX = f" — {RESEARCH_ONLY}"


def label(volume: Volume) -> str:
    """What a synthetic volume is, e.g. ``synthetic CT from CBCT``."""
    made_from = f" from {volume.derived_from}" if volume.derived_from else ""
    return f"synthetic {volume.modality or 'volume'}{made_from}"


def mark(volume: Volume) -> str:
    """The marking text, e.g. ``synthetic CT from CBCT — research use only``."""
    return f"{label(volume)} — {RESEARCH_ONLY}"


def series_mark(volume: Volume, description: str) -> str:
    """A synthetic volume's DICOM SeriesDescription (64 characters: what a PACS lists): its mark, led
    by the flag ``description`` opens with, e.g. ``(OOD input) synthetic CT from CBCT — research use only``."""
    flag = re.match(r"\s*(\([^()]*\))", description or "")
    return f"{flag.group(1)} {mark(volume)}" if flag else mark(volume)


def says_synthetic(*texts: str) -> bool:
    """Whether one of ``texts`` is our mark (see ``mark``)."""
    return any(_MARK.match(text or "") for text in texts)


def derived_from(text: str) -> str:
    """The source modality named in our ``synthetic X from Y …`` mark ("" when none is named)."""
    found = _ROUTE.search(text or "")
    return found.group(1) if found else ""


def file_description(volume: Volume, description: str) -> str:
    """The description a file header keeps: for a synthetic volume one that says it is synthetic
    and for research use only (``description`` kept when it already names it synthetic); for a scan
    of a known modality one led by it (``CBCT: converted from CBCT XVI``), so a renamed file keeps it."""
    if not volume.synthetic:
        if volume.modality not in modalities.MODALITIES or _stated(description) == volume.modality:
            return description
        return f"{volume.modality}: {description}" if description else volume.modality
    if says_synthetic(description):
        return description
    if re.match(_FLAG + re.escape(label(volume)), description, re.IGNORECASE):
        return description + _SUFFIX
    return "; ".join(filter(None, (label(volume), description))) + _SUFFIX


def itk_fields(volume: Volume, description: str) -> dict[str, str]:
    """The metadata SimpleITK writes into a NIfTI / MetaImage / NRRD header."""
    text = file_description(volume, description)
    fields = {DESCRIPTION_KEY: _fit_bytes(text, NIFTI_DESCRIP_BYTES)} if text else {}
    if volume.synthetic:
        fields[SYNTHETIC_KEY] = "true"
        if volume.derived_from:
            fields[DERIVED_FROM_KEY] = volume.derived_from
    return fields


def read_itk_fields(fields: Mapping[str, str]) -> dict:
    """``synthetic``, ``derived_from`` and ``modality`` for a Volume from a NIfTI / MetaImage / NRRD
    header: the modality our mark names (``synthetic T2 from T1 …``: T2) or a scan's description is
    led by (``CBCT: …``), so a renamed file keeps it; None for any other file."""
    description = fields.get(DESCRIPTION_KEY) or fields.get("descrip") or ""
    synthetic = fields.get(SYNTHETIC_KEY, "").lower() == "true" or says_synthetic(description)
    made_from = fields.get(DERIVED_FROM_KEY) or derived_from(description)
    return {"synthetic": synthetic, "derived_from": made_from if synthetic else "",
            "modality": _made(description) if synthetic else _stated(description)}


_STATED = re.compile(r"^\s*(" + "|".join(modalities.MODALITIES) + r")(?::\s|$)")


def _stated(description: str) -> str | None:
    """The modality a scan's description is led by (``CT: …``, what :func:`file_description` writes)."""
    found = _STATED.match(description or "")
    return found.group(1) if found else None


def _made(description: str) -> str | None:
    """The modality our mark says a synthetic volume is (None when it names none we know)."""
    found = _MADE.match(description or "")
    try:
        return modalities.canonical(found.group(1)) if found else None
    except ValueError:
        return None


def read_dicom_tags(tags: Mapping[str, str]) -> dict:
    """``synthetic`` and ``derived_from`` from a series' tags (our private block, else its descriptions)."""
    texts = (tags.get("SeriesDescription", ""), tags.get("ImageComments", ""))
    synthetic = tags.get("StudioSynthetic", "") == DICOM_SYNTHETIC or says_synthetic(*texts)
    made_from = tags.get("StudioDerivedFrom") or derived_from(texts[0]) or derived_from(texts[1])
    return {"synthetic": synthetic, "derived_from": made_from if synthetic else ""}


ELLIPSIS = "…"


def _fit_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes at a word's end (inside a word only when the
    first word alone is too long), marked "…"; a closing "— research use only" is kept whole (the text
    before it is cut instead)."""
    if len(text.encode("utf-8")) <= limit:
        return text
    suffix = _SUFFIX if text.endswith(_SUFFIX) else ""
    body = text[:len(text) - len(suffix)]
    room = limit - len(suffix.encode("utf-8")) - len(ELLIPSIS.encode("utf-8"))
    head = body.encode("utf-8")[:max(room, 0)].decode("utf-8", errors="ignore")
    at_word_end = head[-1:].isspace() or body[len(head):len(head) + 1].isspace()
    if not at_word_end and " " in head.strip():
        head = head[:head.rstrip().rfind(" ")]          # the last whole word
    return head.rstrip(" ;,") + ELLIPSIS + suffix
