"""The out-of-distribution guard: a profile measured on a small demo dataset's training split stays
quiet on the demo study and the dataset's test subjects, and fires on inputs crafted out of range
(a CBCT 400 HU off, an MR with a huge bias field or an inverted contrast, a body larger than any
trained, absurd spacing, a field of view that cuts the body); the profile survives JSON; a card
without one only says it cannot check; `synthesize` prints the warnings and keeps them in its
result's notes and report.

Figures measured while choosing the thresholds (profile from a 10-brain / 6-head demo dataset at
64 px, training split; demo study at 128 px; engine/inference/ood.py holds the margins):
  CBCT soft-tissue peak, training −25…185 HU: demo CBCT −25; +400 HU → 375 (fires, margin 100);
      CT × 0.9 − 150 → −135 (fires: outside this small set's draws), CT × 1.1 + 150 → 165 (quiet)
  MR bias range (log units over the body core), training T1 0.11–0.48: demo T1 0.12, FLAIR 0.76,
      PD 0.79 (quiet under the floor 0.9); ×10 ramp across the field → T1 1.39, FLAIR 1.51, PD 1.36 (fire)
  MR rim contrast, training T1 +0.17…+0.27: demo T1 +0.17; T1 inverted in the body −0.01 (fires,
      margin 0.15); a T2 read as T1 moves the median to 0.30 (training 0.43–0.61: fires on the histogram)
  body extent, training head 192–232 mm: head CT zoomed 1.6× → 318 mm (fires above ×1.25)
  body cut by the field of view, training 0 % of slices: 60 % central crop → 87–89 % (fires above 50 %);
      80 % crop of the CT → 31 % (quiet)
  pixel spacing 18.8 mm (×10, a cm/mm mix-up) or 0.2 mm: spacing, thickness and extent fire
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

import engine.io as io
from engine import modalities
from engine.demo_data import sources
from engine.inference import ood
from engine.inference.model_card import ModelCard

DEMO = ood.__file__.rsplit("/engine/", 1)[0] + "/resources/demo"
PIXEL_MM = 4.0                      # the default recipe's model pixel size
DEMO_FILES = ("brain/T1", "brain/T1CE", "brain/T2", "brain/FLAIR", "brain/PD", "head/CT", "head/CBCT")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small demo dataset (10 brain, 6 head subjects at 64 px; about 40 s) and its training profile."""
    from engine.demo_data.builder import DemoRecipe, build_demo_dataset
    from engine.tasks import PairedDataset

    root = tmp_path_factory.mktemp("ood") / "demo"
    try:
        build_demo_dataset(root, recipe=DemoRecipe(n_brain_subjects=10, n_head_ct_subjects=6, seed=0, image_size=64),
                           workers=2)
    except sources.SourceMissing as exc:
        pytest.skip(f"demo-data sources unavailable here: {exc}")
    paired = PairedDataset.open(root)
    return paired, ood.training_profile(paired, "train")


@pytest.fixture(scope="module")
def profile(dataset):
    return dataset[1]


def demo(name: str):
    return io.load(f"{DEMO}/{name}.nii.gz")


def check(volume, source, profile):
    return ood.check_input(volume, source, profile, pixel_mm=PIXEL_MM)


# -- crafted inputs -----------------------------------------------------------------------------
def bias_ramp(volume, factor: float):
    """A multiplicative field rising ``factor``-fold across the field of view (index x)."""
    x = np.linspace(-0.5, 0.5, volume.shape[2])[None, None, :]
    return volume.with_array(volume.array * np.exp(np.log(factor) * x))


def inverted_in_body(volume, modality: str):
    """The contrast inverted inside the body (background untouched)."""
    mask = modalities.body_mask(volume.array, modality)
    lo, hi = np.percentile(volume.array[mask], (0.5, 99.5))
    return volume.with_array(np.where(mask, np.clip(hi + lo - volume.array, 0, None), volume.array))


def zoomed(volume, factor: float):
    """The body ``factor`` times larger in the slice plane, at the same spacing (a larger anatomy)."""
    return volume.replace(array=ndimage.zoom(volume.array, (1, factor, factor), order=1).astype(np.float32))


def cropped(volume, keep: float):
    """The central ``keep`` share of each in-plane side: the body fills and is cut by the field of view."""
    _, h, w = volume.shape
    top, left = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    return volume.replace(array=volume.array[:, top:h - top, left:w - left].copy())


