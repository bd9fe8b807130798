"""PACS work against a real Orthanc (tests/orthanc_server.py): a small head study stored by
Orthanc's own REST API is found at every level, retrieved by C-GET, C-MOVE and WADO-RS into a private
cache and read back exactly; a synthetic series goes back by C-STORE and STOW-RS and is found there
with its derived markings; each failure is one clear line naming the server, and a cancelled
retrieve leaves only whole instances, which the next retrieve does not fetch again."""
from __future__ import annotations

import dataclasses
import logging
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from orthanc_server import PASSWORD, free_port, start_orthanc

import engine.io as io
from engine.io.volume import Volume
from engine.jobs import Cancelled, CancelToken
from engine.pacs import Cache, PacsCancelled, PacsError, Query, Server, echo, find, retrieve, send
from engine.paths import RESOURCES

PATIENT_ID = "DEMO-HEAD-001"
SLICES = slice(32, 40)                     # 8 slices of the demo head: a real anatomy, seconds to move


def _demo(modality: str, study: dict) -> Volume:
    volume = io.load(RESOURCES / "demo" / "head" / f"{modality}.nii.gz")
    return volume.replace(array=np.ascontiguousarray(volume.array[SLICES]), dicom=study)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(folder)
    try:
        study = {"PatientName": "Demo^Head", "PatientID": PATIENT_ID, "StudyDate": "20240102",
                 "StudyDescription": "demo head CT and CBCT", "StudyInstanceUID": pydicom.uid.generate_uid()}
        ct, cbct = _demo("CT", study), _demo("CBCT", study)
        for name, volume in (("ct", ct), ("cbct", cbct)):
            server.upload(io.save(volume, folder / "export" / name, description=f"demo head {name}"))
        server.study_uid, server.ct = study["StudyInstanceUID"], ct
        yield server
    finally:
        server.stop()


def _series(pacs):
    matches = find(pacs.dimse(), Query(level="series", patient_id=PATIENT_ID, description="demo head ct"))
    assert len(matches) == 1
    return matches[0]


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part" in p.name]


# -- verify and query -------------------------------------------------------------------------------
def test_verify_answers_over_dimse_and_dicomweb(pacs):
    assert echo(pacs.dimse()) > 0
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING     # its chatter stays out of logs
    assert echo(pacs.web()) > 0


@pytest.mark.parametrize("kind", ["dimse", "web"])
def test_find_at_patient_study_and_series_level(pacs, kind):
    server = getattr(pacs, kind)()
    patients = find(server, Query(level="patient", patient_name="Demo*"))
    assert [(p.patient_id, p.patient_name) for p in patients] == [(PATIENT_ID, "Demo^Head")]
    studies = find(server, Query(level="study", patient_id=PATIENT_ID, date_from="20240101", date_to="20240131"))
    assert [(s.study_uid, s.study_description) for s in studies] == [(pacs.study_uid, "demo head CT and CBCT")]
    assert find(server, Query(level="study", patient_id=PATIENT_ID, date_from="20250101")) == []
    series = find(server, Query(level="series", study_uid=pacs.study_uid))
    assert sorted(s.series_description for s in series) == ["demo head cbct", "demo head ct"]
    assert len(find(server, Query(level="series", patient_id=PATIENT_ID, modality="CT"))) == 2   # CBCT is stored as CT
    ct = find(server, Query(level="series", patient_id=PATIENT_ID, modality="CT", description="*head ct"))
    assert len(ct) == 1 and ct[0].instances == SLICES.stop - SLICES.start


# -- retrieve -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["get", "move", "wado"])
def test_retrieve_brings_the_series_into_a_private_cache_exactly(pacs, tmp_path, method):
    match = _series(pacs)
    server = pacs.web() if method == "wado" else pacs.dimse(move_port=pacs.move_port if method == "move" else 0)
    cache = Cache(tmp_path / "cache")
    reports = []
    [folder] = retrieve(server, match.study_uid, [match.series_uid], cache, method=method, progress=reports.append)
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    assert len(list(folder.glob("*.dcm"))) == match.instances and not _parts(cache.root)
    back = io.load(folder)
    np.testing.assert_array_equal(back.array, pacs.ct.array)
    assert back.modality == "CT" and back.dicom["PatientID"] == PATIENT_ID
    assert reports[-1].fraction == 1.0
    again = []
    retrieve(server, match.study_uid, [match.series_uid], cache, method=method, progress=again.append)
    assert again[0].done == again[0].total == 1 and "already cached" in again[0].message


