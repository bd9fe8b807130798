"""Grouping scanned DICOM slices into volumes: by SeriesInstanceUID, then split where one UID
holds several volumes, then sorted along the slice normal with the geometry of the stack.

Splitting rules (the key gets ".1", ".2", … when a UID splits):
  1. slices without position or orientation: every file is its own volume (frames of a
     multi-frame file stay together, in file order);
  2. different patients (PatientID), studies (StudyInstanceUID), frames of reference, modalities,
     series numbers or series descriptions: one UID given to several series (a broken anonymiser or
     archive: a CT and a CBCT of one study under one UID) is never one volume, whatever their
     positions;
  3. different orientations (ImageOrientationPatient differing by more than 1e-3);
  4. different image sizes or pixel spacings;
  5. different echoes (EchoNumbers / EffectiveEchoTime), temporal positions
     (TemporalPositionIdentifier / TemporalPositionIndex) or enhanced stacks (StackID);
  6. only where a position still repeats: AcquisitionNumber (CT scanners number acquisitions
     within one contiguous stack, so this is not split when positions are distinct), then image
     type / TE / TI / trigger time / b-value, and last the order of InstanceNumber; a slice whose
     pixels another slice at its position holds too (re-sent under a new SOPInstanceUID) is left out first.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import pydicom

from engine.io import dicom_geometry as geo
from engine.io.dicom_scan import SliceInfo


@dataclass
class SeriesGroup:
    """One volume: its slices in order (first slice first) and its grid."""

    key: str
    series_uid: str
    slices: list[SliceInfo]
    geometry: geo.StackGeometry
    positioned: bool
    notes: list[str] = field(default_factory=list)
    part: str = ""                 # what tells this volume apart when its UID was split


def group_series(slices: list[SliceInfo]) -> list[SeriesGroup]:
    by_uid: dict[str, list[SliceInfo]] = defaultdict(list)
    for s in slices:
        by_uid[s.series_uid].append(s)
    groups: list[SeriesGroup] = []
    for uid, items in by_uid.items():
        parts = _split(items)
        parts.sort(key=_part_order)
        reasons = sorted({r for _, labels in parts for r, _ in labels})
        for i, (part, labels) in enumerate(parts, start=1):
            group = _build(uid, part)
            if len(parts) > 1:
                group.key = f"{uid}.{i}"
                what = group.part = ", ".join(v for _, v in labels)
                group.notes.insert(0, f"SeriesInstanceUID holds {len(parts)} volumes (split by {', '.join(reasons)}); "
                                      f"this is part {i}: {what}")
            header_notes = dict.fromkeys(n for s in part for n in s.notes)     # in order, once each
            if geo.NO_PIXEL_SPACING in group.notes and any(n.startswith(geo.SPACING_DROPPED) for n in header_notes):
                group.notes.remove(geo.NO_PIXEL_SPACING)      # a slice's note says it, with the header's value
            group.notes.extend(header_notes)
            groups.append(group)
    return groups


Part = tuple[list[SliceInfo], list[tuple[str, str]]]   # slices, [(reason, label)]
Key = TypeVar("Key", bound=Hashable)                    # what _by_key splits slices by


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _part_order(part: Part) -> tuple:
    """Parts in the order a user expects: echo 1 before 2, time point 1 before 2, then as stored."""
    slices, _ = part
    first = min(slices, key=lambda s: (s.instance, s.frame or 0))
    return (tuple(_natural(v) for v in first.always_split), _natural(first.acquisition), first.instance,
            min(s.frame or 0 for s in slices), first.path)


def _split(items: list[SliceInfo]) -> list[Part]:
    unpositioned = [s for s in items if s.ipp is None or not geo.valid_orientation(s.iop)]
    positioned = [s for s in items if not (s.ipp is None or not geo.valid_orientation(s.iop))]
    parts: list[Part] = []
    by_file: dict[str, list[SliceInfo]] = defaultdict(list)
    for s in unpositioned:
        by_file[s.path].append(s)
    for path, frames in by_file.items():
        frames.sort(key=lambda s: s.frame or 0)
        parts.append((frames, [("file", f"file {os.path.basename(path)} (no slice positions)")]))
    if not positioned:
        return parts
    work: list[Part] = [(positioned, [])]
    work = _refine(work, _by_stated("patient", lambda s: s.identity[0], lambda k: f"patient {k}"))
    work = _refine(work, _by_stated("study", lambda s: s.identity[1], lambda k: f"study {_tail(k)}"))
    work = _refine(work, _by_stated("frame of reference", lambda s: s.identity[2], lambda k: f"frame {_tail(k)}"))
    work = _refine(work, _by_stated("series", _series_named, lambda k: k))
    work = _refine(work, _orientation_split)
    work = _refine(work, _by_key("image size", lambda s: (s.rows, s.columns, _round(s.pixel_spacing)),
                                 lambda k: f"{k[0]}×{k[1]} pixels"))
    work = _refine(work, _by_key("echo", lambda s: s.always_split[0], lambda k: f"echo {k}"))
    work = _refine(work, _by_key("temporal position", lambda s: s.always_split[1], lambda k: f"time point {k}"))
    work = _refine(work, _by_key("stack", lambda s: s.always_split[2], lambda k: f"stack {k}"))
    final: list[Part] = []
    for part in work:
        final.extend(_split_repeats(part))
    return parts + final


def _tail(uid: str) -> str:
    """The end of a UID, which tells UIDs of one root apart."""
    return f"…{uid[-8:]}" if len(uid) > 9 else uid or "(none)"


def _round(values) -> tuple | None:
    return None if values is None else tuple(round(float(v), 4) for v in values)


def _refine(parts: list[Part], splitter: Callable[[list[SliceInfo]], list[tuple[list[SliceInfo], tuple[str, str]]]]) -> list[Part]:
    out: list[Part] = []
    for slices, labels in parts:
        pieces = splitter(slices)
        if len(pieces) == 1:
            out.append((slices, labels))
        else:
            out.extend((piece, labels + [label]) for piece, label in pieces)
    return out


def _by_key(reason: str, key: Callable[[SliceInfo], Key], label: Callable[[Key], str]):
    def split(slices: list[SliceInfo]) -> list[tuple[list[SliceInfo], tuple[str, str]]]:
        groups: dict[Key, list[SliceInfo]] = {}
        for s in slices:
            groups.setdefault(key(s), []).append(s)
        return [(g, (reason, label(k))) for k, g in groups.items()]
    return split


def _series_named(s: SliceInfo) -> str:
    """How a slice names its series: modality, number and description ("" when it states none)."""
    modality, number = s.series
    return " ".join(v for v in (modality, f"series {number}" if number else "", s.description and f"'{s.description}'")
                    if v)


def _by_stated(reason: str, stated: Callable[[SliceInfo], str], label: Callable[[str], str]):
    """Split by what slices state (``stated``) where they state conflicting values; a slice that
    states none joins the one value the others state (one slice without a PatientID is no second
    patient), and forms a part of its own only beside several."""
    def split(slices: list[SliceInfo]) -> list[tuple[list[SliceInfo], tuple[str, str]]]:
        groups: dict[str, list[SliceInfo]] = {}
        for s in slices:
            groups.setdefault(stated(s), []).append(s)
        silent = groups.pop("", [])
        if len(groups) <= 1:
            return [(slices, (reason, ""))]
        parts = [(g, (reason, label(k))) for k, g in groups.items()]
        return parts + ([(silent, (reason, f"{reason} not stated"))] if silent else [])
    return split


def _orientation_split(slices: list[SliceInfo]) -> list[tuple[list[SliceInfo], tuple[str, str]]]:
    clusters: list[tuple[tuple[float, ...], list[SliceInfo]]] = []
    for s in slices:
        for iop, members in clusters:
            if geo.same_orientation(iop, s.orientation):
                members.append(s)
                break
        else:
            clusters.append((s.orientation, [s]))
    out = []
    for iop, members in clusters:
        row, col, normal = geo.frame_axes(iop)
        letters = geo.orientation_letters(np.column_stack([row, col, normal]).ravel())
        plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]     # the slice normal's main axis
        out.append((members, ("orientation", f"{plane} {letters}")))
    return out


def _repeats(slices: list[SliceInfo]) -> bool:
    return geo.has_repeated_positions(slices[0].orientation, [s.position for s in slices])


def _split_repeats(part: Part) -> list[Part]:
    """Separate volumes whose slices share positions: by the first key that yields exactly as many
    volumes as a position repeats, none repeating a position; else by InstanceNumber order."""
    slices, labels = part
    if len(slices) < 2 or not _repeats(slices):
        return [part]
    slices = _without_resent(_slots(slices))
    if not _repeats(slices):
        return [(slices, labels)]
    slots = _slots(slices)
    repeats = max(len(v) for v in slots.values())
    for reason, key in (
        ("acquisition", lambda s: (("acquisition", s.acquisition),)),
        ("image type / timing", lambda s: _named_extra(s.extra_split)),
        ("acquisition and image type", lambda s: (("acquisition", s.acquisition), *_named_extra(s.extra_split))),
    ):
        pieces: dict[tuple[tuple[str, str], ...], list[SliceInfo]] = {}
        for s in slices:
            pieces.setdefault(key(s), []).append(s)
        if len(pieces) == repeats and not any(_repeats(p) for p in pieces.values() if len(p) > 1):
            named = _telling_apart(list(pieces))
            return [(p, labels + [(reason, named[k])]) for k, p in pieces.items()]
    # last resort: the k-th slice at every position (by InstanceNumber, then file name) makes volume k
    order = "InstanceNumber" if all(len({s.instance for s in v}) == len(v) for v in slots.values()) else "file name"
    out = []
    for k in range(repeats):
        piece = [v[k] for v in slots.values() if len(v) > k]
        out.append((piece, labels + [("repeated positions", f"repeat {k + 1} of {repeats} by {order}")]))
    return out


def _slots(slices: list[SliceInfo]) -> dict[int, list[SliceInfo]]:
    """The slices at each position along the normal, by InstanceNumber, then file name and frame."""
    d = geo.positions_along_normal(slices[0].orientation, [s.position for s in slices])
    slots: dict[int, list[SliceInfo]] = defaultdict(list)
    for s, pos in sorted(zip(slices, d), key=lambda t: (t[0].instance, t[0].path, t[0].frame or 0)):
        slots[round(float(pos) / geo.SAME_POSITION_MM)].append(s)
    return slots


def _without_resent(slots: dict[int, list[SliceInfo]]) -> list[SliceInfo]:
    """Every slice but those whose pixels, acquisition, image type and timing another slice at their
    position has too (an image re-sent under a new SOPInstanceUID: splitting on it had made a one-slice
    volume of the copy); the kept slice
    notes what was left out. Only the files at a repeated position are read for their pixels."""
    kept: list[SliceInfo] = []
    for slot in slots.values():
        said = [(s.instance, s.acquisition, s.extra_split) for s in slot]     # a copy says what its original says:
        alike = {k for k in said if said.count(k) > 1}                          # only those are read for pixels
        seen: dict[tuple, int] = {}
        for s, key in zip(slot, said):
            pixels = _pixel_digest(s) if key in alike else None
            digest = None if pixels is None else (pixels, key)
            if digest is not None and digest in seen:
                first = kept[seen[digest]]
                kept[seen[digest]] = replace(first, notes=(*first.notes, f"{os.path.basename(s.path)} holds the same "
                                                           f"image as {os.path.basename(first.path)} (same position and "
                                                           "pixels, another SOPInstanceUID: re-sent); left out"))
                continue
            if digest is not None:
                seen[digest] = len(kept)
            kept.append(s)
    return kept


def _pixel_digest(s: SliceInfo) -> bytes | None:
    """A digest of a single-frame file's stored pixels and rescale (None for a frame of a multi-frame
    file, or when the file cannot be read again)."""
    if s.frame is not None or s.frames_in_file != 1:
        return None
    try:
        pixels = pydicom.dcmread(s.path, specific_tags=["PixelData"]).get("PixelData")
    except Exception:               # read once already; a file changed or gone since is not a copy
        return None
    if not isinstance(pixels, bytes):
        return None
    return hashlib.sha256(repr((s.rows, s.columns, s.slope, s.intercept)).encode() + pixels).digest()


# what each value of SliceInfo.extra_split is (a classic image's five; an enhanced frame's b-value), and how
# a label shows it
_EXTRA_NAMES = {5: ("ImageType", "TE", "TI", "trigger", "b"), 1: ("b",)}
_SHOWN = {"acquisition": "acquisition {}", "ImageType": "{}", "TE": "TE {} ms", "TI": "TI {} ms",
          "trigger": "trigger {} ms", "b": "b={}"}


def _named_extra(extra: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    names = _EXTRA_NAMES.get(len(extra), tuple(f"value {i + 1}" for i in range(len(extra))))
    return tuple(zip(names, extra))


def _telling_apart(keys: list[tuple[tuple[str, str], ...]]) -> dict[tuple, str]:
    """Each key's label: only the values that differ between the keys, named (``b=1000``, ``TE 15 ms``)."""
    differing = [i for i in range(len(keys[0])) if len({k[i][1] for k in keys}) > 1]
    return {k: " ".join(_SHOWN.get(k[i][0], "{}").format(_number(k[i][1]) or "none") for i in differing) or "—"
            for k in keys}


