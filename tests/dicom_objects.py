"""DICOM objects beside images that the engine, command-line and app tests all write (no tests here):
a Spatial Registration (Modality REG) as a planning system stores one, and a scan described in a
linac's own frame of reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from engine.io.dicom_reg import SPATIAL_REGISTRATION


def write_registration(path: Path, frame: str, moving: dict[str, np.ndarray], *, kind: str = "RIGID",
                       description: str = "CBCT to planning CT") -> Path:
    """A Spatial Registration object (Modality REG) as a planning system writes one: its own frame of
    reference ``frame`` (an identity item) and, per moving frame, the 4×4 matrix taking it into ``frame``."""
    def item(uid: str, matrix: np.ndarray) -> Dataset:
        step = Dataset()
        step.FrameOfReferenceTransformationMatrix = [f"{v:.6f}" for v in np.asarray(matrix, float).ravel()]
        step.FrameOfReferenceTransformationMatrixType = kind
        registration = Dataset()
        registration.MatrixSequence = [step]
        entry = Dataset()
        entry.FrameOfReferenceUID = uid
        entry.MatrixRegistrationSequence = [registration]
        return entry

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SPATIAL_REGISTRATION
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SPATIAL_REGISTRATION, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription = "REG", description
    ds.FrameOfReferenceUID = frame
    ds.RegistrationSequence = [item(frame, np.eye(4))] + [item(uid, m) for uid, m in moving.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def in_own_frame(volume, matrix: np.ndarray, frame: str, patient: str):
    """``volume`` (lying in the planning CT's frame) described in another frame whose coordinates
    ``matrix`` takes into the CT's: the same voxels, the header a linac's imaging software would write."""
    rotation, shift = matrix[:3, :3], matrix[:3, 3]
    direction = rotation.T @ np.asarray(volume.direction, float).reshape(3, 3)
    origin = rotation.T @ (np.asarray(volume.origin, float) - shift)
    return volume.replace(origin=tuple(origin), direction=tuple(direction.ravel()),
                          dicom={"PatientID": patient, "StudyInstanceUID": f"1.2.3.{len(patient)}", "FrameOfReferenceUID": frame})
