"""Reading DICOM: real files from pydicom / pydicom-data / nibabel and series written from a real
volume; the reader must agree with SimpleITK and say plainly what is wrong with a stack."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_fixtures import (
    CT_IMAGE,
    DATA_STORE,
    DICOMDIR_TESTS,
    OBLIQUE,
    PET_IMAGE,
    PYDICOM_FILES,
    anatomical,
    one_series,
    sitk_series,
    write_series,
)

import engine.io as io
from engine.io import dicom_scan
from engine.io.dicom_read import scan_dicom
from engine.jobs import Cancelled, CancelToken


def _assert_same_as_sitk(vol, image, atol=1e-4):
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(image).astype(np.float32))
    np.testing.assert_allclose(vol.spacing, image.GetSpacing(), atol=atol)
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), atol=atol)
    np.testing.assert_allclose(vol.direction, image.GetDirection(), atol=atol)


# -- single files ------------------------------------------------------------------------------------
def test_ct_small_reads_in_hounsfield_units_like_simpleitk():
    vol = io.load(PYDICOM_FILES / "CT_small.dcm")
    assert vol.modality == "CT" and vol.unit == "HU"
    assert vol.shape == (1, 128, 128)
    _assert_same_as_sitk(vol, sitk.ReadImage(str(PYDICOM_FILES / "CT_small.dcm")))
    assert vol.spacing[2] == pytest.approx(5.0)              # one slice: SliceThickness
    raw = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm").pixel_array
    np.testing.assert_array_equal(vol.array[0], raw.astype(np.float32) * 1 - 1024)
    assert vol.dicom["PatientName"] == "CompressedSamples^CT1"
    assert vol.dicom["StudyInstanceUID"].startswith("1.3.6.1.4.1.5962")
    assert set(vol.dicom) >= {"PatientID", "FrameOfReferenceUID", "SeriesInstanceUID", "Modality", "PatientPosition"}


@pytest.mark.parametrize("variant", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                     "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"])
def test_compressed_and_big_endian_mr_small_give_the_same_pixels(variant):
    ref = io.load(PYDICOM_FILES / "MR_small.dcm")
    vol = io.load(PYDICOM_FILES / variant)
    np.testing.assert_array_equal(vol.array, ref.array)
    assert vol.same_grid(ref)


def test_undecodable_pixel_data_names_the_file_and_the_transfer_syntax(tmp_path):
    damaged = tmp_path / "damaged_j2k.dcm"
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_jp2klossless.dcm")
    frame = bytearray(ds.PixelData)
    frame[24:64] = bytes(40)                            # wipe the JPEG 2000 main header
    ds.PixelData = bytes(frame)
    ds.save_as(damaged)
    entry = io.scan(damaged).entries[0]                 # the header is fine
    with pytest.raises(io.VolumeIOError) as err:
        entry.load()
    assert str(damaged) in str(err.value) and "JPEG 2000" in str(err.value)


# -- DICOMDIR and folders ------------------------------------------------------------------------
def test_dicomdir_lists_every_series_split_where_needed():
    catalog = io.scan(DICOMDIR_TESTS / "DICOMDIR")
    keys = [e.key for e in catalog.entries]
    assert len(keys) == len(set(keys)) == 24
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
            for p in DICOMDIR_TESTS.glob("[0-9]*/*/*")}
    assert {k.rsplit(".", 1)[0] if k not in uids else k for k in keys} == uids
    # the pilot series holds an axial, a sagittal and a coronal slice: three volumes
    pilot = [e for e in catalog.entries if e.description.startswith("T/S/C RF FAST PILOT [")]
    assert {e.description.split("[")[1].split()[0] for e in pilot} == {"axial", "sagittal", "coronal"}
    assert len(pilot) == 6 and {e.orientation for e in pilot} == {"LPS", "PIR", "LIP"}
    assert all(e.key[-2:] in (".1", ".2", ".3") and "split by orientation" in e.notes[0] for e in pilot)
    # a CT stack numbered as two acquisitions is still one volume (positions do not repeat)
    gated = next(e for e in catalog.entries if e.description.startswith("SmartScore"))
    vol = gated.load()
    assert vol.shape == (5, 16, 16) and vol.spacing[2] == pytest.approx(2.5) and vol.unit == "HU"
    assert {e.patient for e in catalog.entries} == {"Doe^Archibald (77654033)", "Doe^Peter (98890234)"}
    assert all(e.study for e in catalog.entries)


def test_dicomdir_variants_and_the_folder_scan_agree():
    keys = sorted(e.key for e in io.scan(DICOMDIR_TESTS / "DICOMDIR").entries)
    for variant in ("DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-reordered", "DICOMDIR-nopatient"):
        assert sorted(e.key for e in io.scan(DICOMDIR_TESTS / variant).entries) == keys, variant
    folder = io.scan(DICOMDIR_TESTS)                                 # DICOMDIRs + the files themselves
    assert sorted(e.key for e in folder.entries) == keys             # each image counted once
    reasons = {Path(s.path).name: s.reason for s in folder.skipped}
    assert "no pixel data" in reasons["IM000000"]                     # TINY_ALPHA headers only
    assert "not a DICOM file" in reasons["README"]


def test_dicomdir_entries_are_found_whatever_the_case_of_the_file_names(tmp_path):
    shutil.copytree(DICOMDIR_TESTS / "98892001", tmp_path / "98892001")
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", tmp_path / "DICOMDIR")
    (tmp_path / "98892001" / "CT5N").rename(tmp_path / "98892001" / "ct5n")
    catalog = scan_dicom([tmp_path / "DICOMDIR"])
    assert any(e.description.startswith("SmartScore") and e.shape_zyx == (5, 16, 16) for e in catalog.entries)
    missing = [s for s in catalog.skipped if "but missing" in s.reason]
    assert missing and all("98892001" not in s.path for s in missing)      # the other patients' files


def test_dicomdir_entries_outside_its_folder_are_not_followed(tmp_path, monkeypatch):
    """A ReferencedFileID with ``..`` (or a link in the media) must not read files elsewhere."""
    media, outside = tmp_path / "media", tmp_path / "outside"
    shutil.copytree(DICOMDIR_TESTS / "98892001", media / "98892001")
    shutil.copytree(DICOMDIR_TESTS / "98892001", outside / "98892001")
    (media / "LINK").symlink_to(outside / "98892001", target_is_directory=True)
    ds = pydicom.dcmread(DICOMDIR_TESTS / "DICOMDIR")
    images = [r for r in ds.DirectoryRecordSequence if list(r.get("ReferencedFileID") or [""])[0] == "98892001"]
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.WARN)   # its default
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):     # pydicom: '..' is no valid CS
        images[0].ReferencedFileID = ["..", "outside", *images[0].ReferencedFileID]
    images[1].ReferencedFileID = ["LINK", *list(images[1].ReferencedFileID)[1:]]
    ds.save_as(media / "DICOMDIR")
    catalog = scan_dicom([media / "DICOMDIR"])
    read = [p for e in catalog.entries for p in e.paths]
    assert read and all(Path(p).resolve().is_relative_to(media.resolve()) for p in read)
    notes = [s.reason for s in catalog.skipped if s.path == str(media / "DICOMDIR")]
    assert any("'../outside/98892001/" in n and "outside the DICOMDIR's folder; not followed" in n for n in notes)
    assert any("'LINK/" in n and "a link out of the DICOMDIR's folder" in n for n in notes)


def test_monochrome1_is_noted_and_kept_as_stored():
    vol = io.load(DICOMDIR_TESTS / "77654033" / "CR1" / "6154")
    ds = pydicom.dcmread(DICOMDIR_TESTS / "77654033" / "CR1" / "6154")
    np.testing.assert_allclose(vol.array[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                               rtol=1e-6)
    assert any("MONOCHROME1" in n for n in vol.notes) and vol.dicom["PhotometricInterpretation"] == "MONOCHROME1"


def test_a_monochrome1_image_is_written_back_as_monochrome1(tmp_path):
    vol = io.load(DICOMDIR_TESTS / "77654033" / "CR1" / "6154")
    io.save(vol, tmp_path / "out")                      # values as stored: high is dark, and the file says so
    written = sorted((tmp_path / "out").iterdir())
    assert pydicom.dcmread(written[0]).PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_allclose(io.load(tmp_path / "out").array, vol.array, atol=1.0)


def test_non_images_are_skipped_with_a_note():
    names = ["rtstruct.dcm", "test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm", "rtdose.dcm", "liver_1frame.dcm"]
    catalog = scan_dicom([PYDICOM_FILES / n for n in names] + [PYDICOM_FILES / "CT_small.dcm"])
    assert [Path(e.paths[0]).name for e in catalog.entries] == ["CT_small.dcm"]
    reasons = {Path(s.path).name: s.reason for s in catalog.skipped}
    assert reasons["rtstruct.dcm"] == "RTSTRUCT: not an image, skipped"
    assert reasons["test-SR.dcm"] == "SR: not an image, skipped"
    assert reasons["rtplan.dcm"].startswith("RTPLAN: not an image")
    assert "not an image" in reasons["waveform_ecg.dcm"]
    assert reasons["rtdose.dcm"].startswith("RTDOSE: a dose grid")
    assert reasons["liver_1frame.dcm"].startswith("SEG: a segmentation")


def test_junk_and_truncated_files_are_skipped_and_the_good_series_still_loads(tmp_path):
    write_series(tmp_path / "study", anatomical()[:6], modality="MR")
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        shutil.copy(PYDICOM_FILES / name, tmp_path / "study" / name)
    shutil.copy(DATA_STORE / "emri_small_jpeg_2k_lossless_too_short.dcm", tmp_path / "study" / "short.dcm")
    (tmp_path / "study" / "notes.dcm").write_text("this is a note, not an image\n" * 20)
    (tmp_path / "study" / "blob").write_bytes(bytes(range(256)) * 4)
    catalog = io.scan(tmp_path / "study")
    assert len(catalog.entries) == 1 and catalog.entries[0].shape_zyx == (6, 41, 33)
    assert catalog.entries[0].load().shape == (6, 41, 33)
    reasons = {Path(s.path).name: s.reason for s in catalog.skipped}
    assert "truncated" in reasons["MR_truncated.dcm"] and "8192" in reasons["MR_truncated.dcm"]
    assert "truncated" in reasons["short.dcm"]
    assert reasons["rtplan_truncated.dcm"].startswith("RTPLAN")
    assert "not a DICOM file" in reasons["notes.dcm"] and "not a DICOM file" in reasons["blob"]


def test_scanning_reads_headers_only(tmp_path, monkeypatch):
    write_series(tmp_path / "s", anatomical()[:5])
    calls = []
    real = dicom_scan.pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs.get("stop_before_pixels", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(dicom_scan.pydicom, "dcmread", spy)
    catalog = scan_dicom(sorted((tmp_path / "s").iterdir()))
    assert len(calls) == 5 and all(calls)
    assert catalog.entries[0].shape_zyx == (5, 41, 33)


# -- enhanced multi-frame ---------------------------------------------------------------------------
def test_enhanced_ct_frames_are_sorted_by_position_with_per_frame_geometry():
    vol = io.load(DATA_STORE / "eCT_Supplemental.dcm")
    ds = pydicom.dcmread(DATA_STORE / "eCT_Supplemental.dcm")
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    assert z == [-159.0, -149.0]
    assert vol.shape == (2, 512, 512) and vol.unit == "" and vol.modality is None     # an rCBF map, not tissue HU
    # IOP row (-1,0,0), column (0,1,0): normal (0,0,-1), so z = -149 comes first
    np.testing.assert_allclose(vol.direction, [-1, 0, 0, 0, 1, 0, 0, 0, -1], atol=1e-6)
    np.testing.assert_allclose(vol.origin, [99.5, -301.5, -149.0])
    np.testing.assert_allclose(vol.spacing, [0.388672, 0.388672, 10.0])
    frames = ds.pixel_array.astype(np.float32) - 1024.0            # shared Pixel Value Transformation
    np.testing.assert_array_equal(vol.array, frames[::-1])


@pytest.mark.parametrize("variant", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                                     "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_enhanced_mr_variants_decode_identically(variant):
    ref = io.load(DATA_STORE / "emri_small.dcm")
    assert ref.shape == (10, 64, 64)
    assert any("without per-frame positions" in n for n in ref.notes)   # its functional groups were stripped
    assert io.scan(DATA_STORE / variant).entries[0].orientation == "LPS (assumed)"   # what the load will use
    np.testing.assert_array_equal(io.load(DATA_STORE / variant).array, ref.array)


def test_enhanced_frames_split_by_stack_and_sorted(tmp_path):
    """An enhanced MR built from a real volume: two temporal positions, frames stored shuffled."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = pydicom.dcmread(DATA_STORE / "emri_small.dcm")
    frames = src.pixel_array                                    # 10 real frames
    rng = np.random.default_rng(3)
    order = rng.permutation(10)
    src.NumberOfFrames = 10
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]     # sagittal
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.6]
    shared.PixelMeasuresSequence[0].SliceThickness = 3
    per_frame = []
    for stored_index in range(10):
        k = int(order[stored_index])                # frame k: time point k // 5, slice k % 5
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [-10 + 3 * (k % 5), 4, 7]
        item.FrameContentSequence = Sequence([Dataset()])
        item.FrameContentSequence[0].TemporalPositionIndex = k // 5 + 1
        item.FrameContentSequence[0].StackID = "1"
        per_frame.append(item)
    src.SharedFunctionalGroupsSequence = Sequence([shared])
    src.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    src.PixelData = np.ascontiguousarray(frames[order].astype("<u2")).tobytes()
    path = tmp_path / "enhanced.dcm"
    src.save_as(path)
    catalog = io.scan(path)
    assert [e.key[-2:] for e in catalog.entries] == [".1", ".2"]
    for t, entry in enumerate(catalog.entries):
        vol = entry.load()
        # normal = row × column = (-1, 0, 0): the frame at x = +2 comes first
        np.testing.assert_array_equal(vol.array, frames[5 * t: 5 * t + 5][::-1])
        np.testing.assert_allclose(vol.spacing, [0.6, 0.5, 3.0])
        np.testing.assert_allclose(vol.origin, [2, 4, 7])
        np.testing.assert_allclose(vol.direction, [0, 0, -1, 1, 0, 0, 0, -1, 0], atol=1e-9)
        assert entry.orientation == "PIR"


