"""Writing a volume as a derived DICOM series with pydicom: one file per slice, full geometry,
physical units kept through RescaleSlope/Intercept, identity kept (or anonymised), written
atomically into a folder, valid for ``dciodvfy`` (dicom3tools).

Provenance: a new SeriesInstanceUID and new SOPInstanceUIDs; the Study and the Frame of Reference
of a DICOM source are kept, and each slice references the source image it was computed from
(SourceImageSequence, ReferencedSeriesSequence) when the volume is on the source's slices.
ContentQualification is RESEARCH. A synthetic volume's SeriesDescription names target and source
("synthetic CT from CBCT — research use only"), and our private block marks it SYNTHETIC.

Storage and encoding (int16 pixels, value = stored × slope + intercept):
  * CT / CBCT (HU) → CT Image Storage. Slope 1, intercept 0 whenever the rounded HU fit int16
    (error ≤ 0.5 HU); otherwise slope = range / 65532 (error ≤ slope / 2).
  * MR → MR Image Storage. Integer values that fit int16 are stored exactly (slope 1,
    intercept 0); any other float range is spread over the whole int16 range, so the error is
    at most range / 131064 (≈ 8 ppm of the range) whatever the scale of the values.
  * PET → PET Image Storage, intercept 0 (the PET IOD requires it), slope = max |value| / 32767,
    Units GML for SUVbw (the DICOM spelling of g/ml), BQML for Bq/ml, NONE where no unit is known
    (never a guessed SUV); a converted PET keeps its decay correction, corrected-image flags, patient
    weight and radiopharmaceutical (dose, half-life, start), so SUV can still be computed from it.
  * anything else → Secondary Capture Image Storage, Modality OT, encoded like MR.
Slope and intercept are rounded to what the 16-character DS value can hold *before* the pixels
are quantised, so readers reproduce the values exactly as computed here.

Anonymisation (``anonymise``: True, or an engine.io.deidentify.Anonymiser shared by one export
session) applies DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile, to the
series (engine.io.deidentify): descriptors are only our own text, Study / Frame of Reference UIDs
are mapped consistently within the session, no source image is referenced, and a source marked
BurnedInAnnotation YES is refused unless the session accepts it. BurnedInAnnotation itself is
carried from the source (YES stays YES: the pixels are copied, not cleaned).
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from engine import modalities
from engine.atomic import OutputError, atomic_folder, check_folder_target, check_size
from engine.io.deidentify import Anonymiser, as_anonymiser
from engine.io.dicom_read import stated_padding
from engine.io.dicom_scan import PRIVATE_CREATOR, PRIVATE_GROUP, RADIOPHARMACEUTICAL_TAGS, our_block
from engine.io.errors import VolumeIOError
from engine.io.identity import DERIVED_FRAME, DERIVED_STUDY, patient_keyed
from engine.io.itk_files import NO_ORIENTATION
from engine.io.synthetic_mark import DICOM_SYNTHETIC, series_mark
from engine.io.volume import Volume, finite_filled
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop
from engine.version import version

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RESEARCH_ONLY = "Research use only, not for diagnosis."
# what each IOD requires: CT a third value (a cross-section), MR one too (no named flavour), PET PRIMARY
IMAGE_TYPE = {CT_IMAGE: ["DERIVED", "SECONDARY", "AXIAL"], MR_IMAGE: ["DERIVED", "SECONDARY", "OTHER"],
              PET_IMAGE: ["DERIVED", "PRIMARY"]}
FILE_NAME = re.compile(r"IM\d{6}\.dcm")
SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


@dataclass(frozen=True)
class Encoding:
    sop_class: str
    modality: str          # DICOM Modality
    slope: float
    intercept: float


# BodyPartExamined values of unpaired structures (DICOM PS3.16, CID 4031): Laterality (type 2C) must
# then be absent; for a paired structure, or none named, it is present (empty: unknown for a volume)
UNPAIRED_BODY_PARTS = frozenset(
    "HEAD SKULL BRAIN FACE NOSE MOUTH JAW MAXILLA TONGUE NECK HEADNECK LARYNX THYROID TRACHEA ESOPHAGUS "
    "SPINE CSPINE TSPINE LSPINE SSPINE COCCYX CHEST STERNUM HEART AORTA ABDOMEN CHESTABDOMEN ABDOMENPELVIS "
    "PELVIS WHOLEBODY LIVER PANCREAS SPLEEN STOMACH COLON RECTUM BLADDER PROSTATE UTERUS".split())


def write_dicom_series(volume: Volume, folder: str | Path, *, series_description: str,
                       anonymise: bool | Anonymiser = False, progress: ProgressFn = noop,
                       cancel: CancelToken | None = None) -> Path:
    """Write ``volume`` as a new derived series ``folder/IM000001.dcm`` … and return ``folder``.

    The folder appears only when every file is written (a cancelled or failed write leaves
    nothing). An existing folder is replaced only if it holds nothing but an earlier export
    (``IM*.dcm`` files); otherwise this raises :class:`VolumeIOError`.
    """
    folder = Path(folder)
    check_series_target(folder)
    anonymiser = as_anonymiser(anonymise)
    if anonymiser:
        flagged = series_description
        volume, series_description = anonymiser.prepare(volume, folder)
        if volume.synthetic:                # the guard's flag, "(OOD input)", is no one's identity: it stays
            series_description = series_mark(volume, flagged)
    array = finite_filled(np.asarray(volume.array))
    encoding = choose_encoding(volume, array)
    base = _series_dataset(volume, series_description, anonymiser, encoding, array)
    acquired = source_images(volume)
    sources = [] if anonymiser else acquired
    decays = decay_factors(volume) if encoding.sop_class == PET_IMAGE else []
    direction = volume.direction_matrix
    row, col, axis = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, col)
    nz = volume.shape[0]
    try:
        with atomic_folder(folder) as tmp:
            for k in range(nz):
                check_cancel(cancel)
                position = np.asarray(volume.origin) + k * volume.spacing[2] * axis
                pixels = quantise(array[k], encoding)
                ds = _slice_dataset(base, k, nz, position, float(position @ normal), pixels, encoding)
                if decays and decays[k]:
                    ds.DecayFactor = decays[k]
                source = sources[k] if sources else None
                if source is not None:
                    _reference_source(ds, volume.dicom["SeriesInstanceUID"], volume.dicom["SOPClassUID"], source)
                if acquired and acquired[k] is None:
                    _mark_interpolated(ds, volume.synthetic)
                _save_checked(ds, tmp / f"IM{k + 1:06d}.dcm")
                progress(Progress(k + 1, nz, f"wrote slice {k + 1} of {nz}"))
    except OutputError as exc:
        raise VolumeIOError(folder, exc.problem) from None
    except OSError as exc:
        raise VolumeIOError(folder, f"could not be written ({exc.strerror or exc})") from None
    return folder


def _save_checked(ds: Dataset, path: Path) -> None:
    """Write one file and check that all of it is there (a write cut short by a full disk)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    check_size(path, buffer.tell())


