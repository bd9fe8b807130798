"""What the comparison view shows: the result of scoring a synthetic (or any test) volume against
a reference on the synthetic grid, beside the same scores of the "do nothing" baseline (the source,
histogram-matched to the reference), how the synthetic panel blends in the reference, and the
windows — one per modality, so panels of the same modality share their window/level."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from app.state.display import DisplayState, difference_preset, presets_for
from app.state.events import Event

if TYPE_CHECKING:
    from engine.evaluation import Evaluation
    from engine.io import Volume


def unplaced() -> str:
    """Why a reference in another frame of reference than the synthetic's input stays where its header
    puts it: no spatial registration relating them was opened."""
    from engine.io import NO_REGISTRATION  # the engine loads after the window shows

    return f"{NO_REGISTRATION} in what was opened: open the REG, or the patient's folder holding it"


@dataclass(frozen=True)
class ComparisonResult:
    synthetic: Volume
    reference: Volume                  # on the synthetic grid
    difference: Volume                 # synthetic − reference in the MAE's unit, 0 beyond the reference
    source: Volume | None              # on the synthetic grid
    evaluation: Evaluation             # per-slice curves run along array axis ``slice_axis``
    slice_axis: int                    # 0 = z, 1 = y, 2 = x: the axis synthesis cut along, the scores too
    coverage: float                    # share of the synthetic grid inside the reference
    notes: tuple[str, ...] = ()
    baseline: Evaluation | None = None  # the histogram-matched source against the reference (None: no source)
    baseline_note: str = ""            # why there is no baseline, when there is none
    covered: np.ndarray | None = field(default=None, repr=False)   # the synthetic grid's voxels the reference has data in

    def verdict(self) -> str:
        """One line: did the model beat doing nothing (scores inside the body mask, else the whole image)?"""
        if self.baseline is None:
            return ""
        from engine.evaluation import worse_than_baseline

        scope, worse = worse_than_baseline(self.evaluation, self.baseline)
        where = "inside the body" if scope == "body" else "over the whole image"
        if not worse:
            return f"The synthetic beats the histogram-matched source on PSNR, SSIM and MAE {where}."
        if len(worse) == 3:
            return (f"Worse than doing nothing: the histogram-matched source scores better on PSNR, SSIM and MAE "
                    f"{where} — the model did not help on this scan.")
        return (f"Worse than doing nothing on {' and '.join(worse)} {where}: the histogram-matched source "
                f"scores better there.")

    @property
    def model_worse(self) -> bool:
        return self.verdict().startswith("Worse")


class BlendMode(str, Enum):
    SIDE_BY_SIDE = "Synthetic"
    CHECKERBOARD = "Checkerboard with reference"
    FADE = "Fade to reference"


class ComparisonModel:
    """The current result, the blend of the synthetic panel, the linked windows."""

    def __init__(self) -> None:
        self.result: ComparisonResult | None = None
        self.mode = BlendMode.SIDE_BY_SIDE
        self.fade = 0.5
        self.checker_cells = 8
        self._displays: dict[str, DisplayState] = {}
        self.result_changed = Event()     # (result or None)
        self.blend_changed = Event()      # ()

    def set_result(self, result: ComparisonResult | None) -> None:
        self.result = result
        self._displays = {}
        if result is not None:
            for role in ("source", "synthetic", "reference"):
                volume = getattr(result, role)
                key = self._key(role, volume)
                if volume is not None and key not in self._displays:
                    self._displays[key] = DisplayState(presets_for(volume.array, volume.modality, volume.unit)[0])
            self._displays["difference"] = DisplayState(difference_preset(result.difference.array))
        self.result_changed.emit(result)

    @staticmethod
    def _key(role: str, volume: Volume | None) -> str:
        """Panels of one modality on a physical scale (HU, SUV) share a window; MR's arbitrary units
        differ from volume to volume (a synthetic's scale is not its reference's), so each MR panel
        keeps its own."""
        from engine import modalities

        modality = volume.modality if volume is not None else None
        physical = bool(modality) and modalities.get(modality).fixed_range is not None
        return f"modality:{modality}" if physical else role

    def display_for(self, role: str) -> DisplayState | None:
        """The window of a panel ("source", "synthetic", "reference" or "difference")."""
        if self.result is None:
            return None
        volume = self.result.difference if role == "difference" else getattr(self.result, role)
        return self._displays.get("difference" if role == "difference" else self._key(role, volume))

    def set_blend(self, mode: BlendMode, fade: float | None = None) -> None:
        self.mode = BlendMode(mode)
        if fade is not None:
            self.fade = float(np.clip(fade, 0.0, 1.0))
        self.blend_changed.emit()

    def blend(self, synthetic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """What the synthetic panel shows of two same-sized slice images, in physical units."""
        if self.mode is BlendMode.FADE:
            return (1.0 - self.fade) * synthetic + self.fade * reference
        if self.mode is BlendMode.CHECKERBOARD:
            cell = max(2, min(synthetic.shape) // self.checker_cells)
            rows, cols = np.indices(synthetic.shape)
            return np.where(((rows // cell + cols // cell) % 2) == 0, synthetic, reference)
        return synthetic
