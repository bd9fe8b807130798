"""Hostile and damaged files (issue #23): headers checked before a native reader sees them, native
readers in a reader process whose crash, hang or runaway allocation becomes one error naming the
file, a memory guard counting the real peak, DICOM frame counts bounded, unusable geometry noted
or refused, truncation an error, special files skipped."""
from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from cli import run_cli
from engine import io
from engine.io import catalog, itk_files, reader_process
from engine.io.reader_process import native
from engine.io.volume import Volume

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _volume(shape=(6, 7, 8), dtype=np.float32) -> Volume:
    return Volume(np.arange(np.prod(shape), dtype=dtype).reshape(shape), spacing=(0.5, 0.75, 2.0))


def _mha_with(tmp_path: Path, **fields: str) -> Path:
    """An uncompressed MHA whose header fields are replaced by ``fields``."""
    path = tmp_path / "v.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(path), useCompression=False)
    data = path.read_bytes()
    end = data.index(b"ElementDataFile")
    header = data[:end].decode()
    for key, value in fields.items():
        header = "\n".join(f"{key} = {value}" if line.startswith(key + " ") else line for line in header.split("\n"))
    path.write_bytes(header.encode() + data[end:])
    return path


# -- the reader process ------------------------------------------------------------------------------
def test_mha_with_ndims_minus_one_is_refused_before_simpleitk_sees_it(tmp_path):
    path = _mha_with(tmp_path, NDims="-1")
    with pytest.raises(io.VolumeIOError, match="NDims = -1") as err:
        io.scan(path)
    assert str(path) in str(err.value)


def test_a_native_reader_crashing_on_a_file_is_an_error_naming_it_and_the_next_read_works(tmp_path):
    path = _mha_with(tmp_path, NDims="-1")
    with pytest.raises(io.VolumeIOError, match="the image reader was killed by signal") as err:
        native(path, itk_files._scan_itk, str(path))         # no header check: SimpleITK itself crashes
    assert str(err.value).startswith(str(path))
    good = io.save(_volume(), tmp_path / "good.nrrd")
    assert io.load(good).shape == (6, 7, 8)


def test_a_native_reader_past_its_time_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_process, "HEADER_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(io.VolumeIOError, match="took longer than 1 s") as err:
        native(tmp_path / "slow.nii", time.sleep, 60)
    assert time.monotonic() - start < 30 and str(tmp_path / "slow.nii") in str(err.value)


def test_a_native_reader_allocating_without_end_meets_its_memory_limit(tmp_path):
    with pytest.raises(io.VolumeIOError, match="needs more memory than is available"):
        native(tmp_path / "bomb.nii", np.ones, 1 << 42)


def test_a_volume_comes_back_from_the_reader_process_exactly(tmp_path):
    volume = _volume(dtype=np.int16)
    for suffix in (".nii.gz", ".mha", ".nrrd"):
        loaded = io.load(io.save(volume, tmp_path / f"v{suffix}"))
        assert np.array_equal(loaded.array, volume.array) and loaded.same_grid(volume)


# -- headers and geometry ------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, problem", [
    ({"TransformMatrix": "1 0 0 0 1 0 0 0 -1e999"}, "TransformMatrix"),
    ({"ElementSpacing": "nan 1 1"}, "elementspacing"),
    ({"DimSize": "6 5 -4"}, "DimSize"),
    ({"ElementType": "MET_WHATEVER"}, "ElementType"),
])
def test_absurd_metaimage_fields_are_refused_by_name(tmp_path, fields, problem):
    path = _mha_with(tmp_path, **fields)
    with pytest.raises(io.VolumeIOError, match=f"(?i){problem}"):
        io.scan(path)


