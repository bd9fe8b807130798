"""File ▸ PACS… and Send to PACS… against a real Orthanc (tests/orthanc_server.py): a server added in
the dialog is stored beside the settings and verified; a search fills the patient → study → series
tree (a study's series asked for when it opens); Retrieve brings the series into the cache and
opens it in the Studies tree and the viewer; Cancel stops a retrieve leaving only whole instances;
a synthetic volume is sent and stored with its markings, an acquired one is refused with a reason."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import shiboken6
from orthanc_server import PACS_AE, start_orthanc
from PySide6.QtCore import QEvent
from PySide6.QtWidgets import QApplication

import engine.io as io
from engine import pacs
from engine.io.volume import Volume
from engine.pacs import Cache, Server, load_servers, save_servers
from engine.pacs.cache import CACHE_DIR_ENV

PATIENT_ID = "GUI-0001"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(folder)
    try:
        ramp = (np.arange(8 * 20 * 16, dtype=np.float32).reshape(8, 20, 16) % 1500) - 1000
        ct = Volume(ramp, spacing=(0.9, 0.9, 2.5), modality="CT", unit="HU",
                    dicom={"PatientName": "Gui^Patient", "PatientID": PATIENT_ID, "StudyDescription": "gui study"})
        server.upload(io.save(ct, folder / "export" / "ct", description="gui ct"))
        server.ct = ct
        yield server
    finally:
        server.stop()


@pytest.fixture
def dialog(qtbot, make_window, orthanc, tmp_path, monkeypatch):
    """The PACS dialog of a fresh window, with the test Orthanc added through the server editor."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    win = make_window()
    win.settings.pacs_cache_limit_gib = 3                           # the settings' limit reaches the cache
    assert win.actions["pacs"] in win.menuBar().actions()[0].menu().actions()
    dialog = win.open_pacs()
    editor = dialog.servers.add()
    editor.name.setText("test orthanc")
    editor.ae_title.setText(PACS_AE)
    editor.host.setText("127.0.0.1")
    editor.port.setValue(orthanc.dicom_port)
    editor.accept()
    dialog.window_under_test = win
    return dialog


def _search(qtbot, dialog):
    dialog.fields["patient_id"].setText(PATIENT_ID)
    with qtbot.waitSignal(dialog.searched, timeout=20000) as blocker:
        dialog.search_button.click()
    assert blocker.args == [1]
    patient = dialog.tree.topLevelItem(0)
    study = patient.child(0)
    assert patient.text(0) == f"Gui^Patient  [{PATIENT_ID}]" and study.text(0) == "gui study"
    study.setExpanded(True)                                        # asks for the study's series
    qtbot.waitUntil(lambda: study.childCount() == 1 and study.child(0).text(0).endswith("gui ct"), timeout=20000)
    return study.child(0)


def test_a_server_added_in_the_dialog_is_stored_and_verified(qtbot, dialog, settings_dir):
    assert dialog.cache.limit_bytes == 3 * 1024**3 and dialog.cache.root.name == "synermedgen-pacs"
    dialog.close()
    assert dialog.window_under_test.open_pacs() is dialog and dialog.servers.current().name == "test orthanc"
    [stored] = load_servers(settings_dir / "pacs_servers.json")
    assert (stored.name, stored.ae_title) == ("test orthanc", PACS_AE)
    dialog.servers.buttons["Verify"].click()
    qtbot.waitUntil(lambda: "answered in" in dialog.servers.status.text(), timeout=20000)
    editor = dialog.servers.edit()
    editor.ae_title.setText("")
    editor.accept()
    assert "is not a DICOM AE title" in editor.problem.text() and editor.isVisible()
    editor.reject()


def test_retrieve_opens_the_series_in_the_studies_tree(qtbot, dialog, orthanc, wait_loaded):
    series = _search(qtbot, dialog)
    series.setSelected(True)
    assert dialog.retrieve_button.isEnabled()
    dialog.retrieve_button.click()
    assert dialog.cancel_button.isEnabled() and not dialog.retrieve_button.isEnabled()
    doc = wait_loaded(dialog.window_under_test)
    np.testing.assert_array_equal(doc.volume.array, orthanc.ct.array)
    assert any(e.description == "gui ct" for e in dialog.window_under_test.browser.entries())
    assert dialog.progress.value() == 1000 and "Retrieved 1 series" in dialog.message.text()


