"""Geometry of a stack of DICOM slices: the order along the slice normal, origin, spacing and
direction cosines, what is wrong with the stack (missing slices, uneven spacing, gantry tilt), the
linear resampling along the normal that puts an uneven stack on a uniform grid, and the in-plane
shift that puts a gantry-tilted (sheared) stack on an orthogonal one.

Conventions are those of SimpleITK's ``ImageSeriesReader``: slices sorted by ascending position
along the normal ``n = row × column`` (ImageOrientationPatient), origin = ImagePositionPatient of
the first sorted slice, direction columns = (row cosine, column cosine, n), PixelSpacing =
[row spacing (y), column spacing (x)], slice spacing from positions (never SliceThickness).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np

ORIENTATION_TOLERANCE = 1e-3     # max difference of IOP components within one volume
SAME_POSITION_MM = 0.01          # two slices closer than this along the normal share a position
GAP_FACTOR = 1.5                 # a step this many times the median step is a gap (missing slices)
TILT_DEGREES = 0.05              # stacking direction this far from the normal is a gantry tilt
TILT_CORRECTED_PX = 0.5          # a tilt moving no slice this far in-plane (pixels) is noted, not corrected
MAX_FILLED_SLICES = 3            # a gap of more missing slices is refused, not filled by interpolation
NO_PIXEL_SPACING = "PixelSpacing is missing or zero: in-plane spacing set to 1 mm"
SPACING_DROPPED = "PixelSpacing is "  # …the header value…", not usable": a slice's own note (engine.io.dicom_scan)


@dataclass(frozen=True)
class StackGeometry:
    order: tuple[int, ...]                 # indices of the input slices, first slice first
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]    # (x, y, z) mm
    direction: tuple[float, ...]           # 9 numbers, row-major, columns = index axes
    notes: tuple[str, ...] = ()
    positions: tuple[float, ...] = ()      # uneven stack: each sorted slice's true distance (mm) from the
                                           # first along the normal; the loader resamples onto the grid
    grid_slices: int = 0                   # slices on the uniform grid (0: one per input slice)
    refusal: str = ""                      # why the stack cannot be loaded ("" when it can)
    shear: tuple[tuple[float, float], ...] = ()   # gantry tilt: each sorted slice's in-plane offset from the
                                                  # first, (x, y) in pixels; the loader shifts it onto the grid
    margin: tuple[int, int, int, int] = (0, 0, 0, 0)   # gantry tilt: grid pixels added before / after x,
                                                       # before / after y, so every slice fits whole

    @property
    def n_slices(self) -> int:
        return self.grid_slices or len(self.order)

    def plane(self, rows: int, columns: int) -> tuple[int, int]:
        """The grid's (rows, columns) for slices of ``rows`` × ``columns`` pixels."""
        bx, ax, by, ay = self.margin
        return rows + by + ay, columns + bx + ax