def test_a_compressed_metaimage_promising_more_data_than_it_holds_is_refused(tmp_path):
    """Found by ``bench fuzz --inputs 10000 --seed 2023`` (input 2725): ITK allocates the promised
    compressed size before reading, and a few GiB end in std::bad_alloc."""
    volume = _volume(dtype=np.int16)
    for name in ("c.mha", "c.mhd"):                                  # data after the header / in a .zraw
        path = tmp_path / name
        sitk.WriteImage(sitk.GetImageFromArray(volume.array), str(path), True)
        assert np.array_equal(io.load(path).array, volume.array)
        text = path.read_bytes()
        path.write_bytes(re.sub(rb"CompressedDataSize = \d+", b"CompressedDataSize = 4294967297", text))
        with pytest.raises(io.VolumeIOError, match="CompressedDataSize = 4294967297 is more than the"):
            io.scan(path)


def _nifti(tmp_path: Path, name="v.nii", **header) -> Path:
    image = nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    for key, value in header.items():
        image.header[key] = value
    path = tmp_path / name
    raw = image.header.binaryblock + bytes(4) + np.zeros((4, 5, 6), np.int16).tobytes()
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("field, value", [("srow_x", [np.inf, 0, 0, 0]), ("pixdim", [1, np.nan, 1, 1, 1, 1, 1, 1]),
                                          ("scl_slope", np.inf), ("datatype", 3)])
def test_absurd_nifti_fields_are_refused_by_name(tmp_path, field, value):
    path = _nifti(tmp_path, **{"scl_slope": 1.0, "scl_inter": 0.0, field: value, "sform_code": 1})
    with pytest.raises(io.VolumeIOError, match=field.split("_")[0].replace("scl", "scaling")) as err:
        io.scan(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_truncated_nifti_is_an_error_not_zeros(tmp_path, suffix):
    path = io.save(_volume(shape=(20, 30, 40)), tmp_path / f"v{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 300])
    with pytest.raises(io.VolumeIOError, match="truncated") as err:
        io.load(path)
    assert str(path) in str(err.value)


def test_damaged_compressed_data_at_the_start_of_a_nifti_gz_is_a_clean_error(tmp_path):
    path = io.save(_volume(), tmp_path / "v.nii.gz")
    data = bytearray(path.read_bytes())
    data[12:40] = b"\xff" * 28                     # the deflate stream's first blocks
    path.write_bytes(bytes(data))
    with pytest.raises(io.VolumeIOError) as err:
        io.scan(path)
    assert str(path) in str(err.value)


def test_the_memory_guard_counts_the_stored_voxels_and_the_copies_not_float32_alone(tmp_path, monkeypatch):
    path = io.save(_volume(shape=(20, 30, 40), dtype=np.int16).replace(array=np.zeros((20, 30, 40), np.int16)),
                   tmp_path / "v.nrrd")
    n = 20 * 30 * 40
    monkeypatch.setattr(catalog, "available_memory", lambda: int(6 * n / catalog.MEMORY_SHARE))  # float32 fits, not the peak
    with pytest.raises(io.VolumeIOError, match="at its peak") as err:
        io.load(path)
    assert str(path) in str(err.value)
    monkeypatch.setattr(catalog, "available_memory", lambda: int(40 * n / catalog.MEMORY_SHARE))
    assert io.load(path).shape == (20, 30, 40)


def test_the_memory_guard_respects_the_address_space_limit():
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = catalog._address_space_room()
    assert used is None or soft != resource.RLIM_INFINITY
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), hard))
        assert catalog.available_memory() <= 257 << 20
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# -- DICOM ------------------------------------------------------------------------------------------------
def _dicom(tmp_path: Path, source: str, **values) -> Path:
    ds = pydicom.dcmread(PYDICOM_FILES / source)
    for keyword, value in values.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds[tag] = pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(tag), pydicom.datadict.dictionary_VR(tag), len(value), value, 0, False, True)
    path = tmp_path / source
    ds.save_as(path)
    return path


@pytest.mark.parametrize("source", ["MR_small_RLE.dcm", "image_dfl.dcm", "MR_small.dcm"])
def test_a_huge_number_of_frames_is_refused_at_once(tmp_path, source):
    path = _dicom(tmp_path, source, NumberOfFrames=b"1000000000")
    start = time.monotonic()
    with pytest.raises(io.VolumeIOError, match="NumberOfFrames|fewer than|deflated") as err:
        io.scan(path)
    assert time.monotonic() - start < 10 and str(path) in str(err.value)


