"""DIMSE over TLS against a local pynetdicom SCP that asks for TLS and for our certificate
(tests/engine/tls: a throw-away authority and its certificates): verify, find and a C-MOVE retrieve —
the PACS connecting back to our storage SCP over TLS — work; a server certificate from another
authority, a missing certificate of ours and TLS off each fail with one line naming the server and
the reason; a server's TLS settings are checked when it is defined."""
from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from orthanc_server import free_port

import engine.io as io
from engine.io.volume import Volume
from engine.pacs import Cache, PacsError, Query, Server, echo, find, retrieve
from engine.pacs.servers import load_servers, save_servers

TLS = Path(__file__).parent / "tls"


def _context(purpose: int, cert: str) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.load_cert_chain(TLS / f"{cert}.pem", TLS / f"{cert}.key")
    context.load_verify_locations(TLS / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture(scope="module")
def secure_pacs(tmp_path_factory):
    """A Q/R SCP on 127.0.0.1 over TLS only, requiring a client certificate signed by the test
    authority, holding one small CT series; C-MOVE sends it back over TLS to the destination port
    each test sets (``moves_to``)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        Verification,
    )

    folder = io.save(Volume(np.zeros((3, 8, 8), np.float32), spacing=(1.0, 1.0, 2.0), modality="CT", unit="HU",
                            dicom={"PatientID": "TLS-1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.3.1"}),
                     tmp_path_factory.mktemp("held") / "ct")
    held = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    state = SimpleNamespace(moves_to=0)

    def on_find(event):
        wanted = event.identifier
        for ds in held:
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel = wanted.QueryRetrieveLevel
            for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                            "Modality", "SeriesDescription", "StudyDate", "PatientName"):
                if keyword in wanted:
                    setattr(answer, keyword, ds.get(keyword, ""))
            yield 0xFF00, answer
            if wanted.QueryRetrieveLevel != "IMAGE":
                return

    def on_move(event):
        yield "127.0.0.1", state.moves_to, {"tls_args": (_context(ssl.PROTOCOL_TLS_CLIENT, "server"), "localhost")}
        yield len(held)
        for ds in held:
            yield 0xFF00, ds

    ae = AE(ae_title="SECURE")
    for context in (Verification, StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove):
        ae.add_supported_context(context)
    ae.add_requested_context(CTImageStorage)
    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, ssl_context=_context(ssl.PROTOCOL_TLS_SERVER, "server"),
                               evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)])
    state.server = Server("secure", ae_title="SECURE", host="127.0.0.1", port=port, timeout_s=5.0, tls=True,
                          tls_ca=str(TLS / "ca.pem"), tls_cert=str(TLS / "client.pem"), tls_key=str(TLS / "client.key"))
    state.held = held
    try:
        yield state
    finally:
        listener.shutdown()


def _error(fn, *args) -> str:
    with pytest.raises(PacsError) as raised:
        fn(*args)
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_verify_find_and_a_c_move_retrieve_work_over_tls_with_our_certificate(secure_pacs, tmp_path):
    server = secure_pacs.server
    assert echo(server) >= 0.0
    found = find(server, Query(level="series", patient_id="TLS-1"))
    assert [m.series_uid for m in found] == [str(secure_pacs.held[0].SeriesInstanceUID)]
    secure_pacs.moves_to = free_port()
    moving = server.__class__(**{**server.to_dict(), "move_port": secure_pacs.moves_to})
    folder, = retrieve(moving, found[0].study_uid, [found[0].series_uid], Cache(tmp_path / "cache"))
    got = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir())
    assert got == sorted(str(ds.SOPInstanceUID) for ds in secure_pacs.held)
    assert "over TLS with our certificate" in server.describe()


def test_a_certificate_from_another_authority_is_refused_in_words(secure_pacs):
    strange = Server(**{**secure_pacs.server.to_dict(), "tls_ca": str(TLS / "other_ca.pem")})
    message = _error(echo, strange)
    assert "'secure': TLS problem with 127.0.0.1:" in message and "certificate verify failed" in message


def test_without_our_certificate_a_server_that_asks_for_one_says_so(secure_pacs, tmp_path):
    anonymous = Server(**{k: v for k, v in secure_pacs.server.to_dict().items() if k not in ("tls_cert", "tls_key")})
    message = _error(echo, anonymous)
    assert "'secure': TLS problem" in message and "our certificate" in message
    assert "needs our own certificate" in _error(
        retrieve, Server(**{**anonymous.to_dict(), "move_port": free_port()}), "1.2", ["1.2.3"], Cache(tmp_path))


def test_tls_off_against_a_tls_server_fails_naming_it(secure_pacs):
    plain = Server("secure", ae_title="SECURE", host="127.0.0.1", port=secure_pacs.server.port, timeout_s=2.0)
    assert _error(echo, plain).startswith("PACS 'secure': ")


def test_a_server_s_tls_settings_are_checked_and_stored(tmp_path):
    with pytest.raises(ValueError, match="tls_key goes with tls_cert"):
        Server("s", ae_title="A", host="h", tls=True, tls_key="k.pem")
    with pytest.raises(ValueError, match="TLS is off"):
        Server("s", ae_title="A", host="h", tls_ca="ca.pem")
    with pytest.raises(ValueError, match="https"):
        Server("s", url="https://pacs.example.org/dicom-web", tls=True)
    server = Server("s", ae_title="A", host="h", tls=True, tls_ca="/etc/ca.pem")
    save_servers([server], tmp_path / "servers.json")
    assert load_servers(tmp_path / "servers.json") == [server]
    (tmp_path / "bad.json").write_text('{"servers": [{"name": "s", "ae_title": "A", "host": "h", "tls": "yes"}]}')
    with pytest.raises(ValueError, match="tls must be true or false"):
        load_servers(tmp_path / "bad.json")
