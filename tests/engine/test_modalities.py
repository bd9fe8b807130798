"""The modality registry: names, normalisation and its inverse, guesses from tags and names."""
import numpy as np
import pytest

from engine import modalities as m


def test_names_are_case_insensitive_and_unknown_is_clear():
    assert m.canonical("flair") == "FLAIR"
    assert m.get("cbct").unit == "HU"
    with pytest.raises(ValueError, match="unknown modality 'T3'.*T1, T1CE"):
        m.get("T3")


def test_ct_normalisation_is_fixed_hu_range_and_invertible():
    hu = np.array([-1024.0, 0.0, 40.0, 2000.0])
    norm = m.normalisation_for(hu, "CT")
    n = m.normalise(hu, norm)
    assert n[0] == 0.0 and n[-1] == 1.0
    np.testing.assert_allclose(m.denormalise(n, norm), hu, atol=1e-3)


def test_mr_normalisation_uses_body_percentiles():
    rng = np.random.default_rng(0)
    vol = np.zeros((8, 32, 32), np.float32)
    vol[:, 8:24, 8:24] = rng.uniform(100, 500, size=(8, 16, 16))
    norm = m.normalisation_for(vol, "T1")
    assert 100 <= norm.lo < 110 and 490 < norm.hi <= 500
    inside = vol[:, 8:24, 8:24]
    np.testing.assert_allclose(m.denormalise(m.normalise(inside, norm), norm),
                               np.clip(inside, norm.lo, norm.hi), rtol=1e-5)


def test_body_mask_fills_holes_and_drops_specks():
    ct = np.full((3, 40, 40), -1000.0, np.float32)
    ct[:, 10:30, 10:30] = 40.0
    ct[:, 18:22, 18:22] = -1000.0   # air inside the head (sinus)
    ct[:, 2, 2] = 500.0             # a speck outside
    mask = m.body_mask(ct, "CT")
    assert mask[:, 20, 20].all() and not mask[:, 2, 2].any()
    assert mask.sum() == 3 * 400


@pytest.mark.parametrize("name,expected", [
    ("sub-01_T1w.nii.gz", "T1"), ("BraTS_001_t1ce.nii.gz", "T1CE"), ("case_t1gd.nii", "T1CE"),
    ("flair.nii.gz", "FLAIR"), ("BraTS20_t2.nii.gz", "T2"), ("PD.mha", "PD"), ("1BA001_cbct.nii.gz", "CBCT"),
    ("ct.nii.gz", "CT"), ("pet_suv.nrrd", "PET"), ("anatomical.nii", None),
])
def test_guess_from_file_names(name, expected):
    assert m.guess_from_filename(f"/data/{name}") == expected


def test_guess_from_dicom_tags():
    assert m.guess_from_dicom({"Modality": "CT", "SeriesDescription": "Head 5mm"}) == "CT"
    assert m.guess_from_dicom({"Modality": "CT", "SeriesDescription": "CBCT pelvis"}) == "CBCT"
    assert m.guess_from_dicom({"Modality": "PT"}) == "PET"
    assert m.guess_from_dicom({"Modality": "MR", "SeriesDescription": "AX FLAIR"}) == "FLAIR"
    assert m.guess_from_dicom({"Modality": "MR", "SeriesDescription": "T1 SE", "ContrastBolusAgent": "Gd"}) == "T1CE"
    # No helpful description: timing decides.
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 500, "EchoTime": 12}) == "T1"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 4000, "EchoTime": 100}) == "T2"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 9000, "EchoTime": 120,
                               "InversionTime": 2500}) == "FLAIR"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 3000, "EchoTime": 15}) == "PD"