def test_retrieving_a_whole_study_brings_every_series(pacs, tmp_path):
    folders = retrieve(pacs.dimse(), pacs.study_uid, None, Cache(tmp_path / "cache"))
    assert sorted(io.load(f).modality for f in folders) == ["CBCT", "CT"]


@pytest.mark.parametrize("method", ["get", "wado"])
def test_a_cancelled_retrieve_leaves_whole_instances_and_resumes(pacs, tmp_path, method):
    match = _series(pacs)
    server = pacs.web() if method == "wado" else pacs.dimse()
    cache = Cache(tmp_path / "cache")
    token = CancelToken()

    def cancel_halfway(p):
        if p.fraction >= 0.5:
            token.cancel()

    with pytest.raises(PacsCancelled) as raised:
        retrieve(server, match.study_uid, [match.series_uid], cache, method=method, progress=cancel_halfway,
                 cancel=token)
    assert isinstance(raised.value, Cancelled) and server.name in str(raised.value)
    kept = cache.of_server(server.data_key).cached(match.study_uid, match.series_uid)
    assert 0 < len(kept) < match.instances and not _parts(cache.root)
    resumed = []
    [folder] = retrieve(server, match.study_uid, [match.series_uid], cache, method=method, progress=resumed.append)
    assert resumed[0].done == len(kept) / match.instances          # only the missing ones are fetched
    np.testing.assert_array_equal(io.load(folder).array, pacs.ct.array)


@pytest.mark.parametrize("method", ["get", "wado"])
def test_a_retrieve_leaves_the_series_as_the_pacs_lists_it_now(pacs, tmp_path, method):
    """An instance cached before that the PACS no longer lists (the series was replaced there) is not
    left beside the series: it would load as old images or a second volume."""
    match = _series(pacs)
    server = pacs.web() if method == "wado" else pacs.dimse()
    cache = Cache(tmp_path / "cache")
    [folder] = retrieve(server, match.study_uid, [match.series_uid], cache, method=method)
    old = pydicom.dcmread(next(folder.glob("*.dcm")))
    old.SOPInstanceUID = pydicom.uid.generate_uid()                 # an earlier version's image, since replaced
    old.save_as(folder / f"{old.SOPInstanceUID}.dcm", enforce_file_format=True)
    [again] = retrieve(server, match.study_uid, [match.series_uid], cache, method=method)
    assert again == folder and len(list(folder.glob("*.dcm"))) == match.instances
    assert not (folder / f"{old.SOPInstanceUID}.dcm").exists()
    assert len(io.scan(folder).entries) == 1
    np.testing.assert_array_equal(io.load(folder).array, pacs.ct.array)


# -- send ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dimse", "web"])
def test_a_synthetic_series_goes_back_and_is_found_with_its_markings(pacs, tmp_path, kind):
    ct = pacs.ct
    synthetic = ct.with_array(ct.array + 5.0, modality="CT", unit="HU", name="synthetic CT from CBCT",
                              synthetic=True, derived_from="CBCT")
    folder = io.save(synthetic, tmp_path / "synthetic", description="synthetic CT")
    results = send(getattr(pacs, kind)(), folder)
    assert len(results) == SLICES.stop - SLICES.start and all(r.ok for r in results)
    sent_uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    stored = next(s for s in pacs.series_tags() if s["SeriesInstanceUID"] == sent_uid)
    assert stored["SeriesDescription"] == "synthetic CT from CBCT — research use only"
    assert stored["ImageType"].startswith("DERIVED") and stored["Instances"] == len(results)
    found = find(pacs.dimse(), Query(level="series", patient_id=PATIENT_ID, description="synthetic*"))
    assert sent_uid in {m.series_uid for m in found}


