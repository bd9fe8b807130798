"""Real DICOM test files shipped in packages, and a small independent pydicom writer that turns a
real volume into a classic single-frame series (shuffled file names and InstanceNumbers) so the
reader can be checked against SimpleITK's ImageSeriesReader.

Files are located by path: ``pydicom.data.get_testdata_file`` with patterns tries the internet.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import data_store
import nibabel
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DICOMDIR_TESTS = PYDICOM_FILES / "dicomdirtests"
DATA_STORE = Path(data_store.__file__).parent / "data"
NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"


def rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


OBLIQUE = rotation([1.0, 0.3, 0.2], 0.5) @ np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])   # sagittal-ish, det +1


def anatomical() -> np.ndarray:
    """nibabel's real anatomical MR (int16), as a (z, y, x) array: 25 × 41 × 33."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(NIBABEL_DATA / "anatomical.nii")))


def write_series(folder: Path, stored: np.ndarray, *, spacing=(1.1, 0.9, 2.5), origin=(10.5, -20.25, 33.0),
                 direction=OBLIQUE, modality: str = "MR", sop_class: str = MR_IMAGE,
                 positions: list | None = None, slopes: list | None = None, intercept: float = 0.0,
                 series_uid: str | None = None, study_uid: str | None = None, frame_uid: str | None = None,
                 shared: dict | None = None,
                 per_slice: Callable[[Dataset, int], None] | None = None, seed: int = 0) -> list[Path]:
    """Write ``stored`` (int16, (z, y, x)) as one file per slice; return the paths in slice order.

    File names and InstanceNumbers are shuffled, so only the positions tell the order. Each call
    makes a new study and frame of reference unless ``study_uid`` / ``frame_uid`` name one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    nz, ny, nx = stored.shape
    if positions is None:
        positions = [np.asarray(origin, float) + k * spacing[2] * d[:, 2] for k in range(nz)]
    rng = np.random.default_rng(seed)
    names, instances = rng.permutation(nz), rng.permutation(nz) + 1
    study, frame_of_reference = study_uid or generate_uid(), frame_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(nz):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Anatomy", "NIB-0001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame_of_reference
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20240102", "101010", "fixture study"
        ds.SeriesNumber, ds.SeriesDescription = 7, "fixture series"
        ds.InstanceNumber = int(instances[k])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if slopes is not None or intercept:
            ds.RescaleSlope = f"{(slopes[k] if slopes is not None else 1.0):.8g}"
            ds.RescaleIntercept = f"{intercept:g}"
        for key, value in (shared or {}).items():
            setattr(ds, key, value)
        if per_slice is not None:
            per_slice(ds, k)
        ds.PixelData = np.ascontiguousarray(stored[k], dtype="<i2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"x{names[k]:03d}_{rng.integers(1_000_000):06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def one_series() -> dict[str, str]:
    """UIDs for several ``write_series`` calls that write parts of one series of one study and frame."""
    return {"series_uid": generate_uid(), "study_uid": generate_uid(), "frame_uid": generate_uid()}


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute()

