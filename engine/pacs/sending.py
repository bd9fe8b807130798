"""What is sent to a PACS: the DICOM files of an exported series folder (read up to their pixels to
learn each instance's SOP class, UID and transfer syntax), and the result per instance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError


@dataclass(frozen=True)
class Outgoing:
    path: Path
    sop_uid: str
    sop_class: str
    transfer_syntax: str


@dataclass(frozen=True)
class SendResult:
    path: Path
    sop_uid: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"file": str(self.path), "sop_instance_uid": self.sop_uid, "ok": self.ok, "detail": self.detail}


def outgoing(folder: str | Path) -> list[Outgoing]:
    """The instances of a series folder (or one DICOM file); ValueError naming a file that is not
    DICOM, or a folder without any."""
    folder = Path(folder)
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        raise ValueError(f"{folder}: no such file or folder")
    items = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            items.append(Outgoing(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                  str(ds.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError) as exc:
            raise ValueError(f"{path}: not a DICOM instance that can be sent ({exc})") from None
    if not items:
        raise ValueError(f"{folder}: holds no DICOM files")
    return items
