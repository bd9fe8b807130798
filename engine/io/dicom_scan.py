"""Scanning DICOM files by their headers only: tell images from non-images and junk, expand
DICOMDIRs, check that the pixel data is complete, and describe every image slice (or frame of
an enhanced multi-frame file) with what grouping, sorting and rescaling need.

Pixel data is never read here: pydicom stops before it, and a few bytes at the pixel data
element tell whether the file holds all of it.
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from engine.io import catalog
from engine.io.dicom_reg import StoredRegistration, registration_from
from engine.io.errors import Skipped
from engine.io.identity import DERIVED_FRAME, DERIVED_STUDY
from engine.jobs import CancelToken, check_cancel

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DEFLATED = "1.2.840.10008.1.2.1.99"          # Deflated Explicit VR Little Endian
MAX_FRAMES = 100_000                          # frames in one file: beyond any scanner's, refused before one is listed
DEFLATE_MAX_RATIO = 1032                      # the most deflate can compress
PRIVATE_CREATOR = "SynerMedGen Studio"        # our writer's private block (group 0x0011)
PRIVATE_GROUP = 0x0011
VIDEO_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)}   # MPEG-2, MPEG-4, HEVC: frames share fragments
PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT", b"SV", b"UV"}
_NOT_IMAGE_MODALITIES = {
    "RTSTRUCT": "not an image", "RTPLAN": "not an image", "RTRECORD": "not an image",
    "RTDOSE": "a dose grid, not an image volume (dose import is not supported)",
    "SEG": "a segmentation, not an image", "SR": "not an image", "KO": "not an image",
    "PR": "not an image", "REG": "not an image", "DOC": "not an image",
}
_IMAGE_SOP_NAMES = ("Image Storage", "Parametric Map Storage")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")

# Series-level attributes kept as strings (identity for the writer, text for modality guessing,
# PET fields for SUV).
SERIES_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "FrameOfReferenceUID", "SeriesInstanceUID", "SeriesDescription",
    "SeriesNumber", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "Modality",
    "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "PatientPosition", "ProtocolName", "SequenceName",
    "ImageComments", "StationName", "RepetitionTime", "EchoTime", "InversionTime", "ScanningSequence",
    "SequenceVariant", "ScanOptions", "MRAcquisitionType", "FlipAngle", "EchoTrainLength", "MagneticFieldStrength",
    "ContrastBolusAgent", "PhotometricInterpretation", "Units", "DecayCorrection", "CorrectedImage",
    "SOPClassUID", "BurnedInAnnotation", "ImageType", "KVP", "PatientIdentityRemoved", "DeidentificationMethod",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)
RADIOPHARMACEUTICAL_TAGS = ("Radiopharmaceutical", "RadionuclideTotalDose", "RadionuclideHalfLife",
                            "RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime")


class NotReadable(Exception):
    """A file that is not DICOM, or whose header cannot be read (the message says why)."""


class NotDicom(NotReadable):
    """The file holds no DICOM data set at all (junk, text, another format); ``content``: it starts
    with anything but zeros (an empty file, or a DICOM file cut off inside its zero preamble, does not)."""

    def __init__(self, message: str, content: bool = True) -> None:
        super().__init__(message)
        self.content = content


@dataclass
class SliceInfo:
    """One 2-D image: a single-frame file or one frame of a multi-frame file."""

    path: str
    frame: int | None                   # frame index in a multi-frame file
    series_uid: str
    sop_uid: str
    rows: int
    columns: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None   # (row spacing y, column spacing x)
    thickness: float | None
    spacing_between: float | None
    instance: int
    always_split: tuple[str, ...]       # echo, temporal position, stack: separate volumes
    acquisition: str                    # split only where positions repeat
    extra_split: tuple[str, ...]        # image type, TE, TI, trigger, b-value: last resort
    slope: float = 1.0
    intercept: float = 0.0
    acquired: str = ""                  # AcquisitionDate+Time (DT), for PET decay
    frames_in_file: int = 1
    file_origin: tuple[float, float, float] | None = None   # IPP of a legacy multi-frame file
    notes: tuple[str, ...] = ()         # header values that were not usable, and what was done instead
    decay_factor: str = ""              # a PET image's DecayFactor (per image: bed positions differ)
    identity: tuple[str, str, str] = ("", "", "")   # PatientID, StudyInstanceUID, FrameOfReferenceUID
    description: str = ""               # SeriesDescription
    series: tuple[str, str] = ("", "")  # Modality, SeriesNumber: one series states one of each
    timing: tuple[str, str, str] = ("", "", "")     # this image's RepetitionTime, EchoTime, InversionTime

    @property
    def tags_key(self) -> tuple[str, ...]:
        """Which series-level tags this image shares: a UID can hold several patients', descriptions',
        echoes' or timings' images (a broken anonymiser, a localizer filed in its series, a dual echo's
        TEs with or without EchoNumbers, an MP2RAGE's inversions)."""
        return (self.series_uid, *self.identity, self.description, self.always_split[0], *self.timing)

    def timing_tags(self) -> dict[str, str]:
        """The timing this image states, as series tags (its own echo's TE, not the first file's)."""
        return {k: v for k, v in zip(("RepetitionTime", "EchoTime", "InversionTime"), self.timing) if v}

    @property
    def orientation(self) -> tuple[float, ...]:
        """The ImageOrientationPatient of a positioned slice (a valid orientation and a position)."""
        assert self.iop is not None, "asked only of a positioned slice"
        return self.iop

    @property
    def position(self) -> tuple[float, float, float]:
        """The ImagePositionPatient of a positioned slice."""
        assert self.ipp is not None, "asked only of a positioned slice"
        return self.ipp


@dataclass
class ScanResult:
    slices: list[SliceInfo] = field(default_factory=list)
    series_tags: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict)   # by SliceInfo.tags_key
    skipped: list[Skipped] = field(default_factory=list)
    registrations: list[StoredRegistration] = field(default_factory=list)   # spatial registrations (REG) read


