"""Writing derived DICOM series: values in physical units within the promised error, geometry exact,
identity kept or anonymised, provenance a planning system reads (references to the source, synthetic
marking, zero dciodvfy errors), readable by SimpleITK as one volume, and never a half-written folder."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_fixtures import DICOMDIR_TESTS, NIBABEL_DATA, OBLIQUE, PYDICOM_FILES, sitk_series

import engine.io as io
from engine.io.dicom_write import RESEARCH_ONLY, write_dicom_series
from engine.io.itk_files import volume_from_sitk
from engine.io.volume import Volume
from engine.jobs import Cancelled, CancelToken

SYNTHETIC = "SYNTHETIC T1→FLAIR SynerMedGen default"


def _ct_series() -> Volume:
    """A real 5-slice CT (pydicom's dicomdirtests, in HU), as read by our reader."""
    entry = next(e for e in io.scan(DICOMDIR_TESTS / "DICOMDIR").entries if e.description.startswith("SmartScore"))
    return entry.load()


def _anatomical(direction=OBLIQUE, scale=1.7, offset=0.123) -> Volume:
    image = sitk.ReadImage(str(NIBABEL_DATA / "anatomical.nii"))
    vol = volume_from_sitk(image)
    return vol.replace(array=(vol.array * scale + offset).astype(np.float32), direction=tuple(np.ravel(direction)),
                       origin=(10.5, -20.25, 33.0), spacing=(1.1, 0.9, 2.5), modality="T1", unit="a.u.")


def _quantisation_bound(array: np.ndarray) -> float:
    """The MR/PET promise: range / 131064, plus one float32 step of the largest value."""
    return float(array.max() - array.min()) / 131064 + float(np.abs(array).max()) * 2.0**-23


def _files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


# -- values ------------------------------------------------------------------------------------------
def test_ct_hounsfield_round_trip_is_exact_with_slope_one(tmp_path):
    ct = _ct_series()
    out = write_dicom_series(ct, tmp_path / "ct", series_description="CT copy")
    back = io.load(out)
    np.testing.assert_array_equal(back.array, ct.array)
    assert back.same_grid(ct) and back.unit == "HU" and back.modality == "CT"
    first = _files(out)[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and first.Modality == "CT"
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)
    assert first.PixelRepresentation == 1 and first.BitsAllocated == 16


def test_a_ct_s_stated_padding_is_stated_again_where_its_values_hold_it(tmp_path):
    from engine.io.dicom_read import PADDING_RANGE

    ct = _ct_series()
    array = ct.array.copy()
    array[:, :4, :] = -3024.0                                    # outside a reconstruction's field of view
    padded = ct.replace(array=array, dicom={**ct.dicom, PADDING_RANGE: "-3024.0\\-3024.0"})
    out = write_dicom_series(padded, tmp_path / "ct", series_description="CT copy")
    first = _files(out)[0]
    assert first.PixelPaddingValue == -3024 and first["PixelPaddingValue"].VR == "SS"
    assert "PixelPaddingRangeLimit" not in first
    back = io.load(out)                                          # read back as padding, not as material below air
    assert back.dicom[PADDING_RANGE] == padded.dicom[PADDING_RANGE]
    np.testing.assert_array_equal(back.array, array)
    for unpadded in (ct.replace(dicom=padded.dicom),                                  # no voxel holds it
                     padded.replace(array=np.maximum(array, -1024.0), synthetic=True)):    # a synthetic: filled
        first = _files(write_dicom_series(unpadded, tmp_path / "other", series_description="other"))[0]
        assert "PixelPaddingValue" not in first


def test_ct_fractional_and_wide_range_stays_within_one_hu(tmp_path):
    ct = _ct_series()
    rng = np.random.default_rng(0)
    wide = ct.array * 100.0 + rng.uniform(-0.5, 0.5, ct.shape).astype(np.float32)   # beyond int16
    assert wide.max() - wide.min() > 65535
    vol = ct.with_array(wide.astype(np.float32))
    back = io.load(write_dicom_series(vol, tmp_path / "ct", series_description="wide"))
    assert float(np.max(np.abs(back.array - vol.array))) <= 1.0
    fractional = ct.with_array((ct.array + rng.uniform(-0.49, 0.49, ct.shape)).astype(np.float32))
    back = io.load(write_dicom_series(fractional, tmp_path / "ct2", series_description="fractional"))
    assert float(np.max(np.abs(back.array - fractional.array))) <= 0.5 + 1e-4


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e5])
def test_mr_float_values_keep_their_precision_at_any_scale(tmp_path, scale):
    vol = _anatomical(scale=1.7 * scale, offset=0.123 * scale)
    back = io.load(write_dicom_series(vol, tmp_path / "mr", series_description=SYNTHETIC))
    assert float(np.max(np.abs(back.array - vol.array))) <= _quantisation_bound(vol.array)
    assert back.modality == "T1" and back.unit == "a.u."