CRAFTED = {
    "CBCT +400 HU": (lambda: demo("head/CBCT").with_array(demo("head/CBCT").array + 400), "CBCT", "soft-tissue peak"),
    "CBCT -400 HU": (lambda: demo("head/CBCT").with_array(demo("head/CBCT").array - 400), "CBCT", "soft-tissue peak"),
    "T1 huge bias field": (lambda: bias_ramp(demo("brain/T1"), 10.0), "T1", "bias field"),
    "PD huge bias field": (lambda: bias_ramp(demo("brain/PD"), 10.0), "PD", "bias field"),
    "T1 inverted": (lambda: inverted_in_body(demo("brain/T1"), "T1"), "T1", "inverted"),
    "T2 inverted": (lambda: inverted_in_body(demo("brain/T2"), "T2"), "T2", "unlike the training scans"),
    "T2 read as T1": (lambda: demo("brain/T2"), "T1", "unlike the training scans"),
    "head 1.6x larger": (lambda: zoomed(demo("head/CT"), 1.6), "CT", "larger than any training scan"),
    "spacing x10": (lambda: demo("brain/T1").replace(spacing=tuple(10 * s for s in demo("brain/T1").spacing)), "T1",
                    "pixel size"),
    "spacing 0.2 mm": (lambda: demo("head/CT").replace(spacing=(0.2, 0.2, 0.2)), "CT", "much smaller"),
    "CT cut by the field of view": (lambda: cropped(demo("head/CT"), 0.6), "CT", "cut by the field of view"),
    "T1 cut by the field of view": (lambda: cropped(demo("brain/T1"), 0.6), "T1", "cut by the field of view"),
}


# -- tests ---------------------------------------------------------------------------------------
def test_quiet_on_the_demo_study_and_the_datasets_test_subjects(dataset):
    paired, profile = dataset
    found = {name: check(demo(name), name.split("/")[1], profile) for name in DEMO_FILES}
    for subject in paired.subject_names("test"):
        for modality in paired.subject_modalities(subject):
            found[f"{subject}/{modality}"] = check(paired.volume(subject, modality), modality, profile)
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_fires_on_an_input_crafted_out_of_range(profile, case):
    make, source, expected = CRAFTED[case]
    warnings = check(make(), source, profile)
    assert warnings and all(w.startswith(ood.WARNING_PREFIX) for w in warnings)
    assert any(expected in w for w in warnings), warnings


def test_a_cbct_calibration_inside_the_training_spread_is_quiet_and_far_outside_fires(profile):
    cbct = demo("head/CBCT")
    peak = ood.volume_signals(cbct, "CBCT")["tissue_peak"]
    lo, hi = profile["modalities"]["CBCT"]["tissue_peak"]
    body = cbct.array > -500                                  # recalibrated inside the body, as the simulator does
    near = cbct.with_array(np.where(body, cbct.array + (hi + 0.5 * ood.HU_MARGIN - peak), cbct.array))
    far = cbct.with_array(np.where(body, cbct.array + (lo - 2.5 * ood.HU_MARGIN - peak), cbct.array))
    assert [w for w in check(near, "CBCT", profile) if "HU" in w] == []
    assert any("soft-tissue peak" in w for w in check(far, "CBCT", profile))


def test_the_profile_round_trips_through_json_and_is_small(profile):
    again = json.loads(json.dumps(profile))
    assert again == profile
    assert set(profile["modalities"]) == {"T1", "T1CE", "T2", "FLAIR", "PD", "CT", "CBCT"}
    assert set(profile["anatomies"]) == {"brain", "head"}
    for record in profile["modalities"].values():
        assert len(json.dumps(record)) < 500                   # a few hundred bytes per modality
    crafted = CRAFTED["CBCT +400 HU"][0]()
    assert check(crafted, "CBCT", again) == check(crafted, "CBCT", profile)
    card = ModelCard.from_metadata({"input_profile": again, "limitations": ["Research use only."]})
    assert card.input_profile == profile and card.limitations == ["Research use only."]


def test_without_a_profile_the_guard_only_says_it_cannot_check():
    card = ModelCard.from_metadata({"name": "old model"})
    assert card.input_profile is None and card.limitations == []
    assert ood.check_input(demo("head/CBCT"), "CBCT", card.input_profile) == [ood.NO_PROFILE_NOTE]
    profile = ood.profile_from_volumes([("head", "CT", demo("head/CT"))])
    assert "not trained on T1" in ood.check_input(demo("brain/T1"), "T1", profile)[0]