# -- series written from a real volume ----------------------------------------------------------------
def test_oblique_series_with_shuffled_files_matches_simpleitk(tmp_path):
    data = anatomical()
    write_series(tmp_path / "s", data)
    vol = io.load(tmp_path / "s")
    _assert_same_as_sitk(vol, sitk_series(tmp_path / "s"))
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.direction, OBLIQUE.ravel(), atol=1e-6)
    np.testing.assert_allclose(vol.spacing, (1.1, 0.9, 2.5), atol=1e-5)
    assert vol.notes == () and vol.dicom["PatientID"] == "NIB-0001"


def test_a_missing_slice_keeps_every_slice_at_its_true_position(tmp_path):
    data = anatomical()[:12]
    paths = write_series(tmp_path / "s", data)
    paths[6].unlink()                                   # slice 7 of 12 is gone
    vol = io.load(tmp_path / "s")
    assert vol.shape == (12, 41, 33)                    # the grid spans the stack: 12 slices 2.5 mm apart
    assert vol.spacing[2] == pytest.approx(2.5, abs=1e-5)
    kept = [k for k in range(12) if k != 6]
    np.testing.assert_array_equal(vol.array[kept], data[kept])          # untouched, where they were
    np.testing.assert_allclose(vol.array[6], (data[5].astype(np.float32) + data[7]) / 2, atol=1e-3)
    write_series(tmp_path / "full", data)
    assert vol.same_grid(io.load(tmp_path / "full"))     # the grid of the complete series
    gap = [n for n in vol.notes if n.startswith("missing slice")]
    assert len(gap) == 1 and "between slices 6 and 7 of 11" in gap[0] and "interpolation" in gap[0]
    entry = io.scan(tmp_path / "s").entries[0]
    assert entry.shape_zyx == (12, 41, 33)
    assert any(n.startswith("missing slice") for n in entry.notes)          # shown before loading


