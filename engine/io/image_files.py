"""2-D pictures (PNG, JPEG, TIFF, BMP) as one-slice volumes, read through SimpleITK: grey levels
(a colour picture becomes its luma), pixel spacing from the file's own resolution or else 1 mm, and
notes that tell the user what was assumed. A multi-page TIFF becomes a stack of its pages. The
codecs run in the reader process (engine.io.reader_process)."""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine.io import bids
from engine.io.catalog import Catalog, SeriesEntry, ensure_fits_in_memory
from engine.io.errors import VolumeIOError
from engine.io.reader_process import native
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp"}
LUMA = np.array([0.299, 0.587, 0.114])          # ITU-R BT.601 weights of R, G, B
SCREEN_DPI = (72.0, 96.0)                       # what screen and paint programs write by default: not a pixel size


def image_kind(path: str | Path) -> str | None:
    return IMAGE_SUFFIXES.get(Path(path).suffix.lower())


def _reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        kind = image_kind(path)
        what = f"a {kind.upper()} image" if kind else "an image"
        raise VolumeIOError(path, f"cannot be read as {what} (damaged or not really one)") from None
    if reader.GetDimension() not in (2, 3):
        raise VolumeIOError(path, f"{reader.GetDimension()}-D pictures are not supported")
    return reader


def pixel_spacing(path: Path, reader: sitk.ImageFileReader) -> tuple[tuple[float, float], str]:
    """(x, y) mm per pixel and where that comes from: the file's resolution, else 1 mm (also when
    the file holds only a screen default of 72 or 96 dpi)."""
    stated = _stated_spacing(path, reader)
    if stated is None:
        return (1.0, 1.0), "assumed: the file states no resolution"
    if not (np.all(np.isfinite(stated)) and 1e-6 < min(stated) and max(stated) < 1e6):
        return (1.0, 1.0), "assumed: the resolution the file states is not usable"
    dpi = 25.4 / stated[0]
    if abs(stated[0] - stated[1]) < 1e-3 * stated[0] and any(abs(dpi - d) < 0.01 * d for d in SCREEN_DPI):
        return (1.0, 1.0), f"assumed: the file's {dpi:.0f} dpi is a screen default, not a pixel size"
    return stated, "from the file's resolution"


def _stated_spacing(path: Path, reader: sitk.ImageFileReader) -> tuple[float, float] | None:
    """(x, y) mm per pixel as the file states it, or None. PNG (pHYs chunk) and BMP (pixels per
    metre) are read here; SimpleITK reads JPEG and TIFF resolutions itself."""
    kind = image_kind(path)
    try:
        if kind == "png":
            return _png_spacing(path)
        if kind == "bmp":
            with open(path, "rb") as f:
                head = f.read(46)
            x, y = struct.unpack("<ii", head[38:46]) if len(head) >= 46 else (0, 0)
            return (1000.0 / x, 1000.0 / y) if x > 0 and y > 0 else None
    except (OSError, struct.error):
        return None
    sx, sy = reader.GetSpacing()[:2]
    spacing = (float(sx), float(sy))
    return None if np.allclose(spacing, 1.0) else spacing


def _png_spacing(path: Path) -> tuple[float, float] | None:
    with open(path, "rb") as f:
        f.seek(8)                                   # the PNG signature
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"pHYs":
                x, y, unit = struct.unpack(">IIB", f.read(9))
                return (1000.0 / x, 1000.0 / y) if unit == 1 and x > 0 and y > 0 else None     # unit 1: metre
            if kind in (b"IDAT", b"IEND"):
                return None
            f.seek(length + 4, 1)                   # the chunk's data and CRC


def scan_image(path: str | Path) -> Catalog:
    """One entry for a picture (header only; the pixels are read by its loader)."""
    path = Path(path)
    entry = native(path, _scan_picture, str(path))
    return Catalog(entries=[dataclasses.replace(
        entry, loader=lambda progress, cancel: load_image(path, progress=progress, cancel=cancel))])


def _scan_picture(name: str) -> SeriesEntry:
    path = Path(name)
    reader = _reader(path)
    size = reader.GetSize()
    spacing, source = pixel_spacing(path, reader)
    return SeriesEntry(
        key=str(path), kind=image_kind(path) or "image", paths=(str(path),), description=path.name,
        modality=bids.name_modality(path.name),
        shape_zyx=(size[2] if len(size) == 3 else 1, size[1], size[0]), spacing_xyz=(*spacing, 1.0),
        orientation="2-D", notes=(_spacing_note(spacing, source),),
    )


def _spacing_note(spacing: tuple[float, float], source: str) -> str:
    return (f"2-D picture opened as a one-slice volume: pixel spacing {spacing[0]:.4g} × {spacing[1]:.4g} mm "
            f"{source}; slice thickness 1 mm assumed")


def load_image(path: str | Path, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Volume:
    """Read a picture into a float32 :class:`Volume` of its grey levels (one slice per page)."""
    path = Path(path)
    check_cancel(cancel)
    volume = native(path, _load_picture, str(path), cancel=cancel)
    if progress is not None:
        progress(Progress(1, 1, f"read {path.name}"))
    return volume


def _load_picture(name: str) -> Volume:
    path = Path(name)
    reader = _reader(path)
    components = reader.GetNumberOfComponents()
    # the decoded pixels, their numpy copy, float32 grey and a float64 luma of a colour picture
    ensure_fits_in_memory(str(path), int(np.prod(reader.GetSize(), dtype=np.int64)) * (2 * components + 4 + 8))
    try:
        pixels = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError:
        raise VolumeIOError(path, "the pixels cannot be read; is the file truncated?") from None
    spacing, source = pixel_spacing(path, reader)
    notes = [_spacing_note(spacing, source)]
    grey = pixels.astype(np.float32)
    if components > 1:
        colour = grey[..., :3]
        if components >= 3 and not (np.array_equal(colour[..., 0], colour[..., 1])
                                    and np.array_equal(colour[..., 0], colour[..., 2])):
            grey = (colour.astype(np.float64) @ LUMA).astype(np.float32)
            notes.append("colour picture: shown as its grey level (luma, 0.299 R + 0.587 G + 0.114 B)")
        else:
            grey = np.ascontiguousarray(colour[..., 0])
    if grey.ndim == 3 and grey.shape[0] > 1:
        notes.append(f"{grey.shape[0]} pages stacked 1 mm apart")
    top = np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else None
    notes.append("values are the picture's grey levels" + (f" (0–{top})" if top else "") + ", not physical units")
    modality = bids.name_modality(path.name)
    return Volume(grey, (*spacing, 1.0), modality=modality, name=path.name, source=str(path), notes=tuple(notes))
