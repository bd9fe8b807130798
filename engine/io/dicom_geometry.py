"""Geometry of a stack of DICOM slices: the order along the slice normal, origin, spacing and
direction cosines, and what is wrong with the stack (missing slices, uneven spacing, gantry tilt).

Conventions are those of SimpleITK's ``ImageSeriesReader``: slices sorted by ascending position
along the normal ``n = row × column`` (ImageOrientationPatient), origin = ImagePositionPatient of
the first sorted slice, direction columns = (row cosine, column cosine, n), PixelSpacing =
[row spacing (y), column spacing (x)], slice spacing from positions (never SliceThickness).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

ORIENTATION_TOLERANCE = 1e-3     # max difference of IOP components within one volume
SAME_POSITION_MM = 0.01          # two slices closer than this along the normal share a position
GAP_FACTOR = 1.5                 # a step this many times the median step is a gap (missing slices)
TILT_DEGREES = 0.05              # stacking direction this far from the normal is a gantry tilt


@dataclass(frozen=True)
class StackGeometry:
    order: tuple[int, ...]                 # indices of the input slices, first slice first
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]    # (x, y, z) mm
    direction: tuple[float, ...]           # 9 numbers, row-major, columns = index axes
    notes: tuple[str, ...] = ()


def frame_axes(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row cosine, column cosine (made orthogonal to the row) and slice normal."""
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:6], dtype=float)
    row = row / np.linalg.norm(row)
    col = col - row * float(row @ col)
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def valid_orientation(iop: Sequence[float] | None) -> bool:
    if iop is None or len(iop) != 6 or not np.all(np.isfinite(np.asarray(iop, dtype=float))):
        return False
    row, col = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    return 0.9 < nr < 1.1 and 0.9 < nc < 1.1 and abs(float(row @ col)) < 0.05


def same_orientation(a: Sequence[float], b: Sequence[float], tol: float = ORIENTATION_TOLERANCE) -> bool:
    return bool(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))) <= tol)


def positions_along_normal(iop: Sequence[float], ipps: Sequence[Sequence[float]]) -> np.ndarray:
    _, _, normal = frame_axes(iop)
    return np.asarray(ipps, dtype=float).reshape(-1, 3) @ normal


def has_repeated_positions(iop: Sequence[float], ipps: Sequence[Sequence[float]]) -> bool:
    d = np.sort(positions_along_normal(iop, ipps))
    return bool(len(d) > 1 and np.min(np.diff(d)) < SAME_POSITION_MM)


def orientation_letters(direction: Sequence[float]) -> str:
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

    The voxels are never resampled: a stack with a gap or uneven steps keeps its slices on a
    uniform grid with the *median* step (the true slice distance in the common case of one
    missing slice), and the notes say where and by how much the grid departs from the files.
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
        notes.append("PixelSpacing is missing or zero: in-plane spacing set to 1 mm")
    else:
        sy, sx = float(pixel_spacing[0]), float(pixel_spacing[1])
    n = len(order)
    if n == 1:
        sz = float(thickness) if thickness and thickness > 0 else 1.0
    else:
        steps = np.diff(d_sorted)
        sz = float(np.median(steps))
        if sz < SAME_POSITION_MM:
            sz = 1.0
            notes.append("all slices share one position: slice spacing set to 1 mm")
        else:
            notes.extend(_spacing_notes(steps, d_sorted, sz))
            notes.extend(_tilt_notes(points[order], normal, sz))
    direction = np.column_stack([row, col, normal])
    return StackGeometry(
        order=tuple(order),
        origin=tuple(float(v) for v in points[order[0]]),
        spacing=(sx, sy, sz),
        direction=tuple(float(v) for v in direction.ravel()),
        notes=tuple(notes),
    )


def _spacing_notes(steps: np.ndarray, d: np.ndarray, median: float) -> list[str]:
    tol = max(0.01, 0.01 * median)
    if float(np.max(np.abs(steps - median))) <= tol:
        return []
    n = len(d)
    notes = []
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    for i in gaps:
        missing = max(1, int(round(float(steps[i]) / median)) - 1)
        notes.append(
            f"missing slice(s): a gap of {steps[i]:.4g} mm (about {missing} slice(s) of {median:.4g} mm) "
            f"between slices {i + 1} and {i + 2} of {n} (at {d[i]:.2f} and {d[i + 1]:.2f} mm along the "
            f"slice normal); the slices are kept as they are on a uniform {median:.4g} mm grid, so "
            f"slices {i + 2}…{n} sit {steps[i] - median:.4g} mm from their true positions"
        )
    others = np.abs(np.delete(steps, gaps) - median) > tol
    if np.any(others) or not len(gaps):
        expected = d[0] + median * np.arange(n)
        worst = float(np.max(np.abs(d - expected)))
        notes.append(
            f"slice spacing is not uniform: steps from {steps.min():.4g} to {steps.max():.4g} mm "
            f"(median {median:.4g} mm); the volume uses the median, so slice positions are off by up "
            f"to {worst:.3g} mm"
        )
    return notes


def _tilt_notes(points: np.ndarray, normal: np.ndarray, step: float) -> list[str]:
    travel = points[-1] - points[0]
    along = float(travel @ normal)
    lateral = travel - along * normal
    shift = float(np.linalg.norm(lateral))
    if abs(along) < 1e-9:
        return []
    angle = float(np.degrees(np.arctan2(shift, abs(along))))
    if angle < TILT_DEGREES or shift < 0.01:
        return []
    per_slice = shift / max(1, len(points) - 1)
    return [
        f"gantry tilt (sheared stack): slice positions run at {angle:.2f}° to the slice normal "
        f"({per_slice:.3g} mm in-plane shift per slice); the volume is built on an orthogonal grid "
        f"from the first slice, so the last slice lies {shift:.3g} mm in-plane from its true position "
        f"— resample if exact positions matter"
    ]
