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


def test_a_blank_slice_does_not_cut_the_body_in_two():
    t1 = np.zeros((9, 30, 30), np.float32)
    t1[1:8, 5:25, 5:25] = 600.0
    t1[4] = 0.0                                     # a slice lost (blank, or NaN set to background)
    t1[6, 1, 1] = 600.0                             # a speck in a slice beyond the gap: still a speck
    mask = m.body_mask(t1, "T1")
    expected = t1 > 0
    expected[6, 1, 1] = False
    np.testing.assert_array_equal(mask, expected)   # both parts of the head, the smaller one too
    t1[0, 1:3, 1:3] = 600.0                         # no gap before it: a speck in the slice before the head
    assert not m.body_mask(t1, "T1")[0].any()


@pytest.mark.parametrize("name,expected", [
    ("sub-01_T1w.nii.gz", "T1"), ("BraTS_001_t1ce.nii.gz", "T1CE"), ("case_t1gd.nii", "T1CE"),
    ("flair.nii.gz", "FLAIR"), ("BraTS20_t2.nii.gz", "T2"), ("PD.mha", "PD"), ("1BA001_cbct.nii.gz", "CBCT"),
    ("ct.nii.gz", "CT"), ("pet_suv.nrrd", "PET"), ("anatomical.nii", None),
    ("sub-01_T2starw.nii.gz", None), ("sub-01_dwi.nii.gz", None), ("T1_post.nii.gz", "T1CE"),
    ("case_no_5_t1ce.nii.gz", "T1CE"), ("sub-01_T1w_preproc.nii.gz", "T1"),      # "no", "pre…" alone: no negation
    ("CT_phase_00.nii.gz", "CT"), ("cbct_phase_10.nii.gz", "CBCT"), ("ct_arterial_phase.nii.gz", "CT"),  # 4-D CT
    ("sub-01_UNIT1.nii.gz", "T1"), ("pet_tracer.nii.gz", "PET"),
])
def test_guess_from_file_names(name, expected):
    assert m.guess_from_filename(f"/data/{name}") == expected


def test_guess_from_dicom_tags():
    assert m.guess_from_dicom({"Modality": "CT", "SeriesDescription": "Head 5mm"}) == "CT"
    assert m.guess_from_dicom({"Modality": "CT", "SeriesDescription": "CBCT pelvis"}) == "CBCT"
    for model in ("On-Board Imager", "XVI", "Halcyon"):        # a linac's CBCT named only by its imager
        assert m.guess_from_dicom({"Modality": "CT", "SeriesDescription": "Pelvis", "ManufacturerModelName": model}) == "CBCT"
    assert m.guess_from_dicom({"Modality": "CT", "SeriesDescription": "Pelvis", "ManufacturerModelName": "SOMATOM"}) == "CT"
    assert m.guess_from_dicom({"Modality": "PT"}) == "PET"
    assert m.guess_from_dicom({"Modality": "MR", "SeriesDescription": "AX FLAIR"}) == "FLAIR"
    assert m.guess_from_dicom({"Modality": "MR", "SeriesDescription": "T1 SE", "ContrastBolusAgent": "Gd"}) == "T1CE"
    # No helpful description: timing decides.
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 500, "EchoTime": 12}) == "T1"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 4000, "EchoTime": 100}) == "T2"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 9000, "EchoTime": 120,
                               "InversionTime": 2500}) == "FLAIR"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 3000, "EchoTime": 15}) == "PD"