def _number(value: str) -> str:
    """A header value as a label shows it: a whole number without its ".0" (b=1000, not b=1000.0)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _build(uid: str, slices: list[SliceInfo]) -> SeriesGroup:
    first = slices[0]
    if first.ipp is None or not geo.valid_orientation(first.iop):
        iop = first.iop if geo.valid_orientation(first.iop) else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        row, col, normal = geo.frame_axes(iop)
        spacing_z = first.spacing_between or first.thickness or 1.0
        valid_spacing = first.pixel_spacing is not None and min(first.pixel_spacing) > 0
        sy, sx = first.pixel_spacing if first.pixel_spacing is not None and valid_spacing else (1.0, 1.0)
        origin = first.ipp or first.file_origin
        oriented = geo.valid_orientation(first.iop)
        notes = []
        if len(slices) > 1:
            notes.append(f"{len(slices)} frames without per-frame positions: stacked in file order "
                         f"{spacing_z:g} mm apart (SpacingBetweenSlices / SliceThickness, else 1 mm)"
                         + (" along the slice normal" if oriented else ""))
        if origin is None or not oriented:
            missing = " / ".join(n for n, absent in (("ImagePositionPatient", origin is None),
                                                       ("ImageOrientationPatient", not oriented)) if absent)
            assumed = " and ".join(a for a, absent in (("origin 0", origin is None),
                                                       ("identity orientation", not oriented)) if absent)
            notes.append(f"no {missing}: {assumed} assumed")
        if not valid_spacing:
            notes.append(geo.NO_PIXEL_SPACING)
        geometry = geo.StackGeometry(
            order=tuple(range(len(slices))), origin=origin or (0.0, 0.0, 0.0),
            spacing=(float(sx), float(sy), float(spacing_z)),
            direction=tuple(np.column_stack([row, col, normal]).ravel()), notes=tuple(notes))
        return SeriesGroup(uid, uid, list(slices), geometry, positioned=False, notes=list(geometry.notes))
    geometry = geo.stack_geometry(
        first.orientation, [s.position for s in slices], first.pixel_spacing,
        tie_break=[(s.instance, s.path, s.frame or 0) for s in slices], thickness=first.thickness)
    ordered = [slices[i] for i in geometry.order]
    return SeriesGroup(uid, uid, ordered, geometry, positioned=True, notes=list(geometry.notes))
