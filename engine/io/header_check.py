"""What a NIfTI, MetaImage or NRRD header says, read and checked in Python before a native reader
sees the file: dimensions, sizes, element type, spacing and geometry must be sane (a header with
``NDims = -1`` crashes ITK, an infinite matrix entry makes it spin), so a hostile or damaged header
is refused with a message naming the field. Returns what the memory guard needs."""
from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.io.errors import VolumeIOError

MIN_DIMENSIONS, MAX_DIMENSIONS = 2, 4    # 2-D, 3-D and 4-D (a series of 3-D volumes) images are opened
MAX_SIDE = 2**31 - 1
MAX_COMPONENTS = 64
NIFTI_TYPES = {    # datatype → bytes per voxel (NIfTI-1 and -2 share the codes)
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16,
    1792: 16, 2048: 32, 2304: 4,
}
NIFTI_COMPLEX = {32: "complex64", 1792: "complex128", 2048: "complex256"}
MET_TYPES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}
NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
NRRD_ENCODINGS = ("raw", "txt", "text", "ascii", "hex", "gz", "gzip", "bz2", "bzip2")


@dataclass(frozen=True)
class HeaderFacts:
    """What the header promises: sizes along each axis (x first), bytes per component, components,
    and whether the reader scales the stored values (a NIfTI's scl_slope / scl_inter)."""

    size: tuple[int, ...]
    itemsize: int
    components: int = 1
    scaled: bool = False

    @property
    def read_itemsize(self) -> int:
        """Bytes per component as the reader returns them: scaled values come back as float32 at least."""
        return max(self.itemsize, 4) if self.scaled else self.itemsize

    @property
    def voxels_3d(self) -> int:
        """Voxels of one 3-D volume (of a 4-D file, the first)."""
        return math.prod(self.size[:3])

    @property
    def stored_bytes(self) -> int:
        """Bytes of every voxel the file holds, as stored."""
        return math.prod(self.size) * self.itemsize * self.components


