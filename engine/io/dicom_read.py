"""Reading DICOM: ``scan_dicom`` lists the volumes in a set of files (headers only) and each
entry's loader reads one volume in physical units (HU, SUVbw, …) with its exact geometry.

The work is split: ``dicom_scan`` reads headers, ``dicom_series`` groups and splits series,
``dicom_geometry`` sorts slices and checks the stack, ``dicom_pet`` converts PET to SUV.
"""
from __future__ import annotations

import functools
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine import modalities
from engine.io.catalog import Catalog, SeriesEntry, ensure_fits_in_memory
from engine.io.dicom_geometry import orientation_letters, resample_slices, stack_geometry, unshear, valid_orientation
from engine.io.dicom_pet import suv_factor
from engine.io.dicom_scan import RADIOPHARMACEUTICAL_TAGS, SliceInfo, lenient_values, scan_files
from engine.io.dicom_series import SeriesGroup, group_series
from engine.io.errors import VolumeIOError
from engine.io.identity import DERIVED_FRAME, DERIVED_STUDY, stated_frame, stated_patient
from engine.io.reader_process import native
from engine.io.synthetic_mark import read_dicom_tags
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop

# The identity the writer needs to put a derived series beside its source (as strings).
IDENTITY_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription", "ReferringPhysicianName",
    "FrameOfReferenceUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Modality",
    "Manufacturer", "BodyPartExamined", "PatientPosition", "BurnedInAnnotation", "KVP", "PhotometricInterpretation",
    "PatientIdentityRemoved", "DeidentificationMethod", DERIVED_FRAME, DERIVED_STUDY,
)
# What a PET's values mean beyond its unit: a derived PET series keeps them (SUV can be recomputed, the
# decay reference — the series' date and time for DecayCorrection START — stays known). The
# radiopharmaceutical's are its first item's.
# How an MR series was acquired: a converted scan keeps it (a synthetic, made by no sequence, has none).
MR_TAGS = ("RepetitionTime", "EchoTime", "InversionTime", "ScanningSequence", "SequenceVariant", "ScanOptions",
           "MRAcquisitionType", "FlipAngle", "EchoTrainLength", "MagneticFieldStrength")
PET_TAGS = ("PatientWeight", "DecayCorrection", "CorrectedImage", "SeriesDate", "SeriesTime", *RADIOPHARMACEUTICAL_TAGS)


def scan_dicom(paths: list[Path], cancel: CancelToken | None = None) -> Catalog:
    """Every image volume in ``paths`` (files and DICOMDIRs), read from headers only.

    Files that are not DICOM, truncated, or not images (RTSTRUCT, SR, …) go to
    ``Catalog.skipped`` with the reason; the good series are still listed.
    """
    result = scan_files(paths, cancel=cancel)
    catalog = Catalog(skipped=list(result.skipped), registrations=list(result.registrations))
    listed = []
    for i, group in enumerate(group_series(result.slices)):
        check_cancel(cancel)
        shared = Counter(s.tags_key for s in group.slices).most_common(1)[0][0]    # most slices' tags
        tags = result.series_tags.get(shared, {})
        entry = _entry(group, tags)
        order = (entry.patient, entry.study, _number(tags.get("SeriesNumber")), group.series_uid, i)
        listed.append((order, entry))
    catalog.entries.extend(entry for _, entry in sorted(listed, key=lambda t: t[0]))
    return catalog


def _number(value: str | None) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("inf")


def _acquired(tags: dict[str, str]) -> str:
    """When the scan was made, as "YYYYMMDD HHMMSS" (sortable): its acquisition's date and time, else its
    series' (a derived series' says when it was written), else its study's; "" when no header says."""
    for date, time in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
        day = tags.get(date, "").strip()
        if len(day) == 8 and day.isdigit():
            return f"{day} {tags.get(time, '').strip()[:6]}".rstrip()
    return ""