def check_series_target(folder: Path) -> None:
    """Refuse a folder a DICOM series cannot be written to: a file or a link, or one holding files other
    than an earlier export of this app (which the new series replaces)."""
    try:
        check_folder_target(folder)                 # not a file, not a symbolic link
    except OutputError as exc:
        raise VolumeIOError(folder, exc.problem) from None
    if folder.is_dir():
        foreign = [p.name for p in folder.iterdir() if not (p.is_file() and FILE_NAME.fullmatch(p.name))]
        if foreign:
            raise VolumeIOError(folder, f"exists and holds other files ({', '.join(sorted(foreign)[:3])}); "
                                        "choose a new or empty folder (only an earlier DICOM export is replaced)")
        others = next((p.name for p in sorted(folder.iterdir()) if not _ours(p)), None)
        if others:
            raise VolumeIOError(folder, f"holds DICOM files this app did not write ({others}); choose a new or empty "
                                        "folder (only an earlier DICOM export of this app is replaced)")


def _ours(path: Path) -> bool:
    """Whether a DICOM file carries this app's private block (a series it exported, never a scanner's
    files named alike)."""
    try:
        return our_block(pydicom.dcmread(path, stop_before_pixels=True)) is not None
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False


# -- encoding ----------------------------------------------------------------------------------------
def _ds_text(x: float) -> str:
    """``x`` as a DICOM DS value: at most 16 characters. pydicom's formatting gives 17 where rounding
    reaches the next power of ten (9.999999999999998 → "10.00000000000000", an invalid DS a strict
    archive refuses): that text is formatted once more, from its own value."""
    text = format_number_as_ds(float(x))
    return text if len(text) <= 16 else format_number_as_ds(float(text))


