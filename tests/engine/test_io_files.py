"""NIfTI / MHA / NRRD reading and writing: geometry and values exact, bad input named clearly."""
import gzip
import json
import os
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
    header = nibabel.Nifti2Header()
    header.set_data_shape(data.shape)
    header.set_sform(src.affine, code=4)                          # an MNI-space NIfTI-2 file
    nibabel.save(nibabel.Nifti2Image(data, src.affine, header), tmp_path / "mni2.nii")
    assert io.load(tmp_path / "mni2.nii").space == "MNI" and vol.space == "scanner"


def _nifti(path, sform, sform_code, qform, qform_code):
    data = np.random.default_rng(0).random((20, 24, 16)).astype(np.float32)
    image = nibabel.Nifti1Image(data, None)
    image.set_qform(qform, qform_code)
    image.set_sform(sform, sform_code)
    nibabel.save(image, path)
    return path


def _world_lps(volume, ijk):
    """Where a volume puts voxel (i, j, k) of its file, in LPS millimetres."""
    direction = np.reshape(volume.direction, (3, 3))
    return np.asarray(volume.origin) + direction @ (np.asarray(volume.spacing) * np.asarray(ijk, float))


SCANNER = np.array([[1.0, 0, 0, -10], [0, 1.2, 0, -20], [0, 0, 2, -5], [0, 0, 0, 1]])
MOVED = SCANNER + np.array([[0, 0, 0, 20.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])       # 20 mm right
SHEARED = SCANNER + np.array([[0, 0.4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("sform_code", [1, 2, 3, 4, 5])
def test_a_nifti_sform_places_the_volume_where_fsl_spm_and_nibabel_do_whatever_its_code(tmp_path, sform_code):
    from engine.tasks.validation import read_geometry

    path = _nifti(tmp_path / "registered.nii.gz", MOVED, sform_code, SCANNER, 1)      # an MNI / aligned sform
    volume, entry = io.load(path), io.scan(path).entries[0]
    for ijk in ((0, 0, 0), (19, 23, 15), (3, 7, 11)):
        np.testing.assert_allclose(_world_lps(volume, ijk) * [-1, -1, 1], (MOVED @ [*ijk, 1.0])[:3], atol=1e-4)
    said = f"qform and sform disagree (up to 20.0 mm at the grid's corners): the sform (code {sform_code},"
    assert any(n.startswith(said) for n in volume.notes) and any(n.startswith(said) for n in entry.notes)
    geometry = read_geometry(path)                       # the dataset check sees the grid loading gives
    np.testing.assert_allclose(geometry.origin, volume.origin, atol=1e-5)
    converted = io.load(io.save(volume, tmp_path / "converted.nii.gz"))
    np.testing.assert_allclose(_world_lps(converted, (3, 7, 11)), _world_lps(volume, (3, 7, 11)), atol=1e-4)
    # the world the coordinates are in goes with them: an MNI-space input's outputs stay labelled MNI space
    from engine.io.volume import SPACES

    assert volume.space == converted.space == SPACES[sform_code - 1]
    header = nibabel.load(tmp_path / "converted.nii.gz").header
    # and the scanner's qform beside it, as the input had it (ITK-based viewers place by the qform)
    assert int(header["sform_code"]) == sform_code and int(header["qform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), SCANNER, atol=1e-4)
    np.testing.assert_allclose(header.get_sform(), MOVED, atol=1e-4)
    assert entry.orientation == ("RAS" if sform_code == 1 else f"RAS ({volume.space} space)")
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_a_nifti_without_orientation_or_with_a_sheared_sform_says_what_it_assumed(tmp_path):
    volume = io.load(_nifti(tmp_path / "none.nii.gz", SCANNER, 0, SCANNER, 0))
    assert any("gives no orientation" in n and "left and right may be swapped" in n for n in volume.notes)
    assert io.scan(tmp_path / "none.nii.gz").entries[0].orientation.endswith("(assumed)")
    # what is made from it names no world either (codes 0, not 1: a scanner's): every program places it as
    # it placed the input (helper-59's audit: nibabel had put a synthetic 90 % off its source)
    assert volume.space == "unknown"
    made = io.save(volume.with_array(volume.array * 2.0), tmp_path / "made.nii.gz")
    header = nibabel.load(made).header
    assert int(header["qform_code"]) == int(header["sform_code"]) == 0
    np.testing.assert_allclose(nibabel.load(made).affine, nibabel.load(tmp_path / "none.nii.gz").affine, atol=1e-4)
    assert io.load(made).space == "unknown"
    agreeing = io.load(_nifti(tmp_path / "agree.nii.gz", SCANNER, 2, SCANNER, 1))
    assert agreeing.notes == () and io.scan(tmp_path / "agree.nii.gz").entries[0].orientation == "RAS (aligned space)"
    agreed = nibabel.load(io.save(agreeing, tmp_path / "agreed.nii.gz")).header     # each code kept
    assert (int(agreed["sform_code"]), int(agreed["qform_code"])) == (2, 1)
    sheared = io.load(_nifti(tmp_path / "sheared.nii.gz", SHEARED, 2, SCANNER, 1))      # no grid holds it: the qform
    np.testing.assert_allclose(_world_lps(sheared, (5, 5, 5)) * [-1, -1, 1], (SCANNER @ [5, 5, 5, 1.0])[:3], atol=1e-4)
    assert any("is sheared, which no orthogonal grid holds: the qform is used" in n for n in sheared.notes)


def test_a_registered_niftis_scanner_qform_is_written_beside_its_mni_sform_on_any_grid_of_that_world(tmp_path):
    # fMRIPrep / FLIRT outputs: the sform in MNI space, the qform the scanner's (here rotated 7° and moved
    # against it); a synthetic written with the MNI matrix in both had been misplaced by ITK-based viewers
    turn = np.radians(7.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]
    mni = rotation @ SCANNER + np.array([[0, 0, 0, 4.0], [0, 0, 0, -7], [0, 0, 0, 12], [0, 0, 0, 0]])
    volume = io.load(_nifti(tmp_path / "registered.nii.gz", mni, 4, SCANNER, 1))
    assert volume.space == "MNI" and volume.other_world is not None and volume.other_world.space == "scanner"
    assert any("a NIfTI written from it keeps both" in n for n in volume.notes)
    made = nibabel.load(io.save(volume.with_array(volume.array * 2.0), tmp_path / "synthetic.nii.gz"))
    assert (int(made.header["sform_code"]), int(made.header["qform_code"])) == (4, 1)
    np.testing.assert_allclose(made.header.get_sform(), mni, atol=1e-4)
    np.testing.assert_allclose(made.header.get_qform(), SCANNER, atol=1e-4)
    # on another grid of the MNI world (a crop: 3 voxels in) the qform still puts each voxel where the
    # input's qform put the same MNI point
    crop = volume.replace(array=volume.array[:, :, 3:], origin=tuple(_world_lps(volume, (3, 0, 0))))
    header = nibabel.load(io.save(crop, tmp_path / "crop.nii.gz")).header
    np.testing.assert_allclose(header.get_qform() @ [0, 0, 0, 1.0], SCANNER @ [3, 0, 0, 1.0], atol=1e-4)
    np.testing.assert_allclose(header.get_sform() @ [0, 0, 0, 1.0], mni @ [3, 0, 0, 1.0], atol=1e-4)
    # read back, the pair is the input's; a file whose two transforms agree names no other world
    assert io.load(tmp_path / "synthetic.nii.gz").other_world == volume.other_world
    assert io.load(_nifti(tmp_path / "plain.nii.gz", SCANNER, 1, SCANNER, 1)).other_world is None
    assert io.load(_nifti(tmp_path / "sform_only.nii.gz", mni, 4, SCANNER, 0)).other_world is None


def test_a_qform_that_only_rounds_the_sform_names_no_other_world_and_one_no_qform_holds_is_not_written(tmp_path):
    from scipy.spatial.transform import Rotation

    # an oblique near-180° rotation of a large grid: the qform's float32 quaternion moves its corners 0.1 mm
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_rotvec(np.radians(179.9) * np.array([0.3, 1.0, 1.0]) / np.sqrt(2.09)).as_matrix() \
        @ np.diag([4.8, 4.9, 5.0])
    oblique[:3, 3] = [240.0, -230.0, 245.0]
    image = nibabel.Nifti1Image(np.zeros((256, 256, 100), np.uint8), None)
    image.set_qform(oblique, code=1)
    image.set_sform(oblique, code=1)
    nibabel.save(image, tmp_path / "oblique.nii.gz")
    volume = io.load(tmp_path / "oblique.nii.gz")
    assert volume.other_world is None and not volume.notes
    # a qform of other voxel sizes than the sform's (an SPM header-only coregistration) on a grid turned 30°:
    # no qform holds it (sheared), so the sform's grid is written in both, the volume's code in each
    stretched = io.load(_nifti(tmp_path / "spm.nii.gz", SCANNER @ np.diag([1.1, 1.0, 1.0, 1.0]), 2, SCANNER, 1))
    assert stretched.other_world is not None and stretched.other_world.space == "scanner"
    c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
    turned = stretched.replace(direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    header = nibabel.load(io.save(turned, tmp_path / "turned.nii.gz")).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (2, 2)
    np.testing.assert_allclose(header.get_qform(), header.get_sform(), atol=1e-4)


def test_a_registered_slice_of_no_stated_thickness_keeps_its_qform(tmp_path):
    image = nibabel.Nifti1Image(np.ones((20, 24), np.float32), None)
    image.header.set_zooms((0.9, 1.1))
    image.set_qform(AXIAL_SLICE, code=1)
    image.set_sform(AXIAL_SLICE @ np.diag([1.0, 1.0, 0.0, 1.0]) + np.array([[0, 0, 0, 5.0], [0, 0, 0, 0],
                                                                            [0, 0, 0, 0], [0, 0, 0, 0]]), code=4)
    nibabel.save(image, tmp_path / "slice.nii")
    volume = io.load(tmp_path / "slice.nii")
    assert volume.space == "MNI" and volume.other_world is not None and volume.other_world.space == "scanner"
    header = nibabel.load(io.save(volume, tmp_path / "made.nii.gz")).header
    np.testing.assert_allclose(header.get_qform() @ [4, 9, 0, 1.0], AXIAL_SLICE @ [4, 9, 0, 1.0], atol=1e-4)


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


AXIAL_SLICE = np.array([[0.9, 0, 0, -10], [0, 1.1, 0, 40], [0, 0, 3.0, -5], [0, 0, 0, 1]])
CORONAL_SLICE = np.array([[0.9, 0, 0, -10], [0, 0, 3.0, 40], [0, 1.1, 0, -5], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [AXIAL_SLICE, CORONAL_SLICE], ids=["axial", "coronal"])
def test_a_2d_nifti_slice_keeps_its_place_in_3d_and_is_written_back_there(tmp_path, affine):
    # helper-59's audit: an axial 2-D NIfTI had come in at z = 0 with 1 mm slices (its 3 mm at z = -5 lost),
    # a coronal one was refused as "damaged" (ITK keeps the 2 × 2 corner of its orientation)
    data = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, affine), tmp_path / "slice.nii.gz")
    volume, entry = io.load(tmp_path / "slice.nii.gz"), io.scan(tmp_path / "slice.nii.gz").entries[0]
    assert volume.shape == entry.shape_zyx == (1, 24, 20) and volume.spacing[2] == entry.spacing_xyz[2] == 3.0
    for ijk in ((0, 0, 0), (19, 23, 0), (4, 9, 0)):
        np.testing.assert_allclose(_world_lps(volume, ijk) * [-1, -1, 1], (affine @ [*ijk, 1.0])[:3], atol=1e-4)
    np.testing.assert_array_equal(volume.array[0], data.T)
    written = nibabel.load(io.save(volume.with_array(volume.array + 1.0), tmp_path / "made.nii.gz"))
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    # a slice whose header gives no thickness (pixdim[3] = 0) lies in its plane, 1 mm thick
    image = nibabel.Nifti1Image(data, None)
    image.header.set_zooms((0.9, 1.1))
    image.header["pixdim"][3] = 0.0
    image.set_qform(None, code=0)
    image.set_sform(affine @ np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nibabel.save(image, tmp_path / "thin.nii.gz")
    thin = io.load(tmp_path / "thin.nii.gz")
    assert thin.spacing[2] == 1.0
    # a colour slice in that plane: its first component, said on the listing and on loading
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"] = np.arange(data.size).reshape(data.shape) % 200, 7
    nibabel.save(nibabel.Nifti1Image(rgb, affine), tmp_path / "colour.nii.gz")
    colour, listed = io.load(tmp_path / "colour.nii.gz"), io.scan(tmp_path / "colour.nii.gz").entries[0]
    np.testing.assert_array_equal(colour.array[0], rgb["R"].T)
    said = "3 components per voxel (a colour or vector image): only the first is used"
    assert said in colour.notes and said in listed.notes
    np.testing.assert_allclose(_world_lps(thin, (4, 9, 0)) * [-1, -1, 1], (affine @ [4, 9, 0, 1.0])[:3], atol=1e-4)


def test_4d_file_asks_to_pick_a_volume(tmp_path):
    src = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(io.VolumeIOError, match=r"4-D image with 2 volumes.*#INDEX"):
        io.load(src)
    second = io.load(f"{src}#1")
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))[1]
    np.testing.assert_allclose(second.array, ref)
    assert second.notes[0] == "volume #1 (counted from 0) of the 4-D file example4d.nii.gz"   # goes to its outputs
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

    monkeypatch.setattr(catalog, "available_memory", lambda: 2048)
    with pytest.raises(io.VolumeIOError, match="GiB of memory is available; close volumes"):
        io.load(path)


def test_available_memory_is_what_the_system_can_give():
    import engine.io.catalog as catalog

    available = catalog.available_memory()
    assert available is not None and 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available >= os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.9   # caches count too


def _lying_header(path: Path, shape=(1024, 1024, 1024), data=b"\1" * 8192) -> Path:
    """A NIfTI file whose header promises ``shape`` int16 voxels but holds only ``data``."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    raw = header.binaryblock + bytes(4) + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_a_header_promising_more_than_the_file_holds_is_refused(tmp_path, name):
    path = _lying_header(tmp_path / name)
    with pytest.raises(io.VolumeIOError, match=r"promises 2\.0 GiB of voxel data") as err:
        io.scan(path)
    assert str(path) in str(err.value)
    with pytest.raises(io.VolumeIOError, match="truncated or its header is wrong"):
        io.load(path)


def test_a_gzip_file_too_short_for_its_header_is_refused_from_its_trailer(tmp_path):
    path = _lying_header(tmp_path / "short.nii.gz", shape=(64, 64, 64), data=bytes(64 * 64 * 63 * 2))
    with pytest.raises(io.VolumeIOError, match="unpacks to less"):
        io.scan(path)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".mhd", ".nii"])
def test_a_truncated_file_is_refused_before_reading(tmp_path, suffix):
    out = tmp_path / f"whole{suffix}"
    image = sitk.GetImageFromArray(np.ones((20, 30, 40), np.int16))
    sitk.WriteImage(image, str(out), useCompression=False)
    data = out.with_suffix(".raw") if suffix == ".mhd" else out
    data.write_bytes(data.read_bytes()[:-5000])
    with pytest.raises(io.VolumeIOError, match=r"promises 46\.9 KiB of voxel data but the file holds"):
        io.scan(out)


@pytest.mark.parametrize("name", ["scaled.nii", "scaled.nii.gz"])
def test_stored_integers_with_a_scale_pass_the_check(tmp_path, name):
    image = nibabel.Nifti1Image(np.full((20, 30, 40), 7, np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)              # read as float, stored as int16
    nibabel.save(image, tmp_path / name)
    np.testing.assert_array_equal(io.load(tmp_path / name).array, 7 * 2.0 - 1024)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz"])
def test_compressed_files_that_hold_their_data_pass_the_check(tmp_path, suffix):
    vol = Volume(np.zeros((64, 64, 64), np.float32), modality="CT", unit="HU")     # compresses very well
    back = io.load(io.save(vol, tmp_path / f"zeros{suffix}"))
    assert back.shape == (64, 64, 64)


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
    assert entry.modality == back.modality == "CT"                       # from the mark, not the name
    renamed = out.rename(tmp_path / f"patient01_FLAIR{suffix}")          # a name that says otherwise
    assert io.load(renamed).synthetic and io.load(renamed).modality == "CT" and io.load(renamed).unit == "HU"
    assert io.scan(renamed).entries[0].modality == "CT"
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
    assert io.scan(nibabel_copy).entries[0].modality == io.load(nibabel_copy).modality == "CT"


def test_a_long_description_keeps_the_research_use_mark_in_the_nifti_descrip(tmp_path):
    synthetic = _oblique_volume().replace(modality="FLAIR", synthetic=True, derived_from="T1")
    out = io.save(synthetic, tmp_path / "scan.nii", description="converted from " + "a very long name " * 8)
    descrip = nibabel.load(out).header["descrip"].item().decode()
    assert len(descrip.encode()) <= 79 and descrip.startswith("synthetic FLAIR from T1; converted from")
    assert descrip.endswith("— research use only") and io.load(out).derived_from == "T1"
    kept = descrip.removesuffix(" — research use only")
    assert kept.endswith("…") and ("synthetic FLAIR from T1; converted from " + "a very long name " * 8).startswith(
        kept[:-1] + " ")                                                 # cut at a word's end, marked


def test_a_flagged_synthetic_description_keeps_its_flag_and_is_read_back(tmp_path):
    synthetic = _oblique_volume().replace(modality="CT", unit="HU", synthetic=True, derived_from="CBCT")
    out = io.save(synthetic, tmp_path / "renamed.nii.gz", description="(OOD input) synthetic CT from CBCT")
    descrip = nibabel.load(out).header["descrip"].item().decode()
    assert descrip == "(OOD input) synthetic CT from CBCT — research use only"
    again = io.load(out)
    assert again.synthetic and again.derived_from == "CBCT"


def test_a_third_party_description_with_the_word_synthetic_marks_nothing(tmp_path):
    for text in ("Synthetic MR phantom, site 3", "sub-01 synthetic aperture recon", "SYNTHETIC CT"):
        out = tmp_path / "third_party.nii"
        image = nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
        image.header["descrip"] = text.encode()
        nibabel.save(image, out)
        assert not io.scan(out).entries[0].synthetic and not io.load(out).synthetic, text


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


def test_a_volume_of_a_4d_file_is_listed_by_its_index(tmp_path, capsys):
    src = NIBABEL_DATA / "example4d.nii.gz"
    whole = io.scan(src).entries[0]
    assert whole.volumes == 2
    entry = io.scan(f"{src}#1").entries[0]
    assert entry.key == f"{src}#1" and entry.volumes == 1 and "volume 2 of 2" in entry.description
    assert not any(n.startswith("4-D image") for n in entry.notes)
    np.testing.assert_array_equal(entry.load().array, io.load(f"{src}#1").array)
    with pytest.raises(io.VolumeIOError, match="outside 0…1"):
        io.scan(f"{src}#2")
    from cli import run_cli

    assert run_cli(["info", f"{src}#1", "--json"]) == 0                 # as `convert` takes it
    assert json.loads(capsys.readouterr().out)["series"][0]["key"] == f"{src}#1"


def _picture(path: Path, pixels: np.ndarray, spacing=None) -> Path:
    image = sitk.GetImageFromArray(pixels, isVector=pixels.ndim == 3)
    sitk.WriteImage(image, str(path))
    if spacing is not None and path.suffix == ".png":              # a pHYs chunk, in pixels per metre
        import struct
        import zlib

        data = path.read_bytes()
        body = b"pHYs" + struct.pack(">IIB", round(1000 / spacing[0]), round(1000 / spacing[1]), 1)
        chunk = struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body))
        path.write_bytes(data[:33] + chunk + data[33:])             # after the IHDR chunk
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_a_2d_picture_opens_as_a_one_slice_volume(tmp_path, suffix):
    pixels = (np.arange(30 * 40).reshape(30, 40) % 200).astype(np.uint8)
    path = _picture(tmp_path / f"slice{suffix}", pixels)
    entry = io.scan(path).entries[0]
    assert entry.shape_zyx == (1, 30, 40) and entry.orientation == "2-D"
    vol = io.load(path)
    assert vol.shape == (1, 30, 40) and vol.spacing == (1.0, 1.0, 1.0)
    if suffix != ".jpg":                                           # JPEG is lossy
        np.testing.assert_array_equal(vol.array[0], pixels)
    assert any("one-slice volume" in n and "pixel spacing 1 × 1 mm" in n for n in vol.notes)
    assert any("not physical units" in n for n in vol.notes)


def test_a_picture_keeps_its_stated_resolution_and_colour_becomes_grey(tmp_path):
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 100
    path = _picture(tmp_path / "photo.png", rgb, spacing=(0.25, 0.5))
    vol = io.load(path)
    assert vol.spacing == pytest.approx((0.25, 0.5, 1.0), rel=1e-3)
    assert any("from the file's resolution" in n for n in vol.notes)
    np.testing.assert_allclose(vol.array, 0.299 * 200 + 0.587 * 100, atol=1e-3)
    assert any(n.startswith("colour picture") for n in vol.notes)


def test_a_screen_default_resolution_is_not_taken_for_a_pixel_size(tmp_path):
    path = _picture(tmp_path / "screenshot.png", np.zeros((8, 8), np.uint8), spacing=(25.4 / 96, 25.4 / 96))
    vol = io.load(path)
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert any("96 dpi is a screen default" in n for n in vol.notes)


def test_pictures_in_a_folder_are_listed_only_without_volumes(tmp_path):
    _picture(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    _picture(tmp_path / "b.png", np.ones((8, 8), np.uint8))
    assert [Path(e.paths[0]).name for e in io.scan(tmp_path).entries] == ["a.png", "b.png"]
    io.save(_oblique_volume(), tmp_path / "t2.nii.gz")
    assert [Path(e.paths[0]).name for e in io.scan(tmp_path).entries] == ["t2.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_a_full_disk_keeps_the_previous_file_and_says_which(tmp_path, suffix):
    """The NIfTI writer reports success on a full disk: what it wrote is read back before the rename."""
    from faults import disk_full_after

    vol = _oblique_volume((20, 64, 64))
    out = io.save(vol, tmp_path / f"t2{suffix}")
    good = out.read_bytes()
    with pytest.raises(io.VolumeIOError) as err, disk_full_after(len(good) // 3):
        io.save(vol.replace(array=vol.array + 1), out)
    message = str(err.value)
    assert message.startswith(f"{out}: ") and "previous file" in message and "0x" not in message
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [out.name]



def test_a_file_that_reads_back_as_another_image_is_refused_in_one_line(tmp_path, monkeypatch):
    """The read-back check names what the header holds instead (it once failed with an AttributeError)."""
    import engine.io.itk_files as itk_files

    write = sitk.WriteImage
    monkeypatch.setattr(itk_files.sitk, "WriteImage",
                        lambda _image, name, **kw: write(sitk.Image([2, 3, 4], sitk.sitkUInt8), name, **kw))
    out = tmp_path / "t2.nii.gz"
    with pytest.raises(io.VolumeIOError) as err:
        io.save(_oblique_volume(), out)
    assert str(err.value) == (f"{out}: was not written completely (reads back as [2, 3, 4] voxels of 8-bit unsigned "
                              "integer; is the disk full?); the previous file, if any, is kept")
    assert list(tmp_path.iterdir()) == []

def test_a_read_only_output_folder_is_one_clear_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    from faults import read_only

    from cli import run_cli

    src = io.save(_oblique_volume(), tmp_path / "t2.nii.gz")
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro", monkeypatch):
        assert run_cli(["convert", str(src), str(tmp_path / "ro" / "out.nii.gz")]) == 2
        assert run_cli(["convert", str(src), str(tmp_path / "ro" / "series")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'ro' / 'out.nii.gz'}: cannot be written in {tmp_path / 'ro'} (the folder "
                     "is read-only: Read-only file system)",
                     f"error: {tmp_path / 'ro' / 'series'}: cannot be written in {tmp_path / 'ro'} (the folder "
                     "is read-only: Read-only file system)"]
    assert list((tmp_path / "ro").iterdir()) == []


def test_an_output_nothing_can_be_written_to_is_refused_before_the_work(tmp_path, monkeypatch):
    from faults import read_only

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(io.VolumeIOError, match=f"cannot be written in {tmp_path / 'a-file'} \\(Not a directory\\)"):
        io.check_output(tmp_path / "a-file" / "new" / "t2.nii.gz")
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro", monkeypatch), pytest.raises(io.VolumeIOError, match="the folder is read-only"):
        io.check_output(tmp_path / "ro" / "missing" / "series")       # where the missing folder would be made
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(io.VolumeIOError, match=r"holds other files \(todo.txt\)"):
        io.check_output(tmp_path / "notes")                          # a DICOM series would replace the folder
    io.check_output(tmp_path / "new" / "deeper" / "t2.nii.gz")          # made when written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "notes", "ro"]    # the check left nothing


@pytest.mark.parametrize("suffix, instead", [(".nhdr", ".nrrd"), (".mhd", ".mha")])
def test_a_header_whose_voxels_would_go_to_a_second_file_is_refused_before_anything_is_written(tmp_path, suffix,
                                                                                             instead):
    # the second file would be named after the temporary file the header was written as, and lost
    out = tmp_path / f"ct{suffix}"
    with pytest.raises(io.VolumeIOError, match=f"keeps its voxels in a separate file; write \\{instead} instead"):
        io.check_output(out)
    with pytest.raises(io.VolumeIOError, match="separate file"):
        io.save(_oblique_volume(), out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("unit, factor", [("micron", 0.001), ("meter", 1000.0), ("mm", 1.0)])
@pytest.mark.parametrize("image_type", [nibabel.Nifti1Image, nibabel.Nifti2Image])
def test_a_nifti_spatial_unit_other_than_mm_is_converted_to_mm(tmp_path, unit, factor, image_type):
    """xyzt_units states the unit of the transforms: a microscope's micron file is not 1000 times larger
    than it is, a metre file not 1000 times smaller (NIfTI-1 and NIfTI-2 alike; listing and loading agree)."""
    affine = np.array([[0.5, 0, 0, 10], [0, 0.6, 0, -20], [0, 0, 2.0, 30], [0, 0, 0, 1]])
    scaled = np.diag([1 / factor] * 3 + [1.0]) @ affine                # the same grid in the file's unit
    image = image_type(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), scaled)
    image.header.set_xyzt_units(unit, "sec")
    image.set_sform(scaled, code=1)
    image.set_qform(scaled, code=1)
    nibabel.save(image, tmp_path / "v.nii")
    vol = io.load(tmp_path / "v.nii")
    np.testing.assert_allclose(vol.spacing, (0.5, 0.6, 2.0), rtol=1e-5)
    np.testing.assert_allclose(vol.origin, (-10, 20, 30), rtol=1e-5)           # LPS
    np.testing.assert_allclose(io.scan(tmp_path / "v.nii").entries[0].spacing_xyz, (0.5, 0.6, 2.0), rtol=1e-5)
    assert any("xyzt_units" in n for n in vol.notes) == (factor != 1.0)


def test_a_cut_description_keeps_every_whole_word_it_has_room_for():
    from engine.io.synthetic_mark import _fit_bytes

    cuts = [_fit_bytes("alpha beta gamma delta", n) for n in range(12, 23)]
    assert cuts[:10] == ["alpha…"] + ["alpha beta…"] * 6 + ["alpha beta gamma…"] * 3
    assert cuts[-1] == "alpha beta gamma delta" and all(len(c.encode()) <= n for c, n in zip(cuts, range(12, 23)))


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_a_converted_scan_keeps_its_modality_under_any_file_name(tmp_path, suffix):
    """A CBCT converted to fraction3.nii.gz (a name that says nothing) re-reads as a CBCT in HU, where it
    had come back of unknown modality: no CT window, no CBCT route, a Secondary Capture export."""
    cbct = Volume(np.full((3, 4, 5), -1000.0, np.float32), modality="CBCT", unit="HU")
    back = io.load(io.save(cbct, tmp_path / f"fraction3{suffix}", description="converted from XVI pelvis"))
    assert (back.modality, back.unit, back.synthetic) == ("CBCT", "HU", False)
    unnamed = io.load(io.save(Volume(np.zeros((3, 4, 5), np.float32)), tmp_path / f"other{suffix}"))
    assert unnamed.modality is None


def test_a_dataset_check_reads_the_grid_of_a_file_only_nibabel_reads(tmp_path):
    from engine.tasks.validation import read_geometry

    # a NIfTI-2 file (which SimpleITK does not read) had been refused by the dataset check that loading passes
    affine = np.diag([-1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = [5.0, -7.0, 9.0]
    nibabel.save(nibabel.Nifti2Image(np.zeros((10, 12, 8), np.float32), affine), tmp_path / "t1.nii")
    geometry, volume = read_geometry(tmp_path / "t1.nii"), io.load(tmp_path / "t1.nii")
    assert geometry.size == volume.size_xyz == (10, 12, 8) and geometry.space == volume.space
    np.testing.assert_allclose(geometry.origin, volume.origin)
    np.testing.assert_allclose(geometry.spacing, volume.spacing)
    # a coronal 2-D slice: listed as 2-D as an axial one is, and refused by the dataset check as one
    nibabel.save(nibabel.Nifti1Image(np.zeros((20, 24), np.float32), CORONAL_SLICE), tmp_path / "slice.nii.gz")
    assert io.scan(tmp_path / "slice.nii.gz").entries[0].orientation.startswith("2-D")
    with pytest.raises(ValueError, match="is a 2-D image"):
        read_geometry(tmp_path / "slice.nii.gz")