def _entry(group: SeriesGroup, tags: dict[str, str]) -> SeriesEntry:
    first = group.slices[0]
    geometry = group.geometry
    modality = _modality(tags)
    not_anatomy = _not_anatomical_notes(tags)
    if group.positioned:
        orientation = orientation_letters(geometry.direction)
    else:
        assumed = "" if valid_orientation(first.iop) else " (assumed)"
        orientation = "2-D" if len(group.slices) == 1 else f"{orientation_letters(geometry.direction)}{assumed}"
    return SeriesEntry(
        key=group.key,
        kind="dicom",
        paths=tuple(dict.fromkeys(s.path for s in group.slices)),
        description=describe(tags, group.part),
        modality=modality,
        shape_zyx=(geometry.n_slices, *geometry.plane(first.rows, first.columns)),
        spacing_xyz=geometry.spacing,
        orientation=orientation,
        patient=_patient(tags),
        patient_id=stated_patient(tags),
        frame=stated_frame(tags),
        study=_study(tags),
        acquired=_acquired(tags),
        notes=(*group.notes, *not_anatomy,
               *([f"cannot be loaded: {geometry.refusal}"] if geometry.refusal else [])),
        synthetic=read_dicom_tags(tags)["synthetic"],
        refusal=geometry.refusal,
        not_anatomy=" ".join(not_anatomy),
        loader=functools.partial(load_series, group, tags),
    )


def describe(tags: dict[str, str], part: str = "") -> str:
    """SeriesDescription, or Modality + SeriesNumber; a split series adds what tells its part apart."""
    text = tags.get("SeriesDescription") or f"{tags.get('Modality') or 'DICOM'} series {tags.get('SeriesNumber') or '?'}"
    return f"{text} [{part}]" if part else text


def _patient(tags: dict[str, str]) -> str:
    name, pid = tags.get("PatientName", ""), tags.get("PatientID", "")
    if name and pid:
        return f"{name} ({pid})"
    return name or pid


def _study(tags: dict[str, str]) -> str:
    day = tags.get("StudyDate", "")
    if len(day) == 8 and day.isdigit():
        day = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    parts = [tags.get("StudyDescription", ""), day, tags.get("StudyInstanceUID", "")]
    return " | ".join(p for p in parts if p)


def _modality(tags: dict[str, str]) -> str | None:
    """Ours (a file this app wrote), else the header's guess; None for a CT map or a localizer
    (:func:`_not_anatomical_notes`): no route should take it for tissue."""
    own = tags.get("StudioModality", "")
    if own:
        try:
            return modalities.canonical(own)
        except ValueError:
            pass
    return None if _not_anatomical_notes(tags) else modalities.guess_from_dicom(tags)