# -- reading one header ------------------------------------------------------------------------
_lenient = {"inside": 0, "before": pydicom.config.WARN}      # readers inside lenient_values, the mode they left
_lenient_lock = threading.Lock()


@contextlib.contextmanager
def lenient_values():
    """Within it pydicom takes a header value that breaks its VR's rules (IS '1A') without a warning:
    this module's own checks judge the values it uses and say what they dropped in the series'
    notes, while pydicom's warnings would reach the user as stray lines on stderr. pydicom's setting
    is global: it stays lenient while any thread reads and is restored when the last one is done
    (two overlapping readers restoring in turn would leave it lenient for good)."""
    settings = pydicom.config.settings
    with _lenient_lock:
        if _lenient["inside"] == 0:
            _lenient["before"], settings.reading_validation_mode = settings.reading_validation_mode, pydicom.config.IGNORE
        _lenient["inside"] += 1
    try:
        yield
    finally:
        with _lenient_lock:
            _lenient["inside"] -= 1
            if _lenient["inside"] == 0:
                settings.reading_validation_mode = _lenient["before"]


def read_header(path: str | Path) -> tuple[Dataset, str]:
    """The header of ``path`` (no pixel data) and the state of its pixel data: "ok", "absent",
    or a sentence saying how it is damaged. Raises :class:`NotReadable` for junk."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            head = fp.read(132)
            fp.seek(0)
            if len(head) >= 132 and head[128:132] == b"DICM":
                force = False
            elif _looks_like_bare_dataset(head):
                force = True
            else:
                raise NotDicom("not a DICOM file (no 'DICM' marker and no DICOM data elements at the start)",
                               content=any(head[:128]))
            _check_deflated(fp)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size="16 KB", force=force)
            except RecursionError:
                raise NotReadable("the DICOM header's sequences are nested too deeply to read") from None
            except Exception as exc:  # pydicom raises many kinds on damaged headers
                raise NotReadable(f"the DICOM header cannot be read ({type(exc).__name__}: {exc})") from None
            if force and "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
                raise NotDicom("not a DICOM file (no DICOM data set found)")
            state = _pixel_data_state(fp, ds, fp.tell(), size)
    except OSError as exc:
        raise NotReadable(f"cannot be opened ({exc.strerror or exc})") from None
    return ds, state


def _check_deflated(fp) -> None:
    """A deflated data set is unpacked whole by pydicom: refuse one that would unpack to more than
    the memory available (a deflate bomb), measured by unpacking it once without keeping it."""
    head = fp.read(4096)
    fp.seek(0)
    if DEFLATED.encode() not in head or head[128:132] != b"DICM" or head[136:138] != b"UL":
        return
    start = 144 + struct.unpack("<L", head[140:144])[0]          # after FileMetaInformationGroupLength's group
    available = catalog.available_memory()
    limit = catalog.MEMORY_SHARE * available if available is not None else float("inf")
    unpacker, unpacked = zlib.decompressobj(-zlib.MAX_WBITS), 0
    fp.seek(start)
    try:
        while (chunk := fp.read(1 << 20)) and not unpacker.eof:
            while chunk and not unpacker.eof:
                unpacked += len(unpacker.decompress(chunk, 1 << 24))
                chunk = unpacker.unconsumed_tail
                if unpacked > limit:
                    raise NotReadable(f"its deflated data set unpacks to more than the {limit / 2**30:.1f} GiB of "
                                      f"memory a volume may take (a deflate bomb?)")
    except zlib.error as exc:
        raise NotReadable(f"its deflated data set is damaged ({exc})") from None
    finally:
        fp.seek(0)


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A DICOM data set written without preamble: it starts with group 0002 or 0008."""
    if len(head) < 8:
        return False
    return int.from_bytes(head[:2], "little") in (2, 8) or int.from_bytes(head[:2], "big") in (2, 8)