def check_header(path: str | Path) -> HeaderFacts | None:
    """The header's promise, or :class:`VolumeIOError` naming what is wrong; None for a file that
    is no NIfTI / MetaImage / NRRD by its name."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _nifti(path, name.endswith(".gz"))
        if name.endswith((".mha", ".mhd")):
            return _metaimage(path)
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeIOError(path, f"its header cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return None


def _refuse(path: Path, problem: str) -> VolumeIOError:
    return VolumeIOError(path, f"{problem}; the header is damaged or not a valid image header")


# -- NIfTI ------------------------------------------------------------------------------------------
def _nifti(path: Path, gzipped: bool) -> HeaderFacts:
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        head = f.read(540)
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            return _nifti_fields(path, head, order, version=1)
        if size == 540 and len(head) >= 540:
            return _nifti_fields(path, head, order, version=2)
    raise VolumeIOError(path, "is not a NIfTI file (no NIfTI-1 or NIfTI-2 header at its start)")


def _nifti_fields(path: Path, head: bytes, order: str, version: int) -> HeaderFacts:
    if version == 1:
        dims = struct.unpack_from(order + "8h", head, 40)
        datatype, bitpix = struct.unpack_from(order + "2h", head, 70)
        pixdim = struct.unpack_from(order + "8f", head, 76)
        vox_offset, slope, inter = struct.unpack_from(order + "3f", head, 108)
        qform, sform = struct.unpack_from(order + "2h", head, 252)
        quatern = struct.unpack_from(order + "6f", head, 256)
        srow = struct.unpack_from(order + "12f", head, 280)
    else:
        datatype, bitpix = struct.unpack_from(order + "2h", head, 12)
        dims = struct.unpack_from(order + "8q", head, 16)
        pixdim = struct.unpack_from(order + "8d", head, 104)
        vox_offset = struct.unpack_from(order + "q", head, 168)[0]
        slope, inter = struct.unpack_from(order + "2d", head, 176)
        qform, sform = struct.unpack_from(order + "2i", head, 344)
        quatern = struct.unpack_from(order + "6d", head, 352)
        srow = struct.unpack_from(order + "12d", head, 400)
    n = dims[0]
    if not 1 <= n <= 7:
        raise _refuse(path, f"its dim[0] (the number of dimensions) is {n}, not 1 to 7")
    sizes = dims[1:n + 1]
    if min(sizes) < 1 or max(sizes) > MAX_SIDE:
        raise _refuse(path, f"its dimensions {list(sizes)} are not all between 1 and {MAX_SIDE}")
    components = 1
    if n == 5 and sizes[3] == 1:          # a vector per voxel (a displacement field): its components on dim[5]
        components, sizes = sizes[4], sizes[:3]
        if components > MAX_COMPONENTS:
            raise _refuse(path, f"its dim[5] (components per voxel) is {components}, not 1 to {MAX_COMPONENTS}")
    if n < MIN_DIMENSIONS or (n > MAX_DIMENSIONS and math.prod(sizes[MAX_DIMENSIONS:]) > 1):
        raise VolumeIOError(path, f"is a {n}-D image {list(sizes)}; 2-D, 3-D and 4-D images are opened")
    itemsize = NIFTI_TYPES.get(datatype)
    if itemsize is None:
        raise _refuse(path, f"its datatype {datatype} is not a NIfTI data type")
    if bitpix != 8 * itemsize:
        raise _refuse(path, f"its bitpix {bitpix} does not match its datatype {datatype} ({8 * itemsize} bits)")
    if datatype in NIFTI_COMPLEX:
        raise VolumeIOError(path, f"holds complex values ({NIFTI_COMPLEX[datatype]}), not one real value per "
                                  "voxel; save its magnitude as a real-valued image")
    _finite(path, "pixdim", pixdim[1:n + 1])
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise _refuse(path, f"its vox_offset {vox_offset} is not a position in the file")
    if math.isinf(slope) or math.isinf(inter):       # NaN is common: writers' way to say "no scaling"
        raise _refuse(path, f"its scaling (scl_slope {slope}, scl_inter {inter}) is infinite")
    if qform > 0:
        _finite(path, "quaternion (quatern_b/c/d, qoffset)", quatern + pixdim[:1])
    if sform > 0:
        _finite(path, "srow_x/y/z", srow)
    scaled = math.isfinite(slope) and (slope not in (0.0, 1.0) or (math.isfinite(inter) and inter != 0))
    return HeaderFacts(tuple(int(s) for s in sizes[:MAX_DIMENSIONS]), itemsize, components, scaled)


def _finite(path: Path, name: str, values) -> None:
    if not all(math.isfinite(v) for v in values):
        raise _refuse(path, f"its {name} holds {', '.join(f'{v:g}' for v in values if not math.isfinite(v))}")


# -- MetaImage ----------------------------------------------------------------------------------------
def text_header(path: Path, last_line: re.Pattern[bytes],
                ends_at_eof: Callable[[dict[str, str]], bool] | None = None) -> tuple[dict[str, str], int] | None:
    """Key/value lines (keys lower-cased) up to the one matching ``last_line`` and the offset just
    after it; None when there is no such line in the first MiB (unless the file ends within it and
    ``ends_at_eof`` says its fields may end there)."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for line in iter(lambda: f.readline(1 << 16), b""):
            offset += len(line)
            if offset > 1 << 20:
                return None
            match = re.match(rb"\s*([^:=]+?)\s*(?::=|[:=])\s*(.*?)\s*$", line)
            if match:
                fields[match[1].decode("latin-1").lower()] = match[2].decode("latin-1")
            if last_line.match(line):
                return fields, offset
    return (fields, offset) if ends_at_eof is not None and ends_at_eof(fields) else None


METAIMAGE_END = re.compile(rb"\s*ElementDataFile\s*=", re.IGNORECASE)