@pytest.mark.parametrize("description, expected", [
    ("T1_mpr_ns_sag_pat2_iso_asy", "T1"),            # "pat2" (parallel imaging) had made an MPRAGE a T2
    ("ax t1 posterior fossa", "T1"),                  # "t1 post…" had made it a T1CE
    ("t2_tirm_tra_dark-fluid", "FLAIR"), ("t2_space_dark-fluid_sag", "FLAIR"),     # Siemens FLAIR, had been T2
    ("t1_se_tra_KM", "T1CE"), ("sag T1 FS post", "T1CE"), ("t1_vibe_fs_tra_caipi_post", "T1CE"),   # had been T1
    ("t2_fl2d_tra_hemo", None), ("T2* GRE", None), ("t2_swi_tra_p2", None),      # T2* / SWI, had been T2
    ("ep2d_diff_3scan_trace_p2", None), ("ep2d_bold_moco", None), ("MRA TOF 3D", None), ("B0map", None),
    ("t1_mprage_sag_p2_iso", "T1"), ("AX T2 FSE", "T2"), ("Ax T2 FLAIR", "FLAIR"), ("PD_TSE_sag", "PD"),
    ("Ax T1 +C", "T1CE"), ("t2_blade_tra", "T2"),
    ("T1W_3D_TFE +C", "T1CE"), ("Ax T1 BRAVO +C", "T1CE"),                 # "+C" after a space had been missed
    ("AX T1 PRE GAD", "T1"), ("Sag T1 pre contrast", "T1"), ("t1_se_tra_ohne_KM", "T1"),   # had been T1CE
    ("AX T1 FLAIR", "T1"), ("AX T1 FLAIR POST", "T1CE"),                   # GE's T1 FLAIR had been FLAIR
    ("t2_spc_da-fl_sag_p2_iso", "FLAIR"),                                  # Siemens SPACE dark fluid
    ("AX GRE", None), ("T2W_FFE", None), ("T1W_FFE", "T1"), ("T1 GRE", "T1"),   # a bare gradient echo is a T2*
    ("sWIP T1W_3D_TFE SENSE", "T1"), ("SWIp", None),                       # Philips' work-in-progress prefix, SWI
    ("T2 map", None), ("T1_map_MOLLI", None), ("t1_mp2rage_sag_p3_iso_T1_Images", None),   # quantitative maps
    ("COR STIR", None), ("t2_stir_cor", None), ("STIR_longTE", None),     # fat-inverting STIR, had been T2 / PD / T1
    ("AxT2", "T2"), ("SAGT1", "T1"), ("3DT1", "T1"), ("AXT1+C", "T1CE"), ("AXT1POST", "T1CE"),   # GE, no spaces
    ("T1 postcontrast", "T1CE"), ("T1postGd", "T1CE"), ("post_op_T1", "T1"), ("T1 different", "T1"),
])
def test_guess_from_scanner_series_descriptions(description, expected):
    assert m.guess_from_dicom({"Modality": "MR", "SeriesDescription": description}) == expected


def test_a_diffusion_or_phase_series_is_not_guessed_from_its_timing():
    """A DWI's TR / TE are a T2's, an SWI's a T1's: its ImageType says what it is, and no modality is guessed."""
    timed = {"Modality": "MR", "RepetitionTime": 5000, "EchoTime": 90}
    assert m.guess_from_dicom(timed) == "T2"
    assert m.guess_from_dicom({**timed, "ImageType": "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE"}) is None
    assert m.guess_from_dicom({**timed, "ImageType": "ORIGINAL\\PRIMARY\\P\\ND"}) is None       # a phase image
    assert m.guess_from_dicom({**timed, "ImageType": "ORIGINAL\\PRIMARY\\M\\ND"}) == "T2"      # magnitude
    assert m.guess_from_dicom({**timed, "SequenceName": "*ep_b1000t"}) is None         # Siemens diffusion EPI
    assert m.guess_from_dicom({**timed, "SequenceName": "epfid2d1_64"}) is None        # Siemens BOLD EPI
    assert m.guess_from_dicom({**timed, "SequenceName": "*tse2d1_15"}) == "T2"
    assert m.guess_from_dicom({**timed, "ImageType": "DERIVED\\PRIMARY\\T1 MAP"}) is None
    inverted = {"Modality": "MR", "SeriesDescription": "t2_tirm_tra_p2", "RepetitionTime": 9000, "EchoTime": 81}
    assert m.guess_from_dicom(inverted) == "T2"
    assert m.guess_from_dicom({**inverted, "InversionTime": 2500}) == "FLAIR"     # its inversion time says FLAIR
    stir = {"Modality": "MR", "RepetitionTime": 4500, "EchoTime": 35, "InversionTime": 150}   # a STIR, unnamed
    assert m.guess_from_dicom(stir) is None and m.guess_from_dicom({**stir, "InversionTime": None}) == "PD"
    assert m.guess_from_dicom({"Modality": "MR", "RepetitionTime": 2000, "EchoTime": 10, "InversionTime": 850}) == "T1"
    no_inversion = {"Modality": "MR", "InversionTime": 0}                 # GE's and Philips' "no inversion"
    assert m.guess_from_dicom({**no_inversion, "RepetitionTime": 4000, "EchoTime": 100}) == "T2"
    assert m.guess_from_dicom({**no_inversion, "RepetitionTime": 3000, "EchoTime": 15}) == "PD"    # had been T1
    assert m.other_mr("ep2d_diff_3scan_trace_p2") == "diffusion" and m.other_mr("", "ORIGINAL\\PRIMARY\\P\\ND") == "phase image"
    assert m.other_mr("t1_mprage_sag_p2_iso") == ""


@pytest.mark.parametrize("name, expected", [
    ("sub-01_ses-post_T1w.nii.gz", "T1"), ("sub-01_acq-contrast_T1w.nii.gz", "T1"),     # BIDS: suffix and ce- only
    ("sub-01_ce-gadolinium_T1w.nii.gz", "T1CE"), ("sub-01_T2w.nii.gz", "T2"), ("post_op_T1w.nii.gz", "T1"),
])
def test_a_bids_name_gives_its_modality_by_its_suffix_and_ce_entity(name, expected):
    from engine.io.bids import name_modality

    assert name_modality(name) == expected