def _pixel_data_state(fp, ds: Dataset, pos: int, size: int) -> str:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_transfer_syntax and ts.is_deflated:
        expected = _expected_native_bytes(ds)          # positions in a deflated data set are not file positions
        if expected > size * DEFLATE_MAX_RATIO:
            return (f"damaged: Rows × Columns × frames need {expected} bytes, more than {size} deflated bytes "
                    f"can hold")
        return "ok"
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = False, True
    fp.seek(pos)
    head = fp.read(12)
    if len(head) < 8:
        return "absent"
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", head[:4])
    if (group, elem) not in PIXEL_TAGS:
        return "absent"
    if implicit:
        length, header = struct.unpack(e + "L", head[4:8])[0], 8
    elif head[4:6] in _LONG_VRS:
        length, header = struct.unpack(e + "L", head[8:12])[0], 12
    else:
        length, header = struct.unpack(e + "H", head[6:8])[0], 8
    start = pos + header
    if length == 0xFFFFFFFF:
        state, fragments = _encapsulated_state(fp, start, size, e)
        frames = frame_count(ds)
        if state == "ok" and frames > max(1, fragments - 1) and ts not in VIDEO_SYNTAXES:  # item 1: the offset table
            return (f"damaged: NumberOfFrames is {frames} but the compressed pixel data holds "
                    f"{max(0, fragments - 1)} fragment(s), at least one per frame")
        return state
    if start + length > size:
        return f"truncated: the pixel data needs {length} bytes but the file holds only {max(0, size - start)}"
    expected = _expected_native_bytes(ds)
    if expected and length < expected and (group, elem) == (0x7FE0, 0x0010):
        return (f"the pixel data holds {length} bytes, fewer than Rows × Columns × frames × samples "
                f"need ({expected})")
    return "ok"


def _encapsulated_state(fp, pos: int, size: int, e: str) -> tuple[str, int]:
    """The state of encapsulated pixel data and its number of items (offset table included)."""
    fp.seek(pos)
    for n in range(1_000_000):
        item = fp.read(8)
        if len(item) < 8:
            return "truncated: the compressed pixel data ends before its last fragment", n
        group, elem, length = struct.unpack(e + "HHL", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return "ok", n
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return "damaged: the compressed pixel data has an invalid fragment", n
        if fp.tell() + length > size:
            return "truncated: the compressed pixel data ends inside a fragment", n
        fp.seek(length, os.SEEK_CUR)
    return "damaged: too many pixel data fragments", 1_000_000


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or not a whole number ≥ 1)."""
    try:
        return max(1, int(str(ds.get("NumberOfFrames") or 1).strip()))
    except (TypeError, ValueError):
        return 1


def _expected_native_bytes(ds: Dataset) -> int:
    try:
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * frame_count(ds) * int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError):
        return 0
    return (n * bits + 7) // 8


# -- what a header holds -----------------------------------------------------------------------
def _label(ds: Dataset) -> str:
    sop = str(ds.get("SOPClassUID", "") or "")
    return str(ds.get("Modality", "") or "").upper() or (UID(sop).name if sop else "") or "DICOM object"


def no_image_reason(ds: Dataset, pixel_state: str) -> str | None:
    """Why this file holds no image at all — an RT object, a report — (None when it may hold one:
    :func:`not_an_image_reason` may still refuse it)."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    sop_name = UID(sop).name if sop else ""
    label = _label(ds)
    if modality in _NOT_IMAGE_MODALITIES:
        return f"{label}: {_NOT_IMAGE_MODALITIES[modality]}, skipped"
    known = bool(sop) and sop_name != sop
    if known and not any(k in sop_name for k in _IMAGE_SOP_NAMES):
        return f"{label}: not an image ({sop_name}), skipped"
    return None                   # a header without pixels may be an image cut off early: not said here


