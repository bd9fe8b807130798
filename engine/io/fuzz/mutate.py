"""Seeded mutations of a file's bytes, aimed where readers trust what they read: bit flips and
overwritten bytes (most in the header), truncation, huge / negative / NaN / infinite header fields
(NIfTI binary fields, MHA and NRRD text fields, DICOM attributes), wrong DICOM VRs, and a NIfTI
whose header promises far more voxels than its small compressed data holds (a zip-bomb shape).
Every mutation is a function of the bytes and a numpy Generator, so (seed, index) replays one."""
from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Callable

import numpy as np

HEADER_BYTES = 2048
INTERESTING_INTS = (0, 1, -1, 2, 7, 8, 255, 256, 1400, 32767, -32768, 65535, 2**31 - 1, -2**31, 2**32 - 1)
INTERESTING_FLOATS = (0.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"))
INTERESTING_TEXT = ("-1", "0", "1400", "99999999999", "4294967297", "1e308", "-1e308", "nan", "inf", "-inf",
                    "", "abc", "1e-320")
VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
       b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT")
DICOM_FIELDS = {                             # attribute → (VR, values a mutation writes)
    (0x0028, 0x0008): (b"IS", ("1000000000", "-1", "0", "65536", "nan", "2147483648")),      # NumberOfFrames
    (0x0028, 0x0010): (b"US", (0, 1, 65535)),                                                # Rows
    (0x0028, 0x0011): (b"US", (0, 1, 65535)),                                                # Columns
    (0x0028, 0x0100): (b"US", (0, 1, 7, 12, 64, 65535)),                                     # BitsAllocated
    (0x0028, 0x0101): (b"US", (0, 17, 65535)),                                               # BitsStored
    (0x0028, 0x0002): (b"US", (0, 3, 65535)),                                                # SamplesPerPixel
    (0x0028, 0x0103): (b"US", (2, 65535)),                                                   # PixelRepresentation
    (0x0028, 0x1053): (b"DS", ("nan", "inf", "0", "-1e308", "1e308")),                       # RescaleSlope
    (0x0028, 0x1052): (b"DS", ("nan", "-inf", "1e308")),                                     # RescaleIntercept
    (0x0020, 0x0032): (b"DS", ("nan\\0\\0", "inf\\-inf\\nan", "1e308\\1e308\\1e308", "1\\2")),  # ImagePositionPatient
    (0x0020, 0x0037): (b"DS", ("nan\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0")),  # ImageOrientationPatient
    (0x0028, 0x0030): (b"DS", ("nan\\nan", "0\\0", "-1\\-1", "inf\\1", "1e-300\\1e-300")),   # PixelSpacing
    (0x0018, 0x0050): (b"DS", ("-2.5", "nan", "0", "inf")),                                  # SliceThickness
    (0x0018, 0x0088): (b"DS", ("-2.5", "nan", "0")),                                         # SpacingBetweenSlices
    (0x0028, 0x0004): (b"CS", ("RGB", "PALETTE COLOR", "YBR_FULL_422", "NONSENSE")),         # PhotometricInterpretation
    (0x0008, 0x0060): (b"CS", ("PT", "CT", "RTDOSE", "")),                                   # Modality
}
NIFTI1_FIELDS = {   # name → (offset, struct code); NIfTI-1 little-endian layout
    "dim": (40, "8h"), "datatype": (70, "h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
    "scl_slope": (112, "f"), "scl_inter": (116, "f"), "qform_code": (252, "h"), "sform_code": (254, "h"),
    "quatern": (256, "6f"), "srow": (280, "12f"), "sizeof_hdr": (0, "i"),
}

Mutation = Callable[[bytes, str, np.random.Generator], tuple[bytes, str]]


def mutate(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of ``data`` (the bytes of a file called ``name``), and what it did."""
    kinds: list[Mutation] = [_bit_flips, _bytes_set, _truncate]
    lower = name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        kinds += [_nifti_field, _nifti_field, _nifti_bomb]
    elif lower.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        kinds += [_text_field, _text_field, _text_line]
    elif lower.endswith(".dcm"):
        kinds += [_dicom_field, _dicom_field, _dicom_vr, _dicom_nested]
    kind = kinds[int(rng.integers(len(kinds)))]
    out, what = kind(data, name, rng)
    if rng.random() < 0.15:                       # sometimes two at once
        out, more = _bit_flips(out, name, rng) if rng.random() < 0.5 else _truncate(out, name, rng)
        what = f"{what}; {more}"
    return out, what


def _position(n: int, rng: np.random.Generator) -> int:
    """Mostly in the header, sometimes anywhere."""
    return int(rng.integers(min(n, HEADER_BYTES))) if rng.random() < 0.7 else int(rng.integers(n))


def _bit_flips(data: bytes, _name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    n = int(rng.integers(1, 17))
    for _ in range(n):
        if out:
            out[_position(len(out), rng)] ^= 1 << int(rng.integers(8))
    return bytes(out), f"{n} bit flip(s)"


def _bytes_set(data: bytes, _name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    at = _position(len(out), rng) if out else 0
    value: int | float
    if rng.random() < 0.5:
        value = INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))]
        code = ("<" if rng.random() < 0.7 else ">") + "hiq"[int(rng.integers(3))]
        packed = struct.pack(code, _clip(value, code))
    else:
        value = INTERESTING_FLOATS[int(rng.integers(len(INTERESTING_FLOATS)))]
        packed = struct.pack("<f" if rng.random() < 0.7 else "<d", value)
    out[at:at + len(packed)] = packed
    return bytes(out[:max(len(data), at + len(packed))]), f"{len(packed)} bytes at {at} set to {value}"


def _clip(value: int, code: str) -> int:
    bits = {"h": 16, "i": 32, "q": 64}[code[1]]
    return int(np.clip(value, -2 ** (bits - 1), 2 ** (bits - 1) - 1))


def _truncate(data: bytes, _name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    if len(data) < 2:
        return data, "not truncated (empty)"
    keep = int(rng.integers(1, len(data))) if rng.random() < 0.5 else len(data) - int(rng.integers(1, min(len(data), 64)))
    return data[:keep], f"truncated to {keep} of {len(data)} bytes"


# -- NIfTI --------------------------------------------------------------------------------------------
def _unpacked(data: bytes, name: str) -> tuple[bytes, bool]:
    if name.lower().endswith(".gz"):
        try:
            return gzip.decompress(data), True
        except (OSError, EOFError):
            return data, False
    return data, False


def _nifti_field(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    raw, zipped = _unpacked(data, name)
    if len(raw) < 348 or struct.unpack("<i", raw[:4])[0] != 348:
        return _bytes_set(data, name, rng)
    out = bytearray(raw)
    field = list(NIFTI1_FIELDS)[int(rng.integers(len(NIFTI1_FIELDS)))]
    offset, code = NIFTI1_FIELDS[field]
    count = int(code[:-1] or 1)
    k = int(rng.integers(count))
    size = struct.calcsize("<" + code[-1])
    if code[-1] == "f":
        value = INTERESTING_FLOATS[int(rng.integers(len(INTERESTING_FLOATS)))]
    elif field == "sizeof_hdr":
        value = 540
    else:
        value = _clip(INTERESTING_INTS[int(rng.integers(len(INTERESTING_INTS)))], "<" + code[-1])
    struct.pack_into("<" + code[-1], out, offset + k * size, value)
    what = f"NIfTI {field}[{k}] = {value}"
    body = bytes(out)
    return (gzip.compress(body, 6, mtime=0) if zipped else body), what


def _nifti_bomb(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A header promising up to 1400³ voxels over a little zero-filled data, gzipped."""
    raw, _ = _unpacked(data, name)
    if len(raw) < 352 or struct.unpack("<i", raw[:4])[0] != 348:
        return _truncate(data, name, rng)
    out = bytearray(raw[:352])
    side = int(rng.choice([600, 1024, 1400]))
    struct.pack_into("<8h", out, 40, 3, side, side, side, 1, 1, 1, 1)
    body = bytes(out) + bytes(int(rng.integers(1, 4)) << 20)
    return gzip.compress(body, 9, mtime=0), f"NIfTI bomb: {side}³ voxels promised over {len(body) >> 20} MiB of zeros"


# -- MetaImage / NRRD text headers ------------------------------------------------------------------------
def _header_end(data: bytes, name: str) -> int:
    if name.lower().endswith((".mha", ".mhd")):
        match = re.search(rb"ElementDataFile\s*=[^\n]*\n", data[:1 << 16])
        return match.end() if match else min(len(data), HEADER_BYTES)
    match = re.search(rb"\n\r?\n", data[:1 << 16])
    return match.end() if match else min(len(data), HEADER_BYTES)


def _text_field(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One number in one header line replaced by a hostile value."""
    end = _header_end(data, name)
    header = data[:end].decode("latin-1")
    numbers = [m for m in re.finditer(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", header) if not header[:m.start()].endswith("NRRD")]
    if not numbers:
        return _bit_flips(data, name, rng)
    m = numbers[int(rng.integers(len(numbers)))]
    value = INTERESTING_TEXT[int(rng.integers(len(INTERESTING_TEXT)))]
    line = header[:m.start()].rsplit("\n", 1)[-1].split("=")[0].split(":")[0].strip()
    new = header[:m.start()] + value + header[m.end():]
    return new.encode("latin-1") + data[end:], f"{line or 'header'}: {m.group()} → {value!r}"


def _text_line(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A whole field set to a hostile value (``NDims = -1``, ``dimension: 40``, …)."""
    end = _header_end(data, name)
    header = data[:end].decode("latin-1")
    lines = header.split("\n")
    keyed = [i for i, ln in enumerate(lines) if re.match(r"\s*[\w ]+\s*(=|:)", ln)]
    if not keyed:
        return _truncate(data, name, rng)
    i = keyed[int(rng.integers(len(keyed)))]
    field = re.match(r"\s*([\w ]+?)\s*(:=|=|:)", lines[i])
    assert field is not None, "a keyed line (above) always matches"
    key, sep = field.groups()
    if key.lower() in ("elementdatafile", "data file", "datafile"):
        value = ("LOCAL", "/dev/zero", "../../../../etc/passwd", "missing.raw", "LIST")[int(rng.integers(5))]
    else:
        value = " ".join([INTERESTING_TEXT[int(rng.integers(len(INTERESTING_TEXT)))]] * int(rng.integers(1, 5)))
    lines[i] = f"{key} {sep} {value}"
    return "\n".join(lines).encode("latin-1") + data[end:], f"{key} {sep} {value}"


# -- DICOM ------------------------------------------------------------------------------------------------
def _dicom_field(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One image attribute set to a hostile value (explicit VR little endian data sets), or added."""
    tags = list(DICOM_FIELDS)
    tag = tags[int(rng.integers(len(tags)))]
    vr, values = DICOM_FIELDS[tag]
    value = values[int(rng.integers(len(values)))]
    payload = struct.pack("<H", value) if vr == b"US" else str(value).encode("ascii")
    if len(payload) % 2:
        payload += b" "
    element = struct.pack("<HH", *tag) + vr + struct.pack("<H", len(payload)) + payload
    found = _find_element(data, tag)
    name_of = f"({tag[0]:04X},{tag[1]:04X})"
    if found is not None:
        start, stop = found
        return data[:start] + element + data[stop:], f"DICOM {name_of} = {value!r}"
    at = _insert_point(data, tag)
    if at is None:
        return _bit_flips(data, name, rng)
    return data[:at] + element + data[at:], f"DICOM {name_of} = {value!r} added"


def _elements(data: bytes):
    """(tag, VR, start, stop) of the top-level explicit VR little endian elements after the preamble."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if vr not in VRS:
            return
        if vr in (b"OB", b"OD", b"OF", b"OL", b"OW", b"SQ", b"UN", b"UT"):
            length, header = struct.unpack_from("<L", data, pos + 8)[0] if pos + 12 <= len(data) else 0, 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        if length == 0xFFFFFFFF:
            return                                   # undefined length: not walked further here
        yield (group, elem), vr, pos, pos + header + length
        pos += header + length


def _find_element(data: bytes, tag: tuple[int, int]) -> tuple[int, int] | None:
    for t, _vr, start, stop in _elements(data):
        if t == tag:
            return start, stop
    return None


def _insert_point(data: bytes, tag: tuple[int, int]) -> int | None:
    last = None
    for t, _vr, start, stop in _elements(data):
        if t[0] == 0x0002:
            last = stop
            continue
        if t > tag:
            return start
        last = stop
    return last


def _dicom_vr(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """The VR of one element replaced by another (its length field stays as it was)."""
    spots = [m.start() + 4 for m in re.finditer(rb"[\x02\x08\x10\x18\x20\x28][\x00]..(" + b"|".join(VRS) + b")",
                                                data[:1 << 16], re.DOTALL)]
    if not spots:
        return _bit_flips(data, name, rng)
    at = spots[int(rng.integers(len(spots)))]
    vr = VRS[int(rng.integers(len(VRS)))]
    return data[:at] + vr + data[at + 2:], f"VR at {at}: {data[at:at + 2].decode('latin-1')} → {vr.decode()}"


def _dicom_nested(data: bytes, name: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A sequence nested thousands deep (undefined lengths), put before the first image attribute."""
    at = _insert_point(data, (0x0008, 0x1140))
    if at is None:
        return _truncate(data, name, rng)
    depth = int(rng.choice([200, 2000, 20000]))
    opening = struct.pack("<HH", 0x0008, 0x1140) + b"SQ" + b"\0\0" + struct.pack("<L", 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    nested = (opening + item) * depth + closing * depth
    return data[:at] + nested + data[at:], f"a sequence nested {depth} deep"