# -- failures -------------------------------------------------------------------------------------
def _error(fn, *args) -> str:
    with pytest.raises(PacsError) as raised:
        fn(*args)
    message = str(raised.value)
    assert "\n" not in message and PASSWORD not in message
    return message


def test_a_server_that_is_down_is_named(pacs):
    port = free_port()
    assert "'down': no DICOM association with 127.0.0.1:" in _error(echo, pacs.dimse("down", port=port))
    web = pacs.web("down-web", url=f"http://127.0.0.1:{port}/dicom-web")
    assert "'down-web': no DICOMweb server answered" in _error(echo, web)


def test_a_host_name_that_does_not_resolve_is_named():
    server = Server("typo", ae_title="PACS", host="no-such-host.invalid", port=104, timeout_s=2.0)
    message = _error(echo, server)
    assert "'typo': cannot reach no-such-host.invalid:104" in message and "host name" in message


def test_the_failures_met_in_practice_say_what_they_mean():
    from engine.pacs.dimse import status_text

    server = Server("pacs", ae_title="PACS", host="127.0.0.1", port=104, calling_ae="STUDIO")
    assert "does not know our AE title 'STUDIO' as a C-MOVE destination" in status_text(0xA801, server)
    assert status_text(0xA700) == "status 0xA700 (Failure: refused: out of resources)"
    assert status_text(0xC123) == "status 0xC123 (Failure)"


def test_a_wrong_ae_title_and_an_unknown_caller_are_refused(pacs):
    assert "does not answer to AE title 'WRONGAE'" in _error(echo, pacs.dimse(ae_title="WRONGAE"))
    message = _error(find, pacs.dimse(calling_ae="STRANGER"), Query(level="study"))
    assert "does not know our AE title 'STRANGER'" in message


def test_refused_credentials_are_named_without_the_password(pacs):
    assert "refused our credentials (HTTP 401)" in _error(echo, pacs.web(password="wrong"))
    assert "refused our credentials" in _error(find, pacs.web(username="", password=""), Query())


def test_sending_a_folder_without_dicom_is_a_clear_error(pacs, tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match="notes.txt: not a DICOM instance"):
        send(pacs.dimse(), tmp_path)


def test_a_full_disk_during_c_get_is_reported_as_such_and_leaves_no_part(pacs, tmp_path, monkeypatch):
    from engine.atomic import OutputError

    match = _series(pacs)
    cache = Cache(tmp_path / "cache")

    def full(*args):
        raise OutputError(tmp_path / "cache" / "x.dcm", "could not be written (No space left on device)")

    monkeypatch.setattr(Cache, "write", full)
    with pytest.raises(OutputError, match="No space left"):
        retrieve(pacs.dimse(), match.study_uid, [match.series_uid], cache, method="get")
    assert not _parts(tmp_path)


