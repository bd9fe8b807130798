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