# -- loading ---------------------------------------------------------------------------------------
def load_series(group: SeriesGroup, tags: dict[str, str], progress: ProgressFn = noop,
                cancel: CancelToken | None = None) -> Volume:
    """Read the voxels of one scanned series into a float32 :class:`Volume` in physical units.

    In a stack of positioned slices, a slice whose pixels cannot be decoded counts as missing: it
    is filled by interpolation like a missing file, or the series is refused when the gap is too wide.
    """
    slices = group.slices
    first = slices[0]
    n, rows, cols = len(slices), first.rows, first.columns
    folder = _source(slices)
    if group.geometry.refusal:
        raise VolumeIOError(folder, group.geometry.refusal)
    resampled = group.geometry.grid_slices if group.positioned else 0
    grid_plane = int(np.prod(group.geometry.plane(rows, cols)))
    per_file = max(s.frames_in_file for s in slices) * rows * cols
    # the float32 stack, its tilt-corrected and resampled copies, one file's decoded pixels (up to 64-bit),
    # float64 slices
    unsheared = n if group.geometry.shear else 0
    ensure_fits_in_memory(first.path, (n * rows * cols + (unsheared + resampled) * grid_plane) * 4
                          + per_file * 8 + grid_plane * 8 * 3)
    isolate = _encapsulated(tags)
    array = np.empty((n, rows, cols), dtype=np.float32)
    unreadable: list[tuple[int, VolumeIOError]] = []
    cached_path, pixels = None, None
    for k, s in enumerate(slices):
        check_cancel(cancel)
        try:
            if s.path != cached_path:
                cached_path, pixels = None, None  # free the previous file's pixels before decoding
                pixels = native(s.path, _decode, s, peak_bytes=s.frames_in_file * rows * cols * 8) if isolate else _decode(s)
                cached_path = s.path
            assert pixels is not None, "decoded when its file is met after another"
            frame = pixels if s.frame is None else _frame(pixels, s)
        except VolumeIOError as exc:
            if not group.positioned or n == 1:
                raise
            unreadable.append((k, exc))
            continue
        if frame.shape != (rows, cols):
            raise VolumeIOError(s.path, f"image is {frame.shape[0]}×{frame.shape[1]} pixels, "
                                        f"the series expects {rows}×{cols}")
        array[k] = frame.astype(np.float64) * s.slope + s.intercept      # one rounding to float32
        progress(Progress(k + 1, n, f"read slice {k + 1} of {n}"))
    g, notes, read = group.geometry, list(group.notes), slices
    if unreadable:
        array, g, notes, read = _without_unreadable(array, group, unreadable, folder)
    not_anatomy = _not_anatomical_notes(tags)
    notes += not_anatomy
    array = unshear(array, g)
    if g.positions:
        array = resample_slices(array, g.positions, g.grid_slices, g.spacing[2])
    modality = _modality(tags)
    unit, unit_notes = _units(array, group, tags, modality)
    return Volume(
        array, g.spacing, g.origin, g.direction, modality=modality, unit=unit, name=describe(tags, group.part),
        source=folder, notes=tuple(notes + unit_notes), not_anatomy=" ".join(not_anatomy),
        dicom={**{k: tags.get(k, "") for k in IDENTITY_TAGS},
               **{k: tags.get(k, "") for k in _acquisition_tags(tags)},
               # an assumed position or orientation is no place in the scanner's frame: a derived series
               # written from it must not claim that frame (its writer makes a new one)
               **({} if group.positioned else {"FrameOfReferenceUID": ""}),
               **_thickness_tag(slices),
               **_padding_range(tags, slices),
               **lossy_compression(tags),
               **slice_references(read, tags, g)},
        **read_dicom_tags(tags),
    )


def _acquisition_tags(tags: dict[str, str]) -> tuple[str, ...]:
    """The acquisition's attributes a derived series of this modality keeps (MR's sequence, PET's decay)."""
    return {"MR": MR_TAGS, "PT": PET_TAGS}.get(tags.get("Modality", "").upper(), ())


# transfer syntaxes that lose information whatever the file says, and the method each names (JPEG 2000's
# "Image Compression" may be lossless: its files say which)
_LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
                   "1.2.840.10008.1.2.4.81": "ISO_14495_1"}
_METHODS = {**_LOSSY_SYNTAXES, "1.2.840.10008.1.2.4.91": "ISO_15444_1", "1.2.840.10008.1.2.4.93": "ISO_15444_1"}


def lossy_compression(tags: dict[str, str]) -> dict[str, str]:
    """Whether a series' pixels went through lossy compression (its LossyImageCompression, or a lossy
    transfer syntax), with its ratio and method: what every series made from it keeps (PS3.3 C.7.6.1.1.5:
    once 01, never reset); "00" only where the series says so, nothing where it says nothing."""
    syntax, stated = tags.get("TransferSyntaxUID", ""), tags.get("LossyImageCompression", "").strip()
    if stated != "01" and syntax not in _LOSSY_SYNTAXES:
        return {"LossyImageCompression": "00"} if stated == "00" else {}     # unsaid: not claimed
    return {"LossyImageCompression": "01", "LossyImageCompressionRatio": tags.get("LossyImageCompressionRatio", ""),
            "LossyImageCompressionMethod": tags.get("LossyImageCompressionMethod") or _METHODS.get(syntax, "")}