def _metaimage(path: Path) -> HeaderFacts:
    header = text_header(path, METAIMAGE_END)
    if header is None:
        raise _refuse(path, "no ElementDataFile line ends its MetaImage header")
    fields, offset = header
    n = _whole(path, fields, "ndims", 1)[0] if "ndims" in fields else None
    if n is None or not MIN_DIMENSIONS <= n <= MAX_DIMENSIONS:
        raise _refuse(path, f"NDims = {fields.get('ndims', '(missing)')}: {MIN_DIMENSIONS}- to {MAX_DIMENSIONS}-D "
                            f"images are opened")
    if "dimsize" not in fields:
        raise _refuse(path, "its DimSize field is missing")
    size = _whole(path, fields, "dimsize", n)
    if min(size) < 1 or max(size) > MAX_SIDE:
        raise _refuse(path, f"DimSize = {fields['dimsize']} is not {n} sizes between 1 and {MAX_SIDE}")
    for key in ("elementspacing", "elementsize"):
        if key in fields and min(_numbers(path, fields, key, n)) <= 0:
            raise _refuse(path, f"{key} = {fields[key]} is not {n} positive numbers")
    for key in ("offset", "origin", "position", "centerofrotation"):
        if key in fields:
            _numbers(path, fields, key, n)
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            _numbers(path, fields, key, n * n)
    kind = fields.get("elementtype", "").upper().removesuffix("_ARRAY")
    if kind not in MET_TYPES:
        raise _refuse(path, f"ElementType = {fields.get('elementtype', '(missing)')} is not a MetaImage type")
    components = _whole(path, fields, "elementnumberofchannels", 1)[0] if "elementnumberofchannels" in fields else 1
    if not 1 <= components <= MAX_COMPONENTS:
        raise _refuse(path, f"ElementNumberOfChannels = {components} is not 1 to {MAX_COMPONENTS}")
    for key, least in (("headersize", -1), ("compresseddatasize", 0)):
        if key in fields and _whole(path, fields, key, 1)[0] < least:
            raise _refuse(path, f"{key} = {fields[key]} is negative")
    available = _metaimage_data_bytes(path, fields, offset)
    if "compresseddatasize" in fields and available is not None:
        compressed = _whole(path, fields, "compresseddatasize", 1)[0]
        if compressed > available:               # the reader would allocate it before reading a byte
            raise _refuse(path, f"CompressedDataSize = {compressed} is more than the {available} bytes of data "
                                f"the file holds")
    return HeaderFacts(tuple(size), MET_TYPES[kind], components)


def _metaimage_data_bytes(path: Path, fields: dict[str, str], offset: int) -> int | None:
    """The bytes of voxel data a MetaImage has: after its header (LOCAL) or in the one file it
    names; None for a list or pattern of files, or a data file that is not there."""
    name = fields.get("elementdatafile", "").strip()
    if name.upper() == "LOCAL":
        return path.stat().st_size - offset
    data = path.parent / name
    if not name or name.upper().startswith("LIST") or "%" in name or not data.is_file():
        return None
    return data.stat().st_size


def _numbers(path: Path, fields: dict[str, str], key: str, n: int) -> list[float]:
    try:
        values = [float(v) for v in fields[key].split()]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise _refuse(path, f"{key} = {fields[key][:60]!r} is not {n} finite number(s)")
    return values


def _whole(path: Path, fields: dict[str, str], key: str, n: int) -> list[int]:
    words = fields[key].split()
    if len(words) != n or not all(re.fullmatch(r"[+-]?\d{1,19}", w) for w in words):
        raise _refuse(path, f"{key} = {fields[key][:60]!r} is not {n} whole number(s)")
    return [int(w) for w in words]


# -- NRRD ---------------------------------------------------------------------------------------------
NRRD_END = re.compile(rb"\s*$|\s*data ?file\s*:\s*LIST\b", re.IGNORECASE)   # after LIST: file names, one a line


def nrrd_header(path: Path) -> tuple[dict[str, str], int] | None:
    """A NRRD header's fields and where it ends: at a blank line, or after ``data file: LIST``; a
    detached header (a .nhdr, or one naming its ``data file``) may also end with its file."""
    def detached(fields: dict[str, str]) -> bool:
        return path.name.lower().endswith(".nhdr") or "data file" in fields or "datafile" in fields

    return text_header(path, NRRD_END, ends_at_eof=detached)


