"""The one volume type: voxel array in physical units plus its exact geometry and provenance
(whether a model made it: ``synthetic``, from which modality: ``derived_from``, and how: ``provenance``).

Conventions (those of SimpleITK and DICOM): the array is indexed (z, y, x); ``spacing`` and
``origin`` are given in (x, y, z) order, in millimetres, in the patient's LPS frame; ``direction``
holds 9 numbers row-major, column j being the LPS direction of index axis j (x, y, z).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

# the worlds a NIfTI file's qform / sform code names (codes 1–5): a scanner's coordinates, those of another
# image it was aligned to, or a standard space (Talairach, MNI-152, another template)
SPACES = ("scanner", "aligned", "Talairach", "MNI", "template")
# a NIfTI file whose header names no world (qform and sform codes 0): each program places it its own way,
# so what is made from it is written so too, to be placed alike
UNKNOWN_SPACE = "unknown"


@dataclass(frozen=True)
class OtherWorld:
    """A second world the file a volume was read from also placed it in — a NIfTI qform of another code
    or matrix beside the sform that placed it (an MNI sform, the scanner's qform) — as that world's name
    (:data:`SPACES`) and the 4×4 LPS transform (16 numbers, row-major) from the volume's world to it: a
    property of the two worlds, not of the grid, so whatever is made in the volume's world is placed in
    the other one too."""

    space: str
    transform: tuple[float, ...]

    def matrix(self) -> np.ndarray:
        return np.asarray(self.transform, dtype=float).reshape(4, 4)


@dataclass(frozen=True, eq=False)
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    modality: str | None = None
    unit: str = ""
    name: str = ""
    source: str = ""
    notes: tuple[str, ...] = ()
    dicom: dict[str, str] = field(default_factory=dict)
    synthetic: bool = False          # made by a model, not acquired: every writer marks it, every reader finds it
    derived_from: str = ""           # the modality a synthetic volume was made from, when known
    provenance: dict = field(default_factory=dict)   # how a model made it: the JSON sidecar an export writes
    space: str = "scanner"           # the world the coordinates are in (SPACES: a NIfTI transform's code; DICOM: scanner;
                                     # UNKNOWN_SPACE: a NIfTI naming none)
    not_anatomy: str = ""            # why its values are no scan of a modality the model knows (a localizer, a DWI…)
    other_world: OtherWorld | None = None   # a NIfTI input's qform naming another world: NIfTI outputs keep it

    def __post_init__(self) -> None:
        if self.space not in (*SPACES, UNKNOWN_SPACE):
            raise ValueError(f"space must be one of {', '.join((*SPACES, UNKNOWN_SPACE))}, got {self.space!r}")
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"a volume needs a 3-D array (z, y, x), got shape {arr.shape}")
        object.__setattr__(self, "array", arr)
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        object.__setattr__(self, "spacing", spacing)
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise ValueError(f"origin must be three finite numbers (mm), got {self.origin}")
        object.__setattr__(self, "origin", origin)
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"direction cosines must be orthonormal, got {self.direction}")
        object.__setattr__(self, "direction", tuple(float(v) for v in d.ravel()))
        object.__setattr__(self, "notes", tuple(self.notes))

    # -- geometry --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_lps(self) -> np.ndarray:
        """4×4 affine mapping a continuous (x, y, z) voxel index to an LPS point in mm."""
        aff = np.eye(4)
        aff[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        aff[:3, 3] = self.origin
        return aff

    def orientation(self) -> str:
        """Three letters naming where each index axis (x, y, z) points, e.g. ``LPS`` or ``RAS``."""
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        out = []
        for axis in self.direction_matrix.T:
            k = int(np.argmax(np.abs(axis)))
            out.append(letters[k][0] if axis[k] > 0 else letters[k][1])
        return "".join(out)

    def same_grid(self, other: Volume, tol: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 10)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray, **changes) -> Volume:
        """A new volume on the same grid with another array (and optionally other fields)."""
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.shape != self.shape:
            raise ValueError(f"array shape {arr.shape} does not match the grid {self.shape}")
        return dataclasses.replace(self, array=arr, **changes)

    def replace(self, **changes) -> Volume:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """JSON-friendly summary (what ``main.py info`` prints)."""
        return {
            "name": self.name,
            "modality": self.modality,
            "unit": self.unit,
            "shape_zyx": list(self.shape),
            "spacing_xyz_mm": [round(s, 6) for s in self.spacing],
            "origin_lps_mm": [round(o, 4) for o in self.origin],
            "orientation": self.orientation(),
            "space": self.space,
            "other_world": self.other_world.space if self.other_world else None,    # a NIfTI qform's, kept
            "dtype": str(self.array.dtype),
            "synthetic": self.synthetic,
            "derived_from": self.derived_from,
            "notes": list(self.notes),
        }


def finite_filled(array: np.ndarray) -> np.ndarray:
    """``array`` with NaN and −inf set to its lowest finite value, +inf to its highest (all zeros when
    nothing is finite): what holds no number is read, and written, as "no data" at the bottom."""
    finite = np.isfinite(array)
    if finite.all():
        return array
    if not finite.any():
        return np.zeros_like(array)
    lo, hi = float(array[finite].min()), float(array[finite].max())
    return np.nan_to_num(array, nan=lo, posinf=hi, neginf=lo)