def test_integer_mr_is_stored_exactly(tmp_path):
    vol = _anatomical(scale=1.0, offset=0.0)
    back = io.load(write_dicom_series(vol, tmp_path / "mr", series_description="int"))
    np.testing.assert_array_equal(back.array, vol.array)


def test_pet_suv_goes_to_pet_storage_in_gml(tmp_path):
    vol = _anatomical(scale=0.004, offset=0.0).replace(modality="PET", unit="SUVbw")
    out = write_dicom_series(vol, tmp_path / "pet", series_description="SYNTHETIC CT→PET")
    first = _files(out)[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.128" and first.Modality == "PT"
    assert first.Units == "GML" and float(first.RescaleIntercept) == 0.0
    back = io.load(out)
    assert back.modality == "PET" and back.unit == "SUVbw"
    assert float(np.max(np.abs(back.array - vol.array))) <= float(vol.array.max()) / 32767


def test_unknown_modality_becomes_secondary_capture(tmp_path):
    vol = _anatomical().replace(modality=None, unit="")
    first = _files(write_dicom_series(vol, tmp_path / "ot", series_description="other"))[0]
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and first.Modality == "OT"


# -- geometry ----------------------------------------------------------------------------------------------
def test_nifti_to_dicom_to_nifti_keeps_the_geometry(tmp_path):
    nifti = tmp_path / "t1.nii.gz"
    io.save(_anatomical(), nifti)
    vol = io.load(nifti)
    out = io.save(vol, tmp_path / "dicom", description=SYNTHETIC)      # a folder → DICOM series
    back_nifti = io.save(io.load(out), tmp_path / "back.nii.gz")
    back = io.load(back_nifti)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-4)
    assert float(np.max(np.abs(back.array - vol.array))) <= _quantisation_bound(vol.array)
    image = sitk_series(out)                             # SimpleITK sees one 3-D volume
    assert image.GetDimension() == 3 and image.GetSize() == vol.size_xyz
    np.testing.assert_allclose(image.GetDirection(), vol.direction, atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), vol.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), vol.spacing, atol=1e-4)


def test_left_handed_volume_comes_back_in_the_same_physical_place(tmp_path):
    vol = _anatomical(direction=np.diag([1.0, -1.0, 1.0]))         # the NIfTI's own LPS axes, det = −1
    back = io.load(write_dicom_series(vol, tmp_path / "s", series_description="flip"))
    # DICOM readers stack slices along row × column, so z runs the other way: same voxels in space
    np.testing.assert_allclose(back.array, vol.array[::-1], atol=_quantisation_bound(vol.array))
    corners = np.array([[0, 0, 0, 1], [32, 40, 24, 1], [5, 7, 3, 1]], dtype=float).T
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = vol.shape[0] - 1
    np.testing.assert_allclose(back.index_to_lps() @ flip @ corners, vol.index_to_lps() @ corners, atol=1e-4)


def test_every_file_carries_full_geometry(tmp_path):
    vol = _anatomical()
    files = _files(write_dicom_series(vol, tmp_path / "s", series_description="geo"))
    assert [Path(f.filename).name for f in files[:2]] == ["IM000001.dcm", "IM000002.dcm"]
    assert [f.InstanceNumber for f in files] == list(range(1, vol.shape[0] + 1))
    d = vol.direction_matrix
    for k, f in enumerate(files):
        np.testing.assert_allclose([float(v) for v in f.ImagePositionPatient],
                                   np.asarray(vol.origin) + k * 2.5 * d[:, 2], atol=1e-4)
        np.testing.assert_allclose([float(v) for v in f.ImageOrientationPatient], [*d[:, 0], *d[:, 1]], atol=1e-6)
        assert [float(v) for v in f.PixelSpacing] == [0.9, 1.1]
        assert float(f.SliceThickness) == float(f.SpacingBetweenSlices) == 2.5
    assert len({float(f.SliceLocation) for f in files}) == len(files)