def not_an_image_reason(ds: Dataset, pixel_state: str) -> str | None:
    """Why this file is no image slice we load (None when it is one)."""
    label = _label(ds)
    found = no_image_reason(ds, pixel_state)
    if found:
        return found
    if pixel_state == "absent" and "Rows" in ds and "Columns" in ds:     # an image's header, then nothing
        return f"{label}: no pixel data after its image header (a truncated file, or a header-only object), skipped"
    if pixel_state == "absent" or "Rows" not in ds or "Columns" not in ds:
        return f"{label}: no pixel data (a header-only object, or a file cut off early), skipped"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if int(ds.get("SamplesPerPixel") or 1) > 1 or photometric in _COLOUR:
        return f"{label}: colour image ({photometric or 'several samples per pixel'}), not a grey-scale volume; skipped"
    if "MOSAIC" in text(ds.get("ImageType")).upper().split("\\"):
        return (f"{label}: a Siemens mosaic ({_mosaic_images(ds)} tiled in one frame, as EPI, diffusion and "
                "fMRI series are stored), not a slice; not unpacked, so skipped — convert it to NIfTI first "
                "(e.g. with dcm2niix)")
    if pixel_state != "ok":
        return f"{label} file is {pixel_state}"
    rows, columns, bits = (_int(ds.get(k)) for k in ("Rows", "Columns", "BitsAllocated"))
    if rows < 1 or columns < 1:
        return f"{label} file is damaged: its image is {rows}×{columns} pixels"
    if bits not in (1, 8, 16, 32, 64):
        return f"{label} file is damaged: BitsAllocated is {bits}"
    frames = str(ds.get("NumberOfFrames") or "1").strip()
    if not frames.isdigit() or not 1 <= int(frames) <= MAX_FRAMES:
        return f"{label} file is damaged: NumberOfFrames is {frames[:20]!r}, not 1 to {MAX_FRAMES}"
    return None


def _mosaic_images(ds: Dataset) -> str:
    """How many images a Siemens mosaic tiles (its private NumberOfImagesInMosaic), in words."""
    element = ds.get((0x0019, 0x100A))
    value = getattr(element, "value", None)
    if isinstance(value, bytes) and len(value) in (2, 4):
        value = int.from_bytes(value, "little")
    try:
        count = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "several images"
    return f"{count} images" if 1 < count < 10_000 else "several images"


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(text(v) for v in value)
    return str(value).strip()


def series_tags(ds: Dataset) -> dict[str, str]:
    """Series-level attributes as strings (identity, guessing text, PET)."""
    tags = {k: text(ds.get(k)) for k in SERIES_TAGS}
    rp = ds.get("RadiopharmaceuticalInformationSequence")
    if rp:
        for k in RADIOPHARMACEUTICAL_TAGS:
            tags[k] = text(rp[0].get(k))
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    timing = _first(shared.get("MRTimingAndRelatedParametersSequence")) if shared is not None else None
    echo = _first(shared.get("MREchoSequence")) if shared is not None else None
    if timing is not None and not tags["RepetitionTime"]:
        tags["RepetitionTime"] = text(timing.get("RepetitionTime"))
    if echo is not None and not tags["EchoTime"]:
        tags["EchoTime"] = text(echo.get("EffectiveEchoTime"))
    block = our_block(ds)
    if block is not None:
        tags["StudioModality"] = text(block[0x01].value) if 0x01 in block else ""
        tags["StudioUnit"] = text(block[0x02].value) if 0x02 in block else ""
        tags["StudioSynthetic"] = text(block[0x03].value) if 0x03 in block else ""
        tags["StudioDerivedFrom"] = text(block[0x04].value) if 0x04 in block else ""
        tags[DERIVED_FRAME] = text(block[0x05].value) if 0x05 in block else ""
        tags[DERIVED_STUDY] = text(block[0x06].value) if 0x06 in block else ""
    if ds.get("file_meta") is not None:
        tags["TransferSyntaxUID"] = text(ds.file_meta.get("TransferSyntaxUID"))
    return tags


