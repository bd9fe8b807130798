"""The identity baseline: no synthesis at all, only the source slice with its normalised
intensities mapped monotonically so that their histogram matches the target's. The mapping is
fitted per route on the training split (quantiles of all pixels of the co-registered source and
target slices), so no test data is looked at."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.inference.calibration import calibration_shift, dataset_calibration
from engine.inference.model_card import ModelCard
from engine.inference.pipeline import SliceSynthesizer
from engine.inference.settings import SynthesisSettings
from engine.jobs import CancelToken, ProgressFn, noop
from engine.tasks.dataset import PairedDataset

QUANTILES = 1001
MAX_SLICES_PER_SUBJECT = 48


def quantile_map(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys): the monotone map that sends ``source``'s quantiles onto ``target``'s, with
    repeated source quantiles (e.g. the background's zeros) collapsed to their first entry."""
    levels = np.linspace(0.0, 1.0, QUANTILES)
    xs = np.quantile(source, levels)
    ys = np.quantile(target, levels)
    xs, first = np.unique(xs, return_index=True)
    return xs.astype(np.float32), ys[first].astype(np.float32)


def _calibration_offset(paired: PairedDataset, subject: str, modality: str, calibration: dict | None) -> float:
    """The HU calibration of a CT-family volume as the pipeline applies it, on the [0, 1] scale the
    slices are fitted on (0 for other modalities): the map is fitted on sources as they will arrive."""
    from engine import modalities

    mod = modalities.get(modality)
    if calibration is None or mod.family != "CT":
        return 0.0
    hu = paired.volume(subject, modality).array
    shift, _ = calibration_shift(hu, modalities.body_mask(hu, modality), calibration)
    assert mod.fixed_range is not None, "every CT modality normalises over a fixed HU range"
    return shift / (mod.fixed_range[1] - mod.fixed_range[0])


class IntensityMatch(SliceSynthesizer):
    """``IntensityMatch.fit(paired, image_size)``: the identity baseline for every route of the
    training split, slicing as ``paired`` does (its ``pixel_mm``) and calibrating CT-family sources
    as the models trained on it do (:mod:`engine.inference.calibration`)."""

    def __init__(self, maps: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], image_size: int,
                 pixel_mm: float | None = None, calibration: dict | None = None) -> None:
        card = ModelCard.from_metadata({"name": "identity (histogram-matched source)",
                                        "routes": [list(r) for r in maps], "pixel_mm": pixel_mm,
                                        "calibration": calibration})
        super().__init__(card, image_size, torch.device("cpu"))
        self.maps = dict(maps)

    @classmethod
    def fit(cls, paired: PairedDataset, image_size: int, split: str = "train") -> IntensityMatch:
        pixels: dict[tuple[str, str], tuple[list, list]] = {}
        calibration = dataset_calibration(paired, split)
        for subject in paired.subject_names(split):
            usable = paired.usable_slices(subject)
            picked = usable[:: max(1, len(usable) // MAX_SLICES_PER_SUBJECT)]
            images = {m: torch.cat([paired.model_slice(subject, m, i, image_size) for i in picked]).numpy()
                      + _calibration_offset(paired, subject, m, calibration)
                      for m in paired.subject_modalities(subject)} if picked else {}
            for route in paired.subject(subject).routes:
                src, tgt = pixels.setdefault(route, ([], []))
                src.append(images[route[0]].ravel())
                tgt.append(images[route[1]].ravel())
        if not pixels:
            raise ValueError(f"identity baseline: the {split!r} split has no paired slices to fit on")
        maps = {route: quantile_map(np.concatenate(s), np.concatenate(t)) for route, (s, t) in pixels.items()}
        return cls(maps, image_size, paired.pixel_mm, calibration)

    def _prepare(self, source: str, target: str, settings: SynthesisSettings) -> tuple[Any, list[str]]:
        return self.maps[(source, target)], ["method: source intensities quantile-matched to the target's "
                                             "training-split histogram"]

    def _run_batch(self, images: torch.Tensor, indices: Sequence[int], prepared: Any, settings: SynthesisSettings,
                   cancel: CancelToken | None, on_step: ProgressFn = noop) -> torch.Tensor:
        xs, ys = prepared
        return torch.from_numpy(np.interp(images.numpy(), xs, ys).astype(np.float32))

    def slice_memory_estimate(self, prepared: Any) -> int:
        return 16 * self.image_size ** 2
