"""Does a NIfTI / MetaImage / NRRD file hold the voxels its header promises? Checked from the header
and the file's size before any voxel is allocated, so a truncated file or a lying header is refused
with a message instead of opening as gigabytes of zeros. Compressed data is checked where that is
cheap: deflate shrinks data at most about 1032-fold, and a gzip file records its unpacked length."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from engine.io.errors import VolumeIOError
from engine.io.header_check import METAIMAGE_END, nrrd_header, text_header

DEFLATE_MAX_RATIO = 1032          # the most deflate (gzip, zlib) can compress: about 1032 to 1
_GZIP_EXTRA_FIELD = 0x04          # FLG.FEXTRA: blocked gzip (BGZF) writes many members; its trailer is one block's


def check_voxel_data(path: str | Path, n_bytes: int) -> None:
    """Raise :class:`VolumeIOError` when ``path`` cannot hold the ``n_bytes`` of voxel data its
    header promises (a NIfTI header's own count of stored bytes replaces ``n_bytes``: a reader may
    report scaled voxels as wider); files whose layout is not known here pass unchecked."""
    path = Path(path)
    layout = _layout(path)
    if layout is None:
        return
    data_file, offset, compression, stored = layout
    n_bytes = n_bytes if stored is None else stored
    if n_bytes <= 0:
        return
    try:
        size = data_file.stat().st_size
    except OSError:
        raise VolumeIOError(path, f"its voxel data file {data_file.name} is missing") from None
    promised = f"the header promises {_amount(n_bytes)} of voxel data"
    if compression == "none":
        held = size - offset
        if held < n_bytes:
            held = max(held, 0)
            if _amount(held) == _amount(n_bytes):
                promised, shown = f"the header promises {n_bytes} bytes of voxel data", f"{held} bytes"
            else:
                shown = _amount(held)
            raise VolumeIOError(path, f"{promised} but the file holds {shown}: it is truncated or its header is wrong")
        return
    whole_file = compression == "gzip-file"           # the offset counts unpacked bytes
    packed = size if whole_file else size - offset
    if packed * DEFLATE_MAX_RATIO < n_bytes + (offset if whole_file else 0):
        raise VolumeIOError(path, f"{promised} but {_amount(packed)} of compressed data cannot hold that much: "
                                  f"the file is truncated or its header is wrong")
    if whole_file and not _gzip_holds(data_file, offset + n_bytes):
        raise VolumeIOError(path, f"{promised} but the compressed file unpacks to less: it is truncated "
                                  f"or its header is wrong")


def check_complete(path: str | Path, n_bytes: int) -> None:
    """:func:`check_voxel_data`, and compressed voxel data unpacked to its end: for a file just
    written, where a write cut short (a full disk) leaves a stream without its end while the
    writer reports success. Costs one decompression, without holding the voxels."""
    path = Path(path)
    check_voxel_data(path, n_bytes)
    layout = _layout(path)
    if layout is None or layout[2] == "none":
        return
    data_file, offset, compression, stored = layout
    whole_file = compression == "gzip-file"
    need = (n_bytes if stored is None else stored) + (offset if whole_file else 0)
    unpacker = zlib.decompressobj(wbits=47)           # a zlib or a gzip stream
    unpacked = 0
    try:
        with open(data_file, "rb") as f:
            f.seek(0 if whole_file else offset)
            while not unpacker.eof and (data := f.read(1 << 22)):
                while data and not unpacker.eof:
                    unpacked += len(unpacker.decompress(data, 1 << 24))
                    data = unpacker.unconsumed_tail
    except zlib.error as exc:
        raise VolumeIOError(path, f"its compressed voxel data is damaged ({exc})") from None
    if not unpacker.eof or unpacked < need:
        raise VolumeIOError(path, f"its compressed voxel data ends early ({_amount(unpacked)} of "
                                  f"{_amount(need)}): the file is truncated")


def _amount(n_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def _gzip_holds(path: Path, n_bytes: int) -> bool:
    """Whether the gzip file unpacks to at least ``n_bytes``, from the length its trailer records
    (modulo 4 GiB): exactly ``n_bytes`` passes; any other length — a file cut short ends inside its
    compressed data, whose last 4 bytes are then any number — is unpacked to make sure. Files of
    several members and promises of 4 GiB or more are not checked."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, 2)
            recorded = struct.unpack("<I", f.read(4))[0]
    except OSError:
        return True                   # unreadable: the reader says so with its own message
    single_member = len(head) == 4 and not head[3] & _GZIP_EXTRA_FIELD
    if not single_member or n_bytes >= 2**32 or recorded == n_bytes:
        return True
    unpacked = 0
    try:
        with gzip.open(path, "rb") as f:
            while unpacked < n_bytes:
                chunk = f.read(1 << 22)
                if not chunk:
                    return False
                unpacked += len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return True


