"""What a reference scan's modality and unit say against scoring a synthetic with it
(engine.evaluation.reference): the one rule of synthesize --reference and the app's comparison."""
from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation import reference_modality_warnings
from engine.io import Volume


def _scan(modality: str | None, unit: str = "", **fields) -> Volume:
    return Volume(np.zeros((2, 4, 4), np.float32), modality=modality, unit=unit, **fields)


def test_the_target_s_own_modality_on_its_scale_says_nothing():
    assert reference_modality_warnings(_scan("CT", "HU"), "CT") == []
    assert reference_modality_warnings(_scan("T2", "a.u."), "T2") == []


def test_another_family_is_refused_when_a_header_says_it_and_warned_of_when_a_name_does():
    with pytest.raises(ValueError, match="its modality is T1 .* but the synthesis makes CT"):
        reference_modality_warnings(_scan("T1", dicom={"Modality": "MR"}), "CT")
    [warning] = reference_modality_warnings(_scan("T1"), "CT")               # a NIfTI named ..._T1
    assert "unless its file name misleads" in warning


def test_another_contrast_an_unknown_modality_and_another_scale_are_warned_of():
    assert reference_modality_warnings(_scan("T1"), "T2")[0].startswith("its modality is T1, not T2")
    assert "not known" in reference_modality_warnings(_scan(None), "CT")[0]
    [warning] = reference_modality_warnings(_scan("PET", "Bq/ml"), "PET")
    assert warning.startswith("its values are in Bq/ml, not SUVbw")


def test_a_reference_s_padding_outside_its_field_of_view_is_not_scored():
    from engine.evaluation.reference import score_against

    z, y, x = np.mgrid[0:4, 0:48, 0:48]
    outside = np.hypot(y - 23.5, x - 23.5) > 22
    head = np.hypot(y - 23.5, x - 23.5) < 15
    ct = np.where(head, 40.0, -1000.0).astype(np.float32)
    reference = Volume(np.where(outside, -3024.0, ct).astype(np.float32), spacing=(1.0, 1.0, 2.0), modality="CT",
                       unit="HU")                              # padded as a scanner pads: one value below air
    synthetic = reference.with_array(ct + 10.0)                # 10 HU off everywhere, air beyond the field of view
    scored = score_against(synthetic, reference, synthetic, "CT", axis=0)
    assert scored.coverage == pytest.approx(1 - outside.mean())
    assert scored.evaluation.whole.mae == pytest.approx(10.0, abs=1e-3)   # not 2024 HU where the padding is