# -- send to a picky or failing storage SCP (pynetdicom, in process) ------------------------------------
@pytest.fixture
def picky(tmp_path):
    """A storage SCP that takes CT Image Storage in Implicit VR Little Endian only, and stops answering
    (longer than our DIMSE timeout) after ``hang_after`` instances when that is set."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="PICKY")
    ae.add_supported_context(CTImageStorage, pydicom.uid.ImplicitVRLittleEndian)
    received: list[str] = []

    def store(event):
        if picky.hang_after is not None and len(received) >= picky.hang_after:
            time.sleep(2.0)
            return 0xA700
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    picky = SimpleNamespace(hang_after=None, received=received,
                            server=Server("picky", ae_title="PICKY", host="127.0.0.1", port=port, timeout_s=1.0))
    folder = io.save(Volume(np.zeros((6, 8, 8), np.float32), spacing=(1.0, 1.0, 2.0), modality="CT", unit="HU",
                            synthetic=True, derived_from="CBCT"), tmp_path / "series")
    picky.files = sorted(folder.iterdir())
    try:
        yield picky
    finally:
        listener.shutdown()


def test_a_refused_sop_class_is_its_own_failed_result_and_uncompressed_goes_implicit(picky):
    assert pydicom.dcmread(picky.files[0]).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    mr = pydicom.dcmread(picky.files[2])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    mr.save_as(picky.files[2])
    results = send(picky.server, picky.files[0].parent)
    assert [r.ok for r in results] == [True, True, False, True, True, True]
    assert results[2].detail == "the server does not take MR Image Storage in Explicit VR Little Endian"
    assert len(picky.received) == 5


def test_a_server_that_takes_none_of_the_instances_fails_each_one(picky):
    for path in picky.files:
        mr = pydicom.dcmread(path)
        mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
        mr.save_as(path)
    results = send(picky.server, picky.files[0].parent)
    assert len(results) == 6 and not any(r.ok for r in results)
    assert {r.detail for r in results} == {"the server does not take MR Image Storage in Explicit VR Little Endian"}


def test_a_dropped_connection_keeps_the_results_so_far(picky):
    picky.hang_after = 2
    results = send(picky.server, picky.files[0].parent)
    assert [r.ok for r in results] == [True, True, False, False, False, False]
    assert all("connection to the server was lost" in r.detail for r in results[2:])


# -- a PACS that is silent while it moves (pynetdicom Q/R SCP, in process) ------------------------------
@pytest.fixture
def silent(tmp_path):
    """A Q/R SCP answering C-FIND for the instances of one series and, to a C-MOVE, sending no
    response for ``delay_s`` (as a PACS busy with a large series may), then the instances."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    )

    folder = io.save(Volume(np.zeros((6, 8, 8), np.float32), spacing=(1.0, 1.0, 2.0), modality="CT", unit="HU"),
                     tmp_path / "series")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    ae = AE(ae_title="SILENT")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    state = SimpleNamespace(delay_s=0.0, move_port=free_port(), study_uid=str(datasets[0].StudyInstanceUID),
                            series_uid=str(datasets[0].SeriesInstanceUID), instances=len(datasets),
                            listed=len(datasets))

    def c_find(event):
        for ds in datasets[:state.listed]:
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.StudyInstanceUID, answer.SeriesInstanceUID = ds.StudyInstanceUID, ds.SeriesInstanceUID
            answer.SOPInstanceUID = ds.SOPInstanceUID
            yield 0xFF00, answer

    def c_move(event):
        deadline = time.monotonic() + state.delay_s
        while time.monotonic() < deadline and not event.assoc.is_aborted:
            time.sleep(0.02)
        yield "127.0.0.1", state.move_port
        yield len(datasets)
        for ds in datasets:
            yield 0xFF00, ds

    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False,
                               evt_handlers=[(evt.EVT_C_FIND, c_find), (evt.EVT_C_MOVE, c_move)])
    state.server = Server("silent", ae_title="SILENT", host="127.0.0.1", port=port, move_port=state.move_port,
                          timeout_s=1.0)
    try:
        yield state
    finally:
        listener.shutdown()


def test_a_c_move_silent_for_longer_than_the_timeout_completes(silent, tmp_path):
    silent.delay_s = 2.0                                           # twice the server's timeout_s
    [folder] = retrieve(silent.server, silent.study_uid, [silent.series_uid], Cache(tmp_path / "cache"))
    assert len(list(folder.glob("*.dcm"))) == silent.instances


def test_a_cancel_aborts_a_silent_c_move_at_once(silent, tmp_path):
    silent.delay_s = 30.0
    token = CancelToken()
    timer = threading.Timer(0.3, token.cancel)
    timer.start()
    started = time.monotonic()
    server = dataclasses.replace(silent.server, timeout_s=10.0)    # a cancel does not wait for a timeout
    with pytest.raises(PacsCancelled):
        retrieve(server, silent.study_uid, [silent.series_uid], Cache(tmp_path / "cache"), cancel=token)
    assert time.monotonic() - started < 3.0
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.dcm"))


def test_images_a_pacs_sent_beyond_those_its_query_listed_are_kept(silent, tmp_path):
    silent.listed = 3                                              # a PACS capping what an image query lists
    [folder] = retrieve(silent.server, silent.study_uid, [silent.series_uid], Cache(tmp_path / "cache"))
    assert len(list(folder.glob("*.dcm"))) == silent.instances == 6


