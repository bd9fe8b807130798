"""Window/level of an image (or of a group of linked images) and the presets per modality:
CT brain/subdural/soft tissue/lung/bone, PET SUV ranges, MR auto (percentiles)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.state.events import Event

MIN_WIDTH = 1e-6
AUTO_PERCENTILES = (0.5, 99.5)     # as the MR normalisation of engine.modalities
DRAG_PIXELS_PER_E_FOLD = 200.0   # right-drag: this many pixels multiply the width by e


@dataclass(frozen=True)
class Preset:
    name: str
    level: float
    width: float


CT_PRESETS = (
    Preset("Brain", 40.0, 80.0),
    Preset("Subdural", 75.0, 215.0),
    Preset("Soft tissue", 40.0, 400.0),
    Preset("Lung", -600.0, 1500.0),
    Preset("Bone", 400.0, 1800.0),
    Preset("Temporal bone", 600.0, 2800.0),
)
PET_PRESETS = (Preset("SUV 0–6", 3.0, 6.0), Preset("SUV 0–10", 5.0, 10.0))


def _sample(array: np.ndarray, max_values: int = 1_000_000) -> np.ndarray:
    step = max(1, int(math.ceil((array.size / max_values) ** (1 / 3))))
    values = np.asarray(array[::step, ::step, ::step] if array.ndim == 3 else array, dtype=np.float32).ravel()
    return values[np.isfinite(values)]


def auto_preset(array: np.ndarray, percentiles: tuple[float, float] = AUTO_PERCENTILES) -> Preset:
    """The window spanning the given percentiles of the (subsampled) voxel values."""
    values = _sample(array)
    if values.size == 0:
        return Preset("Auto", 0.5, 1.0)
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi - lo < MIN_WIDTH:
        hi = lo + 1.0
    return Preset(f"Auto ({percentiles[0]:g}–{percentiles[1]:g} %)", (lo + hi) / 2, hi - lo)


def full_range_preset(array: np.ndarray) -> Preset:
    values = _sample(array)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    return Preset("Full range", (lo + hi) / 2, max(hi - lo, 1.0))


def presets_for(array: np.ndarray, modality: str | None, unit: str = "") -> list[Preset]:
    """Presets for a volume; the first is its default window. A scale's presets (HU, SUV) only for
    values on that scale (``unit``; none stated: the modality's): a PET in Bq/ml gets the automatic ones."""
    from engine import modalities

    on_scale = modalities.on_scale(modality, unit)
    family = modalities.MODALITIES[modality].family if on_scale and modality is not None else None
    if family == "CT":
        return [CT_PRESETS[2], *(p for p in CT_PRESETS if p is not CT_PRESETS[2]),
                auto_preset(array), full_range_preset(array)]
    if family == "PET":
        return [*PET_PRESETS, auto_preset(array), full_range_preset(array)]
    return [auto_preset(array), full_range_preset(array)]


def difference_preset(array: np.ndarray) -> Preset:
    """A window centred on zero spanning the 99th percentile of the absolute difference."""
    values = np.abs(_sample(array))
    half = float(np.percentile(values, 99)) if values.size else 1.0
    return Preset("Symmetric", 0.0, 2 * max(half, 1e-3))


class DisplayState:
    """Level and width of a grey-value window; ``changed`` fires with the new (low, high)."""

    def __init__(self, preset: Preset) -> None:
        self.level = preset.level
        self.width = max(preset.width, MIN_WIDTH)
        self.preset_name = preset.name
        self.changed = Event()

    @property
    def levels(self) -> tuple[float, float]:
        return (self.level - self.width / 2, self.level + self.width / 2)

    def set_window(self, level: float, width: float, preset_name: str = "") -> None:
        self.level, self.width = float(level), max(float(width), MIN_WIDTH)
        self.preset_name = preset_name
        self.changed.emit(self.levels)

    def apply(self, preset: Preset) -> None:
        self.set_window(preset.level, preset.width, preset.name)

    def drag(self, dx: float, dy: float) -> None:
        """Right-drag: rightwards widens the window, downwards raises the level (darker image)."""
        self.set_window(self.level + dy * self.width / DRAG_PIXELS_PER_E_FOLD,
                        self.width * math.exp(dx / DRAG_PIXELS_PER_E_FOLD))
