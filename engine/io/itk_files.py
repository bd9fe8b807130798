"""NIfTI, MHA/MHD and NRRD volumes through SimpleITK: header-only scans, loads, atomic writes.
Headers are checked in Python first (engine.io.header_check); SimpleITK reads in the reader
process (engine.io.reader_process), so a file that crashes or hangs it cannot take us down."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import SimpleITK as sitk

from engine import modalities
from engine.atomic import atomic_file
from engine.io import bids
from engine.io.catalog import Catalog, SeriesEntry, ensure_fits_in_memory
from engine.io.data_size import check_complete, check_voxel_data, data_files
from engine.io.errors import VolumeIOError, special_file
from engine.io.header_check import HeaderFacts, check_header
from engine.io.reader_process import native
from engine.io.synthetic_mark import itk_fields, read_itk_fields
from engine.io.volume import SPACES, UNKNOWN_SPACE, OtherWorld, Volume, finite_filled
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel

if TYPE_CHECKING:
    from nibabel.nifti1 import Nifti1Header
    from nibabel.spatialimages import SpatialImage

SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd"}
# read, never written: the voxels would sit in a second file, named after the temporary file they were written as
DETACHED = {".mhd": ".mha", ".nhdr": ".nrrd"}


def file_kind(path: str | Path) -> str | None:
    name = str(path).lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def read_info(path: Path) -> sitk.ImageFileReader:
    """SimpleITK's reader of ``path`` with the header read, once the file is known to hold the voxel
    data its header promises (a cut-off file is refused here: VolumeIOError naming it)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeIOError(path, f"cannot be read as a {file_kind(path)} image ({_first_line(exc)})") from None
    check_voxel_data(path, _voxel_bytes(reader))
    return reader


def _voxel_bytes(reader: sitk.ImageFileReader) -> int:
    """How many bytes of voxels the header promises (every volume of a 4-D file, every component)."""
    one = sitk.Image([1, 1], reader.GetPixelID(), reader.GetNumberOfComponents())      # the element's size
    item = sitk.GetArrayViewFromImage(one).itemsize
    return int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents() * item


def _is_nifti2(path: Path) -> bool:
    """NIfTI-2 files (which SimpleITK does not read) start with sizeof_hdr = 540, NIfTI-1 with 348."""
    if file_kind(path) != "nifti":
        return False
    import gzip
    import struct
    import zlib

    try:
        opener = gzip.open if str(path).lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and 540 in (struct.unpack("<i", head)[0], struct.unpack(">i", head)[0])


def _nibabel_only(path: Path):
    """nibabel's image for a NIfTI file SimpleITK does not read, else None: NIfTI-2, or a 2-D slice in
    a coronal, sagittal or oblique plane (ITK keeps the 2 × 2 corner of its orientation, degenerate
    there: the file was refused as damaged) or of no stated thickness (an affine's third column 0)."""
    if file_kind(path) != "nifti":
        return None
    nifti2 = _is_nifti2(path)
    import nibabel

    if not nifti2:
        try:
            image = cast("SpatialImage", nibabel.load(str(path)))
        except Exception:  # noqa: BLE001 - SimpleITK's reading reports a damaged header
            return None
        affine = np.asarray(image.affine, dtype=float)
        if len(image.shape) != 2 or not np.all(np.isfinite(affine)):      # a damaged one: the header check says so
            return None
        in_plane = affine[:3, :2] / np.maximum(np.linalg.norm(affine[:3, :2], axis=0), 1e-12)
        if abs(np.linalg.det(in_plane[:2])) > 1e-3 and np.linalg.norm(affine[:3, 2]) > 1e-6:
            return None
    check_header(path)
    try:
        image = cast("SpatialImage", nibabel.load(str(path)))     # a NIfTI-2 file loads as a Nifti2Image
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a damaged header
        raise VolumeIOError(path, f"cannot be read as a NIfTI{'-2' if nifti2 else ''} image ({exc})") from None
    check_voxel_data(path, int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize)
    return image


def _nibabel_affine(image, to_mm: np.ndarray) -> np.ndarray:
    """nibabel's voxel-to-RAS affine in mm (a slice's third column along its plane's normal)."""
    affine = to_mm @ image.affine
    return _slice_normal(affine) if len(image.shape) < 3 or image.shape[2] == 1 else affine