# -- identity -------------------------------------------------------------------------------------------
def test_identity_is_kept_and_the_series_is_new_and_derived(tmp_path):
    ct = _ct_series()
    long_description = SYNTHETIC + " with a description far longer than sixty-four characters allow"
    files = _files(write_dicom_series(ct, tmp_path / "s", series_description=long_description))
    first = files[0]
    assert first.StudyInstanceUID == ct.dicom["StudyInstanceUID"]
    assert first.FrameOfReferenceUID == ct.dicom["FrameOfReferenceUID"]
    assert str(first.PatientName) == ct.dicom["PatientName"] and first.PatientID == ct.dicom["PatientID"]
    assert {f.SeriesInstanceUID for f in files} == {first.SeriesInstanceUID} != {ct.dicom["SeriesInstanceUID"]}
    assert len({f.SOPInstanceUID for f in files}) == len(files)
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert first.SeriesDescription == long_description[:64] and "SYNTHETIC" in first.SeriesDescription
    assert "research use only, not for diagnosis" in first.DerivationDescription.lower()
    assert "research use only, not for diagnosis" in first.ImageComments.lower()
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.preamble is not None and Path(first.filename).read_bytes()[128:132] == b"DICM"


def _synthetic_ct_from_cbct(ct: Volume) -> Volume:
    """What the pipeline returns for a CBCT read from DICOM: new values, the source's DICOM identity."""
    return ct.with_array(ct.array + 25.0, modality="CT", unit="HU", name="synthetic CT from CBCT",
                         synthetic=True, derived_from="CBCT")


def test_a_synthetic_series_says_what_it_is_and_references_its_source(tmp_path):
    source = _ct_series()
    entry = next(e for e in io.scan(DICOMDIR_TESTS / "DICOMDIR").entries if e.description.startswith("SmartScore"))
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in entry.paths)}
    files = _files(write_dicom_series(_synthetic_ct_from_cbct(source), tmp_path / "s", series_description="x"))
    first = files[0]
    assert {f.SeriesInstanceUID for f in files} == {first.SeriesInstanceUID} != {source.dicom["SeriesInstanceUID"]}
    assert len({f.SOPInstanceUID for f in files} | set(sources)) == 2 * len(files)         # all new
    assert {f.StudyInstanceUID for f in files} == {source.dicom["StudyInstanceUID"]}
    assert {f.FrameOfReferenceUID for f in files} == {source.dicom["FrameOfReferenceUID"]}
    assert first.SeriesDescription == "synthetic CT from CBCT — research use only"
    assert first.ContentQualification == "RESEARCH" and first.ImageType[0] == "DERIVED"
    for f in files:                           # each slice points at the source image at its position
        image = f.SourceImageSequence[0]
        assert image.ReferencedSOPClassUID == source.dicom["SOPClassUID"]
        assert image.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        referenced = sources[image.ReferencedSOPInstanceUID]
        np.testing.assert_allclose([float(v) for v in f.ImagePositionPatient],
                                   [float(v) for v in referenced.ImagePositionPatient], atol=1e-3)
        series = f.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == source.dicom["SeriesInstanceUID"]
        assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.ReferencedSOPInstanceUID
    entry = io.scan(tmp_path / "s").entries[0]
    back = entry.load()
    assert entry.synthetic and back.synthetic and back.derived_from == "CBCT"
    assert not source.synthetic