def test_a_node_opened_while_a_task_runs_is_fetched_when_it_ends(qtbot, dialog):
    from app.pacs_dialog import PLACEHOLDER

    dialog.fields["patient_id"].setText(PATIENT_ID)
    with qtbot.waitSignal(dialog.searched, timeout=20000):
        dialog.search_button.click()
    study = dialog.tree.topLevelItem(0).child(0)
    release = threading.Event()
    dialog._run(lambda _progress, _cancel: release.wait(20), "a task that waits", lambda _result: None)
    study.setExpanded(True)                                        # while the task runs: not asked yet
    assert study.childCount() == 1 and study.child(0).text(0) == PLACEHOLDER
    release.set()
    qtbot.waitUntil(lambda: study.childCount() == 1 and study.child(0).text(0).endswith("gui ct"), timeout=20000)


def test_cancel_stops_a_retrieve_leaving_whole_instances(qtbot, dialog, tmp_path, monkeypatch):
    """The cancel comes from the worker side, after the 2nd instance is written (the retrieve of 8
    takes a fraction of a second, which a cancel from the UI may miss); the UI's cancelled path runs."""
    series = _search(qtbot, dialog)
    series.setSelected(True)
    tokens, write = [], Cache.write

    def retrieve(*args, cancel=None, **kwargs):
        tokens.append(cancel)
        return retrieve_unpatched(*args, cancel=cancel, **kwargs)

    def write_then_cancel(cache, *args):
        path = write(cache, *args)
        if len(cache.cached(*args[:2])) == 2:
            tokens[0].cancel()
        return path

    retrieve_unpatched = pacs.retrieve
    monkeypatch.setattr(pacs, "retrieve", retrieve)
    monkeypatch.setattr(Cache, "write", write_then_cancel)
    dialog.retrieve()
    qtbot.waitUntil(lambda: "Cancelled" in dialog.message.text(), timeout=20000)
    files = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 2 and not any(".part" in name for name in files)
    assert dialog.retrieve_button.isEnabled() and not dialog.cancel_button.isEnabled()


def test_a_synthetic_volume_is_sent_and_an_acquired_one_refused(qtbot, dialog, orthanc):
    win = dialog.window_under_test
    source = win.workspace.add(orthanc.ct, key="acquired")
    synthetic = win.workspace.add(orthanc.ct.with_array(orthanc.ct.array + 3, name="synthetic CT from CBCT",
                                                        synthetic=True, derived_from="CBCT"),
                                  synthetic=True, source=source)
    win.workspace.activate(source)
    assert win.send_to_pacs() is None
    assert "was acquired" in win.log.lines[-1]
    sender = win.send_to_pacs(synthetic)
    with qtbot.waitSignal(sender.sent, timeout=30000) as blocker:
        sender.send_button.click()
        sender.reject()                                            # closed during the send: it goes on
        _deferred_deletes()
        assert shiboken6.isValid(sender)
    results = blocker.args[0]
    assert len(results) == 8 and all(r.ok for r in results) and sender.results.count() == 8
    _deferred_deletes()
    assert not shiboken6.isValid(sender)                           # ... and is deleted once it ended
    descriptions = [s["SeriesDescription"] for s in orthanc.series_tags()]
    assert "synthetic CT from CBCT — research use only" in descriptions


def test_editing_a_server_keeps_its_hidden_fields_and_refuses_a_taken_name(make_window, settings_dir):
    ward = Server("ward", ae_title="WARD", host="ward.example", port=104, timeout_s=5.0)
    web = Server("web", url="https://web.example/dicom-web", username="u", password="pw", timeout_s=7.5)
    path = save_servers([ward, web], settings_dir / "pacs_servers.json")
    dialog = make_window().open_pacs()
    editor = dialog.servers.edit()                                  # the first: ward
    editor.host.setText("ward2.example")
    editor.accept()
    assert load_servers(path) == [dataclasses.replace(ward, host="ward2.example"), web]   # timeout_s kept, order too
    dialog.servers.list.setCurrentRow(1)
    editor = dialog.servers.edit()
    editor.name.setText("ward")
    editor.accept()
    assert "already a server named 'ward'" in editor.problem.text() and editor.isVisible()
    editor.reject()
    assert [s.name for s in load_servers(path)] == ["ward", "web"]
    editor = dialog.servers.add()
    editor.name.setText("web")
    editor.accept()
    assert "already a server named 'web'" in editor.problem.text()
    editor.reject()