def frame_axes(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row cosine, column cosine (made orthogonal to the row) and slice normal."""
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:6], dtype=float)
    row = row / np.linalg.norm(row)
    col = col - row * float(row @ col)
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def valid_orientation(iop: Sequence[float] | None) -> TypeGuard[Sequence[float]]:
    if iop is None or len(iop) != 6 or not np.all(np.isfinite(np.asarray(iop, dtype=float))):
        return False
    row, col = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    return bool(0.9 < nr < 1.1 and 0.9 < nc < 1.1 and abs(float(row @ col)) < 0.05)


def same_orientation(a: Sequence[float], b: Sequence[float], tol: float = ORIENTATION_TOLERANCE) -> bool:
    return bool(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))) <= tol)


def positions_along_normal(iop: Sequence[float], ipps: Sequence[Sequence[float]]) -> np.ndarray:
    _, _, normal = frame_axes(iop)
    return np.asarray(ipps, dtype=float).reshape(-1, 3) @ normal


def has_repeated_positions(iop: Sequence[float], ipps: Sequence[Sequence[float]]) -> bool:
    d = np.sort(positions_along_normal(iop, ipps))
    return bool(len(d) > 1 and np.min(np.diff(d)) < SAME_POSITION_MM)


def orientation_letters(direction: Sequence[float] | np.ndarray) -> str:
    """Three letters naming where each index axis points (``LPS``, ``RAS``, …)."""
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    out = []
    for axis in d.T:
        k = int(np.argmax(np.abs(axis)))
        out.append(letters[k][0] if axis[k] > 0 else letters[k][1])
    return "".join(out)


def stack_geometry(iop: Sequence[float], ipps: Sequence[Sequence[float]],
                   pixel_spacing: Sequence[float] | None, tie_break: Sequence[tuple] | None = None,
                   thickness: float | None = None) -> StackGeometry:
    """Sort slices along the normal and derive the grid; report gaps, uneven spacing and tilt.

    Evenly spaced slices are the grid. An uneven stack (missing slices, irregular steps) keeps
    every slice at its true position: the grid spans the stack with about the *median* step and
    ``positions`` tells the loader where each slice lies, to resample linearly along the normal
    (a missing slice is interpolated from its neighbours); a gap of more than
    :data:`MAX_FILLED_SLICES` missing slices sets ``refusal`` instead.
    """
    row, col, normal = frame_axes(iop)
    points = np.asarray(ipps, dtype=float).reshape(-1, 3)
    d = points @ normal
    keys = tie_break if tie_break is not None else [()] * len(d)
    order = sorted(range(len(d)), key=lambda i: (round(float(d[i]), 4), keys[i]))
    d_sorted = d[order]
    notes: list[str] = []
    if pixel_spacing is None or len(pixel_spacing) < 2 or min(float(v) for v in pixel_spacing[:2]) <= 0:
        sy = sx = 1.0
        notes.append(NO_PIXEL_SPACING)
    else:
        sy, sx = float(pixel_spacing[0]), float(pixel_spacing[1])
    n = len(order)
    positions: tuple[float, ...] = ()
    grid_slices, refusal = 0, ""
    if n == 1:
        sz = float(thickness) if thickness and thickness > 0 else 1.0
    else:
        steps = np.diff(d_sorted)
        sz = float(np.median(steps))
        if sz < SAME_POSITION_MM:
            sz = 1.0
            notes.append("all slices share one position: slice spacing set to 1 mm")
        else:
            if float(np.max(np.abs(steps - sz))) > max(0.01, 0.01 * sz):
                median = sz
                span = float(d_sorted[-1] - d_sorted[0])
                grid_slices = int(round(span / median)) + 1
                sz = span / (grid_slices - 1)
                positions = tuple(float(v) for v in d_sorted - d_sorted[0])
                uneven, refusal = _uneven_notes(steps, d_sorted, median, sz, grid_slices)
                if refusal:                 # no grid is built: list the files as found, nothing filled
                    grid_slices, positions, sz = 0, (), median
                else:
                    notes.extend(uneven)
    shear: tuple[tuple[float, float], ...] = ()
    margin = (0, 0, 0, 0)
    angle = _tilt_angle(points[order], normal) if n > 1 and sz > 0 else 0.0
    if angle >= TILT_DEGREES:
        shear, margin = _shear(points[order], row, col, normal, sx, sy)
        largest = max(abs(v) for offset in shear for v in offset)
        notes.append(_tilt_note(points[order], normal, angle, largest, shear, margin))
        if largest < TILT_CORRECTED_PX:
            shear, margin = (), (0, 0, 0, 0)        # kept as stored: the grid is the acquisition's
    direction = np.column_stack([row, col, normal])
    first = points[order[0]] - margin[0] * sx * row - margin[2] * sy * col
    return StackGeometry(
        order=tuple(order),
        origin=(float(first[0]), float(first[1]), float(first[2])),
        spacing=(sx, sy, sz),
        direction=tuple(float(v) for v in direction.ravel()),
        notes=tuple(notes),
        positions=positions,
        grid_slices=grid_slices,
        refusal=refusal,
        shear=shear,
        margin=margin,
    )


def _uneven_notes(steps: np.ndarray, d: np.ndarray, median: float, step: float,
                  grid_slices: int) -> tuple[list[str], str]:
    """What the resampling of an uneven stack does, and why it cannot be done ("" when it can)."""
    n = len(d)
    notes, too_large = [], []
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    for i in gaps:
        missing = max(1, int(round(float(steps[i]) / median)) - 1)
        where = (f"a gap of {steps[i]:.4g} mm (about {missing} slice(s) of {median:.4g} mm) between slices "
                 f"{i + 1} and {i + 2} of {n} (at {d[i]:.2f} and {d[i + 1]:.2f} mm along the slice normal)")
        if missing > MAX_FILLED_SLICES:
            too_large.append(where)
        notes.append(f"missing slice(s): {where}; filled by linear interpolation between the slices on "
                     f"either side")
    others = np.delete(steps, gaps)
    if np.any(np.abs(others - median) > max(0.01, 0.01 * median)):
        notes.append(f"slice spacing is not uniform: steps from {steps.min():.4g} to {steps.max():.4g} mm "
                     f"(median {median:.4g} mm)")
    notes.append(f"resampled linearly along the slice normal onto a uniform {step:.4g} mm grid of "
                 f"{grid_slices} slices (from {n}), so every slice keeps its true position")
    refusal = ""
    if too_large:
        refusal = (f"slices are missing: {'; '.join(too_large)}; more than {MAX_FILLED_SLICES} missing slices "
                   f"are too many to fill by interpolation, so the series is not loaded (find the missing "
                   f"or unreadable files, listed with the skipped files)")
    return notes, refusal


def resample_slices(stack: np.ndarray, positions: Sequence[float], grid_slices: int, step: float) -> np.ndarray:
    """Slices at ``positions`` (mm from the first, ascending) resampled linearly onto ``grid_slices``
    slices ``step`` mm apart; a grid slice at an input slice's position is that slice, unchanged."""
    pos = np.asarray(positions, dtype=float)
    out = np.empty((grid_slices, *stack.shape[1:]), dtype=np.float32)
    for k in range(grid_slices):
        z = k * step
        upper = int(np.clip(np.searchsorted(pos, z), 1, len(pos) - 1))
        lower = upper - 1
        nearest = lower if z - pos[lower] <= pos[upper] - z else upper
        if abs(pos[nearest] - z) < SAME_POSITION_MM:
            out[k] = stack[nearest]
        else:
            w = (z - pos[lower]) / (pos[upper] - pos[lower])
            out[k] = (1.0 - w) * stack[lower].astype(np.float64) + w * stack[upper]
    return out


def _tilt_angle(points: np.ndarray, normal: np.ndarray) -> float:
    """Degrees between the line through the first and last slice positions and the slice normal
    (0 when the in-plane travel is under 0.01 mm)."""
    travel = points[-1] - points[0]
    along = float(travel @ normal)
    shift = float(np.linalg.norm(travel - along * normal))
    if abs(along) < 1e-9 or shift < 0.01:
        return 0.0
    return float(np.degrees(np.arctan2(shift, abs(along))))


SHIFT_EXACT_PX = 1e-3       # an in-plane offset this close to whole pixels is whole (no interpolation)


def _shear(points: np.ndarray, row: np.ndarray, col: np.ndarray, normal: np.ndarray, sx: float,
           sy: float) -> tuple[tuple[tuple[float, float], ...], tuple[int, int, int, int]]:
    """Each slice's in-plane offset from the first (pixels along x and y) and the margins the
    orthogonal grid needs to hold every slice whole."""
    rel = points - points[0]
    lateral = rel - np.outer(rel @ normal, normal)
    ox, oy = lateral @ row / sx, lateral @ col / sy
    whole = np.round(ox), np.round(oy)
    ox = np.where(np.abs(ox - whole[0]) < SHIFT_EXACT_PX, whole[0], ox)
    oy = np.where(np.abs(oy - whole[1]) < SHIFT_EXACT_PX, whole[1], oy)
    margin = (int(np.ceil(max(0.0, -ox.min()))), int(np.ceil(max(0.0, ox.max()))),
              int(np.ceil(max(0.0, -oy.min()))), int(np.ceil(max(0.0, oy.max()))))
    return tuple((float(x), float(y)) for x, y in zip(ox, oy)), margin


def _tilt_note(points: np.ndarray, normal: np.ndarray, angle: float, largest: float,
               shear: tuple[tuple[float, float], ...], margin: tuple[int, int, int, int]) -> str:
    """What the tilt is (``angle``; ``largest``: the most any slice lies off the first's grid, pixels)
    and what was done about it."""
    travel = points[-1] - points[0]
    shift = float(np.linalg.norm(travel - float(travel @ normal) * normal))
    whole = all(float(x).is_integer() and float(y).is_integer() for x, y in shear)
    how = "by whole pixels" if whole else "with linear interpolation"
    head = (f"gantry tilt (sheared stack): slice positions run at {angle:.2f}° to the slice "
            f"normal ({shift / max(1, len(points) - 1):.3g} mm in-plane shift per slice, {shift:.3g} mm over the stack)")
    if largest < TILT_CORRECTED_PX:
        return (f"{head}; no slice lies half a pixel from the grid built on the first ({largest:.2f} pixel at most), "
                "so the stack is kept as stored")
    return (f"{head}; every slice was shifted in-plane {how} onto an orthogonal grid "
            f"{margin[0] + margin[1]} × {margin[2] + margin[3]} pixels larger (x × y), so each keeps its true "
            f"position; the added margin holds the stack's lowest value")


def unshear(stack: np.ndarray, geometry: StackGeometry) -> np.ndarray:
    """A gantry-tilted stack (slices in sorted order) on the geometry's orthogonal grid: slice k
    shifted in-plane by its offset plus the margin; where no slice pixel lies, the stack's lowest value."""
    if not geometry.shear:
        return stack
    n, rows, cols = stack.shape
    bx, _, by, _ = geometry.margin
    grid_rows, grid_cols = geometry.plane(rows, cols)
    finite = stack[np.isfinite(stack)]
    fill = float(finite.min()) if finite.size else 0.0
    out = np.empty((n, grid_rows, grid_cols), dtype=np.float32)
    for k, (ox, oy) in enumerate(geometry.shear):
        moved = _shifted(stack[k].astype(np.float64), bx + ox, grid_cols, axis=1, fill=fill)
        out[k] = _shifted(moved, by + oy, grid_rows, axis=0, fill=fill)
    return out


def _shifted(image: np.ndarray, offset: float, length: int, axis: int, fill: float) -> np.ndarray:
    """``image`` moved ``offset`` pixels along ``axis`` into ``length`` pixels: output pixel i is
    input position i - offset (linear between pixels; ``fill`` beyond the input). Offsets within
    :data:`SHIFT_EXACT_PX` of whole pixels come whole (:func:`_shear`), and move the pixels unchanged."""
    whole = int(np.floor(offset))
    frac = offset - whole

    def taken(shift: int) -> np.ndarray:
        index = np.arange(length) - shift
        valid = (index >= 0) & (index < image.shape[axis])
        values = np.take(image, np.clip(index, 0, image.shape[axis] - 1), axis=axis)
        mask = valid if axis == 1 else valid[:, None]
        return np.where(mask, values, fill)

    if frac == 0.0:
        return taken(whole)
    return (1.0 - frac) * taken(whole) + frac * taken(whole + 1)
