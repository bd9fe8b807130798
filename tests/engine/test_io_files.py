"""NIfTI / MHA / NRRD reading and writing: geometry and values exact, bad input named clearly."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

import engine.io as io
from engine.io.volume import Volume

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
ROOT = Path(__file__).resolve().parents[2]


def _oblique_volume(shape=(7, 9, 11)) -> Volume:
    rng = np.random.default_rng(0)
    a = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return Volume(rng.normal(size=shape).astype(np.float32) * 100, spacing=(0.7, 0.9, 2.5),
                  origin=(-12.5, 30.25, -7.0), direction=tuple(rot.ravel()), modality="T2", unit="a.u.")


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz"])
def test_real_nifti_matches_simpleitk(name):
    path = NIBABEL_DATA / name
    vol = io.load(path)
    ref = sitk.ReadImage(str(path))
    assert vol.shape == sitk.GetArrayFromImage(ref).shape
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(ref).astype(np.float32))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-6)


def test_nifti2_read_through_nibabel_matches_simpleitk_on_its_nifti1_twin(tmp_path):
    src = nibabel.load(NIBABEL_DATA / "example_nifti2.nii.gz")
    data = np.asarray(src.dataobj, dtype=np.float32)[..., 0] if src.ndim == 4 else np.asarray(src.dataobj, np.float32)
    twin = tmp_path / "twin.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, src.affine), twin)
    ref = sitk.ReadImage(str(twin))
    vol = io.load(NIBABEL_DATA / "example_nifti2.nii.gz" if src.ndim == 3 else f"{NIBABEL_DATA}/example_nifti2.nii.gz#0")
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_round_trip_keeps_geometry_and_values(tmp_path, suffix):
    vol = _oblique_volume()
    out = io.save(vol, tmp_path / f"t2{suffix}")
    back = io.load(out)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, tol=1e-5)
    assert back.modality == "T2"          # guessed from the file name
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_hu_survive_nifti_round_trip(tmp_path):
    hu = np.random.default_rng(1).integers(-1024, 3000, size=(4, 16, 16)).astype(np.float32)
    vol = Volume(hu, spacing=(0.5, 0.5, 1.25), modality="CT", unit="HU")
    back = io.load(io.save(vol, tmp_path / "ct.nii.gz"))
    assert np.abs(back.array - hu).max() <= 1.0
    assert back.unit == "HU"


def test_single_slice_2d_image(tmp_path):
    img = sitk.GetImageFromArray(np.arange(20, dtype=np.float32).reshape(4, 5))
    img.SetSpacing((0.8, 1.6))
    sitk.WriteImage(img, str(tmp_path / "slice.nrrd"))
    vol = io.load(tmp_path / "slice.nrrd")
    assert vol.shape == (1, 4, 5)
    assert vol.spacing[:2] == (0.8, 1.6)


def test_4d_file_asks_to_pick_a_volume(tmp_path):
    src = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(io.VolumeIOError, match=r"4-D image with 2 volumes.*#INDEX"):
        io.load(src)
    second = io.load(f"{src}#1")
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))[1]
    np.testing.assert_allclose(second.array, ref)
    with pytest.raises(io.VolumeIOError, match="outside 0…1"):
        io.load(f"{src}#5")


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(io.VolumeIOError, match="no such file or folder") as e:
        io.load(tmp_path / "missing.nii.gz")
    assert "missing.nii.gz" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(io.VolumeIOError, match="empty"):
        io.scan(empty)
    good = tmp_path / "good.nii.gz"
    io.save(_oblique_volume(), good)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(good.read_bytes()[:200])[:-10])
    with pytest.raises(io.VolumeIOError) as e:
        io.load(broken)
    assert "broken.nii.gz" in str(e.value)
    # In a folder, the broken file is skipped with a reason and the good one still loads.
    catalog = io.scan(tmp_path)
    assert [Path(e.paths[0]).name for e in catalog.entries] == ["good.nii.gz"]
    assert [Path(s.path).name for s in catalog.skipped] == ["broken.nii.gz"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"previous result")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(io.VolumeIOError, match="disk full"):
        io.save(_oblique_volume(), out)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_volume_too_large_for_memory_is_refused(tmp_path, monkeypatch):
    path = io.save(_oblique_volume(), tmp_path / "v.mha")
    import engine.io.catalog as catalog

    monkeypatch.setattr(catalog.os, "sysconf", lambda name: 0 if name == "SC_AVPHYS_PAGES" else 4096)
    with pytest.raises(io.VolumeIOError, match="GiB of memory"):
        io.load(path)


def test_cli_info_and_convert(tmp_path):
    src = io.save(_oblique_volume(), tmp_path / "subject_T2.nii.gz")
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "main.py"), *a], capture_output=True,
                                    text=True, cwd=ROOT, timeout=120)
    info = run("info", str(src), "--json")
    assert info.returncode == 0, info.stderr
    series = json.loads(info.stdout)["series"]
    assert series[0]["modality"] == "T2" and series[0]["shape_zyx"] == [7, 9, 11]
    conv = run("convert", str(src), str(tmp_path / "out.mha"))
    assert conv.returncode == 0, conv.stderr
    assert io.load(tmp_path / "out.mha").same_grid(io.load(src), tol=1e-5)
    bad = run("info", str(tmp_path / "nope"))
    assert bad.returncode == 2
    assert "nope: no such file or folder" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_the_synthetic_marking_lives_in_the_header_not_the_name(tmp_path, suffix):
    synthetic = _oblique_volume().replace(modality="CT", unit="HU", synthetic=True, derived_from="CBCT")
    out = io.save(synthetic, tmp_path / f"scan{suffix}")                 # a name that says nothing
    entry = io.scan(out).entries[0]
    back = io.load(out)
    assert entry.synthetic and entry.describe()["synthetic"] is True
    assert back.synthetic and back.derived_from == "CBCT" and back.describe()["synthetic"] is True
    renamed = out.rename(tmp_path / f"patient01_CT{suffix}")
    assert io.load(renamed).synthetic
    plain = io.load(io.save(_oblique_volume(), tmp_path / f"synthetic_phantom{suffix}"))
    assert not plain.synthetic                                            # the name alone marks nothing


def test_a_synthetic_nifti_says_so_in_its_descrip(tmp_path):
    synthetic = _oblique_volume().replace(modality="CT", unit="HU", synthetic=True, derived_from="CBCT")
    out = io.save(synthetic, tmp_path / "scan.nii.gz", description="converted from scan 3")
    descrip = nibabel.load(out).header["descrip"].item().decode()
    assert descrip == "synthetic CT from CBCT; converted from scan 3 — research use only"
    nibabel_copy = tmp_path / "nifti2.nii"                                 # NIfTI-2 (read through nibabel)
    image = nibabel.load(out)
    header = nibabel.Nifti2Header()
    header["descrip"] = image.header["descrip"]
    nibabel.save(nibabel.Nifti2Image(np.asarray(image.dataobj), image.affine, header), nibabel_copy)
    assert io.scan(nibabel_copy).entries[0].synthetic and io.load(nibabel_copy).derived_from == "CBCT"


def test_cli_info_reports_a_synthetic_file(tmp_path):
    synthetic = _oblique_volume().replace(modality="T1", synthetic=True, derived_from="T2")
    out = io.save(synthetic, tmp_path / "subject.nii.gz")
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "main.py"), *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=ROOT, timeout=120)
    info = run("info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["series"][0]["synthetic"] is True
    assert "SYNTHETIC" in run("info", str(out)).stdout
    plain = run("info", str(io.save(_oblique_volume(), tmp_path / "t2.nii.gz")), "--json")
    assert json.loads(plain.stdout)["series"][0]["synthetic"] is False