def test_a_server_over_tls_is_edited_with_its_certificate_files(make_window, settings_dir, tmp_path):
    ca, cert = tmp_path / "hospital-ca.pem", tmp_path / "studio.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    path = save_servers([Server("ward", ae_title="WARD", host="ward.example", port=2762)],
                        settings_dir / "pacs_servers.json")
    dialog = make_window().open_pacs()
    editor = dialog.servers.edit()
    assert not editor.tls.isChecked() and not editor.tls_ca.isEnabled()
    editor.tls.setChecked(True)
    assert editor.tls_ca.isEnabled() and editor.tls_cert.isEnabled()
    editor.tls_ca.path.setText(str(ca))
    editor.tls_cert.path.setText(str(tmp_path / "missing.pem"))
    editor.accept()
    assert "missing.pem: no such certificate file" in editor.problem.text() and editor.isVisible()
    editor.tls_cert.path.setText(str(cert))
    editor.accept()
    stored, = load_servers(path)
    assert (stored.tls, stored.tls_ca, stored.tls_cert, stored.tls_key) == (True, str(ca), str(cert), "")
    assert "over TLS with our certificate" in stored.describe()
    editor = dialog.servers.edit()
    assert editor.tls.isChecked() and editor.tls_ca.path.text() == str(ca)
    editor.kind.setCurrentIndex(1)                                  # DICOMweb: secured by https, no TLS files
    editor.url.setText("https://ward.example/dicom-web")
    assert editor.server().tls is False and editor.server().tls_ca == ""
    editor.reject()


def test_a_password_for_plain_http_is_warned_of_as_it_is_typed(make_window, settings_dir):
    save_servers([Server("web", url="https://web.example/dicom-web", username="u", password="pw")],
                 settings_dir / "pacs_servers.json")
    editor = make_window().open_pacs().servers.edit()
    assert editor.problem.text() == ""                              # https: nothing to say
    editor.url.setText("http://web.example/dicom-web")
    assert "password travels unencrypted over http:// to web.example" in editor.problem.text()
    editor.url.setText("http://localhost:8042/dicom-web")          # this computer: nothing leaves it
    assert editor.problem.text() == ""
    editor.url.setText("http://web.example/dicom-web")
    editor.kind.setCurrentIndex(0)                                  # DIMSE: no password is sent at all
    assert editor.problem.text() == ""
    editor.kind.setCurrentIndex(1)
    assert "unencrypted" in editor.problem.text()
    editor.reject()


def _deferred_deletes() -> None:
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def test_send_names_a_damaged_servers_file_and_is_deleted_when_closed(qtbot, make_window, settings_dir):
    win = make_window()
    (settings_dir / "pacs_servers.json").parent.mkdir(parents=True, exist_ok=True)
    (settings_dir / "pacs_servers.json").write_text("{not json")
    volume = Volume(np.zeros((4, 8, 8), np.float32), modality="CT", unit="HU", synthetic=True, derived_from="CBCT")
    sender = win.send_to_pacs(win.workspace.add(volume, synthetic=True))
    assert "pacs_servers.json: not a readable servers file" in sender.message.text()
    assert not sender.send_button.isEnabled()
    sender.reject()
    _deferred_deletes()
    assert not shiboken6.isValid(sender)


def test_the_command_line_finds_the_servers_where_the_app_keeps_them(qapp, monkeypatch, tmp_path):
    """engine.paths follows Qt's AppConfigLocation and CacheLocation rule for the app's names."""
    from PySide6.QtCore import QStandardPaths

    from app import about
    from app.settings import CONFIG_DIR_ENV, config_dir, pacs_servers_file
    from engine.pacs import servers_file
    from engine.paths import cache_dir

    monkeypatch.delenv(CONFIG_DIR_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    names = qapp.organizationName(), qapp.applicationName()
    qapp.setOrganizationName(about.ORGANISATION)
    qapp.setApplicationName(about.APP_NAME)
    try:
        assert servers_file() == pacs_servers_file() == config_dir() / "pacs_servers.json"
        location = QStandardPaths.StandardLocation
        assert config_dir() == Path(QStandardPaths.writableLocation(location.AppConfigLocation))
        assert cache_dir() == Path(QStandardPaths.writableLocation(location.CacheLocation))
    finally:
        qapp.setOrganizationName(names[0])
        qapp.setApplicationName(names[1])


def test_the_cache_size_limit_is_set_in_the_dialog_and_kept_in_the_settings(qtbot, make_window, settings_dir):
    from app.settings import Settings, load_settings

    win = make_window(Settings(pacs_cache_limit_gib=5))
    dialog = win.open_pacs()
    assert dialog.cache_limit.value() == 5 and dialog.cache.limit_bytes == 5 * 1024**3
    dialog.cache_limit.setValue(12)
    assert dialog.cache.limit_bytes == 12 * 1024**3                # the next retrieve prunes to it
    assert win.settings.pacs_cache_limit_gib == 12 and load_settings().pacs_cache_limit_gib == 12
    dialog.close()