def test_a_label_map_passed_as_a_scan_is_named_so_and_a_quantized_or_low_count_scan_is_not(profile):
    # flat regions of a few whole numbers (92 % / 97 % of neighbours off the background equal) against
    # scans with as few values whose neighbours differ (7 % for the 8-bit T1, 14 % for Poisson counts)
    t1 = demo("brain/T1")
    smooth = ndimage.gaussian_filter(t1.array, 2.0)
    body = smooth > np.quantile(smooth, 0.6)
    seg = t1.with_array(np.where(body, np.where(smooth > np.quantile(smooth[body], 0.5), 4.0, 2.0), 0.0))
    said = "the input holds only 3 distinct values, all whole numbers (0, 2, 4): a label map or mask"
    assert any(said in w and w.endswith("not a T1 scan?") for w in check(seg, "T1", profile))
    assert any(said in w for w in ood.check_input(seg, "T1", None))          # said even without a profile
    mask = ood.check_input(t1.with_array(body * 255.0), "T1", None)
    assert any("only 2 distinct values, all whole numbers (0, 255)" in w for w in mask)
    scaled = 255.0 * (t1.array - t1.array.min()) / np.ptp(t1.array)
    counts = np.random.default_rng(0).poisson(np.where(body, 3.0, 0.2)).astype(np.float32)
    for scan in (np.round(scaled), counts, t1.array):         # 8 bits; 16 values of counts; as it is
        assert not any("label map" in w for w in ood.check_input(t1.with_array(scan), "T1", None))


def test_synthesize_prints_the_warnings_and_keeps_them_in_its_report(capsys, tmp_path):
    import SimpleITK as sitk

    from engine.inference.ood import OOD_MARK
    from engine.inference.random_model import write_random_model
    from main import main

    ct = demo("head/CT")
    slab = ct.replace(array=ct.array[30:33].copy(), origin=tuple(ct.index_to_lps() @ [0, 0, 30, 1])[:3])
    profile = ood.profile_from_volumes([("head", "CBCT", slab), ("head", "CT", slab)])
    model = write_random_model(tmp_path / "model", routes=(("CBCT", "CT"),), image_size=32,
                               metadata={"inference_defaults": {"steps": 1}, "input_profile": profile})
    shifted = io.save(slab.with_array(slab.array + 400, modality="CBCT"), tmp_path / "shifted_CBCT.nii.gz")
    code = main(["synthesize", str(shifted), "--source", "CBCT", "--target", "CT", "-o", str(tmp_path / "sct.nii.gz"),
                 "--model", str(model), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["input_warnings"] and any("soft-tissue peak" in w for w in report["input_warnings"])
    assert "warning: input check:" in err and "soft-tissue peak" in err
    reader = sitk.ImageFileReader()                       # the written provenance flags the input
    reader.SetFileName(str(tmp_path / "sct.nii.gz"))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip").startswith(OOD_MARK)

    plain = write_random_model(tmp_path / "plain", routes=(("CBCT", "CT"),), image_size=32,
                               metadata={"inference_defaults": {"steps": 1}})
    code = main(["synthesize", str(shifted), "--source", "CBCT", "--target", "CT", "-o", str(tmp_path / "b.nii.gz"),
                 "--model", str(plain), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["input_warnings"] == [ood.NO_PROFILE_NOTE]


def test_the_warnings_join_the_result_notes():
    volume = demo("head/CT")
    noted = ood.with_warnings(volume, ["input check: something"])
    assert noted.notes[-1] == "input check: something" and ood.with_warnings(volume, []) is volume


def test_the_guard_measures_the_slices_of_the_plane_synthesis_cuts(tmp_path):
    from engine.inference import SynthesisSettings, Synthesizer
    from engine.inference.random_model import write_random_model

    t1 = demo("brain/T1")                                              # 1.875 mm isotropic
    profile = ood.profile_from_volumes([("brain", "T1", t1)])
    thick = t1.replace(spacing=(t1.spacing[0], t1.spacing[1], 6.0))     # 6 mm axial slices
    axial = ood.check_input(thick, "T1", profile)
    coronal = ood.check_input(thick, "T1", profile, axis=1)
    assert any("slice thickness 6 mm" in w for w in axial) and not any("spans" in w for w in axial)
    assert not any("thickness" in w for w in coronal) and any("the body spans" in w for w in coronal)

    model = write_random_model(tmp_path / "model", routes=(("T1", "T2"),), image_size=32,
                               metadata={"input_profile": profile})
    synth = Synthesizer(model, device="cpu")
    assert synth.input_warnings(thick, "T1") == axial
    assert synth.input_warnings(thick, "T1", SynthesisSettings(plane="coronal")) == coronal