def _load_nibabel(path: Path, image, volume_index: int | None) -> Volume:
    """A NIfTI file through nibabel (:func:`_nibabel_only`): RAS affine → LPS geometry, scaling applied."""
    shape = image.shape
    if len(shape) == 4 and shape[3] > 1:
        if volume_index is None:
            raise VolumeIOError(path, f"is a 4-D image with {shape[3]} volumes: pick one as {path}#INDEX")
        if not 0 <= volume_index < shape[3]:
            raise VolumeIOError(path, f"volume index {volume_index} is outside 0…{shape[3] - 1}")
    n = int(np.prod(shape[:3], dtype=np.int64))
    stored = int(np.prod(shape, dtype=np.int64)) * image.get_data_dtype().itemsize
    ensure_fits_in_memory(str(path), stored + n * (8 + 4))        # as stored, scaled in float64, float32
    components: list[str] = []
    try:
        data = np.asanyarray(image.dataobj)
        if data.dtype.names:                # RGB(A): one field per colour, the first one used
            components.append(_components_note(len(data.dtype.names)))
            data = data[data.dtype.names[0]]
        data = np.asarray(data, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        raise VolumeIOError(path, f"the voxel data cannot be read ({exc}); is the file truncated?") from None
    if data.ndim == 4:
        data = data[..., volume_index or 0]
    while data.ndim < 3:
        data = data[..., None]
    header = image.header
    (spacing, origin, direction), notes, space = _nibabel_placed(path, image)
    return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, origin, direction, name=path.name,
                  source=str(path), notes=tuple(components + notes), space=space,
                  other_world=_qform_world(header, spatial_unit(header)[0]), **_nibabel_mark(image))


def _nibabel_placed(path: Path, image) -> tuple[Grid, list[str], str]:
    """(spacing, origin, orthonormal direction) in LPS of a file nibabel reads (:func:`_nibabel_only`),
    as nibabel places it (its sform, else its qform), checked; the spatial unit's note; the world its
    transform's code names."""
    header = image.header
    to_mm, notes = spatial_unit(header)
    spacing, origin, direction = _lps_grid(_nibabel_affine(image, to_mm))
    _check_geometry(path, spacing, origin, direction)
    code = int(header["sform_code"]) if int(header["sform_code"]) > 0 else int(header["qform_code"])   # nibabel's affine
    return ((spacing, origin, tuple(_orthonormal(np.reshape(direction, (3, 3))).ravel())), notes,
            _XFORM_NAMES.get(code, "scanner"))


Grid = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]


def _lps_grid(affine: np.ndarray) -> Grid:
    """(spacing, origin, direction) in LPS of a NIfTI voxel-to-RAS ``affine``."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    sx, sy, sz = (float(s) for s in np.linalg.norm(lps[:3, :3], axis=0))
    ox, oy, oz = (float(o) for o in lps[:3, 3])
    return (sx, sy, sz), (ox, oy, oz), tuple((lps[:3, :3] / np.where([sx, sy, sz], [sx, sy, sz], 1.0)).ravel())


NO_ORIENTATION = ("the header gives no orientation (qform_code and sform_code are 0): its axes are assumed to run "
                  "right to left, front to back, foot to head (LPS) from origin 0; left and right may be swapped")
_XFORM_NAMES = {0: UNKNOWN_SPACE, **dict(enumerate(SPACES, start=1))}     # NIfTI xform codes 0–5
_XFORM_CODES = {space: code for code, space in _XFORM_NAMES.items()}


_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])          # RAS ↔ LPS (its own inverse)
# a tenth of a voxel: two transforms placing the grid's corners this close place it alike (a qform's float32
# quaternion rounds an oblique near-180° rotation of a 1280 mm grid by 0.11 mm)
PLACEMENT_TOLERANCE_VOXELS = 0.1


def _qform_world(header, to_mm: np.ndarray) -> OtherWorld | None:
    """The world a NIfTI header's qform names, where an sform places the volume and the qform names
    another world or places it elsewhere (a registered image: its sform in MNI space, its qform the
    scanner's) — kept so that what is made from it is written with both, as the input was (ITK-based
    viewers place by the qform, FSL, SPM and nibabel by the sform); None otherwise."""
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code <= 0 or qform_code <= 0:
        return None
    size = tuple(int(n) for n in header.get_data_shape()[:3]) + (1,) * max(0, 3 - len(header.get_data_shape()))
    sform, qform = to_mm @ header.get_sform(), to_mm @ header.get_qform()
    if size[2] == 1:
        sform, qform = _slice_normal(sform), _slice_normal(qform)
    if not _orthogonal(sform):         # the qform placed it: one world
        return None
    if sform_code == qform_code and not _placed_apart(sform, qform, size):
        return None                     # one placement (the quaternion's float32 rounding apart)
    between = _RAS_LPS @ qform @ np.linalg.inv(sform) @ _RAS_LPS
    return OtherWorld(_XFORM_NAMES.get(qform_code, "scanner"), tuple(float(v) for v in between.ravel()))


def _placed_apart(sform: np.ndarray, qform: np.ndarray, size) -> bool:
    """Whether two voxel-to-world affines place the grid's corners more than
    :data:`PLACEMENT_TOLERANCE_VOXELS` of the sform's smallest voxel apart."""
    voxel = float(np.min(np.linalg.norm(sform[:3, :3], axis=0)))
    return _corner_gap(sform, qform, size) > PLACEMENT_TOLERANCE_VOXELS * voxel