def test_more_frames_than_compressed_fragments_are_refused(tmp_path):
    path = _dicom(tmp_path, "MR_small_RLE.dcm", NumberOfFrames=b"5000")
    with pytest.raises(io.VolumeIOError, match="fragment"):
        io.scan(path)


def test_unusable_dicom_numbers_are_noted_not_used(tmp_path):
    path = _dicom(tmp_path, "CT_small.dcm", RescaleSlope=b"nan ", ImagePositionPatient=b"nan\\0\\0 ",
                  SliceThickness=b"-2.5")
    volume = io.load(path)
    notes = " ".join(volume.notes)
    assert "RescaleSlope is nan" in notes and "ImagePositionPatient is nan" in notes and "SliceThickness is -2.5" in notes
    assert np.all(np.isfinite(volume.array)) and np.all(np.isfinite(volume.origin))
    assert volume.spacing[2] > 0 and volume.spacing[2] != 2.5


def test_a_dicom_header_pydicom_cannot_convert_is_skipped_with_the_reason(tmp_path):
    path = tmp_path / "bad.dcm"
    data = bytearray((PYDICOM_FILES / "MR_small.dcm").read_bytes())
    at = data.index(b"\x08\x00\x20\x00DA")         # StudyDate's VR becomes one pydicom does not know
    data[at + 4:at + 6] = b"DE"
    path.write_bytes(bytes(data))
    with pytest.raises(io.VolumeIOError) as err:
        io.scan(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# -- special files and the command line ---------------------------------------------------------------------
def test_a_fifo_in_a_folder_is_skipped_with_a_note_and_never_opened(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    io.save(_volume(), tmp_path / "v.nii.gz")
    os.mkfifo(tmp_path / "pipe.nii")
    os.mkfifo(tmp_path / "pipe")
    catalog_ = io.scan(tmp_path)
    assert len(catalog_.entries) == 1
    assert {Path(s.path).name for s in catalog_.skipped} == {"pipe", "pipe.nii"}
    assert all("FIFO" in s.reason for s in catalog_.skipped)
    with pytest.raises(io.VolumeIOError, match="FIFO"):
        io.load(f"{tmp_path / 'pipe.nii'}#0")


def test_a_file_that_crashes_the_native_reader_is_one_line_and_exit_2_on_the_command_line(tmp_path, capsys):
    path = _mha_with(tmp_path, NDims="-1")
    assert run_cli(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_a_script_without_a_main_guard_reads_through_the_reader_process(tmp_path):
    path = io.save(_volume(), tmp_path / "v.mha")
    script = tmp_path / "script.py"
    script.write_text(f"import engine.io as io\nprint(io.load({str(path)!r}).shape)\n")
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0 and done.stdout.strip() == "(6, 7, 8)", done.stderr[-2000:]


def test_a_deflate_bomb_dicom_is_refused_before_pydicom_unpacks_it(tmp_path, monkeypatch):
    good = PYDICOM_FILES / "image_dfl.dcm"
    assert len(io.scan(good).entries) == 1
    monkeypatch.setattr(catalog, "available_memory", lambda: 20_000)      # the file unpacks to more than this
    with pytest.raises(io.VolumeIOError, match="deflated data set unpacks to more than") as err:
        io.scan(good)
    assert str(good) in str(err.value)


def _load_shape(path: str, queue) -> None:
    queue.put(io.load(path).shape)


def test_a_daemonic_process_such_as_a_dataloader_worker_reads_in_place(tmp_path):
    import multiprocessing

    path = io.save(_volume(), tmp_path / "v.nii.gz")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    worker = context.Process(target=_load_shape, args=(str(path), queue), daemon=True)
    worker.start()
    assert queue.get(timeout=60) == (6, 7, 8)
    worker.join(30)


def test_a_one_dimensional_nifti_is_refused_by_name(tmp_path):
    path = _nifti(tmp_path, dim=[1, 4, 5, 6, 1, 1, 1, 1])      # found by `bench fuzz`: a traceback inside SimpleITK
    with pytest.raises(io.VolumeIOError, match="1-D image") as err:
        io.load(path)
    assert str(path) in str(err.value)


def test_limit_threads_bounds_the_reader_process_and_puts_its_defaults_back():
    defaults = native("the reader process", reader_process.pool_sizes)      # the child started with its own pools
    before = reader_process.limit_threads(1)
    try:
        assert native("the reader process", reader_process.pool_sizes) == {"itk": 1, "blas": min(defaults["blas"], 1)}
    finally:
        reader_process.limit_threads(before)
    assert native("the reader process", reader_process.pool_sizes) == defaults


# -- review fixes ------------------------------------------------------------------------------------
def _nrrd_pair(tmp_path: Path) -> tuple[sitk.Image, Path]:
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.5, 0.75, 2.0))
    attached = tmp_path / "att.nrrd"
    sitk.WriteImage(image, str(attached))
    return image, attached


def _same_scan_and_load(path: Path, reference: Path) -> None:
    entry, expected = io.scan(path).entries[0], io.scan(reference).entries[0]
    assert (entry.shape_zyx, entry.spacing_xyz) == (expected.shape_zyx, expected.spacing_xyz)
    np.testing.assert_array_equal(io.load(path).array, io.load(reference).array)


def test_a_detached_nrrd_header_ending_with_its_file_opens_like_the_attached_one(tmp_path):
    image, attached = _nrrd_pair(tmp_path)
    sitk.WriteImage(image, str(tmp_path / "det.nhdr"))          # ends with "data file: det.raw", no blank line
    assert not (tmp_path / "det.nhdr").read_bytes().endswith(b"\n\n")
    _same_scan_and_load(tmp_path / "det.nhdr", attached)


def test_a_nrrd_header_with_a_list_of_data_files_opens(tmp_path):
    image, attached = _nrrd_pair(tmp_path)
    array = sitk.GetArrayFromImage(image)
    for z in range(array.shape[0]):
        (tmp_path / f"s{z}.raw").write_bytes(array[z].astype("<i2").tobytes())
    header = (tmp_path / "att.nrrd").read_bytes().split(b"\n\n")[0].decode()
    lines = [line for line in header.split("\n") if not line.startswith(("encoding", "endian"))]
    text = "\n".join(lines + ["encoding: raw", "endian: little", "data file: LIST"] +
                     [f"s{z}.raw" for z in range(array.shape[0])]) + "\n"
    (tmp_path / "list.nhdr").write_text(text)
    _same_scan_and_load(tmp_path / "list.nhdr", attached)


def test_an_attached_nrrd_without_the_blank_line_is_still_refused(tmp_path):
    _, attached = _nrrd_pair(tmp_path)
    path = tmp_path / "cut.nrrd"
    path.write_bytes(attached.read_bytes().split(b"\n\n")[0] + b"\n")
    with pytest.raises(io.VolumeIOError, match="no blank line ends its NRRD header"):
        io.load(path)


def test_a_vector_nifti_opens_with_its_first_component_like_the_metaimage(tmp_path):
    first = sitk.GetImageFromArray(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    vector = sitk.Compose([first, first + 100, first + 200])      # a displacement field: dim [5, x, y, z, 1, 3]
    for name in ("warp.nii.gz", "warp.mha"):
        sitk.WriteImage(vector, str(tmp_path / name))
    assert list(nibabel.load(tmp_path / "warp.nii.gz").header["dim"][:6]) == [5, 5, 4, 3, 1, 3]
    entry = io.scan(tmp_path / "warp.nii.gz").entries[0]
    said = "3 components per voxel (a colour or vector image): only the first is used"
    assert said in entry.notes
    assert entry.shape_zyx == (3, 4, 5)
    loaded = io.load(tmp_path / "warp.nii.gz")
    np.testing.assert_array_equal(loaded.array, sitk.GetArrayFromImage(first))
    assert said in loaded.notes                                   # what synthesize and the app show of it
    np.testing.assert_array_equal(io.load(tmp_path / "warp.nii.gz").array, io.load(tmp_path / "warp.mha").array)


def _serve_in_a_thread(monkeypatch):
    """The reader process's loop, run here in a thread (its output stays ours)."""
    import multiprocessing
    import threading

    monkeypatch.setattr(os, "dup2", lambda *args: None)
    monkeypatch.setattr(reader_process, "_here", False)
    parent, child = multiprocessing.Pipe()
    thread = threading.Thread(target=reader_process.serve, args=(child,), daemon=True)
    thread.start()
    return parent, thread


def test_the_reader_process_reads_where_there_is_no_resource_module(tmp_path, monkeypatch):
    path = io.save(_volume(), tmp_path / "v.nrrd")
    monkeypatch.setitem(sys.modules, "resource", None)            # Windows: importing it fails
    parent, thread = _serve_in_a_thread(monkeypatch)
    parent.send(("engine.io.itk_files", "_scan_itk", (str(path),), 1 << 30, None))   # no thread bound
    assert parent.poll(30), "the reader process died without a reply"
    kind, entry = parent.recv()
    assert kind == "ok" and entry.shape_zyx == (6, 7, 8)
    parent.send(None)
    thread.join(5)


def test_no_address_space_limit_is_set_where_the_mapped_size_cannot_be_measured(monkeypatch):
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    monkeypatch.setattr(reader_process, "_vm_bytes", lambda: 0)     # macOS: no /proc
    restore = reader_process._limit_address_space(1 << 20)         # 1 MiB would stop this process at once
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    restore()
    assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_the_memory_guard_counts_scaled_nifti_voxels_as_float32_in_both_processes(tmp_path, monkeypatch):
    n = 4 * 5 * 6
    scaled, plain = _nifti(tmp_path, "scaled.nii", scl_slope=2.0), _nifti(tmp_path, "plain.nii", scl_slope=1.0)
    assert sitk.ReadImage(str(scaled)).GetPixelID() == sitk.sitkFloat32      # ITK returns scaled int16 as float32
    # at its peak: the float32 image and its numpy copy in the reader process, and the copy received here
    monkeypatch.setattr(catalog, "available_memory", lambda: int(13 * n / catalog.MEMORY_SHARE))
    with pytest.raises(io.VolumeIOError, match="at its peak") as err:
        io.load(scaled)
    assert str(scaled) in str(err.value)
    assert io.load(plain).shape == (6, 5, 4)


def test_the_reader_process_limits_malloc_arenas_and_its_slack_grows_with_the_cores(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    reader_process._process().close()                             # a fresh reader process, started below
    assert native("env", os.getenv, "MALLOC_ARENA_MAX") == "2"
    assert "MALLOC_ARENA_MAX" not in os.environ                   # this process's environment is unchanged
    limits = []

    class Recorder:
        def call(self, path, fn, args, memory_bytes, timeout_s, cancel):
            limits.append(memory_bytes)

    monkeypatch.setattr(reader_process, "_process", Recorder)
    for cores in (2, 256):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        native("x", os.getenv, "HOME", peak_bytes=1 << 20)
    assert limits[1] - limits[0] == 254 * reader_process.SLACK_PER_CPU


def test_waiting_for_the_reader_process_held_by_another_thread_can_be_cancelled(tmp_path):
    import threading

    from engine.jobs import Cancelled, CancelToken

    token, outcome = CancelToken(), []
    token.cancel()
    process = reader_process._process()
    process._lock.acquire()                                       # another thread's long reading
    try:
        def read():
            try:
                native(tmp_path / "v.nii", os.getenv, "HOME", cancel=token)
            except Cancelled:
                outcome.append("cancelled")
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        thread.join(5)
        assert outcome == ["cancelled"]
    finally:
        process._lock.release()


def test_a_native_allocation_failure_reads_as_the_memory_message(tmp_path):
    with pytest.raises(io.VolumeIOError, match="needs more memory than is available") as err:
        native(tmp_path / "v.nii", exec, "raise RuntimeError('ITK ERROR: std::bad_alloc')")
    assert str(tmp_path / "v.nii") in str(err.value)


def test_more_voxel_data_than_announced_is_an_error_and_the_next_read_works(tmp_path, monkeypatch):
    import types

    path = io.save(_volume(), tmp_path / "v.nrrd")
    short = types.SimpleNamespace(empty=lambda shape, dtype: np.empty(3, dtype))   # the announced size, cut
    monkeypatch.setattr(reader_process, "np", short)
    with pytest.raises(io.VolumeIOError, match="more voxel data than it announced") as err:
        native(path, np.ones, (10, 10))
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert io.load(path).shape == (6, 7, 8)


def test_video_dicom_frames_sharing_fragments_are_not_called_damaged(tmp_path):
    path = _dicom(tmp_path, "MR_small_RLE.dcm", NumberOfFrames=b"50")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"            # MPEG-4 AVC/H.264: one stream, many frames
    ds.save_as(path)
    try:
        outcome = " ".join(str(s) for s in io.scan(path).skipped) or "listed"
    except io.VolumeIOError as exc:
        outcome = str(exc)
    assert "fragment" not in outcome, outcome


def _nrrd_with_spacings(tmp_path: Path, spacings: str) -> Path:
    path = tmp_path / "s.nrrd"
    header = f"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nspacings: {spacings}\nencoding: raw\nendian: little\n\n"
    path.write_bytes(header.encode() + np.arange(60, dtype="<i2").tobytes())
    return path


def test_a_negative_nrrd_spacing_is_accepted_as_teem_does_zero_is_not(tmp_path):
    path = _nrrd_with_spacings(tmp_path, "-0.5 0.75 2")
    volume = io.load(path)
    assert volume.spacing == (0.5, 0.75, 2.0) and volume.direction[0] == -1.0     # x runs the other way
    assert io.scan(path).entries[0].spacing_xyz == (0.5, 0.75, 2.0)
    np.testing.assert_array_equal(volume.array, np.arange(60).reshape(3, 4, 5))
    with pytest.raises(io.VolumeIOError, match="spacings: '0 0.75 2' is not 3 non-zero finite numbers"):
        io.load(_nrrd_with_spacings(tmp_path, "0 0.75 2"))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_voxels_holding_no_number_are_background_and_counted_and_an_all_nan_file_is_refused(tmp_path, suffix):
    ct = np.full((6, 12, 10), 40.0, np.float32)
    ct[:, :, :2] = -1000.0
    ct[2:4, 5:8, 4:6] = np.nan                                    # a masked or padded region: no data
    ct[0, 0, 9] = np.inf
    path = tmp_path / f"ct{suffix}"
    if suffix.startswith(".nii"):                               # nibabel: NaN stored as NIfTI holds them
        nibabel.save(nibabel.Nifti1Image(ct.transpose(2, 1, 0), np.eye(4)), str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(ct), str(path))
    volume = io.load(path)
    expected = np.where(np.isnan(ct), -1000.0, np.where(np.isinf(ct), 40.0, ct))
    assert np.array_equal(volume.array, expected)              # SimpleITK's NIfTI reader gives 0 (water) there
    assert any(n.startswith("13 voxel(s)") and "no number" in n and "-1000" in n and "1 at +infinity to the highest, 40"
               in n for n in volume.notes)

    empty = tmp_path / f"empty{suffix}"
    if suffix.startswith(".nii"):
        nibabel.save(nibabel.Nifti1Image(np.full((10, 12, 6), np.nan, np.float32), np.eye(4)), str(empty))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 12, 10), np.nan, np.float32)), str(empty))
    with pytest.raises(io.VolumeIOError, match="no number in any voxel") as err:
        io.load(empty)
    assert str(empty) in str(err.value)


def test_a_complex_valued_nifti_is_refused_saying_so(tmp_path):
    path = tmp_path / "recon.nii.gz"
    data = (np.ones((4, 5, 3)) * (1 + 2j)).astype(np.complex64)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    for read in (io.load, io.scan):
        with pytest.raises(io.VolumeIOError, match=r"recon.nii.gz: holds complex values \(complex64\), not one real "
                                                    r"value per voxel; save its magnitude"):
            read(path)
