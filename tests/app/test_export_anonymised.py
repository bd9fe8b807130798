"""File → Export Anonymised…: the DICOM series written holds no name, ID, date or source text (the
Basic Profile itself is checked attribute by attribute in tests/engine/test_deidentify.py), nor do
the proposed name, the dialog's title, the log or the settings; two series of one study exported in
one app session keep one study; a series with burned-in annotation goes only when the user says so;
a failed load logs the file, not the series UID."""
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PySide6.QtWidgets import QFileDialog, QMessageBox

from engine import io
from engine.io.volume import Volume

STUDY = "1.2.826.0.1.3680043.8.498.111"
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "PID-734521", "PatientBirthDate": "19610412",
            "StudyDate": "20240102", "StudyDescription": "Doe Jane head", "StudyInstanceUID": STUDY,
            "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.222", "AccessionNumber": "ACC998877"}
SECRETS = ("Doe", "Jane", "PID-734521", "19610412", "20240102", "ACC998877")


def _series(folder: Path, name: str, **extra) -> Path:
    """A DICOM CT series of that patient, described by the patient's name."""
    rng = np.random.default_rng(len(name))
    volume = Volume(rng.normal(0, 200, (4, 24, 20)).astype(np.float32), spacing=(1.0, 1.0, 2.0), modality="CT",
                    unit="HU", dicom={**IDENTITY, **extra})
    return io.save(volume, folder / name, description=f"Jane Doe {name}")


@pytest.fixture
def dialogs(monkeypatch, tmp_path):
    """The save dialog answers with its proposed name under tmp_path/out (as a DICOM folder); what
    it was asked is kept."""
    asked = []

    def answer(_parent, title, start, _filters):
        asked.append((title, Path(start).name))
        return str(tmp_path / "out" / f"{Path(start).name}_{len(asked)}"), "DICOM derived series (folder)"

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer)
    return asked


def _export_anonymised(qtbot, window) -> Path:
    with qtbot.waitSignal(window.exported, timeout=60000) as blocker:
        window.actions["export_anonymised"].trigger()
    return Path(blocker.args[0])


def test_export_anonymised_writes_no_identity_and_keeps_one_study_per_session(qtbot, make_window, wait_loaded,
                                                                            tmp_path, dialogs, caplog):
    caplog.set_level(logging.DEBUG)
    window = make_window()
    window.open_paths([str(_series(tmp_path, "T1")), str(_series(tmp_path, "T2"))])
    first, second = wait_loaded(window), wait_loaded(window, 2)
    assert "Jane" in first.title                                   # what the app shows the user
    window.workspace.activate(first)
    a = _export_anonymised(qtbot, window)
    window.workspace.activate(second)
    b = _export_anonymised(qtbot, window)
    assert [name for _, name in dialogs] == ["CT_anonymised", "CT_anonymised"]
    assert all("Jane" not in title for title, _ in dialogs)
    files = sorted(a.iterdir()) + sorted(b.iterdir())
    for path in files:
        raw = path.read_bytes()
        assert not [s for s in SECRETS if s.encode() in raw], path
    one, two = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    assert one.PatientIdentityRemoved == "YES" and one.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert one.StudyInstanceUID == two.StudyInstanceUID != STUDY           # one study in one session
    assert one.SeriesInstanceUID != two.SeriesInstanceUID
    logged = " ".join(r.getMessage() for r in caplog.records) + " ".join(window.log.lines[-2:])
    settings = json.dumps(window.settings.to_dict())
    assert not [s for s in SECRETS if s in logged or s in settings]


@pytest.mark.parametrize("answer", [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
def test_burned_in_annotation_is_exported_anonymised_only_when_the_user_accepts(qtbot, make_window, wait_loaded,
                                                                                tmp_path, dialogs, monkeypatch,
                                                                                answer):
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda _parent, _title, text, *_a: asked.append(text) or answer)
    window = make_window()
    window.open_paths([str(_series(tmp_path, "T1", BurnedInAnnotation="YES"))])
    wait_loaded(window)
    if answer == QMessageBox.StandardButton.No:
        window.actions["export_anonymised"].trigger()
        qtbot.wait(200)
        assert dialogs == [] and not any((tmp_path / "out").iterdir())
    else:
        first = pydicom.dcmread(next(_export_anonymised(qtbot, window).iterdir()))
        assert first.BurnedInAnnotation == "YES" and first.PatientIdentityRemoved == "YES"
    assert len(asked) == 1 and "burned-in annotation" in asked[0]


def test_a_failed_load_logs_the_file_not_the_series_uid(qtbot, make_window, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    folder = _series(tmp_path, "T1")
    entry = io.scan(folder).entries[0]
    for path in folder.iterdir():
        path.unlink()                                       # gone between the scan and the load
    window = make_window()
    window.load_entry(entry)
    qtbot.waitUntil(lambda: any(r.getMessage().startswith("load ") for r in caplog.records), timeout=20000)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert entry.paths[0] in logged and entry.key.split(".")[-1] not in logged