def _ds_number(x: float) -> float:
    """``x`` as a DICOM DS (16 characters) would hold it."""
    return float(_ds_text(x))


def choose_encoding(volume: Volume, array: np.ndarray) -> Encoding:
    """SOP class by modality family, Modality from the registry, slope/intercept for the values."""
    family = _family(volume)
    modality = modalities.get(volume.modality).dicom_modality if family and volume.modality else "OT"
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if family == "PET":
        peak = max(abs(lo), abs(hi))
        slope = _ds_number(peak / 32767 * (1 + 1e-9)) if peak > 0 else 1.0
        return Encoding(PET_IMAGE, modality, slope, 0.0)
    sop = {"CT": CT_IMAGE, "MR": MR_IMAGE}.get(family or "", SECONDARY_CAPTURE)
    integral = bool(np.all(array == np.round(array)))
    fits = round(lo) >= -32768 and round(hi) <= 32767
    if fits and (family == "CT" or integral):
        return Encoding(sop, modality, 1.0, 0.0)
    if hi - lo <= 0:
        return Encoding(sop, modality, 1.0, _ds_number(lo))
    intercept = _ds_number((lo + hi) / 2)
    slope = _ds_number(max(hi - intercept, intercept - lo) / 32766 * (1 + 1e-9))
    return Encoding(sop, modality, slope, intercept)