def test_a_gap_too_wide_to_fill_is_refused_with_the_reason(tmp_path):
    data = anatomical()[:14]
    paths = write_series(tmp_path / "s", data)
    for p in paths[5:10]:                               # five slices in a row are gone
        p.unlink()
    entry = io.scan(tmp_path / "s").entries[0]
    assert any(n.startswith("cannot be loaded") for n in entry.notes)
    # listed as found (9 files), not as the grid a load would have filled, and nothing said to be filled
    assert entry.shape_zyx[0] == 9 and not any(n.startswith(("missing slice", "resampled")) for n in entry.notes)
    with pytest.raises(io.VolumeIOError, match=r"about 5 slice\(s\).*too many to fill") as err:
        entry.load()
    assert str(tmp_path / "s") in str(err.value)


def test_an_undecodable_slice_counts_as_missing(tmp_path):
    data = anatomical()[:8]
    paths = write_series(tmp_path / "s", data)
    ds = pydicom.dcmread(paths[3])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless      # claims JPEG 2000, holds raw bytes
    ds.PixelData = pydicom.encaps.encapsulate([bytes(64)])
    ds.save_as(paths[3], enforce_file_format=True)
    vol = io.load(tmp_path / "s")
    assert vol.shape == (8, 41, 33)
    np.testing.assert_allclose(vol.array[3], (data[2].astype(np.float32) + data[4]) / 2, atol=1e-3)
    assert any(n.startswith("unreadable slice 4 of 8") and paths[3].name in n for n in vol.notes)


def test_an_undecodable_file_between_the_frames_of_another_counts_as_missing(tmp_path):
    """Two enhanced files of one series hold alternate slices; the second cannot be decoded. The
    first file's frames after it are decoded again (its pixels were once taken as still held)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frames = pydicom.dcmread(DATA_STORE / "emri_small.dcm").pixel_array          # 10 real frames
    for part in (0, 1):
        ds = pydicom.dcmread(DATA_STORE / "emri_small.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{part + 1}"
        ds.NumberOfFrames = 5
        shared = Dataset()
        shared.PlaneOrientationSequence = Sequence([Dataset()])
        shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PixelMeasuresSequence = Sequence([Dataset()])
        shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
        per_frame = []
        for k in range(part, 10, 2):                # file 1: slices 0, 2, …; file 2: slices 1, 3, …
            item = Dataset()
            item.PlanePositionSequence = Sequence([Dataset()])
            item.PlanePositionSequence[0].ImagePositionPatient = [0, 0, 3 * k]
            per_frame.append(item)
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        ds.PixelData = np.ascontiguousarray(frames[part::2].astype("<u2")).tobytes()
        if part == 1:                               # claims JPEG 2000, holds raw bytes
            ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
            ds.PixelData = pydicom.encaps.encapsulate([bytes(64)] * 5)
        ds.save_as(tmp_path / f"part{part + 1}.dcm", enforce_file_format=True)
    vol = io.load(tmp_path)                         # the first file's slices, 6 mm apart
    assert vol.shape == (5, 64, 64) and vol.spacing[2] == pytest.approx(6.0)
    np.testing.assert_array_equal(vol.array, frames[0::2])
    assert sum(n.startswith("unreadable slice") and "part2.dcm" in n for n in vol.notes) == 5


def test_uneven_spacing_is_reported(tmp_path):
    data = anatomical()[:6]
    d = OBLIQUE
    steps = [0, 2.5, 5.0, 7.3, 10.0, 12.5]
    write_series(tmp_path / "s", data, positions=[np.array([1.0, 2.0, 3.0]) + s * d[:, 2] for s in steps])
    vol = io.load(tmp_path / "s")
    assert any("not uniform" in n for n in vol.notes)


def test_a_gantry_tilted_stack_is_put_on_an_orthogonal_grid_where_every_slice_keeps_its_position(tmp_path):
    """Slices 2.5 mm apart along an oblique normal, each 0.9 mm (one pixel) further along the column
    axis: the grid grows by 7 rows and slice k's pixels sit k rows down, at their true positions."""
    data = anatomical()[:8]
    d = OBLIQUE
    origin = np.array([10.5, -20.25, 33.0])
    positions = [origin + k * 2.5 * d[:, 2] + k * 0.9 * d[:, 1] for k in range(8)]
    write_series(tmp_path / "s", data, positions=positions, modality="CT", sop_class=CT_IMAGE, intercept=-1024)
    vol = io.load(tmp_path / "s")
    [note] = [n for n in vol.notes if n.startswith("gantry tilt")]
    assert f"{np.degrees(np.arctan2(0.9, 2.5)):.2f}°" in note and "whole pixels" in note
    assert vol.shape == (8, 41 + 7, 33) and vol.spacing[2] == pytest.approx(2.5)
    hu = data.astype(np.float32) - 1024
    for k in range(8):
        np.testing.assert_array_equal(vol.array[k, k:k + 41], hu[k])
        assert np.all(vol.array[k, :k] == hu.min()) and np.all(vol.array[k, k + 41:] == hu.min())
        np.testing.assert_allclose((vol.index_to_lps() @ [0, k, k, 1])[:3], positions[k], atol=1e-4)