# a Volume's ``dicom`` key: the padding a series states (PixelPaddingValue, PixelPaddingRangeLimit: stored
# values) in the volume's physical units, "low\\high" (read back by :func:`stated_padding`)
PADDING_RANGE = "StudioPaddingRange"


def stated_padding(volume: Volume) -> tuple[float, float] | None:
    """(low, high) of the padding ``volume``'s series stated, in its physical units; None when none was."""
    stated = (volume.dicom or {}).get(PADDING_RANGE, "")
    if not stated:
        return None
    low, high = (float(v) for v in stated.split("\\"))
    return low, high


def _padding_range(tags: dict[str, str], slices: list[SliceInfo]) -> dict[str, str]:
    """The stated padding as :data:`PADDING_RANGE` (nothing when none is stated, or when the slices'
    rescales differ: one stored value would be several physical ones)."""
    try:
        value = float(tags.get("PixelPaddingValue", ""))
        limit = float(tags.get("PixelPaddingRangeLimit") or value)
    except ValueError:
        return {}
    rescales = {(s.slope, s.intercept) for s in slices}
    if len(rescales) != 1:
        return {}
    ((slope, intercept),) = rescales
    low, high = sorted((value * slope + intercept, limit * slope + intercept))
    return {PADDING_RANGE: f"{low!r}\\{high!r}"}


def _thickness_tag(slices: list[SliceInfo]) -> dict[str, str]:
    """The series' SliceThickness when every slice states the same one (a derived series keeps it)."""
    found = {s.thickness for s in slices}
    only = next(iter(found)) if len(found) == 1 else None
    return {"SliceThickness": f"{only:g}"} if only else {}


ON_SLICE_MM = 0.01          # a grid slice this close to an acquired one is that slice (not interpolated)


def slice_references(slices: list[SliceInfo], tags: dict[str, str], geometry=None) -> dict[str, str]:
    """What each z slice's source image was, for a derived series to keep: its SOP instance UID to
    reference (SourceImageSequence; "UID:FRAME" for a frame of a multi-frame image), with the SOP class,
    and a PET image's DecayFactor — backslash-joined, one entry per slice. On a grid resampled from
    uneven positions (``geometry.positions``), a slice filled by interpolation has no source (an empty
    entry) and its nearest acquired slice's DecayFactor; one on an acquired slice, that slice's.
    A slice whose header states no DecayFactor gets its nearest neighbour's (the PET IOD needs one
    on every image whose values are decay corrected)."""
    refs = [s.sop_uid if s.frame is None or s.frames_in_file == 1 else f"{s.sop_uid}:{s.frame + 1}" for s in slices]
    decays = _nearest_stated([s.decay_factor for s in slices])
    if geometry is not None and geometry.positions:
        at = np.asarray(geometry.positions)
        nearest = [int(np.argmin(np.abs(at - k * geometry.spacing[2]))) for k in range(geometry.grid_slices)]
        refs = [refs[j] if abs(at[j] - k * geometry.spacing[2]) <= ON_SLICE_MM else "" for k, j in enumerate(nearest)]
        decays = [decays[j] for j in nearest]        # an interpolated slice: its nearest acquired one's
    out = {"SOPClassUID": tags.get("SOPClassUID", ""), "SliceSOPInstanceUIDs": "\\".join(refs)}
    if any(decays):
        out["SliceDecayFactors"] = "\\".join(decays)
    return out


def _nearest_stated(values: list[str]) -> list[str]:
    """Each value, or where it is empty the nearest stated one (all empty when none is stated)."""
    stated = [i for i, v in enumerate(values) if v]
    if not stated:
        return values
    return [v or values[min(stated, key=lambda j: abs(j - i))] for i, v in enumerate(values)]


def _source(slices: list[SliceInfo]) -> str:
    paths = {s.path for s in slices}
    return slices[0].path if len(paths) == 1 else os.path.commonpath(sorted(paths))