def quantise(array: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Physical values → the int16 stored values (computed in float64)."""
    stored = np.round((np.asarray(array, dtype=np.float64) - encoding.intercept) / encoding.slope)
    return np.clip(stored, -32768, 32767).astype("<i2")


def _family(volume: Volume) -> str | None:
    if not volume.modality:
        return None
    try:
        return modalities.get(volume.modality).family
    except ValueError:
        return None


# -- data sets ---------------------------------------------------------------------------------------
def _series_dataset(volume: Volume, description: str, anonymiser: Anonymiser | None, encoding: Encoding,
                    array: np.ndarray) -> Dataset:
    identity = volume.dicom if volume.synthetic else derived_identity(volume)   # a synthetic's: its source's
    src = {k: str(v) for k, v in identity.items() if v not in (None, "")}
    now = datetime.datetime.now()
    today, clock = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = IMAGE_TYPE.get(encoding.sop_class, ["DERIVED", "SECONDARY"])
    ds.InstanceCreationDate, ds.InstanceCreationTime = today, clock
    ds.SOPClassUID = encoding.sop_class
    ds.Modality = encoding.modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDate = ds.ContentDate = today
    ds.SeriesTime = ds.ContentTime = clock
    description = (description or volume.name or "SynerMedGen Studio export").strip()
    ds.SeriesDescription = (series_mark(volume, description) if volume.synthetic else description)[:64]
    ds.ContentQualification = "RESEARCH"
    ds.SeriesNumber = _series_number(src.get("SeriesNumber"), volume)
    ds.Manufacturer = "SynerMedGen Studio"
    ds.SoftwareVersions = version()
    ds.DerivationDescription = _led_by(description, f"Made by SynerMedGen Studio. {RESEARCH_ONLY}", 1024,
                                       cut_first=True)     # ST: a long description is cut, never the statement
    ds.ImageComments = f"{description[:1000]}. {RESEARCH_ONLY}"
    burned_in = src.get("BurnedInAnnotation", "").strip().upper()
    if burned_in in ("YES", "NO"):          # what the source's pixels were said to carry; unsaid stays unsaid
        ds.BurnedInAnnotation = burned_in
    lossy = src.get("LossyImageCompression", "")          # a NIfTI source's is not known: not claimed
    if lossy in ("00", "01"):
        ds.LossyImageCompression = lossy
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if lossy == "01" and src.get(keyword):
            setattr(ds, keyword, src[keyword])
    _identity(ds, src, today, clock)
    ds.BodyPartExamined = src.get("BodyPartExamined", "")
    if ds.BodyPartExamined.strip().upper() not in UNPAIRED_BODY_PARTS:
        ds.Laterality = ""                  # type 2C, needed for a paired (or unnamed) part: unknown for a volume
    ds.PositionReferenceIndicator = ""
    if encoding.sop_class in (CT_IMAGE, MR_IMAGE):
        ds.PatientPosition = src.get("PatientPosition", "")
    _geometry(ds, volume)
    _pixel_module(ds, volume, encoding)
    _padding(ds, volume, array, encoding)
    _window(ds, volume, array)
    _modality_module(ds, volume, encoding)
    if anonymiser:
        anonymiser.apply(ds)                # before our private block: the only private data it keeps
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", (volume.modality or "")[:64])
    block.add_new(0x02, "LO", (volume.unit or "")[:64])
    if volume.synthetic:
        block.add_new(0x03, "CS", DICOM_SYNTHETIC)
        block.add_new(0x04, "LO", volume.derived_from[:64])
    if src.get(DERIVED_FRAME) == "YES" or not src.get("FrameOfReferenceUID"):   # not a frame a scanner stated
        block.add_new(0x05, "CS", "YES")
    if src.get(DERIVED_STUDY) in ("YES", "PATIENT") and not anonymiser:     # UIDs drawn here: a re-export keys them
        block.add_new(0x06, "CS", src[DERIVED_STUDY])
    return ds


def _series_number(source: str | None, volume: Volume) -> int:
    """The source's SeriesNumber plus 1000 for a scan's export, plus 10000 × (1 + the target modality's
    place in :data:`engine.modalities.MODALITIES`) for a synthetic: a converted T1 (1007) and the T2
    (30007) and FLAIR (40007) synthesized from series 7 are told apart in a viewer's series list, and
    from scanners' own numbers (Philips' run to thousands)."""
    try:
        number = int(float(source or 0))
    except ValueError:
        number = 0
    if not volume.synthetic:
        return number + 1000
    order = list(modalities.MODALITIES)
    return number + 10000 * (1 + (order.index(volume.modality) if volume.modality in order else len(order)))


def derived_identity(volume: Volume) -> dict[str, str]:
    """A DICOM identity for a volume that came without one (a NIfTI, MHA or NRRD file): the Study and
    Frame of Reference UIDs its exports share — drawn from its voxels and grid (and the patient named for
    it), so a converted scan and a synthetic made from it land in one study and one frame, as their
    geometry is one; no Frame of Reference for a grid whose orientation was assumed (its place in the
    patient is unknown)."""
    if volume.dicom.get("StudyInstanceUID"):
        return dict(volume.dicom)
    digest = hashlib.sha256(np.ascontiguousarray(volume.array, dtype=np.float32).tobytes())
    digest.update(repr((volume.shape, volume.spacing, volume.origin, volume.direction)).encode())
    key = digest.hexdigest()
    identity = {**volume.dicom, "StudyInstanceUID": generate_uid(entropy_srcs=["study", key]), DERIVED_STUDY: "YES"}
    if not any(note == NO_ORIENTATION for note in volume.notes):
        identity["FrameOfReferenceUID"] = generate_uid(entropy_srcs=["frame of reference", key])
        identity[DERIVED_FRAME] = "YES"         # no scanner's frame: our private block says so
    return patient_keyed(identity)             # a patient named for it: its own study (identity.patient_keyed)


UNSTATED_DEIDENTIFICATION = "identity removed before import; method not stated"


def _identity(ds: Dataset, src: dict[str, str], today: str, clock: str) -> None:
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "ReferringPhysicianName", "StudyID", "StudyDescription"):
        setattr(ds, keyword, src.get(keyword, ""))
    if src.get("PatientAge"):
        ds.PatientAge = src["PatientAge"]
    if src.get("PatientIdentityRemoved") == "YES":        # a de-identified source stays said to be, and how
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = src.get("DeidentificationMethod") or UNSTATED_DEIDENTIFICATION
    has_study = bool(src.get("StudyInstanceUID"))
    ds.StudyInstanceUID = src["StudyInstanceUID"] if has_study else generate_uid()
    ds.StudyDate = src.get("StudyDate", "") if has_study else today
    ds.StudyTime = src.get("StudyTime", "") if has_study else clock
    ds.FrameOfReferenceUID = src.get("FrameOfReferenceUID") or generate_uid()


def _geometry(ds: Dataset, volume: Volume) -> None:
    d = volume.direction_matrix
    sx, sy, sz = volume.spacing
    ds.ImageOrientationPatient = [_ds_text(float(v)) for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [_ds_text(float(sy)), _ds_text(float(sx))]
    ds.SliceThickness = _ds_text(_source_number(volume, "SliceThickness") or float(sz))   # the acquisition's, when known
    ds.SpacingBetweenSlices = _ds_text(float(sz))


def _source_number(volume: Volume, keyword: str) -> float | None:
    """The source series' ``keyword`` (SliceThickness, KVP, an MR's TR / TE) as a positive number;
    None when absent or not one (a KVP of "120kV" or a TE of "15,25" is dropped, not written)."""
    try:
        value = float((volume.dicom or {}).get(keyword) or "nan")
    except (TypeError, ValueError):
        return None
    return value if 0.0 < value < 1e6 else None


def _pixel_module(ds: Dataset, volume: Volume, encoding: Encoding) -> None:
    nz, ny, nx = volume.shape
    ds.SamplesPerPixel = 1
    # values kept as a MONOCHROME1 source stored them (high = dark) say so again, or they would show inverted
    inverted = not volume.synthetic and \
        str((volume.dicom or {}).get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME1" if inverted else "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = _ds_text(encoding.slope)
    ds.RescaleIntercept = _ds_text(encoding.intercept)
    ds.RescaleType = "HU" if encoding.sop_class == CT_IMAGE else "US"


def _padding(ds: Dataset, volume: Volume, array: np.ndarray, encoding: Encoding) -> None:
    """The padding outside a reconstructed field of view that the source series stated, stated again
    (PixelPaddingValue, PixelPaddingRangeLimit, as stored values): written without it, a scanner's
    −3024 HU would read as material below air in a planning system. Only for a scan's own values where
    they hold it (a synthetic volume holds none: synthesis fills that region)."""
    stated = stated_padding(volume)
    if volume.synthetic or not stated:
        return
    low, high = stated
    if not np.any((array >= low) & (array <= high)):
        return
    first, last = (int(v) for v in quantise(np.array([low, high]), encoding))
    ds.add_new((0x0028, 0x0120), "SS", first)                 # PixelPaddingValue: signed, as PixelRepresentation 1
    if last != first:
        ds.add_new((0x0028, 0x0121), "SS", last)              # PixelPaddingRangeLimit


def _window(ds: Dataset, volume: Volume, array: np.ndarray) -> None:
    family = _family(volume)
    if family in ("CT", "PET") and modalities.on_scale(volume.modality, volume.unit):
        assert volume.modality, "a family comes from the volume's modality"
        level, width = modalities.get(volume.modality).window
    else:
        sample = array[:: max(1, array.shape[0] // 16)]
        lo, hi = np.percentile(sample, (1.0, 99.0)) if sample.size else (0.0, 1.0)
        level, width = (lo + hi) / 2, max(hi - lo, 1e-6)
    ds.WindowCenter = _ds_text(float(level))
    ds.WindowWidth = _ds_text(float(width))


def _modality_module(ds: Dataset, volume: Volume, encoding: Encoding) -> None:
    """The type 1 and 2 attributes of the CT / MR / PET / SC image IODs that a derived image has."""
    if encoding.sop_class == CT_IMAGE:      # a converted CT keeps its tube voltage (HU-to-density tables use it)
        kvp = None if volume.synthetic else _source_number(volume, "KVP")
        ds.KVP = "" if kvp is None else _ds_text(kvp)
        ds.AcquisitionNumber = ""
    elif encoding.sop_class == MR_IMAGE:
        acquired = {} if volume.synthetic else mr_acquisition(volume)
        for keyword, value in (acquired or RESEARCH_MODE).items():   # a converted scan keeps its sequence
            setattr(ds, keyword, value)
    elif encoding.sop_class == PET_IMAGE:
        ds.Units = pet_units(volume.unit)
        if ds.Units == "GML":
            ds.SUVType = "BW"
        acquired = {} if volume.synthetic else {k: v for k, v in (volume.dicom or {}).items() if v}
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.CorrectedImage = acquired.get("CorrectedImage", "").split("\\") if acquired.get("CorrectedImage") else ""
        ds.DecayCorrection = acquired.get("DecayCorrection", "NONE")
        ds.NumberOfSlices = volume.shape[0]
        ds.FrameReferenceTime = "0"
        ds.ActualFrameDuration = ""
        ds.CollimatorType = ""
        ds.AcquisitionDate = ds.AcquisitionTime = ""
        if acquired.get("SeriesDate") and acquired.get("SeriesTime"):     # DecayCorrection START's reference
            ds.SeriesDate, ds.SeriesTime = acquired["SeriesDate"], acquired["SeriesTime"]
        if acquired.get("PatientWeight"):
            ds.PatientWeight = acquired["PatientWeight"]
        drug = Dataset()
        for keyword in RADIOPHARMACEUTICAL_TAGS:
            if acquired.get(keyword):
                setattr(drug, keyword, acquired[keyword])
        if len(drug):
            drug.RadionuclideCodeSequence = Sequence()      # type 2: the nuclide's code was not read
        ds.RadiopharmaceuticalInformationSequence = Sequence([drug] if len(drug) else [])
        ds.PatientOrientationCodeSequence = Sequence()
        ds.PatientGantryRelationshipCodeSequence = Sequence()
    else:
        ds.ConversionType = "WSD"
        ds.PatientOrientation = ""          # type 2C; the geometry is in ImageOrientationPatient


# The MR Image module of a series no acquisition made (a synthetic; a source whose sequence is unusable)
RESEARCH_MODE = {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "",
                 "EchoTime": "", "RepetitionTime": "", "EchoTrainLength": ""}   # TR: type 2C, unless EP or SK
SCANNING_SEQUENCES = {"SE", "IR", "GR", "EP", "RM"}
SEQUENCE_VARIANTS = {"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"}


def mr_acquisition(volume: Volume) -> dict[str, str]:
    """The MR Image module's acquisition attributes of a converted scan, from its source's tags as
    valid values (numbers rewritten as DS / IS, unknown terms dropped); empty when the source's
    ScanningSequence is missing or not the standard's (the export then says research mode)."""
    source = volume.dicom or {}
    sequence = [v.strip().upper() for v in source.get("ScanningSequence", "").split("\\") if v.strip()]
    if not sequence or not set(sequence) <= SCANNING_SEQUENCES:
        return {}
    variant = [v.strip().upper() for v in source.get("SequenceVariant", "").split("\\") if v.strip()]
    train = _source_number(volume, "EchoTrainLength")
    out = {"ScanningSequence": "\\".join(sequence),
           "SequenceVariant": "\\".join(variant) if variant and set(variant) <= SEQUENCE_VARIANTS else "NONE",
           "ScanOptions": source.get("ScanOptions", ""), "MRAcquisitionType": _term(source, "MRAcquisitionType", {"2D", "3D"}),
           "EchoTrainLength": str(int(train)) if train is not None and train.is_integer() else ""}
    for keyword in ("EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "MagneticFieldStrength"):
        number = _source_number(volume, keyword)
        if number is not None or keyword in ("EchoTime", "RepetitionTime") or (keyword == "InversionTime" and "IR" in sequence):
            out[keyword] = "" if number is None else _ds_text(number)   # type 2 (TI: 2C with IR)
    return out


def _term(source: dict[str, str], keyword: str, allowed: set[str]) -> str:
    value = source.get(keyword, "").strip().upper()
    return value if value in allowed else ""
# PET Units (0054,1001) for the units the reader gives a PET volume
PET_UNITS = {"SUVbw": "GML", "Bq/ml": "BQML", "counts": "CNTS"}


def pet_units(unit: str) -> str:
    """The DICOM Units of PET values in ``unit``: GML for SUVbw, BQML, CNTS, another defined term as
    the source stated it (PROPCNTS, …), NONE for a unit no one stated (never a guessed SUV)."""
    if not unit:                    # no unit stated on a PET volume: its modality's (engine.modalities.on_scale)
        return "GML"
    if unit in PET_UNITS:
        return PET_UNITS[unit]
    return unit if re.fullmatch(r"[A-Z0-9]{1,16}", unit) and unit != "UNKNOWN" else "NONE"


def source_images(volume: Volume) -> list[tuple[str, int | None] | None]:
    """(SOP instance UID, frame number or None) of the source image of each z slice (None for a slice
    interpolated between acquired ones), when the volume carries its DICOM source's slices
    (``SliceSOPInstanceUIDs``, one entry per slice); else empty."""
    src = volume.dicom or {}
    refs = src.get("SliceSOPInstanceUIDs", "").split("\\")
    if not (src.get("SeriesInstanceUID") and src.get("SOPClassUID")) or len(refs) != volume.shape[0] or not any(refs):
        return []
    out: list[tuple[str, int | None] | None] = []
    for ref in refs:
        uid, _, frame = ref.partition(":")
        out.append((uid, int(frame) if frame else None) if uid else None)
    return out


def decay_factors(volume: Volume) -> list[str]:
    """Each z slice's DecayFactor ("" where unknown) for an acquired PET that carries its source's
    (``SliceDecayFactors``, one entry per slice); else empty."""
    factors = (volume.dicom or {}).get("SliceDecayFactors", "").split("\\")
    return factors if not volume.synthetic and len(factors) == volume.shape[0] else []


INTERPOLATED_NOTE = "No slice was acquired at this position: interpolated between the acquired slices beside it"


def _mark_interpolated(ds: Dataset, synthetic: bool) -> None:
    """Say in a slice's comments (what a viewer shows beside the image) that no acquired slice lies at its
    position: reading filled a missing slice by interpolation (or, for a synthetic, its source's)."""
    what = f"{INTERPOLATED_NOTE} (in the source)" if synthetic else INTERPOLATED_NOTE
    ds.ImageComments = _led_by(what, str(ds.ImageComments), 10240)                 # LT
    ds.DerivationDescription = _led_by(what, str(ds.DerivationDescription), 1024)   # ST


def _led_by(note: str, text: str, limit: int, cut_first: bool = False) -> str:
    """``note``, then ``text``, in at most ``limit`` characters: cut at the start of ``text`` (its end,
    the research use statement, stays), or — ``cut_first`` — at the end of ``note``."""
    joined = f"{note}. {text}"
    if len(joined) <= limit:
        return joined
    if cut_first:
        return f"{note[:limit - len(text) - 3]}…. {text}"
    return f"{note}. …{text[len(text) - (limit - len(note) - 3):]}"


def _reference_source(ds: Dataset, series_uid: str, sop_class: str, source: tuple[str, int | None]) -> None:
    """The source image this slice was computed from, and its series (Common Instance Reference)."""
    uid, frame = source
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = sop_class, uid
    if frame is not None:
        image.ReferencedFrameNumber = frame
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = SOURCE_IMAGE_PURPOSE
    image.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.SourceImageSequence = Sequence([image])
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = sop_class, uid
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedInstanceSequence = Sequence([instance])
    ds.ReferencedSeriesSequence = Sequence([series])


def _slice_dataset(base: Dataset, k: int, nz: int, position: np.ndarray, location: float,
                   pixels: np.ndarray, encoding: Encoding) -> Dataset:
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds_text(float(v)) for v in position]
    ds.SliceLocation = _ds_text(location)
    if encoding.sop_class == PET_IMAGE:
        ds.ImageIndex = k + 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