def our_block(ds: Dataset):
    """This app's private block in ``ds`` (written by :mod:`engine.io.dicom_write`), or None."""
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None


def _first(seq) -> Dataset | None:
    return seq[0] if seq else None


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


class _Checked:
    """Numbers read from a header; a value that is not finite (or not positive where it must be) is
    dropped, and a note says which and what is used instead."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def floats(self, name: str, value, n: int, instead: str, positive: bool = False) -> tuple[float, ...] | None:
        numbers = _floats(value, n) if value is not None else None
        if numbers is None or (all(map(_finite, numbers)) and (not positive or min(numbers) > 0)):
            return numbers
        shown = "\\".join(f"{v:g}" for v in numbers)
        self.notes.append(f"{name} is {shown}, not usable: {instead}")
        return None

    def number(self, name: str, value, instead: str, positive: bool = False) -> float | None:
        number = _float(value)
        if number is None or (_finite(number) and (not positive or number > 0)):
            return number
        self.notes.append(f"{name} is {number:g}, not usable: {instead}")
        return None

    def point(self, name: str, value, instead: str) -> tuple[float, float, float] | None:
        xyz = self.floats(name, value, 3, instead)
        return None if xyz is None else (xyz[0], xyz[1], xyz[2])

    def pair(self, name: str, value, instead: str, positive: bool = False) -> tuple[float, float] | None:
        ab = self.floats(name, value, 2, instead, positive=positive)
        return None if ab is None else (ab[0], ab[1])

    def rescale(self, slope, intercept) -> tuple[float, float]:
        slope = self.number("RescaleSlope", slope, "1 used; values may not be in physical units")
        intercept = self.number("RescaleIntercept", intercept, "0 used; values may not be in physical units")
        if slope == 0:
            self.notes.append("RescaleSlope is 0, not usable: 1 used; values may not be in physical units")
            slope = None
        return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _finite(value: float) -> bool:
    return abs(value) < 1e12                  # also False for NaN


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def slices_of(ds: Dataset, path: str) -> list[SliceInfo]:
    """Every 2-D image in the header: one for a single-frame file, one per frame otherwise."""
    common: dict[str, Any] = dict(
        path=path, series_uid=text(ds.get("SeriesInstanceUID")) or f"file:{path}",
        identity=(text(ds.get("PatientID")), text(ds.get("StudyInstanceUID")), text(ds.get("FrameOfReferenceUID"))),
        description=text(ds.get("SeriesDescription")),
        series=(text(ds.get("Modality")), text(ds.get("SeriesNumber"))),
        sop_uid=text(ds.get("SOPInstanceUID")), rows=_int(ds.get("Rows")), columns=_int(ds.get("Columns")),
        instance=_int(ds.get("InstanceNumber")),
    )
    n_frames = frame_count(ds)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return [_enhanced_frame(ds, i, n_frames, common) for i in range(n_frames)]
    acquired = text(ds.get("AcquisitionDate")) + text(ds.get("AcquisitionTime"))
    checked = _Checked()
    spacing = checked.pair("PixelSpacing", ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"),
                           "in-plane spacing set to 1 mm", positive=True)
    if "ModalityLUTSequence" in ds:             # the stored values go through a table, not a line
        slope, intercept = 1.0, 0.0
        checked.notes.append("values mapped through the file's Modality LUT Sequence (a table, not a linear rescale)")
    else:
        slope, intercept = checked.rescale(ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
    base: dict[str, Any] = dict(
        common, iop=checked.floats("ImageOrientationPatient", ds.get("ImageOrientationPatient"), 6,
                                   "the slice is treated as unpositioned"),
        ipp=checked.point("ImagePositionPatient", ds.get("ImagePositionPatient"),
                          "the slice is treated as unpositioned"),
        pixel_spacing=spacing,
        thickness=checked.number("SliceThickness", ds.get("SliceThickness"), "ignored", positive=True),
        spacing_between=checked.number("SpacingBetweenSlices", ds.get("SpacingBetweenSlices"), "ignored",
                                       positive=True),
        always_split=(text(ds.get("EchoNumbers")), text(ds.get("TemporalPositionIdentifier")), ""),
        acquisition=text(ds.get("AcquisitionNumber")),
        extra_split=(text(ds.get("ImageType")), text(ds.get("EchoTime")), text(ds.get("InversionTime")),
                     text(ds.get("TriggerTime")), text(ds.get("DiffusionBValue"))),
        slope=slope, intercept=intercept, acquired=acquired, frames_in_file=n_frames, notes=tuple(checked.notes),
        decay_factor=text(ds.get("DecayFactor")),
        timing=(text(ds.get("RepetitionTime")), text(ds.get("EchoTime")), text(ds.get("InversionTime"))),
    )
    if n_frames == 1:
        return [SliceInfo(frame=None, **base)]
    # a legacy multi-frame file (NM, US, stripped enhanced): frames stay in file order, no positions
    base.update(ipp=None, file_origin=base["ipp"])
    return [SliceInfo(frame=i, **base) for i in range(n_frames)]


def _enhanced_frame(ds: Dataset, i: int, n_frames: int, common: dict[str, Any]) -> SliceInfo:
    shared = _first(ds.get("SharedFunctionalGroupsSequence")) or Dataset()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    own = per_frame[i] if i < len(per_frame) else Dataset()

    def item(keyword: str) -> Dataset:
        for group in (own, shared):
            seq = group.get(keyword)
            if seq:
                return seq[0]
        return Dataset()

    measures, content, pvt = item("PixelMeasuresSequence"), item("FrameContentSequence"), item("PixelValueTransformationSequence")
    echo, diffusion = item("MREchoSequence"), item("MRDiffusionSequence")
    checked = _Checked()
    slope, intercept = checked.rescale(pvt.get("RescaleSlope"), pvt.get("RescaleIntercept"))
    return SliceInfo(
        frame=i, **common,
        iop=checked.floats("ImageOrientationPatient", item("PlaneOrientationSequence").get("ImageOrientationPatient"),
                           6, "the frame is treated as unpositioned"),
        ipp=checked.point("ImagePositionPatient", item("PlanePositionSequence").get("ImagePositionPatient"),
                          "the frame is treated as unpositioned"),
        pixel_spacing=checked.pair("PixelSpacing", measures.get("PixelSpacing"), "in-plane spacing set to 1 mm",
                                   positive=True),
        thickness=checked.number("SliceThickness", measures.get("SliceThickness"), "ignored", positive=True),
        spacing_between=checked.number("SpacingBetweenSlices",
                                       measures.get("SpacingBetweenSlices") or ds.get("SpacingBetweenSlices"),
                                       "ignored", positive=True),
        always_split=(text(echo.get("EffectiveEchoTime")), text(content.get("TemporalPositionIndex")),
                      text(content.get("StackID"))),
        acquisition=text(content.get("FrameAcquisitionNumber")),
        extra_split=(text(diffusion.get("DiffusionBValue")),),
        slope=slope, intercept=intercept, acquired=text(content.get("FrameAcquisitionDateTime")),
        frames_in_file=n_frames, notes=tuple(checked.notes),
        timing=(text(item("MRTimingAndRelatedParametersSequence").get("RepetitionTime")),
                text(echo.get("EffectiveEchoTime")), ""),
    )


# -- DICOMDIR ------------------------------------------------------------------------------------
def dicomdir_files(path: Path) -> tuple[list[Path], list[Skipped]]:
    """The files a DICOMDIR's directory records reference (ReferencedFileID, relative to the
    DICOMDIR's folder, matched case-insensitively as media burned on other systems need), and
    those that are missing. The records are read directly rather than through pydicom's
    FileSet, which stages a temporary folder and refuses a whole DICOMDIR over one bad record."""
    try:
        records = pydicom.dcmread(path, force=True).DirectoryRecordSequence
    except Exception as exc:
        return [], [Skipped(str(path), f"DICOMDIR cannot be read ({type(exc).__name__}: {exc})")]
    found, missing = [], []
    for record in records:
        ref = record.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else [str(p) for p in ref]
        if not _inside_media(parts):
            missing.append(Skipped(str(path), f"DICOMDIR entry {'/'.join(parts)!r} points outside the "
                                              f"DICOMDIR's folder; not followed"))
            continue
        target = _find_case_insensitive(path.parent, parts)
        if target is not None and not _resolves_inside(target, path.parent):
            missing.append(Skipped(str(path), f"DICOMDIR entry {'/'.join(parts)!r} is a link out of the "
                                              f"DICOMDIR's folder; not followed"))
            continue
        if target is not None:
            found.append(target)
        else:
            missing.append(Skipped(str(path.parent.joinpath(*parts)), f"listed in DICOMDIR {path} but missing"))
    return found, missing


def _inside_media(parts: list[str]) -> bool:
    """A ReferencedFileID names a file below the DICOMDIR's folder: plain names only (no ``..``,
    no root, no drive, no separators, which PS3.10 does not allow in a component)."""
    return all(p and p not in (".", "..") and not re.search(r"[/\\:]", p) for p in parts)


def _resolves_inside(target: Path, root: Path) -> bool:
    try:
        return target.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _find_case_insensitive(root: Path, parts: list[str]) -> Path | None:
    exact = root.joinpath(*parts)
    if exact.is_file():
        return exact
    here = root
    for part in parts:
        try:
            match = next((c for c in here.iterdir() if c.name.upper() == part.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        here = match
    return here if here.is_file() else None


# -- scanning many files --------------------------------------------------------------------------
def scan_files(paths: Iterable[str | Path], cancel: CancelToken | None = None) -> ScanResult:
    """Read the headers of ``paths`` (following DICOMDIRs) into slices and skipped files."""
    result = ScanResult()
    seen_files: set[str] = set()
    seen_images: dict[tuple[str, int | None], str] = {}
    queue = deque(Path(p) for p in paths)
    while queue:
        check_cancel(cancel)
        path = queue.popleft()
        try:
            real = str(path.resolve())
        except OSError:
            real = str(path)
        if real in seen_files:
            continue
        seen_files.add(real)
        try:
            with lenient_values():
                ds, state = read_header(path)
                _add(result, path, ds, state, queue, seen_images)
        except NotReadable as exc:
            # a file without a suffix that is no DICOM at all (a disc's README, LOCKFILE or VERSION) holds
            # no image; one named as DICOM (.dcm) is a damaged image
            junk = isinstance(exc, NotDicom) and exc.content and not path.suffix
            result.skipped.append(Skipped(str(path), str(exc), not_an_image=junk))
        except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily and raises many kinds
            detail = " ".join(str(exc).split())[:200]
            result.skipped.append(Skipped(str(path), f"the DICOM header is damaged ({type(exc).__name__}: {detail})"))
    return result


def _add(result: ScanResult, path: Path, ds: Dataset, state: str, queue: deque,
         seen_images: dict[tuple[str, int | None], str]) -> None:
    """What one file's header adds to the scan: files a DICOMDIR lists, slices, or a skip."""
    media = text(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None))
    if media == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        found, missing = dicomdir_files(path)
        queue.extend(found)
        result.skipped.extend(missing)
        return
    reason = not_an_image_reason(ds, state)
    if reason:
        registration, problem = registration_from(ds, path)        # a REG: no image, but how frames relate
        if registration is not None:
            result.registrations.append(registration)              # used (the comparison, preparing), not skipped
        else:
            result.skipped.append(Skipped(str(path), problem or reason,
                                          not_an_image=no_image_reason(ds, state) is not None))
        return
    slices = slices_of(ds, str(path))
    first = slices[0]
    if first.sop_uid and (first.sop_uid, first.frame) in seen_images:
        other = seen_images[(first.sop_uid, first.frame)]
        result.skipped.append(Skipped(str(path), f"the same image (SOPInstanceUID) as {other}; ignored",
                                      not_an_image=True))
        return
    shared: dict[str, str] | None = None
    for s in slices:                    # one tag set per patient, description, echo, timing in the file
        if s.tags_key not in result.series_tags:
            shared = shared if shared is not None else series_tags(ds)
            result.series_tags[s.tags_key] = {**shared, **s.timing_tags()}
    for s in slices:
        if s.sop_uid:
            seen_images[(s.sop_uid, s.frame)] = str(path)
    result.slices.extend(slices)