def test_a_series_with_a_missing_slice_references_every_acquired_slice_and_not_the_filled_one(tmp_path):
    from dicom_fixtures import anatomical, write_series

    paths = write_series(tmp_path / "cbct", anatomical()[:8], modality="CT")
    gone = pydicom.dcmread(paths[3]).SOPInstanceUID
    paths[3].unlink()                                                   # one slice missing: filled in between
    source = io.load(tmp_path / "cbct")
    assert source.shape[0] == 8 and any(n.startswith("missing slice") for n in source.notes)
    synthetic = source.replace(synthetic=True, derived_from="CBCT", modality="CT", unit="HU")
    files = _files(write_dicom_series(synthetic, tmp_path / "sct", series_description="x"))
    referenced = [f.SourceImageSequence[0].ReferencedSOPInstanceUID if "SourceImageSequence" in f else None
                  for f in files]
    assert referenced.count(None) == 1 and gone not in referenced
    acquired = {pydicom.dcmread(p).SOPInstanceUID for p in paths if p.exists()}
    assert set(referenced) - {None} == acquired                         # the 7 acquired slices, each once
    # the filled slice says so where a viewer shows it (helper-60's audit: only the JSON sidecar had)
    said = ["No slice was acquired at this position" in str(f.ImageComments) for f in files]
    assert said == [r is None for r in referenced] and "(in the source)" in files[referenced.index(None)].ImageComments
    assert "research use only" in files[referenced.index(None)].ImageComments.lower()
    scan = _files(write_dicom_series(source, tmp_path / "converted", series_description="x", anonymise=True))
    filled = [f for f in scan if "No slice was acquired at this position" in str(f.ImageComments)]
    assert len(filled) == 1 and "(in the source)" not in filled[0].ImageComments     # said in an anonymised one too
    assert "No slice was acquired" in filled[0].DerivationDescription
    long = _files(write_dicom_series(synthetic, tmp_path / "long", series_description="d" * 1000))      # cut to fit
    said = [f.DerivationDescription for f in long if "No slice was acquired" in f.DerivationDescription]
    assert len(said) == 1 and len(said[0]) <= 1024
    assert all(f.DerivationDescription.endswith(RESEARCH_ONLY) for f in long)     # every slice keeps the statement


def test_an_anonymised_or_resampled_export_references_no_source(tmp_path):
    synthetic = _synthetic_ct_from_cbct(_ct_series())
    first = _files(write_dicom_series(synthetic, tmp_path / "anon", series_description="x", anonymise=True))[0]
    assert "SourceImageSequence" not in first and "ReferencedSeriesSequence" not in first
    assert first.SeriesDescription == "synthetic CT from CBCT — research use only"
    cropped = synthetic.replace(array=synthetic.array[1:].copy())                # not on the source's slices
    first = _files(write_dicom_series(cropped, tmp_path / "crop", series_description="x"))[0]
    assert "SourceImageSequence" not in first and "ReferencedSeriesSequence" not in first


def test_a_synthetic_series_made_from_an_input_unlike_the_training_data_says_so_where_a_pacs_lists_it(tmp_path):
    synthetic = _synthetic_ct_from_cbct(_ct_series())
    description = "(OOD input) synthetic CT from CBCT by SynerMedGen default, 12 euler steps — research use only"
    first = _files(write_dicom_series(synthetic, tmp_path / "ood", series_description=description))[0]
    assert first.SeriesDescription == "(OOD input) synthetic CT from CBCT — research use only"
    assert first.ImageComments.startswith(description)
    entry = io.scan(tmp_path / "ood").entries[0]
    assert entry.synthetic and entry.load().derived_from == "CBCT"
    from engine.io import Anonymiser  # anonymised, the flag stays

    shared = _files(write_dicom_series(synthetic, tmp_path / "anon", series_description=description,
                                       anonymise=Anonymiser()))[0]
    assert shared.SeriesDescription == "(OOD input) synthetic CT from CBCT — research use only"


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed; "
                                             "scripts/setup.sh installs it when run as root")
@pytest.mark.parametrize("kind", ["CT", "CT of the head", "MR of a breast", "MR", "MR from DICOM", "MR converted", "PET",
                                  "OT"])
def test_dciodvfy_finds_no_error_in_an_export(tmp_path, kind):
    def body_part(volume, part):
        return volume.replace(dicom={**volume.dicom, "BodyPartExamined": part})

    volume = {"CT": lambda: _synthetic_ct_from_cbct(_ct_series()),
              "CT of the head": lambda: body_part(_synthetic_ct_from_cbct(_ct_series()), "HEAD"),   # unpaired
              "MR of a breast": lambda: body_part(_anatomical().replace(modality="T1"), "BREAST"),  # paired
              "MR": lambda: _anatomical().replace(modality="FLAIR", synthetic=True, derived_from="T1"),
              "MR from DICOM": lambda: io.load(PYDICOM_FILES / "MR_small.dcm").replace(
                  modality="FLAIR", synthetic=True, derived_from="T2"),
              "MR converted": lambda: io.load(PYDICOM_FILES / "MR_small.dcm"),
              "PET": lambda: _anatomical().replace(modality="PET", unit="SUVbw", synthetic=True, derived_from="CT"),
              "OT": lambda: _anatomical().replace(modality=None, unit="")}[kind]()
    files = sorted(write_dicom_series(volume, tmp_path / "s", series_description="x").iterdir())
    for path in (files[0], files[-1]):
        run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        report = (run.stdout + run.stderr).splitlines()
        assert not [line for line in report if line.startswith("Error")], "\n".join(report)
        assert any(line.endswith("Image") for line in report)                 # it did check an image IOD


