"""The demo-data builder: a tiny paired dataset is valid and deterministic, the simulated MR
contrasts follow the physics a radiologist expects, the CT is in HU and the CBCT is a plausible
degraded copy on the same grid. A source that cannot be obtained skips only its own tests."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import engine.io as io
from engine.demo_data import builder, mr_physics, sources
from engine.demo_data.builder import DemoRecipe, build_demo_dataset, build_demo_study, plan_subjects, simulate_subject
from engine.demo_data.lesions import LesionSpec
from engine.jobs import Cancelled, CancelToken
from engine.tasks.validation import validate_dataset

ROOT = Path(__file__).resolve().parents[2]


def _need(find, what: str):
    try:
        return find()
    except sources.SourceMissing as exc:
        pytest.skip(f"{what} unavailable here: {exc}")


@pytest.fixture(scope="module")
def mni():
    return _need(sources.find_mni152, "MNI ICBM152 (pip nilearn)")


@pytest.fixture(scope="module")
def head_ct():
    return _need(sources.find_or_fetch_head_ct, "the real head CT (Debian invesalius-examples)")


@pytest.fixture(scope="module")
def colin():
    return _need(sources.find_or_fetch_colin27, "Colin27 (Debian mricron-data)")


def tiny(**changes) -> DemoRecipe:
    base = DemoRecipe(n_brain_subjects=3, n_head_ct_subjects=3, seed=0, image_size=32, brain_templates=("mni152",))
    return replace(base, **changes)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): io.load(p).array for p in sorted(folder.rglob("*.nii.gz"))}


# -- layout -------------------------------------------------------------------------------------
def test_tiny_build_is_a_valid_paired_dataset(tmp_path, mni, head_ct):
    out = tmp_path / "demo"
    summary = build_demo_dataset(out, recipe=tiny())
    assert summary.subjects == {"brain": 3, "head": 3} and summary.bytes > 0

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] and "simulated" in meta["notice"].lower()
    assert meta["anatomy"] == {**{f"brain_{i:03d}": "brain" for i in range(3)},
                               **{f"head_{i:03d}": "head" for i in range(3)}}
    split = meta["split"]
    names = [n for part in ("train", "val", "test") for n in split[part]]
    assert sorted(names) == sorted(meta["anatomy"]) and len(names) == len(set(names))   # each subject in one split
    for anatomy in ("brain", "head"):
        assert all(any(meta["anatomy"][n] == anatomy for n in split[part]) for part in ("train", "val", "test"))
    assert DemoRecipe.from_dict(meta["recipe"]) == tiny()
    assert {s["source"] for s in meta["sources"]} == {"mni152", "invesalius-cranium"}           # what was used

    report = validate_dataset(out, deep=True)
    assert report.problems == [] and len(report.subjects) == 6
    assert report.split == split                                                 # the validator reads our split
    for name, anatomy in meta["anatomy"].items():
        expected = ("T1", "T1CE", "T2", "FLAIR", "PD") if anatomy == "brain" else ("CT", "CBCT")
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(f"{m}.nii.gz" for m in expected)
        volumes = [io.load(out / name / f"{m}.nii.gz") for m in expected]
        assert all(v.same_grid(volumes[0]) for v in volumes), f"{name}: modalities on different grids"
        assert volumes[0].orientation() == "LPS"
        for volume, modality in zip(volumes, expected):
            assert volume.modality == modality and volume.unit == ("HU" if anatomy == "head" else "a.u.")
    assert not list(tmp_path.glob(".demo*")), "the temporary build folder was left behind"


def test_build_is_deterministic_for_a_seed(tmp_path, mni, head_ct):
    recipe = tiny(n_brain_subjects=2, n_head_ct_subjects=2, image_size=24)
    build_demo_dataset(tmp_path / "a", recipe=recipe)
    build_demo_dataset(tmp_path / "b", recipe=recipe, workers=2)
    build_demo_dataset(tmp_path / "c", recipe=replace(recipe, seed=1))
    a, b, c = (_arrays(tmp_path / k) for k in "abc")
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"{key} differs between two builds with the same seed"
        assert (tmp_path / "a" / key).read_bytes() == (tmp_path / "b" / key).read_bytes()
        assert not np.array_equal(a[key], c[key]), f"{key} is the same for seeds 0 and 1"
    assert (tmp_path / "a" / "dataset.json").read_bytes() == (tmp_path / "b" / "dataset.json").read_bytes()


def test_subject_does_not_depend_on_dataset_size(mni):
    small, large = tiny(n_brain_subjects=2, n_head_ct_subjects=0), tiny(n_brain_subjects=5, n_head_ct_subjects=0)
    plan = plan_subjects(small)[1]
    assert np.array_equal(simulate_subject(small, plan).images["T2"], simulate_subject(large, plan).images["T2"])


def test_cancel_leaves_nothing(tmp_path, mni):
    token = CancelToken()

    def progress(p):
        if "written" in p.message:
            token.cancel()
    with pytest.raises(Cancelled):
        build_demo_dataset(tmp_path / "demo", recipe=tiny(n_head_ct_subjects=0), progress=progress, cancel=token)
    assert list(tmp_path.iterdir()) == []


# -- MR physics -----------------------------------------------------------------------------------
def test_signal_equations():
    t1_csf, tr = 4300.0, 9000.0
    ti = mr_physics.null_inversion_time(t1_csf, tr)
    assert abs(mr_physics.inversion_recovery(t1_csf, 2000.0, 1.0, tr, 120.0, ti)) < 1e-9       # CSF nulled
    assert 0.5 * t1_csf < ti < np.log(2) * t1_csf          # ≈ 2.5 s at 3 T, as clinical FLAIR
    assert mr_physics.spin_echo(800.0, 80.0, 0.7, 1e9, 0.0) == pytest.approx(0.7)              # PD limit
    assert mr_physics.gadolinium_t1(1650.0, 0.2) < 1650.0 / 2


@pytest.fixture(scope="module")
def lesioned_brain(mni):
    recipe = tiny(image_size=96, lesions=LesionSpec(probability=1.0, second_probability=0.0,
                                                    kind_weights=(1.0, 0.0, 0.0), radius_mm=(16.0, 20.0)))
    return simulate_subject(recipe, plan_subjects(recipe)[0])


def _median(subject, modality, mask):
    assert mask.sum() > 20, "too few voxels to compare"
    return float(np.median(subject.images[modality][mask]))


def test_mr_contrasts_follow_the_physics(lesioned_brain):
    s, f = lesioned_brain, lesioned_brain.fractions
    wm, gm, csf = f["wm"] > 0.9, f["gm"] > 0.8, f["csf"] > 0.8
    m = lambda mod, mask: _median(s, mod, mask)   # noqa: E731
    assert m("FLAIR", csf) < 0.5 * m("FLAIR", wm) and m("FLAIR", csf) < 0.5 * m("FLAIR", gm)   # CSF nulled
    assert m("FLAIR", gm) > m("FLAIR", wm)
    assert m("T2", csf) > 1.5 * m("T2", wm) and m("T2", gm) > m("T2", wm)
    assert m("T1", wm) > m("T1", gm) > m("T1", csf)
    assert m("PD", gm) > m("PD", wm)


def test_tumour_compartments_look_like_a_glioblastoma(lesioned_brain):
    s, f = lesioned_brain, lesioned_brain.fractions
    assert len(s.details["lesions"]) == 1 and s.details["lesions"][0]["kind"] == "necrotic"
    wm, oedema, rim, core = f["wm"] > 0.9, f["oedema"] > 0.6, f["rim"] > 0.6, f["core"] > 0.6
    m = lambda mod, mask: _median(s, mod, mask)   # noqa: E731
    assert m("FLAIR", oedema) > 1.2 * m("FLAIR", wm) and m("T2", oedema) > 1.4 * m("T2", wm)
    assert m("T1", oedema) < m("T1", wm)
    assert m("T1CE", rim) > 1.4 * m("T1", rim) and m("T1CE", rim) > m("T1CE", wm)              # enhancing rim
    assert m("T1CE", core) < m("T1CE", wm) and m("T2", core) > m("T2", rim)                    # necrosis
    fractions = sum(f[k] for k in ("gm", "wm", "csf", "oedema", "rim", "core"))
    assert np.allclose(fractions, f["brain"], atol=1e-3)                                         # volume kept


def test_subjects_without_lesions_exist_and_stay_clean(mni):
    recipe = tiny(n_brain_subjects=12, n_head_ct_subjects=0, lesions=LesionSpec(probability=0.5))
    plans = plan_subjects(recipe)
    clean = [p for p in plans if not simulate_subject(recipe, p).details["lesions"]]
    assert clean, "no lesion-free subject among 12 at probability 0.5"
    s = simulate_subject(recipe, clean[0])
    assert all(float(s.fractions[k].max()) == 0.0 for k in ("oedema", "rim", "core"))


def test_colin27_is_a_second_real_brain(colin):
    recipe = tiny(image_size=64, brain_templates=("colin27",), n_head_ct_subjects=0)
    s = simulate_subject(recipe, plan_subjects(recipe)[0])
    assert s.details["template"] == "colin27"
    f = s.fractions
    wm, gm, csf = f["wm"] > 0.9, f["gm"] > 0.8, f["csf"] > 0.8
    assert _median(s, "T1", wm) > _median(s, "T1", gm) > _median(s, "T1", csf)
    assert _median(s, "FLAIR", csf) < 0.5 * _median(s, "FLAIR", wm)
    assert _median(s, "T2", csf) > 1.5 * _median(s, "T2", wm)


# -- CT / CBCT ----------------------------------------------------------------------------------
def test_head_ct_geometry_face_is_anterior(head_ct):
    from engine.demo_data.anatomy import load_head_ct

    ct = load_head_ct()
    air_inside = (ct.hu < -500) & ndimage_erode(ct.head)
    z, y, x = np.nonzero(air_inside)
    y_mm = ct.grid.origin[1] + y * ct.grid.spacing[1]
    assert np.median(y_mm) < ct.centre()[1] - 20, "sinuses and airway should lie anterior (−y in LPS)"
    assert ct.hu.min() >= -1024 and ct.hu.max() > 1500


def ndimage_erode(mask):
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=3)


@pytest.fixture(scope="module")
def head_subject(head_ct):
    recipe = tiny(image_size=64, n_brain_subjects=0)
    return simulate_subject(recipe, plan_subjects(recipe)[0])


def test_ct_is_in_hounsfield_units(head_subject):
    ct, head = head_subject.images["CT"], head_subject.fractions["head"] > 0.5
    assert np.all(ct[~head] == -1000.0)                                       # air outside the head
    assert (ct[head] > 300).mean() > 0.05 and ct.max() > 1000                 # bone
    brain_like = ct[head & (ct > 0) & (ct < 80)]
    assert brain_like.size > 1000 and 20 < np.median(brain_like) < 60         # soft tissue / brain


def test_cbct_is_a_plausible_degraded_ct_on_the_same_grid(head_subject):
    ct, cbct = head_subject.images["CT"], head_subject.images["CBCT"]
    head = head_subject.fractions["head"] > 0.5
    assert cbct.shape == ct.shape
    params = head_subject.details["cbct"]
    grid = head_subject.grid
    pts = grid.points()[:2, 0]
    r = np.hypot(pts[0] - params["rotation_axis_lps_mm"][0], pts[1] - params["rotation_axis_lps_mm"][1])
    inside_fov = (r <= params["fov_radius_mm"])[None] & head
    outside_fov = np.broadcast_to((r > params["fov_radius_mm"])[None], ct.shape)
    assert np.all(cbct[outside_fov] == -1000.0)
    mae = float(np.abs(cbct - ct)[inside_fov].mean())
    assert 20.0 < mae < 150.0, f"CBCT differs from CT by {mae:.0f} HU on average inside the head"
    assert np.corrcoef(cbct[inside_fov], ct[inside_fov])[0, 1] > 0.9            # same anatomy
    assert (cbct[inside_fov] > 300).mean() > 0.03                              # bone still bone


# -- demo study, CLI, sources, documents ---------------------------------------------------------
def test_demo_study_is_a_test_subject_of_the_dataset(tmp_path, mni, head_ct):
    recipe = tiny(n_brain_subjects=6, n_head_ct_subjects=3)
    build_demo_dataset(tmp_path / "data", recipe=recipe)
    summary = build_demo_study(tmp_path / "demo", recipe=recipe)
    meta = json.loads((tmp_path / "demo" / "dataset.json").read_text())
    assert meta["anatomy"] == {"brain": "brain", "head": "head"}
    assert meta["split"]["test"] == ["brain", "head"]
    data_split = json.loads((tmp_path / "data" / "dataset.json").read_text())["split"]
    for anatomy, source in summary.extra["derived_from"].items():
        assert source in data_split["test"]
        for f in (tmp_path / "demo" / anatomy).iterdir():
            assert f.read_bytes() == (tmp_path / "data" / source / f.name).read_bytes()


def test_cli_make_demo_data_prints_a_json_summary(tmp_path, capsys, mni):
    from cli import make_demo_data as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["make-demo-data", "--out", str(tmp_path / "d"), "--subjects", "2", "--ct-subjects", "0",
                              "--image-size", "24", "--brain-templates", "mni152", "--workers", "1"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["dataset"]["subjects"] == {"brain": 2, "head": 0}
    assert "written" in captured.err


def test_missing_debian_source_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_installed_file", lambda package, suffix: None)
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(sources.SourceMissing, match="invesalius-examples"):
        sources.find_or_fetch_head_ct(tmp_path / "empty-cache")


def test_recipe_round_trips_and_rejects_nonsense():
    recipe = DemoRecipe()
    assert DemoRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(ValueError):
        DemoRecipe(n_brain_subjects=0, n_head_ct_subjects=0)
    with pytest.raises(ValueError):
        DemoRecipe(brain_templates=("brainweb",))


def test_derivation_and_licences_name_every_source():
    from engine.demo_data import derivation_text

    text = derivation_text()
    assert "simulated, not validated" in text and "Wansapura" in text and "not for diagnosis" in text
    licences = (ROOT / "resources" / "DATA_LICENSES.md").read_text(encoding="utf-8")
    for needle in ("ICBM152", "Louis Collins", "nilearn", "BSD-3", "invesalius-examples", "GPL-2", "mricron-data",
                   "pydicom", "nibabel"):
        assert needle in licences, f"DATA_LICENSES.md does not mention {needle}"
    assert builder.SIMULATED_NOTICE


# -- domain randomization -------------------------------------------------------------------------
def _colin_subjects(n: int = 6, image_size: int = 48):
    recipe = tiny(n_brain_subjects=n, n_head_ct_subjects=0, image_size=image_size, brain_templates=("colin27",),
                  lesions=LesionSpec(probability=0.0))
    return [simulate_subject(recipe, plan) for plan in plan_subjects(recipe)]


@pytest.fixture(scope="module")
def colin_subjects(colin):
    subjects = _colin_subjects()
    kinds = {s.details["skull_stripped"] for s in subjects}
    assert kinds == {True, False}, "six Colin27 subjects at scalp_fraction 0.5 should hold both kinds (seed 0)"
    return subjects


def test_some_brains_keep_skull_and_scalp_with_physical_contrasts(colin_subjects):
    s = next(s for s in colin_subjects if not s.details["skull_stripped"])
    f = s.fractions
    outside = (f["head"] > 0.5) & (f["brain"] < 0.05)
    fat, muscle, bone = (outside & (f[k] > 0.8) for k in ("fat", "muscle", "bone"))
    wm, csf = f["wm"] > 0.9, f["csf"] > 0.8
    m = lambda mod, mask: _median(s, mod, mask)   # noqa: E731
    for modality in ("T1", "T1CE", "T2", "FLAIR", "PD"):
        assert m(modality, outside) > 0, f"{modality}: no signal outside the brain although the scalp is kept"
        assert m(modality, fat) > m(modality, bone), f"{modality}: fat should be brighter than cortical bone"
    assert m("T1", fat) > m("T1", wm) > m("T1", muscle)                 # fat brightest on T1
    assert m("T2", fat) > m("T2", muscle) and m("T2", csf) > m("T2", muscle)
    assert m("FLAIR", fat) > 2.0 * m("FLAIR", csf)                       # fat not nulled, CSF nulled
    # the fractions add up to the head, the brain's unchanged
    total = sum(f[k] for k in ("gm", "wm", "csf", "oedema", "rim", "core", "fat", "muscle", "bone"))
    assert np.allclose(total, f["head"], atol=1e-3)


def test_skull_stripped_brains_are_zero_outside_the_brain(colin_subjects, mni):
    recipe = tiny(n_brain_subjects=1, n_head_ct_subjects=0)
    mni_subject = simulate_subject(recipe, plan_subjects(recipe)[0])
    stripped = [s for s in colin_subjects if s.details["skull_stripped"]] + [mni_subject]
    for s in stripped:
        outside = s.fractions["brain"] <= 0.5
        assert "head" not in s.fractions
        for modality, image in s.images.items():
            assert np.all(image[outside] == 0.0), f"{s.details['template']} {modality}: signal outside the brain"
    assert mni_subject.details["skull_stripped"] is True                # MNI152 has no skull to keep


def test_brain_grid_holds_the_whole_head(colin_subjects):
    s = next(s for s in colin_subjects if not s.details["skull_stripped"])
    head = s.fractions["head"] > 0.5
    # the head ends inside the field of view in-plane (no scalp on the border columns)
    assert not head[:, :, [0, -1]].any() and not head[:, [0, -1], :].any()
    assert not head[-1].any(), "the vertex's scalp is cut by the grid's top slice"


def test_source_contrasts_are_randomized_per_subject(mni):
    recipe = tiny(n_brain_subjects=4, n_head_ct_subjects=0, image_size=16)
    acqs = [simulate_subject(recipe, p).details["acquisition"] for p in plan_subjects(recipe)]
    spec = recipe.acquisition
    for key in ("gm", "wm", "csf", "fat"):
        t1s = [a["tissues_t1_t2_pd"][key][0] for a in acqs]
        assert len(set(t1s)) == len(t1s)
        base = mr_physics.TISSUES_3T[key][0]
        assert all(base * (1 - spec.relaxation_jitter) - 0.1 <= t <= base * (1 + spec.relaxation_jitter) + 0.1
                   for t in t1s)
    for a in acqs:
        assert spec.t2_te_ms[0] - 0.01 <= a["sequences"]["T2"]["te"] <= spec.t2_te_ms[1] + 0.01
        # FLAIR's TI nulls the subject's own CSF (within the TI jitter)
        csf_t1 = a["tissues_t1_t2_pd"]["csf"][0]
        null = mr_physics.null_inversion_time(csf_t1, a["sequences"]["FLAIR"]["tr"])
        assert abs(a["sequences"]["FLAIR"]["ti"] / null - 1.0) <= spec.flair_ti_jitter + 1e-3
    assert len({a["noise_fraction"]["T2"] for a in acqs}) == 4


def test_cbct_ranges_cross_zero_and_act_in_the_expected_direction(head_subject):
    from engine.demo_data.ct import CBCTSpec, simulate_cbct

    spec = CBCTSpec()
    assert spec.cupping[0] < 0 < spec.cupping[1] and spec.hu_offset[0] < 0 < spec.hu_offset[1]
    assert spec.truncation_hu[0] < 0 < spec.truncation_hu[1] and spec.rings[0] == 0
    ct, grid = head_subject.images["CT"], head_subject.grid
    head = head_subject.fractions["head"] > 0.5

    def fixed(**values) -> CBCTSpec:
        base = dict(views=(720, 720), streak_gain=(0.0, 0.0), cupping=(0.0, 0.0), scatter_shading=(0.0, 0.0),
                    rings=(0, 0), ring_hu=(5.0, 5.0), noise_hu=(0.0, 0.0), hu_scale=(1.0, 1.0),
                    hu_offset=(0.0, 0.0), fov_radius_mm=(200.0, 200.0), fov_shift_mm=0.0,
                    truncation_hu=(0.0, 0.0))
        base.update({k: (v, v) for k, v in values.items()})
        return CBCTSpec(**base)

    def draw(spec):
        return simulate_cbct(ct, grid, np.random.default_rng(3), spec)

    clean, params = draw(fixed())                      # rings=0 and zero noise: a copy of the CT
    assert params["rings"] == [] and params["views"] == 720
    assert np.abs(clean - ct)[head].mean() < 5.0
    shifted, _ = draw(fixed(hu_offset=-100.0))
    assert np.median((shifted - clean)[head]) == pytest.approx(-100.0, abs=1.0)
    capped, _ = draw(fixed(cupping=-0.06))
    cupped, _ = draw(fixed(cupping=0.06))
    pts = grid.points()[:2, 0]
    centre = (np.hypot(pts[0], pts[1]) < 30.0)[None] & head & (ct > 0) & (ct < 100)
    assert centre.sum() > 20
    assert np.median((capped - clean)[centre]) > 30.0 > -30.0 > np.median((cupped - clean)[centre])


def test_scalp_subjects_are_deterministic(colin_subjects):
    again = _colin_subjects()
    for first, second in zip(colin_subjects, again):
        assert first.details == second.details
        assert all(np.array_equal(first.images[m], second.images[m]) for m in first.images)
