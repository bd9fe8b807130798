"""A Q/R SCP on a slow link, run as its own process by tests/engine/test_pacs.py: C-FIND lists one
CT image, C-GET sends it (2 MiB) with every outgoing PDU delayed, so the image takes seconds to
arrive while no message completes. Usage: python slow_pacs.py PORT DELAY_S (prints "ready")."""
from __future__ import annotations

import sys
import time

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt, transport
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

STUDY, SERIES, IMAGE = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"


def image() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, IMAGE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Slow^Link", "SLOW-1"
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.RescaleIntercept, ds.RescaleSlope, ds.InstanceNumber = 0, 1, 1
    ds.PixelData = np.zeros((1024, 1024), np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, IMAGE
    return ds


def main(port: int, delay_s: float) -> None:
    send = transport.AssociationSocket.send

    def slow(self, data):
        time.sleep(delay_s)
        return send(self, data)

    transport.AssociationSocket.send = slow          # this process only: the link to the client is slow
    ds = image()

    def c_find(event):
        answer = Dataset()
        answer.QueryRetrieveLevel, answer.SOPClassUID = "IMAGE", CTImageStorage
        answer.StudyInstanceUID, answer.SeriesInstanceUID, answer.SOPInstanceUID = STUDY, SERIES, IMAGE
        yield 0xFF00, answer

    def c_get(event):
        yield 1
        yield 0xFF00, ds

    ae = AE(ae_title="SLOW")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian],
                             scu_role=True, scp_role=True)
    print("ready", flush=True)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_FIND, c_find), (evt.EVT_C_GET, c_get)])


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