Layout = tuple[Path, int, str, "int | None"]


def data_files(path: str | Path) -> tuple[Path, ...]:
    """A volume file and the file its header keeps the voxels in when it is another (a ``.mhd`` or
    ``.nhdr`` beside its ``.raw``): what a change of the volume changes."""
    path = Path(path)
    layout = _layout(path)
    data = layout[0] if layout is not None else path
    return (path, data) if data != path and data.is_file() else (path,)


def _layout(path: Path) -> Layout | None:
    """(file holding the voxels, where they start, how: "none", "gzip-file" (the whole file is
    gzip; the offset counts unpacked bytes) or "deflate" (compressed bytes from the offset), the
    bytes stored when the header says so itself), or None when unknown."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _nifti_layout(path, gzipped=name.endswith(".gz"))
        if name.endswith((".mha", ".mhd")):
            return _metaimage_layout(path)
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd_layout(path)
    except (OSError, EOFError, ValueError, OverflowError, struct.error, zlib.error):
        return None                   # a damaged header: the reader reports it
    return None


def _nifti_layout(path: Path, gzipped: bool) -> Layout | None:
    """From the header: dim[0..7], bitpix and vox_offset (NIfTI-1: int16 dims, float offset;
    NIfTI-2: int64 dims and offset)."""
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        head = f.read(176)
    compression = "gzip-file" if gzipped else "none"
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 112:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
        elif size == 540 and len(head) >= 176:
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or min(dims[1:dims[0] + 1]) < 1:
            return None
        stored = int(np.prod(dims[1:dims[0] + 1], dtype=np.int64)) * bitpix // 8
        return path, max(offset, size), compression, stored
    return None


def _metaimage_layout(path: Path) -> Layout | None:
    header = text_header(path, METAIMAGE_END)
    if header is None:
        return None
    fields, end = header
    data = fields.get("elementdatafile", "")
    compression = "deflate" if fields.get("compresseddata", "false").lower() == "true" else "none"
    if data.upper() == "LOCAL":
        return path, end, compression, None
    if data.upper().startswith("LIST") or "%" in data or " " in data:
        return None                   # one file per slice: not checked here
    skip = int(fields.get("headersize", "0") or 0)
    return path.parent / data, max(skip, 0), compression, None


def _nrrd_layout(path: Path) -> Layout | None:
    header = nrrd_header(path)
    if header is None:
        return None
    fields, end = header
    encoding = {"raw": "none", "gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", "").lower())
    byte_skip = int(fields.get("byte skip", "0") or 0)
    if encoding is None or byte_skip < 0 or int(fields.get("line skip", "0") or 0):
        return None                   # text, bzip2 or data at the end of the file: not checked here
    data = fields.get("data file") or fields.get("datafile")
    if data is None:
        return (path, end + byte_skip, "none", None) if encoding == "none" else (path, end, "deflate", None)
    if data.upper().startswith("LIST") or " " in data or "%" in data:
        return None
    return path.parent / data, byte_skip, "none" if encoding == "none" else "gzip-file", None