def _corner_gap(a: np.ndarray, b: np.ndarray, size) -> float:
    """The largest distance (mm) between where two voxel-to-world affines put the grid's corners."""
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    return float(np.max(np.linalg.norm((corners @ (a - b).T)[:, :3], axis=1)))


def _nifti_grid(path: Path, size) -> tuple[Grid | None, list[str], str, OtherWorld | None]:
    """The grid FSL, SPM and nibabel give a NIfTI-1 file — its sform when sform_code > 0, else its
    qform — as (spacing, origin, direction) in LPS, with notes, the space its code names
    (:data:`SPACES`) and the other world its qform names (:func:`_qform_world`); (None, notes,
    "scanner", None) keeps SimpleITK's, which takes the qform over an sform of code 2–5 (aligned, MNI:
    the registered images FLIRT, SPM and fMRIPrep write). A sheared sform, which no orthogonal grid
    holds, gives way to the qform with a note; a file with neither is noted as of assumed orientation."""
    if file_kind(path) != "nifti":
        return None, [], "scanner", None
    import nibabel

    try:
        header = cast("Nifti1Header", nibabel.load(str(path)).header)
        sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
        to_mm, unit_notes = spatial_unit(header)
        sform, qform = to_mm @ header.get_sform(), to_mm @ header.get_qform()
    except Exception:  # noqa: BLE001 - nibabel's many error types: SimpleITK's reading stands
        return None, [], "scanner", None
    if sform_code <= 0 and qform_code <= 0:
        return None, [NO_ORIENTATION], _XFORM_NAMES[0], None
    size = tuple(size[:3]) + (1,) * (3 - len(size))
    if size[2] == 1:                    # a slice (a 2-D file too): its plane's normal where the header gives none
        sform, qform = _slice_normal(sform), _slice_normal(qform)
    if sform_code <= 0:
        return _lps_grid(qform), unit_notes, _XFORM_NAMES.get(qform_code, "scanner"), None
    sform_name = f"sform (code {sform_code}, {_XFORM_NAMES.get(sform_code, 'unknown')})"
    gap = _corner_gap(sform, qform, size) if qform_code > 0 else 0.0
    if not _orthogonal(sform):
        if qform_code <= 0:
            raise VolumeIOError(path, f"its {sform_name} is sheared, which no orthogonal grid holds, and it has no "
                                      "qform: resample it onto an orthogonal grid first (e.g. FSL's flirt -applyxfm)")
        return _lps_grid(qform), [f"its {sform_name} is sheared, which no orthogonal grid holds: the qform is used, "
                                  f"which places voxels up to {gap:.1f} mm from where FSL, SPM and nibabel show "
                                  "them"], _XFORM_NAMES.get(qform_code, "scanner"), None
    apart = qform_code > 0 and _placed_apart(sform, qform, size)
    notes = [f"qform and sform disagree (up to {gap:.1f} mm at the grid's corners): the {sform_name} is used, as FSL, "
             "SPM and nibabel do; a NIfTI written from it keeps both"] if apart else []
    return _lps_grid(sform), unit_notes + notes, _XFORM_NAMES.get(sform_code, "scanner"), _qform_world(header, to_mm)


def _slice_normal(affine: np.ndarray) -> np.ndarray:
    """A one-slice NIfTI's affine with a third column along its plane's normal (1 mm) where the header's
    is zero (pixdim[3] = 0 in a 2-D file): a slice's place and orientation need no thickness."""
    if np.linalg.norm(affine[:3, 2]) > 1e-6:
        return affine
    fixed = np.array(affine, dtype=float)
    normal = np.cross(fixed[:3, 0], fixed[:3, 1])
    fixed[:3, 2] = normal / (np.linalg.norm(normal) or 1.0)
    return fixed


_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}


def spatial_unit(header) -> tuple[np.ndarray, list[str]]:
    """The 4×4 scaling that brings a NIfTI header's transforms from its spatial unit (xyzt_units:
    metre, mm, micron; none stated: mm, the format's convention) to mm, with a note when it is not 1."""
    unit = header.get_xyzt_units()[0]
    factor = _TO_MM.get(unit, 1.0)
    notes = [] if factor == 1.0 else [f"the header's spatial unit is {unit} (xyzt_units): spacing and position "
                                      f"converted to mm (× {factor:g})"]
    return np.diag([factor, factor, factor, 1.0]), notes