def test_volume_without_dicom_identity_gets_a_new_study(tmp_path):
    vol = _anatomical()
    assert vol.dicom == {}
    first = _files(write_dicom_series(vol, tmp_path / "s", series_description="new"))[0]
    assert pydicom.uid.UID(first.StudyInstanceUID).is_valid and pydicom.uid.UID(first.FrameOfReferenceUID).is_valid


# -- atomic ---------------------------------------------------------------------------------------------
def test_cancelled_write_leaves_no_folder(tmp_path):
    token = CancelToken()

    def cancel_at_three(p):
        if p.done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        write_dicom_series(_anatomical(), tmp_path / "s", series_description="x", progress=cancel_at_three,
                           cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_failing_write_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    old = write_dicom_series(_ct_series(), tmp_path / "s", series_description="first export")
    before = sorted(p.name for p in old.iterdir())
    calls = {"n": 0}
    real = pydicom.Dataset.save_as

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing)
    with pytest.raises(io.VolumeIOError, match="No space left"):
        write_dicom_series(_anatomical(), tmp_path / "s", series_description="second export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]                     # no temporary left over
    assert sorted(p.name for p in old.iterdir()) == before
    assert pydicom.dcmread(old / "IM000001.dcm").SeriesDescription == "first export"


def test_a_folder_holding_other_files_is_not_replaced(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(io.VolumeIOError, match="holds other files"):
        write_dicom_series(_anatomical(), tmp_path / "docs", series_description="x")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


def test_a_folder_of_dicom_files_this_app_did_not_write_is_not_replaced(tmp_path):
    scanner = tmp_path / "scanner"
    written = write_dicom_series(_ct_series(), tmp_path / "ours", series_description="first export")
    scanner.mkdir()
    for path in sorted(written.iterdir()):                   # the same names, as a scanner's export may use
        ds = pydicom.dcmread(path)
        del ds[0x00110010]                                     # no private block of ours
        ds.save_as(scanner / path.name, enforce_file_format=True)
    before = sorted((p.name, p.read_bytes()) for p in scanner.iterdir())
    with pytest.raises(io.VolumeIOError, match="holds DICOM files this app did not write"):
        write_dicom_series(_anatomical(), scanner, series_description="x")
    assert sorted((p.name, p.read_bytes()) for p in scanner.iterdir()) == before


def test_a_symlinked_export_folder_is_neither_followed_nor_replaced(tmp_path):
    real = write_dicom_series(_ct_series(), tmp_path / "real", series_description="first export")
    before = sorted(p.name for p in real.iterdir())
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(io.VolumeIOError, match=r"link: is a symbolic link"):
        write_dicom_series(_anatomical(), tmp_path / "link", series_description="second export")
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in real.iterdir()) == before
    assert pydicom.dcmread(real / "IM000001.dcm").SeriesDescription == "first export"


def test_a_full_disk_keeps_the_previous_export_and_names_the_folder(tmp_path):
    from faults import disk_full_after

    old = write_dicom_series(_ct_series(), tmp_path / "s", series_description="first export")
    with pytest.raises(io.VolumeIOError) as err, disk_full_after(1000):
        write_dicom_series(_anatomical(), old, series_description="second export")
    assert str(err.value).startswith(f"{old}: could not be written (File too large: the disk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert pydicom.dcmread(old / "IM000001.dcm").SeriesDescription == "first export"


def test_real_ct_small_round_trips_through_the_writer(tmp_path):
    ct = io.load(PYDICOM_FILES / "CT_small.dcm")
    back = io.load(write_dicom_series(ct, tmp_path / "s", series_description="one slice"))
    np.testing.assert_array_equal(back.array, ct.array)
    assert back.same_grid(ct)


@pytest.mark.parametrize("modality", ["CBCT", "FLAIR", "PD"])
def test_the_modality_survives_a_misleading_description(tmp_path, modality):
    vol = _anatomical(scale=1.0, offset=0.0).replace(modality=modality, unit="HU" if modality == "CBCT" else "a.u.")
    out = write_dicom_series(vol, tmp_path / "s", series_description="SYNTHETIC CBCT→CT T1")
    assert pydicom.dcmread(out / "IM000001.dcm").Modality == ("CT" if modality == "CBCT" else "MR")
    back = io.load(out)
    assert back.modality == modality and back.unit == vol.unit


def test_a_derived_series_keeps_the_source_s_slice_thickness_beside_its_spacing(tmp_path):
    from dicom_fixtures import anatomical, write_series

    def thick(ds, i):
        ds.SliceThickness = "5"                       # 5 mm slices every 2.5 mm: they overlap

    write_series(tmp_path / "src", anatomical()[:4], spacing=(1.0, 1.0, 2.5), per_slice=thick)
    volume = io.load(tmp_path / "src")
    io.save(volume, tmp_path / "out")
    written = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert float(written.SliceThickness) == 5.0 and float(written.SpacingBetweenSlices) == pytest.approx(2.5, abs=1e-5)
    plain = Volume(np.zeros((3, 8, 8), np.float32), spacing=(1.0, 1.0, 2.5), modality="T1", unit="a.u.")
    io.save(plain, tmp_path / "plain")                # no source series: the spacing, as before
    assert float(pydicom.dcmread(sorted((tmp_path / "plain").iterdir())[0]).SliceThickness) == 2.5


def test_a_converted_ct_keeps_its_tube_voltage_and_a_synthetic_one_has_none(tmp_path):
    ct = io.load(PYDICOM_FILES / "CT_small.dcm")
    io.save(ct, tmp_path / "copy")
    io.save(ct.replace(synthetic=True), tmp_path / "synthetic")
    kvp = [pydicom.dcmread(next((tmp_path / name).iterdir())).KVP for name in ("copy", "synthetic")]
    assert float(kvp[0]) == float(pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm").KVP) and not kvp[1]


def test_a_converted_mr_keeps_its_sequence_and_timing_and_a_synthetic_one_says_research_mode(tmp_path):
    mr = io.load(PYDICOM_FILES / "MR_small.dcm")
    io.save(mr, tmp_path / "copy")
    io.save(mr.replace(synthetic=True, derived_from="T1"), tmp_path / "synthetic")
    copy, synthetic = (pydicom.dcmread(next((tmp_path / name).iterdir())) for name in ("copy", "synthetic"))
    assert (copy.ScanningSequence, copy.MRAcquisitionType, float(copy.EchoTime), float(copy.RepetitionTime),
            float(copy.FlipAngle)) == ("SE", "3D", 240.0, 4000.0, 90.0)
    assert synthetic.ScanningSequence == "RM" and not synthetic.EchoTime and "FlipAngle" not in synthetic


@pytest.mark.parametrize("tags, expected", [
    ({"EchoTime": "15,25", "MagneticFieldStrength": "1.5T"}, {"EchoTime": "", "MagneticFieldStrength": None}),
    ({"EchoTime": "4.67999982833862345", "EchoTrainLength": "4.5"}, {"EchoTime": "4.67999982833862", "EchoTrainLength": ""}),
    ({"SequenceVariant": "", "ScanningSequence": "SE\\IR"}, {"SequenceVariant": "NONE", "InversionTime": ""}),
    ({"ScanningSequence": "XX"}, {"ScanningSequence": "RM", "EchoTime": ""}),
    ({"RepetitionTime": "11000"}, {"RepetitionTime": "11000.0"}),
])
def test_a_converted_mr_s_odd_header_values_are_made_valid_or_dropped_never_an_export_error(tmp_path, tags, expected):
    mr = io.load(PYDICOM_FILES / "MR_small.dcm")
    out = io.save(mr.replace(dicom={**mr.dicom, **tags}), tmp_path / "out")
    written = pydicom.dcmread(next(out.iterdir()))
    assert {k: (str(written[k].value or "") if k in written else None) for k in expected} == expected


def test_a_tube_voltage_that_is_no_number_is_dropped_not_an_export_error(tmp_path):
    ct = io.load(PYDICOM_FILES / "CT_small.dcm")
    io.save(ct.replace(dicom={**ct.dicom, "KVP": "120kV"}), tmp_path / "out")
    assert pydicom.dcmread(next((tmp_path / "out").iterdir())).KVP in ("", None)


def test_a_synthetic_volume_made_from_a_monochrome1_image_is_written_as_monochrome2(tmp_path):
    film = io.load(DICOMDIR_TESTS / "77654033" / "CR1" / "6154")
    io.save(film.replace(synthetic=True, modality="CT", unit="HU"), tmp_path / "out")    # the model's values
    assert pydicom.dcmread(next((tmp_path / "out").iterdir())).PhotometricInterpretation == "MONOCHROME2"


def test_exports_of_one_series_have_their_own_series_numbers(tmp_path):
    """A converted T1 and every synthetic made from it had been series source + 1000, one number."""
    from dicom_fixtures import anatomical, write_series

    write_series(tmp_path / "t1", anatomical()[:3])                          # SeriesNumber 7
    t1 = io.load(tmp_path / "t1").replace(modality="T1")
    made = {"scan": t1, **{m: t1.replace(modality=m, synthetic=True, derived_from="T1") for m in ("T2", "FLAIR")}}
    numbers = {k: _files(write_dicom_series(v, tmp_path / k, series_description="x"))[0].SeriesNumber
               for k, v in made.items()}
    assert numbers == {"scan": 1007, "T2": 30007, "FLAIR": 40007}


def test_an_export_of_lossy_compressed_pixels_says_so_and_one_of_a_nifti_claims_nothing(tmp_path):
    """Every export had said LossyImageCompression 00, even of a lossy JPEG source (once 01, never reset)."""
    from dicom_fixtures import anatomical, write_series

    def lossy(ds, k):
        ds.LossyImageCompression, ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod = "01", 8, "ISO_15444_1"

    write_series(tmp_path / "lossy", anatomical()[:3], per_slice=lossy)
    write_series(tmp_path / "plain", anatomical()[:3])
    scan = io.load(tmp_path / "lossy")
    made = {"scan": scan, "synthetic": scan.replace(modality="T2", synthetic=True, derived_from="T1"),
            "plain": io.load(tmp_path / "plain"), "nifti": io.load(io.save(scan, tmp_path / "t1.nii.gz"))}
    first = {k: _files(write_dicom_series(v, tmp_path / f"out_{k}", series_description="x"))[0] for k, v in made.items()}
    for k in ("scan", "synthetic"):
        assert (first[k].LossyImageCompression, float(first[k].LossyImageCompressionRatio),
                first[k].LossyImageCompressionMethod) == ("01", 8.0, "ISO_15444_1")
    assert "LossyImageCompression" not in first["plain"] and "LossyImageCompression" not in first["nifti"]   # unsaid
    def said_not(ds, k):
        ds.LossyImageCompression = "00"

    write_series(tmp_path / "said", anatomical()[:3], per_slice=said_not)
    written = _files(write_dicom_series(io.load(tmp_path / "said"), tmp_path / "out_said", series_description="x"))
    assert written[0].LossyImageCompression == "00"
    from engine.io.dicom_read import lossy_compression

    baseline = lossy_compression({"TransferSyntaxUID": "1.2.840.10008.1.2.4.50"})      # JPEG baseline: lossy
    assert baseline == {"LossyImageCompression": "01", "LossyImageCompressionRatio": "",
                        "LossyImageCompressionMethod": "ISO_10918_1"}


def test_every_decimal_value_fits_dicom_s_16_characters_where_rounding_reaches_a_power_of_ten(tmp_path):
    """A slice 9.999999999999998 mm along the normal (float noise of a rotated grid) had been written as
    "10.00000000000000": 17 characters, an invalid DS that a strict archive or planning system refuses."""
    from engine.io.dicom_write import _ds_text

    assert _ds_text(9.999999999999998) == "10.0"
    for value in (9.999999999999998, -99.99999999999999, 999999.9999999999, 0.1, -3.552713678800501e-15):
        text = _ds_text(value)
        assert len(text) <= 16 and abs(float(text) - value) <= 1e-9 * max(1.0, abs(value)), (value, text)
    volume = Volume(np.zeros((3, 4, 4), np.float32), spacing=(1.0, 1.0, 9.999999999999998), modality="CT", unit="HU")
    write_dicom_series(volume, tmp_path / "out", series_description="CT")
    for path in sorted((tmp_path / "out").iterdir()):
        ds = pydicom.dcmread(path)
        for element in ds.iterall():
            if element.VR == "DS":
                values = element.value if element.VM > 1 else [element.value]
                assert all(len(str(v.original_string if hasattr(v, "original_string") else v)) <= 16
                           for v in values), (path.name, element)