def _without_unreadable(array: np.ndarray, group: SeriesGroup, unreadable: list[tuple[int, VolumeIOError]],
                        folder: str):
    """The stack without the slices that could not be decoded, its new geometry and notes, and the
    slices read, in the stack's order."""
    bad = {k for k, _ in unreadable}
    kept = [s for k, s in enumerate(group.slices) if k not in bad]
    if not kept:
        raise unreadable[0][1]
    geometry = stack_geometry(kept[0].orientation, [s.position for s in kept], kept[0].pixel_spacing,
                              tie_break=[(s.instance, s.path, s.frame or 0) for s in kept],
                              thickness=kept[0].thickness)
    named = [f"unreadable slice {k + 1} of {len(group.slices)}, treated as missing: {exc}" for k, exc in unreadable]
    if geometry.refusal:
        raise VolumeIOError(folder, f"{geometry.refusal}; {'; '.join(named)}")
    rows = [k for k in range(len(group.slices)) if k not in bad]
    unchanged = [note for note in group.notes if note not in group.geometry.notes]
    return (array[[rows[i] for i in geometry.order]], geometry, [*named, *unchanged, *geometry.notes],
            [kept[i] for i in geometry.order])


def _encapsulated(tags: dict[str, str]) -> bool:
    """Whether the series' pixel data is compressed (decoded by native codecs, in the reader process)."""
    text = tags.get("TransferSyntaxUID", "")
    if not text:                                     # a bare data set: implicit or explicit VR, not compressed
        return False
    try:
        ts = UID(text)
        return not ts.is_transfer_syntax or ts.is_encapsulated
    except (ValueError, TypeError):
        return True


def _decode(s: SliceInfo) -> np.ndarray:
    with lenient_values():
        return _decoded(s)


