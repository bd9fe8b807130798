"""HU calibration of CT-family sources: the soft-tissue peak is found whatever the offset, the
source is shifted onto the card's reference, and a model without one (or a source without soft tissue in
the window) is left alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.inference.calibration import (
    calibration_shift,
    dataset_calibration,
    reference_peak,
    soft_tissue_peak,
)
from engine.inference.model_card import ModelCard
from engine.inference.pipeline import SliceSynthesizer
from engine.io.volume import Volume
from engine.tasks import PairedDataset
from engine.tasks.phantoms import write_phantom_dataset


def _head(offset: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cylinder of brain (≈ 35 HU) with CSF (≈ 8 HU) and a bone ring (≈ 900 HU) in air, noisy."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:8, 0:96, 0:96]
    r = np.hypot(y - 47.5, x - 47.5)
    hu = np.full(r.shape, -1000.0)
    hu[r < 40] = 900.0
    hu[r < 36] = 35.0
    hu[(r < 8)] = 8.0
    hu = hu + rng.normal(0.0, 12.0, hu.shape) + offset
    return hu.astype(np.float32), r < 40


@pytest.mark.parametrize("offset", [-300.0, -120.0, 0.0, 90.0, 280.0])
def test_the_soft_tissue_peak_follows_the_offset(offset):
    hu, body = _head(offset)
    assert soft_tissue_peak(hu, body) == pytest.approx(35.0 + offset, abs=6.0)


def test_a_source_is_shifted_onto_the_reference_and_says_so():
    hu, body = _head(180.0)
    shift, note = calibration_shift(hu, body, {"soft_tissue_hu": 35.0})
    assert shift == pytest.approx(-180.0, abs=6.0) and "shifted" in note
    assert calibration_shift(hu, body, None) == (0.0, "")               # no reference: nothing done
    shift, note = calibration_shift(hu - 700.0, body, {"soft_tissue_hu": 35.0})
    assert shift == 0.0 and "no soft-tissue peak" in note                # the peak left the window
    air = np.full((4, 32, 32), -1000.0, np.float32)
    assert calibration_shift(air, air > -500, {"soft_tissue_hu": 35.0})[0] == 0.0


def test_the_reference_is_the_median_of_the_training_cts(tmp_path):
    assert reference_peak([_head(o, s) for s, o in enumerate((-20.0, 0.0, 40.0))]) == pytest.approx(35.0, abs=6.0)
    root = write_phantom_dataset(tmp_path, subjects=2, shape=(12, 24, 24))
    paired = PairedDataset.open(root)
    card = dataset_calibration(paired, split=None)                       # the phantoms' one CT subject
    ct = paired.volume("ct01", "CT").array
    assert card == {"soft_tissue_hu": pytest.approx(soft_tissue_peak(ct, ct > -500.0), abs=0.1),
                    "from": "the soft-tissue peak of 1 CTs"}
    only_mr = write_phantom_dataset(tmp_path / "mr", subjects=2, shape=(12, 24, 24), ct_subject=False)
    assert dataset_calibration(PairedDataset.open(only_mr), split=None) is None


class _Identity(SliceSynthesizer):
    """Hands the model images back unchanged: the result is the (calibrated) source."""

    def __init__(self, calibration):
        card = ModelCard.from_metadata({"name": "identity", "routes": [["CBCT", "CT"]], "pixel_mm": 2.0,
                                        "calibration": calibration})
        super().__init__(card, 32, torch.device("cpu"))

    def _prepare(self, source, target, settings):
        return None, []

    def _run_batch(self, images, indices, prepared, settings, cancel, on_step=lambda p: None):
        return images.clone()

    def slice_memory_estimate(self, prepared):
        return 1


def test_synthesis_calibrates_a_cbct_before_the_model_unless_asked_not_to():
    hu, body = _head(200.0)
    volume = Volume(hu, spacing=(2.0, 2.0, 4.0), modality="CBCT")
    synth = _Identity({"soft_tissue_hu": 35.0})
    settings = synth.default_settings()
    tissue = (hu > 100.0) & (hu < 400.0)
    out = synth.synthesize_volume(volume, "CBCT", "CT", settings)
    assert abs(float(np.median(out.array[tissue])) - 35.0) < 15.0
    assert any(n.startswith("HU calibration: source shifted -") for n in out.notes)
    raw = synth.synthesize_volume(volume, "CBCT", "CT", settings.replace(hu_calibration=False))
    assert abs(float(np.median(raw.array[tissue])) - 235.0) < 15.0
    assert not any(n.startswith("HU calibration") for n in raw.notes)
    unknown = _Identity(None).synthesize_volume(volume, "CBCT", "CT", settings)
    assert np.allclose(unknown.array, raw.array)


def test_the_command_line_turns_the_calibration_off():
    import argparse

    from cli.common import add_sampling_arguments, sampling_settings
    from engine.inference.settings import SynthesisSettings

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    assert sampling_settings(parser.parse_args([]), SynthesisSettings()).hu_calibration is True
    assert sampling_settings(parser.parse_args(["--no-hu-calibration"]), SynthesisSettings()).hu_calibration is False