def _nrrd(path: Path) -> HeaderFacts:
    with open(path, "rb") as f:
        magic = f.read(8)
    if not magic.startswith(b"NRRD000"):
        raise VolumeIOError(path, "is not a NRRD file (no NRRD000x magic at its start)")
    header = nrrd_header(path)
    if header is None:
        raise _refuse(path, "no blank line ends its NRRD header in the first MiB")
    fields = header[0]
    if "dimension" not in fields:
        raise _refuse(path, "its dimension field is missing")
    n = _whole(path, fields, "dimension", 1)[0]
    if not MIN_DIMENSIONS <= n <= MAX_DIMENSIONS + 1:                 # + a vector axis
        raise _refuse(path, f"dimension: {n}: {MIN_DIMENSIONS}- to {MAX_DIMENSIONS}-D images are opened")
    if "sizes" not in fields:
        raise _refuse(path, "its sizes field is missing")
    size = _whole(path, fields, "sizes", n)
    if min(size) < 1 or max(size) > MAX_SIDE:
        raise _refuse(path, f"sizes: {fields['sizes']} is not {n} sizes between 1 and {MAX_SIDE}")
    kind = fields.get("type", "").strip().lower()
    itemsize = next((k for k, names in NRRD_TYPES.items() if kind in names), None)
    if itemsize is None:
        raise _refuse(path, f"type: {kind or '(missing)'} is not a NRRD type")
    if fields.get("encoding", "").strip().lower() not in NRRD_ENCODINGS:
        raise _refuse(path, f"encoding: {fields.get('encoding', '(missing)')} is not a NRRD encoding")
    space = None
    if "space dimension" in fields:
        space = _whole(path, fields, "space dimension", 1)[0]
        if not 1 <= space <= 3:
            raise _refuse(path, f"space dimension: {space} is not 1 to 3")
    if "space directions" in fields:
        _nrrd_vectors(path, fields, "space directions", n, space, allow_none=True)
    if "space origin" in fields:
        _nrrd_vectors(path, fields, "space origin", 1, space, allow_none=False)
    if "spacings" in fields:
        values = fields["spacings"].split()
        if len(values) != n or any(v.lower() != "nan" and not _nonzero_finite(v) for v in values):
            raise _refuse(path, f"spacings: {fields['spacings'][:60]!r} is not {n} non-zero finite numbers (or nan)")
    for key in ("byte skip", "byteskip", "line skip", "lineskip"):
        if key in fields and _whole(path, fields, key, 1)[0] < (-1 if "byte" in key else 0):
            raise _refuse(path, f"{key}: {fields[key]} is negative")
    components = 1
    kinds = fields.get("kinds", "").lower().split()
    if n > 3 and len(kinds) == n and kinds[0] in ("vector", "covariant-vector", "rgb-color", "rgba-color",
                                                   "3-color", "4-color", "list", "point", "complex"):
        components, size = size[0], size[1:]
    if len(size) < MIN_DIMENSIONS:
        raise VolumeIOError(path, f"is a {len(size)}-D image; 2-D, 3-D and 4-D images are opened")
    return HeaderFacts(tuple(size), itemsize, components)


def _nonzero_finite(text: str) -> bool:
    """A NRRD spacing as teem takes it: a negative one is allowed, zero and infinity are not."""
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value != 0


def _nrrd_vectors(path: Path, fields: dict[str, str], key: str, n: int, space: int | None, allow_none: bool) -> None:
    text = fields[key]
    vectors = re.findall(r"\(([^)]*)\)|(none)", text, re.IGNORECASE)
    if len(vectors) != n and not (key == "space directions" and len(vectors) == n - 1):
        raise _refuse(path, f"{key}: {text[:60]!r} is not {n} vector(s)")
    for inside, none in vectors:
        if none:
            if not allow_none:
                raise _refuse(path, f"{key}: {text[:60]!r} may not be none")
            continue
        try:
            values = [float(v) for v in inside.split(",")]
        except ValueError:
            values = []
        if not values or (space is not None and len(values) != space) or not all(math.isfinite(v) for v in values):
            raise _refuse(path, f"{key}: {text[:60]!r} is not a vector of finite numbers")