def test_a_fractional_gantry_tilt_is_interpolated_in_plane_and_survives_a_dicom_round_trip(tmp_path):
    """15° of tilt over 5 mm slices is 1.49 pixels a slice: on a ramp along the column axis linear
    interpolation is exact, so every grid pixel holds the value its true position had."""
    rows = np.arange(41, dtype=np.int16)[:, None] * 10
    data = np.stack([np.broadcast_to(rows + 100 * k, (41, 33)) for k in range(8)]).astype(np.int16)
    tilt = np.deg2rad(15)
    positions = [np.array([0.0, 5.0 * np.tan(tilt) * k, 5.0 * k]) for k in range(8)]
    write_series(tmp_path / "s", data, direction=np.eye(3), positions=positions, modality="CT", sop_class=CT_IMAGE)
    vol = io.load(tmp_path / "s")
    [note] = [n for n in vol.notes if n.startswith("gantry tilt")]
    assert "15.00°" in note and "linear interpolation" in note
    step = 5.0 * np.tan(tilt) / 0.9                       # pixels per slice along y
    assert vol.shape == (8, 41 + int(np.ceil(7 * step)), 33)
    for k in range(8):
        y = np.arange(vol.shape[1]) - k * step             # where each grid row lies in slice k
        inside = (y >= 0) & (y <= 40)
        np.testing.assert_allclose(vol.array[k, inside, 5], 10 * y[inside] + 100 * k, atol=1e-3)
    io.save(vol, tmp_path / "out")
    again = io.load(tmp_path / "out")
    np.testing.assert_allclose(again.array, vol.array, atol=1.0)      # stored as integers
    np.testing.assert_allclose(again.origin, vol.origin, atol=1e-4)
    assert not any(n.startswith("gantry tilt") for n in again.notes)


def test_a_drift_under_half_a_pixel_is_noted_and_the_stack_kept_as_stored(tmp_path):
    data = anatomical()[:8]
    positions = [np.array([0.0, 0.05 * k, 2.5 * k]) for k in range(8)]       # 0.35 mm over the stack: 0.39 pixel
    write_series(tmp_path / "s", data, direction=np.eye(3), positions=positions)
    vol = io.load(tmp_path / "s")
    [note] = [n for n in vol.notes if n.startswith("gantry tilt")]
    assert "kept as stored" in note
    np.testing.assert_array_equal(vol.array, data)