def header_grid(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...], str]:
    """(size, spacing, origin, direction, space) of a volume file's header, as loading places it (a NIfTI
    file's sform over SimpleITK's choice of the qform: :func:`_nifti_grid`); its dimension as SimpleITK
    reads it (nibabel, for a file SimpleITK does not read: NIfTI-2, some 2-D slices); the world its
    coordinates are in (:data:`SPACES`)."""
    image = _nibabel_only(path)
    if image is not None:
        grid, _, space = _nibabel_placed(path, image)
        return (tuple(int(n) for n in image.shape), *grid, space)
    reader = read_info(path)
    spacing, origin, direction, _, space = _placed_header(path, reader)
    return tuple(reader.GetSize()), spacing, origin, direction, space


def _placed_header(path: Path, reader: sitk.ImageFileReader) -> tuple[tuple[float, ...], tuple[float, ...],
                                                                         tuple[float, ...], list[str], str]:
    """(spacing, origin, direction, notes, space) of a header read by SimpleITK, placed by :func:`_nifti_grid`."""
    size, spacing, origin = tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin())
    direction = tuple(reader.GetDirection())
    grid, notes, space, _ = _nifti_grid(path, size)
    if grid is not None:                # a 2-D file's grid is its slice's place in 3-D
        spacing, origin, direction = grid[0] + spacing[3:], grid[1] + origin[3:], _padded(grid[2], max(3, len(size)))
    return spacing, origin, direction, notes, space


def _nifti_placed(path: Path, image: sitk.Image, notes: list[str]) -> tuple[str, OtherWorld | None]:
    """Place ``image`` (3-D, read by SimpleITK) on the grid :func:`_nifti_grid` gives its file; notes
    added to ``notes``; the space its transform's code names and the other world its qform names."""
    grid, found, space, other = _nifti_grid(path, image.GetSize())
    notes.extend(found)
    if grid is not None:
        spacing, origin, direction = grid
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(tuple(_orthonormal(np.reshape(direction, (3, 3))).ravel()))
    return space, other


# The unit of a volume whose values are off its modality's scale (a PET in Bq/ml): a MetaImage / NRRD
# field, in NIfTI the intent_name ("unit=Bq/ml", 16 bytes), which no other field of the format holds.
UNIT_KEY = "SynerMedGen_unit"
NIFTI_UNIT_PREFIX = "unit="
NIFTI_INTENT_NAME_BYTES = 16


def _nibabel_mark(image) -> dict:
    header = image.header
    return {**read_itk_fields({"descrip": header["descrip"].item().decode("utf-8", errors="replace")}),
            "unit": _recorded_unit({"intent_name": header["intent_name"].item().decode("utf-8", errors="replace")})}


def _itk_mark(reader: sitk.ImageFileReader) -> dict:
    fields = {}
    for key in reader.GetMetaDataKeys():
        try:
            fields[key] = reader.GetMetaData(key)
        except (TypeError, RuntimeError, UnicodeError):      # a damaged key or value: not our marking
            continue
    return {**read_itk_fields(fields), "unit": _recorded_unit(fields)}


def _recorded_unit(fields: dict[str, str]) -> str:
    """The unit this app recorded in the header ("" when none)."""
    intent = (fields.get("intent_name") or "").strip("\x00 ")
    if intent.startswith(NIFTI_UNIT_PREFIX):
        return intent[len(NIFTI_UNIT_PREFIX):].strip()
    return (fields.get(UNIT_KEY) or "").strip()


def _off_scale_unit(volume: Volume) -> str:
    """The unit to record in a file's header: a known modality's values off its scale ("" otherwise)."""
    if volume.modality not in modalities.MODALITIES or modalities.on_scale(volume.modality, volume.unit):
        return ""
    return volume.unit or "unknown"