def test_a_c_move_silent_for_ten_timeouts_is_stopped_and_said_so(silent, tmp_path):
    silent.delay_s = 30.0
    # stopped after 5 s of silence; 0.5 s a timeout, so that the C-FIND before it is answered on a loaded machine
    server = dataclasses.replace(silent.server, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(PacsError, match="'silent': C-MOVE: nothing from the server for 5 s") as raised:
        retrieve(server, silent.study_uid, [silent.series_uid], Cache(tmp_path / "cache"))
    assert not isinstance(raised.value, PacsCancelled) and time.monotonic() - started < 12.0


def test_an_image_still_arriving_over_a_slow_link_is_not_silence(tmp_path):
    """Every piece of a message the PACS sends counts as hearing from it: one image taking several
    stall limits to arrive completes (it was stopped when only whole images and responses counted)."""
    import subprocess
    import sys

    import slow_pacs

    port = free_port()
    scp = subprocess.Popen([sys.executable, slow_pacs.__file__, str(port), "0.035"], stdout=subprocess.PIPE, text=True)
    try:
        assert scp.stdout is not None and scp.stdout.readline().strip() == "ready"
        server = Server("slow", ae_title="SLOW", host="127.0.0.1", port=port, timeout_s=0.3)   # stopped after 3 s of silence
        started = time.monotonic()
        [folder] = retrieve(server, slow_pacs.STUDY, [slow_pacs.SERIES], Cache(tmp_path / "cache"), method="get")
        assert time.monotonic() - started > 3.0                    # longer than the stall limit, yet never silent
        assert [p.name for p in folder.glob("*.dcm")] == [f"{slow_pacs.IMAGE}.dcm"]
    finally:
        scp.kill()
        scp.wait()


# -- a strict PACS (pynetdicom Q/R SCP, in process) -------------------------------------------------------
STUDY_LEVEL = {"QueryRetrieveLevel", "PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription",
               "ModalitiesInStudy", "AccessionNumber", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
SERIES_LEVEL = {"QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription",
                "SeriesNumber", "NumberOfSeriesRelatedInstances"}


def _find_on(c_find, query: Query):
    """``find`` against an in-process Q/R SCP (AE STRICT) answering C-FIND with ``c_find``."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    ae = AE(ae_title="STRICT")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, c_find)])
    try:
        return find(Server("strict", ae_title="STRICT", host="127.0.0.1", port=port, timeout_s=5.0), query)
    finally:
        listener.shutdown()


def test_a_series_query_asks_a_strict_pacs_each_level_its_own_keys():
    """Study Root C-FIND as a strict PACS checks it: at SERIES level only series attributes and the
    study's UID (given); anything else is refused (0xA900)."""

    studies = {"1.2.3.1": ("Strict^One", "20240102", "first"), "1.2.3.2": ("Strict^Two", "20240103", "second")}
    asked = []

    def c_find(event):
        ds = event.identifier
        keys = {elem.keyword for elem in ds}
        asked.append((ds.QueryRetrieveLevel, keys))
        if ds.QueryRetrieveLevel == "STUDY" and keys <= STUDY_LEVEL:
            for uid, (name, date, description) in studies.items():
                answer = pydicom.Dataset()
                answer.QueryRetrieveLevel, answer.StudyInstanceUID, answer.PatientID = "STUDY", uid, "STRICT"
                answer.PatientName, answer.StudyDate, answer.StudyDescription = name, date, description
                yield 0xFF00, answer
        elif ds.QueryRetrieveLevel == "SERIES" and keys <= SERIES_LEVEL and ds.get("StudyInstanceUID") in studies:
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel, answer.StudyInstanceUID = "SERIES", ds.StudyInstanceUID
            answer.SeriesInstanceUID, answer.Modality = ds.StudyInstanceUID + ".7", "CT"
            answer.SeriesDescription, answer.NumberOfSeriesRelatedInstances = "head", 3
            yield 0xFF00, answer
        else:
            yield 0xA900, None

    found = _find_on(c_find, Query(level="series", patient_id="STRICT", modality="CT", date_from="20240101"))
    assert [(m.patient_name, m.study_description, m.study_date, m.series_uid, m.modality, m.instances)
            for m in found] == [("Strict^One", "first", "20240102", "1.2.3.1.7", "CT", 3),
                                ("Strict^Two", "second", "20240103", "1.2.3.2.7", "CT", 3)]
    assert [level for level, _ in asked] == ["STUDY", "SERIES", "SERIES"]


@pytest.mark.parametrize("name", ["Müller*", "山田*"])
def test_a_name_beyond_ascii_is_asked_in_utf8_and_says_so(name):
    """Without a character set a name that cannot be encoded went out as '??*': every patient matched."""

    received = []

    def c_find(event):
        ds = event.identifier
        received.append((ds.get("SpecificCharacterSet"), str(ds.PatientName)))
        yield 0x0000, None

    found = _find_on(c_find, Query(level="study", patient_name=name))
    assert found == [] and received == [("ISO_IR 192", name)]


def test_the_test_orthanc_starts_again_on_fresh_ports_when_one_was_taken(tmp_path, monkeypatch):
    """tests/orthanc_server.py: a port freed by free_port and taken before Orthanc binds it (a loaded
    CI machine) makes Orthanc exit; the start is retried with fresh ports."""
    import socket

    import orthanc_server

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        chosen = iter([taken])
        fresh = orthanc_server.free_port
        monkeypatch.setattr(orthanc_server, "free_port", lambda: next(chosen, None) or fresh())
        server = start_orthanc(tmp_path)
        try:
            assert server.dicom_port != taken and server.rest("/system")["DicomAet"] == "TESTPACS"
        finally:
            server.stop()


def test_wado_asks_for_instances_as_stored_and_closes_every_session(pacs, tmp_path, monkeypatch):
    from engine.pacs import dicomweb

    accepts, opened, closed = [], [], []
    init, send, close = dicomweb._Session.__init__, dicomweb._Session.send, dicomweb._Session.close
    monkeypatch.setattr(dicomweb._Session, "__init__", lambda self: opened.append(self) or init(self))
    monkeypatch.setattr(dicomweb._Session, "send",
                        lambda self, request, **kw: accepts.append(request.headers.get("Accept")) or send(self, request,
                                                                                                          **kw))
    monkeypatch.setattr(dicomweb._Session, "close", lambda self: closed.append(self) or close(self))
    match = _series(pacs)
    retrieve(pacs.web(), match.study_uid, [match.series_uid], Cache(tmp_path / "cache"), method="wado")
    wado = [a for a in accepts if "application/dicom" in a and "json" not in a]
    assert wado and all('transfer-syntax="*"' in a or "transfer-syntax=*" in a for a in wado)
    assert opened and len(closed) == len(opened)


def test_a_tls_failure_is_named_as_such(pacs):
    web = pacs.web("tls", url=f"https://127.0.0.1:{pacs.http_port}/dicom-web")      # https to a plain HTTP server
    message = _error(echo, web)
    assert f"'tls': TLS problem with https://127.0.0.1:{pacs.http_port}/dicom-web" in message


def test_c_get_asks_only_for_the_series_sop_classes(pacs, tmp_path, monkeypatch):
    from engine.pacs import dimse

    asked, association = [], dimse.association

    def recording(server, contexts, **kwargs):
        asked.append([str(uid) for uid, _ in contexts])
        return association(server, contexts, **kwargs)

    monkeypatch.setattr(dimse, "association", recording)
    match = _series(pacs)
    retrieve(pacs.dimse(), match.study_uid, [match.series_uid], Cache(tmp_path / "cache"), method="get")
    assert asked[-1] == [str(dimse.StudyRootQueryRetrieveInformationModelGet), pydicom.uid.CTImageStorage]


def test_a_sop_class_we_cannot_take_is_named():
    from engine.pacs.dimse import STORAGE_CLASSES, storage_classes

    server = Server("x", ae_title="X", host="h")
    assert storage_classes(server, {pydicom.uid.CTImageStorage, ""}) == STORAGE_CLASSES       # not told: all
    with pytest.raises(PacsError, match="a kind we cannot receive: 1.2.3.4.5"):
        storage_classes(server, {pydicom.uid.CTImageStorage, "1.2.3.4.5"})


def test_a_failure_the_server_answers_releases_the_association():
    """A refused C-FIND is the server's answer: the association is released, not aborted."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    ended = []
    ae = AE(ae_title="REFUSER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    handlers = [(evt.EVT_C_FIND, lambda event: iter([(0xC000, None)])),
                (evt.EVT_RELEASED, lambda event: ended.append("released")),
                (evt.EVT_ABORTED, lambda event: ended.append("aborted"))]
    listener = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        message = _error(find, Server("refuser", ae_title="REFUSER", host="127.0.0.1", port=port, timeout_s=5.0),
                         Query(level="study"))
        deadline = time.monotonic() + 5
        while not ended and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.shutdown()
    assert "C-FIND failed with status 0xC000" in message and ended == ["released"]


# -- a DICOMweb server of our own (http.server, in process) --------------------------------------------
def _qido_server(answer):
    """An HTTP server answering every GET with ``answer(offset, limit)``: (status, body bytes); the
    requests it got are in ``.asked``."""
    import http.server
    import json
    import urllib.parse

    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["0"])[0])
            asked.append((offset, limit))
            status, body = answer(offset, limit)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.asked = asked
    httpd.server = Server("web", url=f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web", timeout_s=5.0)
    return httpd


def _study(k: int) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [f"1.2.3.{k}"]}, "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"P^{k}"}]}}


def test_qido_pages_through_a_server_that_caps_its_pages_and_stops_at_one_that_ignores_the_offset():
    capped = _qido_server(lambda offset, limit: (200, [_study(k) for k in range(offset, min(offset + 3, 7))]))
    try:
        assert [m.study_uid for m in find(capped.server, Query(level="study"))] == [f"1.2.3.{k}" for k in range(7)]
    finally:
        capped.shutdown()
    ignoring = _qido_server(lambda offset, limit: (200, [_study(0), _study(1)]))   # the first page, always
    try:
        assert [m.study_uid for m in find(ignoring.server, Query(level="study"))] == ["1.2.3.0", "1.2.3.1"]
        assert len(ignoring.asked) == 2                            # the second page brought nothing new
    finally:
        ignoring.shutdown()


def test_a_long_listing_from_a_server_that_ignores_offset_is_an_error_not_a_short_list():
    server = _qido_server(lambda offset, limit: (200, [_study(k) for k in range(min(limit, 1500))]))
    try:
        with pytest.raises(PacsError, match="same matches again for offset 1000 .* incomplete"):
            find(server.server, Query(level="study"))
    finally:
        server.shutdown()


def test_a_series_of_more_images_than_a_query_may_list_is_listed_whole():
    from engine.pacs import dicomweb

    def instance(k: int) -> dict:
        return {"00080018": {"vr": "UI", "Value": [f"1.2.3.4.{k}"]}}

    server = _qido_server(lambda offset, limit: (200, [instance(k) for k in range(offset, min(offset + limit, 25_000))]))
    try:
        assert len(dicomweb.instances(server.server, "1.2.3", "1.2.3.4")) == 25_000
    finally:
        server.shutdown()


def test_qido_answers_that_are_not_dicom_json_are_named():
    for body in (b"<html>proxy error</html>", {"not": "a list"}, [[1, 2]]):
        server = _qido_server(lambda offset, limit, body=body: (200, body))
        try:
            with pytest.raises(PacsError, match="'web': QIDO-RS: .*(could not be read|not a list of DICOM JSON)"):
                find(server.server, Query(level="study"))
        finally:
            server.shutdown()


def test_a_cancel_stops_a_qido_search_between_pages():
    token = CancelToken()

    def endless(offset, limit):
        if offset >= 30:
            token.cancel()
        return 200, [_study(k) for k in range(offset, offset + 10)]

    server = _qido_server(endless)
    try:
        with pytest.raises(PacsCancelled):
            find(server.server, Query(level="study"), cancel=token)
        assert len(server.asked) <= 5
    finally:
        server.shutdown()