def test_two_echoes_in_one_series_become_two_volumes(tmp_path):
    data = anatomical()[:5]
    series = one_series()
    uid = series["series_uid"]
    write_series(tmp_path / "s", data, **series, shared={"EchoNumbers": 1}, seed=1)
    write_series(tmp_path / "s", data // 2, **series, shared={"EchoNumbers": 2}, seed=2)
    catalog = io.scan(tmp_path / "s")
    assert sorted(e.key for e in catalog.entries) == [f"{uid}.1", f"{uid}.2"]
    by_echo = {("echo 1" in e.notes[0]): e.load() for e in catalog.entries}
    np.testing.assert_array_equal(by_echo[True].array, data)
    np.testing.assert_array_equal(by_echo[False].array, data // 2)


def test_two_patients_under_one_series_uid_are_two_volumes_each_named_after_its_own(tmp_path):
    """A broken anonymiser or archive gives two patients one SeriesInstanceUID (interleaved
    InstanceNumbers, the same positions): each volume is one patient's pixels under that patient's name."""
    data = anatomical()[:4]
    uid = pydicom.uid.generate_uid()

    def patient(pid, name, offset):
        def tag(ds, k):
            ds.PatientID, ds.PatientName = pid, name
            ds.InstanceNumber = 2 * k + 1 + offset           # interleaved: 1, 3, 5 … and 2, 4, 6 …
        return tag

    write_series(tmp_path / "s", data, series_uid=uid, per_slice=patient("P-1", "One^Ann", 0), seed=1)
    write_series(tmp_path / "s", data[::-1].copy(), series_uid=uid, per_slice=patient("P-2", "Two^Bob", 1), seed=2)
    entries = io.scan(tmp_path / "s").entries
    assert sorted(e.patient for e in entries) == ["One^Ann (P-1)", "Two^Bob (P-2)"]
    for entry in entries:
        assert "patient" in entry.notes[0] and entry.key.startswith(f"{uid}.")
        volume = entry.load()
        expected = data if entry.patient.endswith("(P-1)") else data[::-1]
        np.testing.assert_array_equal(volume.array, expected)
        assert volume.dicom["PatientID"] == entry.patient[-4:-1]


@pytest.mark.parametrize("interleaved", [False, True])
def test_two_series_of_one_study_under_one_uid_are_two_volumes_whatever_their_positions_and_file_names(
        tmp_path, interleaved):
    """A CT and a CBCT of one patient, study and frame given one SeriesInstanceUID (helper-60's audit): at
    the same positions they had been parted by file order, each volume half the one and half the other;
    at positions between each other's, merged into one volume at half the slice spacing, without a note."""
    data = anatomical()[:4]
    uid = pydicom.uid.generate_uid()
    shared = {"series_uid": uid, "study_uid": pydicom.uid.generate_uid(), "frame_uid": pydicom.uid.generate_uid()}

    def series(number, description, modality):
        def tag(ds, k):
            ds.SeriesNumber, ds.SeriesDescription, ds.Modality = number, description, modality
            ds.InstanceNumber = k + 1
        return tag

    write_series(tmp_path / "s", data, **shared, per_slice=series(2, "Head CT", "CT"), origin=(0.0, 0.0, 0.0), seed=1)
    write_series(tmp_path / "s", data[::-1].copy(), **shared, per_slice=series(11, "CBCT", "CT"), seed=2,
                 origin=(0.0, 0.0, 1.25 if interleaved else 0.0))
    for k, path in enumerate(sorted((tmp_path / "s").iterdir())):             # file names say nothing
        path.rename(path.with_name(f"{(k * 7) % 8:02d}.dcm"))
    entries = io.scan(tmp_path / "s").entries
    assert sorted(e.description for e in entries) == ["CBCT [CT series 11 'CBCT']", "Head CT [CT series 2 'Head CT']"]
    for entry in entries:
        assert "split by series" in entry.notes[0] and entry.key.startswith(f"{uid}.")
        volume = entry.load()
        np.testing.assert_array_equal(volume.array, data if volume.dicom["SeriesNumber"] == "2" else data[::-1])


@pytest.mark.parametrize("tag", ["PatientID", "FrameOfReferenceUID", "StudyInstanceUID"])
def test_a_slice_that_does_not_state_its_identity_stays_in_its_series(tmp_path, tag):
    """One slice without a PatientID (or frame, or study) is no second patient: the series stays one
    volume, every real slice in it, named after the patient the others state."""
    data = anatomical()[:6]

    def silent(ds, k):
        if k == 3:
            delattr(ds, tag)

    write_series(tmp_path / "s", data, per_slice=silent)
    [entry] = io.scan(tmp_path / "s").entries
    volume = entry.load()
    np.testing.assert_array_equal(volume.array, data)
    assert entry.patient == "Test^Anatomy (NIB-0001)" and not any("holds" in n for n in volume.notes)


def test_a_localizer_filed_in_its_series_keeps_its_own_description(tmp_path):
    data = anatomical()[:4]
    series = one_series()
    write_series(tmp_path / "s", data, **series, direction=np.eye(3), seed=1)
    write_series(tmp_path / "s", data[:1].copy(), **series, direction=OBLIQUE, seed=2,
                 shared={"SeriesDescription": "localizer"})
    entries = {e.shape_zyx[0]: e for e in io.scan(tmp_path / "s").entries}
    assert entries[1].description.startswith("localizer [") and entries[1].load().name.startswith("localizer")
    assert entries[4].description.startswith("fixture series [")


@pytest.mark.parametrize("numbered", [True, False])
def test_the_echoes_of_a_dual_echo_series_are_each_named_by_their_own_echo_time(tmp_path, numbered):
    """"PD+T2 dual echo": echo 1 (TE 15 ms) is the PD, echo 2 (TE 90 ms) the T2, with or without
    EchoNumbers (each part reads its own echo's tags, where both had read the first file's), and each
    converted echo states its own TE."""
    data = anatomical()[:4]
    series = one_series()
    for echo, te in ((1, "15"), (2, "90")):
        write_series(tmp_path / "s", data, **series, seed=echo, shared={
            **({"EchoNumbers": echo} if numbered else {}), "EchoTime": te, "RepetitionTime": "3000",
            "SeriesDescription": "PD+T2 dual echo", "ScanningSequence": "SE", "SequenceVariant": "SK"})
    entries = sorted(io.scan(tmp_path / "s").entries, key=lambda e: e.key)
    assert [e.modality for e in entries] == ["PD", "T2"]
    written = [pydicom.dcmread(next(io.save(e.load(), tmp_path / f"e{i}").iterdir())) for i, e in enumerate(entries)]
    assert [float(ds.EchoTime) for ds in written] == [15.0, 90.0]


def test_each_echo_of_an_enhanced_multi_echo_file_keeps_the_series_identity_and_its_own_te(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(DATA_STORE / "emri_small.dcm")
    frames = ds.pixel_array
    ds.NumberOfFrames, ds.SeriesDescription, ds.PatientID = 10, "PD+T2 dual echo", "P-7"
    shared = Dataset()
    for keyword, attribute, value in (("PlaneOrientationSequence", "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]),
                                      ("PixelMeasuresSequence", "PixelSpacing", [0.5, 0.5]),
                                      ("MRTimingAndRelatedParametersSequence", "RepetitionTime", 3000)):
        item = Dataset()
        setattr(item, attribute, value)
        setattr(shared, keyword, Sequence([item]))
    per_frame = []
    for k in range(10):
        position, echo, frame = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [0, 0, 3 * (k % 5)]
        echo.EffectiveEchoTime = 15 if k < 5 else 90
        frame.PlanePositionSequence, frame.MREchoSequence = Sequence([position]), Sequence([echo])
        per_frame.append(frame)
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = Sequence([shared]), Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(frames.astype("<u2")).tobytes()
    ds.save_as(tmp_path / "e.dcm")
    entries = sorted(io.scan(tmp_path / "e.dcm").entries, key=lambda e: e.key)
    assert [e.modality for e in entries] == ["PD", "T2"]          # the second echo had lost every series tag
    assert all(e.load().dicom["PatientID"] == "P-7" and e.load().dicom["Modality"] == "MR" for e in entries)


def test_converting_one_echo_of_a_split_series_says_which_in_the_output(tmp_path, capsys):
    from cli import run_cli

    series = one_series()
    for echo in (1, 2):
        write_series(tmp_path / "s", anatomical()[:3], **series, seed=echo, shared={"EchoNumbers": echo})
    descriptions = []
    for echo in (1, 2):
        assert run_cli(["convert", str(tmp_path / "s"), str(tmp_path / f"e{echo}"), "--series",
                        f"{series['series_uid']}.{echo}"]) == 0
        descriptions.append(pydicom.dcmread(next((tmp_path / f"e{echo}").iterdir())).SeriesDescription)
    assert descriptions == ["converted from fixture series [echo 1]", "converted from fixture series [echo 2]"]


def test_progress_per_slice_and_cancel(tmp_path):
    write_series(tmp_path / "s", anatomical()[:7])
    entry = io.scan(tmp_path / "s").entries[0]
    seen = []
    entry.load(progress=seen.append)
    assert [p.done for p in seen] == list(range(1, 8)) and seen[-1].total == 7
    token = CancelToken()

    def cancel_after_three(p):
        if p.done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        entry.load(progress=cancel_after_three, cancel=token)


# -- PET ---------------------------------------------------------------------------------------------------
PET_TAGS = {"Units": "BQML", "DecayCorrection": "START", "CorrectedImage": ["DECY", "ATTN"],
            "SeriesDate": "20240102", "SeriesTime": "110000", "PatientWeight": "72.5"}


def _pet_series(folder, weight=True, paths=False):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.clip(anatomical()[:6], 0, None)             # real anatomy as "activity"
    slopes = [0.8 + 0.1 * k for k in range(6)]               # per-slice slopes, as scanners write them
    drug = Dataset()
    drug.RadionuclideTotalDose = "370000000"                 # 370 MBq
    drug.RadionuclideHalfLife = "6586.2"                     # F-18
    drug.RadiopharmaceuticalStartTime = "100000"             # one hour before the series
    tags = dict(PET_TAGS, RadiopharmaceuticalInformationSequence=Sequence([drug]))
    if not weight:
        del tags["PatientWeight"]
    written = write_series(folder, stored, modality="PT", sop_class=PET_IMAGE, slopes=slopes, shared=tags,
                           direction=np.eye(3),
                           per_slice=lambda ds, k: setattr(ds, "DecayFactor", f"{1.1 + 0.01 * k:g}"))
    return written if paths else stored.astype(np.float64) * np.asarray(slopes)[:, None, None]


def test_pet_is_converted_to_suv_body_weight(tmp_path):
    bqml = _pet_series(tmp_path / "pet")
    vol = io.load(tmp_path / "pet")
    assert vol.modality == "PET" and vol.unit == "SUVbw"
    decay = 2 ** (-3600 / 6586.2)
    expected = bqml * 72.5 * 1000 / (370e6 * decay)
    np.testing.assert_allclose(vol.array, expected, rtol=1e-5)
    assert any("SUVbw" in n and "72.5 kg" in n for n in vol.notes)


def test_pet_without_weight_stays_in_bq_per_ml_and_says_why(tmp_path):
    bqml = _pet_series(tmp_path / "pet", weight=False)
    vol = io.load(tmp_path / "pet")
    assert vol.unit == "Bq/ml"
    np.testing.assert_allclose(vol.array, bqml, rtol=1e-6)
    assert any("SUV not computed" in n and "PatientWeight" in n for n in vol.notes)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_a_pet_in_bq_per_ml_stays_in_bq_per_ml_through_a_file(tmp_path, suffix):
    """No SUV possible (no weight): a conversion records the unit (NIfTI: intent_name), so the file
    re-reads in Bq/ml, not as SUV, and its DICOM export says BQML."""
    _pet_series(tmp_path / "pet", weight=False)
    vol = io.load(tmp_path / "pet")
    again = io.load(io.save(vol, tmp_path / f"pet{suffix}"))
    assert again.modality == "PET" and again.unit == "Bq/ml"
    np.testing.assert_allclose(again.array, vol.array, rtol=1e-6)
    first = pydicom.dcmread(sorted(io.save(again, tmp_path / "dcm").iterdir())[0])
    assert first.Units == "BQML" and "SUVType" not in first


def test_a_pet_dicom_export_keeps_what_its_values_mean(tmp_path):
    """Decay correction, corrected-image flags, weight and radiopharmaceutical survive a derived series:
    a Bq/ml PET re-reads as it was read (SUV still not computable: no weight) and an SUV one as SUV."""
    _pet_series(tmp_path / "bq", weight=False)
    first = pydicom.dcmread(sorted(io.save(io.load(tmp_path / "bq"), tmp_path / "bq_out").iterdir())[0])
    assert (first.Units, first.DecayCorrection, list(first.CorrectedImage)) == ("BQML", "START", ["DECY", "ATTN"])
    assert (first.SeriesDate, first.SeriesTime) == ("20240102", "110000")     # START's reference, not the export's
    drug = first.RadiopharmaceuticalInformationSequence[0]
    assert (float(drug.RadionuclideTotalDose), float(drug.RadionuclideHalfLife)) == (370e6, 6586.2)
    assert io.load(tmp_path / "bq_out").unit == "Bq/ml"
    written = [pydicom.dcmread(f) for f in sorted((tmp_path / "bq_out").iterdir())]
    by_position = sorted(written, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert [float(ds.DecayFactor) for ds in by_position] == pytest.approx([1.1 + 0.01 * k for k in range(6)])
    _pet_series(tmp_path / "suv")
    suv = io.load(tmp_path / "suv")
    first = pydicom.dcmread(sorted(io.save(suv, tmp_path / "suv_out").iterdir())[0])
    assert (first.Units, first.SUVType, float(first.PatientWeight)) == ("GML", "BW", 72.5)
    again = io.load(tmp_path / "suv_out")
    assert again.unit == "SUVbw"
    np.testing.assert_allclose(again.array, suv.array, atol=float(suv.array.max()) / 32767 + 1e-6)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not "
                                                            "installed; scripts/setup.sh installs it when run as root")
@pytest.mark.parametrize("weight, gap", [(True, False), (False, False), (True, True)])
def test_dciodvfy_finds_no_error_in_a_converted_pet(tmp_path, weight, gap):
    """Complete, and with a slice missing (filled by interpolation: it still needs a DecayFactor)."""
    paths = _pet_series(tmp_path / "pet", weight=weight, paths=True)
    if gap:
        paths[2].unlink()
    files = sorted(io.save(io.load(tmp_path / "pet"), tmp_path / "out").iterdir())
    assert all("DecayFactor" in pydicom.dcmread(f) for f in files)
    for path in (files[0], files[-1]):
        run = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        report = (run.stdout + run.stderr).splitlines()
        assert not [line for line in report if line.startswith("Error")], "\n".join(report)
        assert any(line.endswith("Image") for line in report)


def test_a_pet_file_stating_no_unit_is_called_suv_only_when_its_values_can_be(tmp_path):
    activity = np.clip(anatomical().astype(np.float32), 0, None) * 40     # thousands: Bq/ml, not SUV
    sitk.WriteImage(sitk.GetImageFromArray(activity), str(tmp_path / "pet_bq.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(activity / activity.max() * 12), str(tmp_path / "pet_suv.nii.gz"))
    bq, suv = io.load(tmp_path / "pet_bq.nii.gz"), io.load(tmp_path / "pet_suv.nii.gz")
    assert bq.modality == suv.modality == "PET"
    assert bq.unit == "unknown" and any("not SUVbw" in n for n in bq.notes)
    assert suv.unit == "SUVbw" and any("SUVbw assumed" in n for n in suv.notes)
    first = pydicom.dcmread(sorted(io.save(bq, tmp_path / "dcm").iterdir())[0])
    assert first.Units == "NONE" and float(first.WindowWidth) > 100        # from its values, not SUV 3/6


def test_a_file_without_preamble_and_meta_still_loads(tmp_path):
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare"                           # implicit VR little endian, no preamble, no meta
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.read_bytes()[:2] == b"\x08\x00"
    vol = io.load(bare)
    np.testing.assert_array_equal(vol.array, io.load(PYDICOM_FILES / "MR_small.dcm").array)


def test_repeated_positions_without_any_distinguishing_tag_split_by_instance_order(tmp_path):
    data = anatomical()[:4]
    series = one_series()
    uid = series["series_uid"]

    def numbered(offset):
        return lambda ds, k: setattr(ds, "InstanceNumber", offset + k + 1)

    write_series(tmp_path / "s", data, **series, per_slice=numbered(0), seed=1)
    write_series(tmp_path / "s", data[::-1].copy(), **series, per_slice=numbered(4), seed=2)
    entries = io.scan(tmp_path / "s").entries
    assert [e.key for e in entries] == [f"{uid}.1", f"{uid}.2"]
    assert all("repeat" in e.notes[0] for e in entries)
    np.testing.assert_array_equal(entries[0].load().array, data)
    np.testing.assert_array_equal(entries[1].load().array, data[::-1])


def test_two_acquisitions_at_the_same_positions_split_by_acquisition_not_by_slice(tmp_path):
    data = anatomical()[:5]
    series = one_series()

    def timed(acquisition):
        def tag(ds, k):
            ds.AcquisitionNumber = acquisition
            ds.TriggerTime = f"{100 * acquisition + 7 * k}"          # differs on every slice
        return tag

    write_series(tmp_path / "s", data, **series, per_slice=timed(1), seed=1)
    write_series(tmp_path / "s", data + 1, **series, per_slice=timed(2), seed=2)
    entries = io.scan(tmp_path / "s").entries
    assert [e.shape_zyx for e in entries] == [(5, 41, 33), (5, 41, 33)]
    assert ["acquisition 1" in entries[0].notes[0], "acquisition 2" in entries[1].notes[0]] == [True, True]
    np.testing.assert_array_equal(entries[1].load().array, data + 1)


def test_a_siemens_mosaic_is_named_and_skipped_not_read_as_one_tiled_slice(tmp_path):
    def mosaic(ds, i):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.add_new((0x0019, 0x0010), "LO", "SIEMENS CSA HEADER")
        ds.add_new((0x0019, 0x100A), "US", 48)                  # NumberOfImagesInMosaic

    write_series(tmp_path / "fmri", anatomical()[:2], per_slice=mosaic)
    write_series(tmp_path / "anat", anatomical()[:4])
    catalog = io.scan(tmp_path)
    assert [e.shape_zyx for e in catalog.entries] == [(4, 41, 33)]       # the ordinary series only
    reasons = [s.reason for s in catalog.skipped]
    assert len(reasons) == 2 and all("a Siemens mosaic (48 images tiled in one frame" in r and "dcm2niix" in r
                                     for r in reasons)
    with pytest.raises(io.VolumeIOError, match="Siemens mosaic"):
        io.scan(tmp_path / "fmri")


def test_files_of_formats_not_read_are_named_not_called_damaged_dicom(tmp_path):
    for name in ("brain.hdr", "brain.img", "t1.mnc", "orig.mgz", "scan.PAR", "series.dcm.gz"):
        (tmp_path / name).write_bytes(bytes(400))
        with pytest.raises(io.VolumeIOError, match="not a format this app reads") as err:
            io.scan(tmp_path / name)
        assert "not a DICOM file" not in str(err.value)
    assert "MINC" in io.other_format(tmp_path / "t1.mnc") and "decompress" in io.other_format(tmp_path / "series.dcm.gz")
    write_series(tmp_path / "odd", anatomical()[:3])
    for k, path in enumerate(sorted((tmp_path / "odd").iterdir())):
        path.rename(path.with_name(f"slice{k}.img"))              # DICOM files named .img are still DICOM
    assert io.scan(tmp_path / "odd").entries[0].shape_zyx == (3, 41, 33)
    catalog = io.scan(tmp_path)
    assert len(catalog.entries) == 1
    named = {Path(s.path).name: s.reason for s in catalog.skipped}
    assert named["orig.mgz"].startswith("a FreeSurfer MGH volume: not a format this app reads")


def test_a_modality_lut_sequence_maps_the_stored_values_and_says_so():
    path = DATA_STORE / "mlut_18.dcm"                   # stored −2048…2047 through a 4096-entry table
    ds = pydicom.dcmread(path)
    from pydicom.pixels import apply_modality_lut

    volume = io.load(path)
    np.testing.assert_array_equal(volume.array[0], apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert volume.array.min() == 0 and volume.array.max() == 65535      # the table's range, not the stored one
    assert any("Modality LUT Sequence" in n for n in io.scan(path).entries[0].notes)


def test_an_unusable_pixel_spacing_is_noted_once_with_the_header_s_value(tmp_path):
    def zero(ds, i):
        ds.PixelSpacing = [0, 0]

    write_series(tmp_path / "s", anatomical()[:3], per_slice=zero)
    notes = io.scan(tmp_path / "s").entries[0].notes
    spacing = [n for n in notes if "PixelSpacing" in n]
    assert spacing == ["PixelSpacing is 0\\0, not usable: in-plane spacing set to 1 mm"], notes
    assert io.load(tmp_path / "s").spacing[:2] == (1.0, 1.0)


def test_a_header_value_breaking_its_vr_raises_no_pydicom_warning(tmp_path):
    import warnings

    write_series(tmp_path / "study", anatomical()[:3])
    shutil.copy(PYDICOM_FILES / "badVR.dcm", tmp_path / "study" / "bad.dcm")     # IS '1A' and more
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # a warning would reach the user's terminal
        catalog = io.scan(tmp_path / "study")
    assert len(catalog.entries) == 1 and [Path(s.path).name for s in catalog.skipped] == ["bad.dcm"]
    assert catalog.skipped[0].reason.startswith("RTDOSE: a dose grid")      # read, and skipped for what it is


def test_a_ct_perfusion_map_is_listed_with_a_note_that_its_values_are_not_tissue_hu():
    path = DATA_STORE / "eCT_Supplemental.dcm"             # DERIVED\PRIMARY\PERFUSION\RCBF, enhanced CT
    (note,) = [n for n in io.scan(path).entries[0].notes if "derived map" in n]
    assert "(PERFUSION, RCBF), not an anatomical CT" in note and note in io.load(path).notes
    mapped = io.load(path)
    assert io.scan(path).entries[0].modality is None and mapped.modality is None and mapped.unit == ""
    from engine.io.dicom_read import NAMED_ONLY

    assert note.endswith(NAMED_ONLY)                      # how to synthesize from it anyway, in the app and a command
    assert not any("derived map" in n for n in io.scan(PYDICOM_FILES / "CT_small.dcm").entries[0].notes)


@pytest.mark.parametrize("image_type, description, protocol", [
    ("ORIGINAL\\PRIMARY\\LOCALIZER", "Head 1.0", ""),          # a CT topogram, named by its ImageType
    ("ORIGINAL\\PRIMARY\\M\\ND", "AAHead_Scout_MPR_sag", ""),   # Siemens auto-align scout
    ("ORIGINAL\\PRIMARY\\OTHER", "3-Plane Loc", ""),            # GE
    ("ORIGINAL\\PRIMARY\\M_SE", "", "SURVEY"),                  # Philips, named by its protocol
    ("ORIGINAL\\PRIMARY\\M\\ND", "AAHScout", ""),                 # an older Siemens auto-align scout
    ("ORIGINAL\\PRIMARY\\OTHER", "ASSET Cal", ""),              # GE's coil calibration
])
def test_a_localizer_gets_no_modality_and_says_why(tmp_path, image_type, description, protocol):
    """A localizer had been guessed T1 (or CT) and synthesized from like any scan."""
    def tag(ds, k):
        ds.ImageType, ds.SeriesDescription = image_type.split("\\"), description
        if protocol:
            ds.ProtocolName = protocol

    write_series(tmp_path / "s", anatomical()[:3], per_slice=tag)
    (entry,) = io.scan(tmp_path / "s").entries
    (note,) = [n for n in entry.notes if "localizer" in n]
    assert entry.modality is None and entry.not_anatomy == note and "not a volume for diagnosis" in note
    assert entry.describe()["not_anatomy"] == note                     # what `info --json` prints
    named = f"ImageType {image_type}" if "LOCALIZER" in image_type else repr(description or protocol)
    assert named in note
    loaded = io.load(tmp_path / "s")
    assert loaded.modality is None and note in loaded.notes


@pytest.mark.parametrize("description", ["t1_mprage_sag", "Localized T2 tse", "t2_tse_tra SCOUTING",
                                         "t1_mprage_sag_p2_iso"])
def test_a_scan_whose_name_only_resembles_a_localizer_keeps_its_modality(tmp_path, description):
    def tag(ds, k):
        ds.ImageType, ds.SeriesDescription = ["ORIGINAL", "PRIMARY", "M", "ND"], description

    write_series(tmp_path / "s", anatomical()[:3], per_slice=tag)
    (entry,) = io.scan(tmp_path / "s").entries
    assert entry.not_anatomy == "" and not any("localizer" in n for n in entry.notes)


def test_a_series_whose_geometry_was_assumed_does_not_pass_on_its_frame_of_reference(tmp_path):
    assumed = io.load(DATA_STORE / "emri_small.dcm")               # no positions or orientation in its frames
    assert pydicom.dcmread(DATA_STORE / "emri_small.dcm").FrameOfReferenceUID
    assert assumed.dicom["FrameOfReferenceUID"] == ""
    io.save(assumed, tmp_path / "out")
    written = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert written.FrameOfReferenceUID != pydicom.dcmread(DATA_STORE / "emri_small.dcm").FrameOfReferenceUID
    write_series(tmp_path / "s", anatomical()[:3])
    positioned = io.load(tmp_path / "s")
    assert positioned.dicom["FrameOfReferenceUID"] == pydicom.dcmread(next((tmp_path / "s").iterdir())).FrameOfReferenceUID


def test_a_slice_cut_off_inside_its_header_is_called_truncated_not_header_only(tmp_path):
    paths = write_series(tmp_path / "s", anatomical()[:6])
    whole = paths[2].read_bytes()
    paths[2].write_bytes(whole[:whole.index(b"\xe0\x7f\x10\x00")])       # ends just before (7FE0,0010) PixelData
    catalog = io.scan(tmp_path / "s")
    (reason,) = [s.reason for s in catalog.skipped]
    assert "no pixel data after its image header (a truncated file" in reason


def test_overlapping_readers_leave_pydicom_s_validation_as_it_was():
    import threading

    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with dicom_scan.lenient_values():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with dicom_scan.lenient_values():
            second_in.set()
            first_out.wait(5)               # the first leaves while this one reads: still lenient
            seen.append(settings.reading_validation_mode)

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [pydicom.config.IGNORE] and settings.reading_validation_mode == before


def test_an_image_cut_off_before_its_size_or_an_empty_file_is_a_damaged_image_not_a_non_image(tmp_path):
    paths = write_series(tmp_path / "s", anatomical()[:6])
    paths[1].write_bytes(paths[1].read_bytes()[:400])            # inside the header, before Rows
    (tmp_path / "s" / "EMPTY").write_bytes(b"")                   # no suffix, nothing in it
    (tmp_path / "s" / "README").write_text("This disc holds the images of one study.\n" * 5)
    skipped = {Path(s.path).name: s for s in io.scan(tmp_path / "s").skipped}
    assert not skipped[paths[1].name].not_an_image and not skipped["EMPTY"].not_an_image
    assert skipped["README"].not_an_image


def test_a_stated_pixel_padding_value_is_kept_in_physical_units(tmp_path):
    """PixelPaddingValue is a stored value: with slope 0.5 and intercept −1000, stored 0 is −1000 HU."""
    def padded(ds, k):
        ds.PixelPaddingValue = 0

    write_series(tmp_path / "s", anatomical()[:3], modality="CT", sop_class=CT_IMAGE, slopes=[0.5] * 3,
                 intercept=-1000.0, per_slice=padded)
    assert io.load(tmp_path / "s").dicom["StudioPaddingRange"] == "-1000.0\\-1000.0"
    write_series(tmp_path / "u", anatomical()[:3], modality="CT", sop_class=CT_IMAGE, slopes=[0.5, 1.0, 0.5],
                 intercept=-1000.0, per_slice=padded)
    assert "StudioPaddingRange" not in io.load(tmp_path / "u").dicom       # one stored value, two HU values


@pytest.mark.parametrize("image_type, description, kind", [
    ("ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW\\ND", "ep2d_diff_3scan_trace_p2", "ImageType ORIGINAL"),
    ("ORIGINAL\\PRIMARY\\P\\ND", "t2_swi_tra_p2_Pha", "ImageType ORIGINAL"),
    ("ORIGINAL\\PRIMARY\\M\\ND", "t2_swi_tra_p2", "its names (SeriesDescription 't2_swi_tra_p2'"),
    ("ORIGINAL\\PRIMARY\\OTHER", "AX DWI 1000b", "its names (SeriesDescription 'AX DWI 1000b'"),
])
def test_an_mr_series_of_no_modality_the_model_knows_says_what_it_is(tmp_path, image_type, description, kind):
    """A DWI, SWI or phase series had no modality and no word why; a cohort given --source T1 took it as a T1."""
    def tag(ds, k):
        ds.ImageType, ds.SeriesDescription = image_type.split("\\"), description
        ds.RepetitionTime, ds.EchoTime = 5000, 90                    # a T2's timing: not what decides

    write_series(tmp_path / "s", anatomical()[:3], per_slice=tag)
    (entry,) = io.scan(tmp_path / "s").entries
    assert entry.modality is None and entry.not_anatomy.startswith(kind) and entry.not_anatomy in entry.notes
    assert "not a scan of a modality the model knows" in entry.not_anatomy
    assert io.load(tmp_path / "s").not_anatomy == entry.not_anatomy


def test_a_folder_of_many_series_lists_whole_entries_known_modalities_first_and_how_many_more(tmp_path):
    """The list had stopped at the first eight (localizers first) and been cut mid-UID."""
    def named(text):
        def tag(ds, k):
            ds.SeriesDescription = text
        return tag

    for k in range(10):
        write_series(tmp_path / "study" / f"loc{k}", anatomical()[:1], per_slice=named(f"localizer {k}"), seed=k)
    write_series(tmp_path / "study" / "t1", anatomical()[:2], per_slice=named("t1_mprage_sag"))
    with pytest.raises(io.VolumeIOError) as caught:
        io.load(tmp_path / "study")
    problem = caught.value.problem
    assert "holds 11 series" in problem and problem.index("t1_mprage_sag, T1") < problem.index("localizer")
    assert problem.endswith("more (`info` lists every series)") and "…" not in problem


def test_a_slice_re_sent_with_its_pixels_is_left_out_and_one_with_other_pixels_splits(tmp_path):
    """A slice sent twice (new SOPInstanceUID, same pixels and InstanceNumber) had split the series into
    "repeat 1 of 2 by InstanceNumber" and a one-slice "repeat 2 of 2"."""
    paths = write_series(tmp_path / "s", anatomical()[:4])
    again = pydicom.dcmread(paths[1])
    again.SOPInstanceUID = pydicom.uid.generate_uid()
    again.save_as(tmp_path / "s" / "resent.dcm")
    (entry,) = io.scan(tmp_path / "s").entries
    (note,) = [n for n in entry.notes if "holds the same image as" in n]
    assert entry.shape_zyx[0] == 4 and "resent.dcm" in note and paths[1].name in note and "re-sent" in note
    changed = pydicom.dcmread(paths[1])
    changed.SOPInstanceUID = pydicom.uid.generate_uid()
    changed.PixelData = (changed.pixel_array + 1).astype(changed.pixel_array.dtype).tobytes()
    changed.save_as(tmp_path / "s" / "resent.dcm")                    # same position, other pixels: two volumes
    parts = io.scan(tmp_path / "s").entries
    assert len(parts) == 2 and {e.shape_zyx[0] for e in parts} == {4, 1}
    assert any("by file name" in n for e in parts for n in e.notes)     # both InstanceNumbers are one


def test_volumes_split_by_what_their_images_say_are_labelled_by_what_differs_named():
    """A DWI's parts had been labelled "ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW\\ND 89.0 1000.0" (the same image
    type and TE in both, the b-value unnamed)."""
    from engine.io.dicom_series import _named_extra, _telling_apart

    keys = [_named_extra(("ORIGINAL\\PRIMARY\\DIFFUSION", "89", "", "", b)) for b in ("0", "1000")]
    assert list(_telling_apart(keys).values()) == ["b=0", "b=1000"]
    keys = [_named_extra(("M", te, "", "", "")) for te in ("15", "90")]
    assert list(_telling_apart(keys).values()) == ["TE 15 ms", "TE 90 ms"]


def test_a_series_named_t1_with_a_gradient_echo_sequence_is_a_t1_and_no_t2_star():
    """The note had read each name alone (SequenceName "GRE": a T2*) while the guess read them together (T1)."""
    tags = {"Modality": "MR", "SeriesDescription": "Ax T1 3D", "SequenceName": "GRE", "ImageType": "ORIGINAL\\PRIMARY"}
    from engine.io.dicom_read import _modality, _not_anatomical_notes

    assert _modality(tags) == "T1" and _not_anatomical_notes(tags) == []
    commented = {**tags, "SeriesDescription": "Ax 3D", "ImageComments": "diffusion b1000"}
    assert _modality(commented) is None and "a diffusion series" in _not_anatomical_notes(commented)[0]


def test_volumes_at_one_position_told_apart_by_their_headers_are_not_read_for_pixels(tmp_path, monkeypatch):
    """A DWI's b-values (or an fMRI's time points) share positions: scanning must stay header-only there."""
    from engine.io import dicom_series

    series = one_series()
    for b in ("0", "1000"):
        write_series(tmp_path / "s", anatomical()[:3], **series, seed=int(b) + 1,
                     shared={"DiffusionBValue": float(b), "SeriesDescription": "dwi"})
    monkeypatch.setattr(dicom_series, "_pixel_digest", lambda s: pytest.fail("pixels read while scanning"))
    assert sorted(e.description for e in io.scan(tmp_path / "s").entries) == ["dwi [b=0]", "dwi [b=1000]"]