def _decoded(s: SliceInfo) -> np.ndarray:
    try:
        ds = pydicom.dcmread(s.path, force=True)       # the scan has vetted it; no meta is fine
    except Exception as exc:
        raise VolumeIOError(s.path, f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if "TransferSyntaxUID" not in ds.file_meta:         # a bare data set: its encoding tells the syntax
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ts = ds.file_meta.TransferSyntaxUID
    try:
        pixels = np.asarray(ds.pixel_array)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - codecs written in Rust raise PanicException (a BaseException)
        syntax = f"{ts.name} ({ts})"
        detail = " ".join(str(exc).split())
        raise VolumeIOError(s.path, f"the pixel data in {syntax} could not be decoded "
                                    f"({type(exc).__name__}: {detail})") from None
    if "ModalityLUTSequence" not in ds:
        return pixels
    from pydicom.pixels import apply_modality_lut  # the scan set slope 1, intercept 0 for it

    try:
        return np.asarray(apply_modality_lut(pixels, ds))
    except Exception as exc:
        raise VolumeIOError(s.path, f"its Modality LUT Sequence cannot be applied ({type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())})") from None


def _frame(pixels: np.ndarray, s: SliceInfo) -> np.ndarray:
    if pixels.ndim == 2 and s.frames_in_file == 1:
        return pixels
    if pixels.ndim != 3 or s.frame is None or s.frame >= pixels.shape[0]:
        raise VolumeIOError(s.path, f"frame {s.frame} is missing from the decoded pixel data {pixels.shape}")
    return pixels[s.frame]


# ImageType values of CT series whose voxels are a computed map (perfusion, material), not HU of tissue
_CT_MAPS = {"PERFUSION", "RCBF", "RCBV", "CBF", "CBV", "MTT", "TTP", "TMAX", "IODINE"}
# the names scanners give their positioning and calibration images (Siemens localizer / AAHScout, GE 3-Plane
# Loc / ASSET Cal, Philips Survey / SurView / SmartBrain / SENSE ref scan, CT topogram / scanogram / scout,
# Toshiba tri-pilot)
_LOCALIZER_NAME = re.compile(r"(?<![a-z])(locali[sz]er|survey|surview|topogram|scanogram|tri-?pilot|"
                             r"3[- ]?pl(ane)?[ _-]?loc|smart ?brain|smart ?exam|asset[ _-]?cal|calibration|"
                             r"sense[ _-]?ref|ref[ _-]?scan|coil[ _-]?survey)(?![a-z])|scout(?![a-z])")


def _ct_map(tags: dict[str, str]) -> list[str]:
    """The ImageType values marking a CT series a computed map (none for any other series)."""
    if tags.get("Modality", "").upper() != "CT":
        return []
    return sorted(set(tags.get("ImageType", "").upper().split("\\")) & _CT_MAPS)


# what a series of no anatomy the model knows gets (its note ends so, whoever reads it: the app or a command)
NAMED_ONLY = ("no modality is assumed for it, so it is synthesized from only when you name its modality (the "
              "synthesis panel's Source; --source), and a cohort leaves it out")


def _not_anatomical_notes(tags: dict[str, str]) -> list[str]:
    """A series whose values are no anatomy of a modality the model knows — a CT map (perfusion,
    material), a localizer or calibration scan, an MR series such as a diffusion, SWI or phase image — in
    a note; the series gets no modality, so no route takes it unless the user names one."""
    mapped = _ct_map(tags)
    if mapped:
        return [f"ImageType {tags['ImageType']} marks a derived map ({', '.join(mapped)}), not an anatomical CT: its "
                f"values are not Hounsfield units of tissue, and no unit is assumed for them; {NAMED_ONLY}"]
    image_type = tags.get("ImageType", "")
    named = [(word, tags[key]) for word, key in (("description", "SeriesDescription"), ("protocol", "ProtocolName"))
             if _LOCALIZER_NAME.search(tags.get(key, "").lower())]
    if "LOCALIZER" in image_type.upper().split("\\"):
        why = f"ImageType {image_type} marks it a localizer"
    elif named:
        why = f"its {named[0][0]} {named[0][1]!r} names a localizer or calibration scan"
    elif tags.get("Modality", "").upper() == "MR" and not tags.get("StudioModality"):
        return _other_mr_notes(tags)
    else:
        return []
    return [f"{why} (positioning or calibration images, not a volume for diagnosis or synthesis): {NAMED_ONLY}"]


def _other_mr_notes(tags: dict[str, str]) -> list[str]:
    """An MR series of no modality the model knows (:func:`engine.modalities.other_mr_series`, as the
    guess reads it) in a note naming what says so."""
    kind = modalities.other_mr_series(tags)
    if not kind:
        return []
    image_type = tags.get("ImageType", "")
    if modalities.other_mr("", image_type):
        why = f"ImageType {image_type}"
    else:
        said = [f"{key} {tags[key]!r}" for key in modalities.DICOM_NAMES if tags.get(key)]
        why = f"its names ({', '.join(said)})"
    return [f"{why}: a {kind} series, not a scan of a modality the model knows (T1, T1CE, T2, FLAIR, PD): "
            f"{NAMED_ONLY}"]


def _units(array: np.ndarray, group: SeriesGroup, tags: dict[str, str], modality: str | None) -> tuple[str, list[str]]:
    dicom_modality = tags.get("Modality", "").upper()
    notes: list[str] = []
    if tags.get("PhotometricInterpretation", "").upper() == "MONOCHROME1":
        notes.append("MONOCHROME1: high values are meant to display dark; values are kept as stored "
                     "(after rescale) and shown inverted, as the scanner shows them")
    if tags.get("StudioUnit"):
        return tags["StudioUnit"], notes
    if dicom_modality == "CT" and not _ct_map(tags):     # a map's values are its own (not said in HU)
        return "HU", notes
    if dicom_modality == "PT":
        factor, unit, pet_notes = suv_factor(tags, [s.acquired for s in group.slices])
        if factor is not None and factor != 1.0:
            array *= np.float32(factor)
        return unit, notes + pet_notes
    if modality is not None:
        return modalities.get(modality).unit, notes
    return ("a.u." if dicom_modality == "MR" else ""), notes