def _positive_spacing(spacing, direction) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A negative spacing (NRRD allows one, as teem does) as its size along the reversed axis: the
    same voxels at the same places, with positive spacings."""
    signs = np.where(np.asarray(spacing, dtype=float) < 0, -1.0, 1.0)
    d = np.asarray(direction, dtype=float).reshape(len(signs), len(signs)) * signs     # each axis's column
    return tuple(float(abs(s)) for s in spacing), tuple(float(v) for v in d.ravel())


def _check_geometry(path: Path, spacing, origin, direction) -> None:
    """Refuse NaN / infinite / zero geometry (a damaged header) before it becomes a Volume."""
    spacing = np.asarray(spacing, dtype=float)
    values = np.concatenate([spacing.ravel(), np.asarray(origin, float).ravel(), np.asarray(direction, float).ravel()])
    if not np.all(np.isfinite(values)) or np.min(spacing) <= 0 or np.max(np.abs(values)) > 1e12:
        raise VolumeIOError(path, f"its geometry is not usable (spacing {_numbers(spacing)} mm, origin "
                                  f"{_numbers(origin)}): the header is damaged")
    if abs(np.linalg.det(np.asarray(direction, dtype=float).reshape(len(spacing), len(spacing)))) < 1e-6:
        raise VolumeIOError(path, "its direction cosines are degenerate (the axes do not span space): the "
                                  "header is damaged")


def _numbers(values) -> str:
    return "×".join(f"{float(v):.6g}" for v in np.ravel(values))


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ITK ERROR" in ln or "Description" in ln or "error" in ln.lower()]
    text = (useful or lines or ["unknown error"])[-1]
    return re.sub(r"\w+\(0x[0-9a-f]+\):\s*", "", text.split("ITK ERROR:")[-1]).strip()[:200]   # no "MetaImageIO(0x…):"


def _openable(path: Path) -> None:
    special = special_file(path)
    if special:
        raise VolumeIOError(path, f"is {special}, not a file")
    if not path.exists():
        raise VolumeIOError(path, "no such file")


def scan_file(path: str | Path) -> Catalog:
    """One entry for a NIfTI/MHA/NRRD file (header only; voxels are read by ``load``)."""
    path = Path(path)
    _openable(path)
    nibabel_image = _nibabel_only(path)
    if nibabel_image is not None:
        return _scan_nibabel(path, nibabel_image)
    check_header(path)
    entry = native(path, _scan_itk, str(path))
    return Catalog(entries=[dataclasses.replace(
        entry, loader=lambda progress, cancel: load_file(path, progress=progress, cancel=cancel))])


def _scan_itk(name: str) -> SeriesEntry:
    """The entry of a checked header, read by SimpleITK (in the reader process; no loader)."""
    path = Path(name)
    reader = read_info(path)
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    spacing, origin, direction, notes, space = _placed_header(path, reader)
    spacing, direction = _positive_spacing(spacing, direction)
    n_volumes = 1
    if dim == 4:
        n_volumes = size[3]
        if n_volumes > 1:
            notes.append(_four_d_note(path, n_volumes))
    elif dim not in (2, 3):
        raise VolumeIOError(path, f"{dim}-D images are not supported (need a 2-D slice or a 3-D volume)")
    if reader.GetNumberOfComponents() > 1:
        notes.append(_components_note(reader.GetNumberOfComponents()))
    _check_geometry(path, spacing, origin, direction)
    shape_zyx = (size[2] if dim >= 3 else 1, size[1], size[0])
    mark = _itk_mark(reader)
    modality = mark["modality"] or bids.name_modality(path.name)
    entry = SeriesEntry(
        key=str(path),
        kind=file_kind(path) or "image",
        paths=tuple(str(p) for p in data_files(path)),      # a .mhd's .raw too: changing it changes the volume
        description=path.name,
        modality=modality,
        shape_zyx=shape_zyx,
        spacing_xyz=(spacing + (1.0,) * 3)[:3],
        orientation=_orientation_of(direction, dim) + (" (assumed)" if NO_ORIENTATION in notes else "")
        + _space_label(space),
        notes=tuple(notes),
        synthetic=mark["synthetic"],
        volumes=n_volumes,
    )
    return entry


def _components_note(count: int) -> str:
    return f"{count} components per voxel (a colour or vector image): only the first is used"


def _space_label(space: str) -> str:
    """What a scan entry's orientation adds for a world other than the scanner's: `` (MNI space)``."""
    return "" if space in ("scanner", UNKNOWN_SPACE) else f" ({space} space)"     # unknown: "LPS (assumed)" says it


def _four_d_note(path: Path, n_volumes: int) -> str:
    return (f"4-D image with {n_volumes} volumes: opening it asks which one (on the command line "
            f"name it as {path}#INDEX, INDEX 0…{n_volumes - 1})")


def scan_volume_of(path: str | Path, index: int) -> Catalog:
    """The entry of volume ``index`` of a 4-D file (what ``FILE#INDEX`` names)."""
    path = Path(path)
    whole = scan_file(path).entries[0]
    if whole.volumes == 1 and index == 0:
        return Catalog(entries=[whole])
    if not 0 <= index < whole.volumes:
        raise VolumeIOError(path, f"volume index {index} is outside 0…{whole.volumes - 1}")
    entry = dataclasses.replace(
        whole, key=f"{path}#{index}", description=f"{path.name} #{index} (volume {index + 1} of {whole.volumes})",
        notes=tuple(n for n in whole.notes if not n.startswith("4-D image")), volumes=1,
        loader=lambda progress, cancel: load_file(path, index, progress=progress, cancel=cancel))
    return Catalog(entries=[entry])


def _scan_nibabel(path: Path, image) -> Catalog:
    shape = tuple(image.shape) + (1,) * max(0, 3 - len(image.shape))
    notes = []
    if len(shape) == 4 and shape[3] > 1:
        notes.append(_four_d_note(path, shape[3]))
    fields = image.get_data_dtype().names
    if fields:
        notes.append(_components_note(len(fields)))
    (spacing, _, direction), unit_notes, space = _nibabel_placed(path, image)
    notes += unit_notes
    mark = _nibabel_mark(image)
    entry = SeriesEntry(
        key=str(path), kind="nifti", paths=(str(path),), description=path.name,
        modality=mark["modality"] or bids.name_modality(path.name), shape_zyx=(shape[2], shape[1], shape[0]),
        spacing_xyz=spacing, orientation=_orientation_of(direction, min(len(image.shape), 3)) + _space_label(space),
        notes=tuple(notes),
        synthetic=mark["synthetic"],
        volumes=shape[3] if len(shape) == 4 else 1,
        loader=lambda progress, cancel: load_file(path, progress=progress, cancel=cancel),
    )
    return Catalog(entries=[entry])


def _padded(direction: tuple[float, ...], dim: int) -> tuple[float, ...]:
    """A 3×3 direction as the ``dim``×``dim`` one of a 4-D header (time axis unchanged)."""
    full = np.eye(dim)
    full[:3, :3] = np.reshape(direction, (3, 3))
    return tuple(full.ravel())


def _orientation_of(direction: tuple[float, ...], dim: int) -> str:
    if dim < 3:
        return "2-D"
    d = np.asarray(direction, dtype=float).reshape(dim, dim)[:3, :3]
    return Volume(np.zeros((1, 1, 1), np.float32), direction=tuple(_orthonormal(d).ravel())).orientation()


def _orthonormal(d: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(d)
    return u @ vt


def load_file(path: str | Path, volume_index: int | None = None,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Volume:
    """Read a NIfTI/MHA/NRRD file into a :class:`Volume` (float32 in the file's units);
    ``volume_index`` picks one volume of a 4-D file."""
    path = Path(path)
    _openable(path)
    check_cancel(cancel)
    nibabel_image = _nibabel_only(path)
    if nibabel_image is not None:
        volume = _load_nibabel(path, nibabel_image, volume_index)
    else:
        facts = check_header(path)
        peak = _peak_bytes(facts)
        ensure_fits_in_memory(str(path), peak)
        volume = native(path, _load_itk, str(path), volume_index, peak_bytes=peak, cancel=cancel)
    check_cancel(cancel)
    volume = _numbers_only(path, volume)
    modality = volume.modality or bids.name_modality(path.name)     # our mark's, else the name's
    notes = list(volume.notes)
    if volume_index is not None:        # which volume an output was made from goes with it (its input notes)
        notes.insert(0, f"volume #{volume_index} (counted from 0) of the 4-D file {path.name}")
        volume = volume.replace(notes=tuple(notes))
    if modality is not None:
        mod = modalities.get(modality)
        if mod.family == "CT" and volume.array.size and float(np.nanmin(volume.array)) >= 0:
            notes.append("CT values are all ≥ 0: the file may hold raw stored values, not Hounsfield units")
        unit = volume.unit or _unstated_unit(volume.array, mod, notes)
        volume = volume.replace(modality=modality, unit=unit, notes=tuple(notes))
    if progress is not None:
        progress(Progress(1, 1, f"read {path.name}"))
    return volume


SUV_CEILING = 100.0          # no SUVbw of a body lies above this (a bladder's reaches tens): a file's
                             # 99th percentile above it holds activity (Bq/ml) or counts, not SUV


def _unstated_unit(array: np.ndarray, mod: modalities.Modality, notes: list[str]) -> str:
    """The unit of a file that states none: its modality's (HU, SUVbw, a.u.); a PET whose values are
    beyond any SUV is left "unknown" rather than called SUV. ``notes`` gets what was assumed."""
    if mod.family != "PET":
        return mod.unit
    finite = array[np.isfinite(array)]
    top = float(np.percentile(finite[finite > 0], 99)) if np.any(finite > 0) else 0.0
    if top > SUV_CEILING:
        notes.append(f"the file states no unit and its values are far beyond any SUV (99th percentile of the "
                     f"positive values {top:.4g}): unit unknown (Bq/ml or counts?), not SUVbw; no SUV window applies")
        return "unknown"
    notes.append("the file states no unit: SUVbw assumed (its values lie in SUV's range; a file in kBq/ml "
                 "would too: check)")
    return mod.unit


def _numbers_only(path: Path, volume: Volume) -> Volume:
    """``volume`` with its voxels that hold no number (NaN, ±inf: "no data", as masked or padded
    images store it) set to the lowest value, like background (+inf to the highest), and a note
    counting them; a file with no number at all is refused."""
    finite = np.isfinite(volume.array)
    if finite.all():
        return volume
    if not finite.any():
        raise VolumeIOError(path, "holds no number in any voxel (all NaN or infinite)")
    missing = int(finite.size - np.count_nonzero(finite))
    above = int(np.count_nonzero(np.isposinf(volume.array)))
    array = finite_filled(volume.array)
    note = (f"{missing} voxel(s) ({100 * missing / finite.size:.2g} %) held no number (NaN or infinite: no data): "
            f"set to the lowest value, {float(array.min()):g}, like background"
            + (f" ({above} at +infinity to the highest, {float(array.max()):g})" if above else ""))
    return volume.replace(array=array, notes=(*volume.notes, note))


def _nan_restored(path: Path, reader: sitk.ImageFileReader, volume: Volume, volume_index: int | None) -> Volume:
    """``volume`` read by SimpleITK from a floating-point NIfTI file with NaN and ±inf back where the
    file holds them (SimpleITK's NIfTI reader turns them into 0, a real value: 0 HU is water). Only a
    volume with zeros can have lost any, and only its own volume of a 4-D file is read again; a file
    nibabel cannot read keeps SimpleITK's reading."""
    if not re.search(r"\.nii(\.gz)?$", path.name.lower()) or reader.GetPixelID() not in (
            sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64) or \
            not (volume.array == 0).any():
        return volume
    import nibabel

    try:
        proxy = cast("SpatialImage", nibabel.load(str(path))).dataobj
        picked = (slice(None),) * 3 + ((volume_index or 0,) + (0,) * (len(proxy.shape) - 4)    # its volume, component 0
                                       if len(proxy.shape) > 3 else ())
        data = np.asanyarray(proxy[picked])
    except Exception:  # noqa: BLE001 - nibabel's many error types: SimpleITK's reading stands
        return volume
    while data.ndim < 3:
        data = data[..., None]
    data = data.transpose(2, 1, 0)
    missing = ~np.isfinite(data)
    if not missing.any() or missing.shape != volume.shape:
        return volume
    array = np.array(volume.array, dtype=np.float32)
    array[missing] = data[missing]
    return volume.replace(array=array)


def _peak_bytes(facts: HeaderFacts | None) -> int:
    """What reading one volume takes at its peak: in the reader process every voxel as SimpleITK
    returns it (float32 where the header scales them), its numpy copy of one volume and that volume
    as float32; and this process's float32 copy, received while the reader process still holds its own."""
    if facts is None:
        return 0
    voxel = facts.read_itemsize * facts.components
    return math.prod(facts.size) * voxel + facts.voxels_3d * (voxel + 4) + facts.voxels_3d * 4


def _load_itk(name: str, volume_index: int | None) -> Volume:
    """One volume of a checked file, read by SimpleITK (in the reader process)."""
    path = Path(name)
    reader = read_info(path)
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    if dim == 4:
        if volume_index is None and size[3] == 1:
            volume_index = 0
        if volume_index is None:
            raise VolumeIOError(path, f"is a 4-D image with {size[3]} volumes: pick one as {path}#INDEX")
        if not 0 <= volume_index < size[3]:
            raise VolumeIOError(path, f"volume index {volume_index} is outside 0…{size[3] - 1}")
        reader.SetExtractIndex([0, 0, 0, volume_index])
        reader.SetExtractSize(size[:3] + [0])
    elif dim not in (2, 3):
        raise VolumeIOError(path, f"{dim}-D images are not supported (need a 2-D slice or a 3-D volume)")
    if str(path).lower().endswith(".gz"):
        check_complete(path, _voxel_bytes(reader))      # a cut gzip stream would read as zeros
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeIOError(path, f"the voxel data cannot be read ({_first_line(exc)}); is the file truncated?") from None
    notes: list[str] = []
    if image.GetNumberOfComponentsPerPixel() > 1:
        notes.append(_components_note(image.GetNumberOfComponentsPerPixel()))
        image = sitk.VectorIndexSelectionCast(image, 0)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)          # one slice, placed by a NIfTI header in 3-D
    space, other = _nifti_placed(path, image, notes)
    spacing, direction = _positive_spacing(image.GetSpacing(), image.GetDirection())
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    _check_geometry(path, spacing, image.GetOrigin(), direction)
    volume = volume_from_sitk(image, name=path.name, source=str(path), notes=notes, space=space, other_world=other,
                              **_itk_mark(reader))
    return _nan_restored(path, reader, volume, volume_index)


def volume_from_sitk(image: sitk.Image, **fields) -> Volume:
    """A :class:`Volume` from a 3-D SimpleITK image."""
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    notes = list(fields.pop("notes", ()))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        notes.append("direction cosines were not orthonormal (sheared grid); made orthonormal")
        direction = _orthonormal(direction)
    return Volume(array, image.GetSpacing(), image.GetOrigin(), tuple(direction.ravel()), notes=tuple(notes), **fields)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def write_problem(path: str | Path) -> str:
    """Why :func:`write_file` cannot write ``path`` ("" when it can): a header whose voxels go to a
    separate file."""
    suffix = Path(path).suffix.lower()
    if suffix in DETACHED:
        return (f"{suffix[1:].upper()} keeps its voxels in a separate file; write {DETACHED[suffix]} instead "
                "(one file)")
    return ""


def write_file(volume: Volume, path: str | Path, description: str = "") -> Path:
    """Write NIfTI/MHA/NRRD atomically (float32; geometry exact up to the format's precision)."""
    path = Path(path)
    if file_kind(path) is None:
        raise VolumeIOError(path, f"unknown file type; use one of {', '.join(SUFFIXES)}")
    problem = write_problem(path)
    if problem:
        raise VolumeIOError(path, problem)
    image = volume_to_sitk(volume)
    for key, value in itk_fields(volume, description).items():      # a synthetic volume's marking too
        image.SetMetaData(key, value)
    unit = _off_scale_unit(volume)
    if unit and file_kind(path) != "nifti":
        image.SetMetaData(UNIT_KEY, unit)
    with atomic_file(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=str(path).lower().endswith((".gz", ".mha", ".nrrd")))
        except RuntimeError as exc:
            problem = _first_line(exc).replace(str(tmp), path.name)
            raise VolumeIOError(path, f"could not be written ({problem}; is the disk full?); the previous "
                                      "file, if any, is kept") from None
        if file_kind(path) == "nifti" and (volume.space != "scanner" or unit or volume.other_world):
            _relabel(tmp, volume.space, unit, volume.other_world)
        _verify_written(tmp, path, image)
    return path


def _relabel(path: Path, space: str, unit: str, other: OtherWorld | None = None) -> None:
    """Give the NIfTI file SimpleITK wrote at ``path`` (qform and sform codes 1, scanner) the codes of
    ``space`` — an MNI-space input's synthetic stays labelled MNI space (AFNI files a scanner-space
    image under another view; FSL and fMRIPrep read the code), one whose header named no world stays
    so (codes 0: every program places it as it placed the input); both transforms hold the one grid,
    except that the qform places it in ``other`` world where the input's did (a registered input's
    scanner qform: ITK-based viewers, which place by the qform, then show the synthetic where they
    showed its source) — and an off-scale ``unit`` in its intent_name."""
    import nibabel

    code = _XFORM_CODES[space]
    image = cast("SpatialImage", nibabel.load(str(path)))
    header = cast("Nifti1Header", image.header).copy()
    sform = header.get_sform()
    if other is not None and _orthogonal(qform := _RAS_LPS @ other.matrix() @ _RAS_LPS @ sform):
        header.set_qform(qform, code=_XFORM_CODES[other.space])
    else:               # no other world, or one a qform cannot hold on this grid (a sheared one): the sform's
        header.set_qform(header.get_qform(), code=code)
    header.set_sform(sform, code=code)
    if unit:
        text = (NIFTI_UNIT_PREFIX + unit).encode("utf-8")
        if len(text) > NIFTI_INTENT_NAME_BYTES:
            text = (NIFTI_UNIT_PREFIX + "unknown").encode("utf-8")
        header["intent_name"] = text
    relabelled = path.with_name(path.name.replace(".part", ".space.part", 1))
    try:
        nibabel.save(nibabel.Nifti1Image(np.asanyarray(image.dataobj), None, header), str(relabelled))
        os.replace(relabelled, path)
    finally:
        relabelled.unlink(missing_ok=True)


def _orthogonal(affine: np.ndarray) -> bool:
    """Whether an affine's axes are orthogonal (what a qform, rotation and voxel sizes, holds exactly)."""
    columns = affine[:3, :3] / np.maximum(np.linalg.norm(affine[:3, :3], axis=0), 1e-12)
    return bool(np.allclose(columns.T @ columns, np.eye(3), atol=1e-4))


def _verify_written(tmp: Path, path: Path, image: sitk.Image) -> None:
    """Read back what was written before it replaces anything: the header must describe ``image``
    and the file hold all its voxels (on a full disk the NIfTI writer reports success and leaves a
    truncated file)."""
    try:
        reader = read_info(tmp)
        if tuple(reader.GetSize()) != image.GetSize() or reader.GetPixelID() != image.GetPixelID():
            raise VolumeIOError(tmp, f"reads back as {list(reader.GetSize())} voxels of "
                                     f"{sitk.GetPixelIDValueAsString(reader.GetPixelID())}")
        check_complete(tmp, _voxel_bytes(reader))
    except VolumeIOError as exc:
        raise VolumeIOError(path, f"was not written completely ({exc.problem}; is the disk full?); the "
                                  "previous file, if any, is kept") from None
