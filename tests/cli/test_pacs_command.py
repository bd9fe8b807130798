"""`python main.py pacs servers|echo|find|get|send` against a real Orthanc (tests/orthanc_server.py):
a server stored by name (its password from the environment, never printed) is verified, queried,
retrieved from into a cache folder that opens as a DICOM series, and sent a synthetic series; a
server that is down or a name that is not stored exits 2 with one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from orthanc_server import PASSWORD, USER, free_port, start_orthanc

import engine.io as io
from engine.io.volume import Volume
from engine.pacs import Cache
from main import main

PATIENT_ID = "CLI-0001"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(folder)
    try:
        ramp = np.arange(4 * 12 * 10, dtype=np.float32).reshape(4, 12, 10) - 500
        ct = Volume(ramp, spacing=(0.8, 0.8, 2.0), modality="CT", unit="HU",
                    dicom={"PatientName": "Cli^Test", "PatientID": PATIENT_ID, "StudyDescription": "cli study"})
        server.upload(io.save(ct, folder / "export" / "ct", description="cli ct"))
        server.ct = ct
        yield server
    finally:
        server.stop()


def _run(capsys, *argv) -> tuple[int, dict | str, str]:
    code = main(["pacs", *argv])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except json.JSONDecodeError:
        return code, out, err


def test_a_stored_server_is_verified_queried_retrieved_from_and_sent_to(pacs, tmp_path, capsys, monkeypatch):
    servers = str(tmp_path / "pacs_servers.json")
    monkeypatch.setenv("TEST_PACS_PASSWORD", PASSWORD)
    code, listed, _ = _run(capsys, "servers", "--servers-file", servers, "--add", "web", "--url",
                           f"{pacs.url}/dicom-web", "--user", USER, "--password-env", "TEST_PACS_PASSWORD", "--json")
    assert code == 0 and listed["servers"] == [{"name": "web", "where": f"DICOMweb {pacs.url}/dicom-web, basic auth "
                                                                        f"as {USER}"}]
    code, _, _ = _run(capsys, "servers", "--servers-file", servers, "--add", "dimse", "--host", "127.0.0.1",
                      "--port", str(pacs.dicom_port), "--ae-title", "TESTPACS", "--json")
    assert code == 0 and PASSWORD in (tmp_path / "pacs_servers.json").read_text()

    for name in ("dimse", "web"):
        code, answer, _ = _run(capsys, "echo", "--server", name, "--servers-file", servers, "--json")
        assert code == 0 and answer["ok"] and PASSWORD not in json.dumps(answer)
    code, found, _ = _run(capsys, "find", "--server", "web", "--servers-file", servers, "--level", "series",
                          "--patient-id", PATIENT_ID, "--json")
    [match] = found["matches"]
    assert code == 0 and match["series_description"] == "cli ct" and match["instances"] == 4

    old = Cache(tmp_path / "cache")                          # a series used long ago, over --cache-limit
    with old.receiving("1.2", "1.2.3"):
        old.write("1.2", "1.2.3", "1.2.3.4", b"x" * 4096)
    os.utime(old.series_dir("1.2", "1.2.3"), (1000, 1000))
    code, got, _ = _run(capsys, "get", "--server", "dimse", "--servers-file", servers, "--study", match["study_uid"],
                        "--cache", str(tmp_path / "cache"), "--cache-limit", "1K", "--quiet", "--json")
    assert code == 0 and got["method"] == "get" and not old.cached("1.2", "1.2.3")
    assert Path(got["folders"][0]).parents[1] == tmp_path / "cache" / "synermedgen-pacs"
    np.testing.assert_array_equal(io.load(got["folders"][0]).array, pacs.ct.array)

    synthetic = pacs.ct.with_array(pacs.ct.array + 1, synthetic=True, derived_from="CBCT")
    folder = io.save(synthetic, tmp_path / "synthetic", description="synthetic")
    code, sent, _ = _run(capsys, "send", str(folder), "--server", "web", "--servers-file", servers, "--quiet", "--json")
    assert code == 0 and (sent["sent"], sent["failed"]) == (4, 0)
    code, text, _ = _run(capsys, "find", "--server", "dimse", "--servers-file", servers, "--level", "series",
                         "--description", "synthetic*")
    assert code == 0 and "synthetic CT from CBCT — research use only" in text

    code, listed, _ = _run(capsys, "servers", "--servers-file", servers, "--remove", "web", "--json")
    assert [s["name"] for s in listed["servers"]] == ["dimse"]


def test_a_server_down_or_unknown_exits_2_with_one_line(pacs, tmp_path, capsys):
    code, _, err = _run(capsys, "echo", "--host", "127.0.0.1", "--port", str(free_port()), "--ae-title", "TESTPACS")
    assert code == 2 and err.count("\n") == 1 and "no DICOM association with 127.0.0.1:" in err
    code, _, err = _run(capsys, "find", "--server", "nowhere", "--servers-file", str(tmp_path / "none.json"))
    assert code == 2 and "no PACS server named 'nowhere' (known: none)" in err
    code, _, err = _run(capsys, "echo", "--url", f"{pacs.url}/dicom-web", "--user", USER, "--password-env", "UNSET_VAR")
    assert code == 2 and "environment variable UNSET_VAR is not set" in err
    code, _, err = _run(capsys, "echo", "--url", f"{pacs.url}/dicom-web")
    assert code == 2 and "refused our credentials (HTTP 401)" in err
    with pytest.raises(SystemExit) as exited:
        main(["pacs", "get", "--server", "x", "--cache-limit", "lots"])
    assert exited.value.code == 2 and "cache limit 'lots': give a positive size" in capsys.readouterr().err


def test_a_password_sent_over_plain_http_is_warned_of(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PACS_PW", "secret")
    servers = str(tmp_path / "servers.json")
    code, _, err = _run(capsys, "servers", "--servers-file", servers, "--add", "ward", "--url",
                        "http://pacs.hospital.example/dicom-web", "--user", "u", "--password-env", "PACS_PW")
    assert code == 0 and "warning: server 'ward': its password travels unencrypted over http://" in err
    assert "secret" not in err
    code, _, err = _run(capsys, "servers", "--servers-file", servers, "--add", "safe", "--url",
                        "https://pacs.hospital.example/dicom-web", "--user", "u", "--password-env", "PACS_PW")
    assert code == 0 and "warning" not in err


def test_a_server_over_tls_is_stored_with_its_certificate_files_and_verified(tmp_path, capsys):
    """`--tls` with the hospital's authority and our certificate: stored with absolute paths (the
    servers file is read from any folder), verified against a TLS-only SCP that asks for our
    certificate; a missing file or TLS for a DICOMweb URL stops with one line."""
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    tls = Path(__file__).resolve().parents[1] / "engine" / "tls"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "server.pem", tls / "server.key")
    context.load_verify_locations(tls / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    ae = AE(ae_title="SECURE")
    ae.add_supported_context(Verification)
    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context)
    servers = str(tmp_path / "servers.json")
    try:
        code, out, err = _run(capsys, "servers", "--servers-file", servers, "--add", "secure", "--host", "127.0.0.1",
                              "--port", str(port), "--ae-title", "SECURE", "--tls", "--tls-ca", str(tls / "ca.pem"),
                              "--tls-cert", str(tls / "client.pem"), "--tls-key", str(tls / "client.key"))
        assert code == 0, err
        stored = json.loads(Path(servers).read_text())["servers"][0]
        assert stored["tls"] is True and stored["tls_ca"] == str(tls / "ca.pem")
        code, out, err = _run(capsys, "echo", "--server", "secure", "--servers-file", servers)
        assert code == 0, err
    finally:
        listener.shutdown()
    code, out, err = _run(capsys, "servers", "--servers-file", servers, "--add", "x", "--host", "h", "--ae-title", "A",
                          "--tls", "--tls-ca", str(tmp_path / "missing.pem"))
    assert code == 2 and "missing.pem: no such certificate file" in err
    code, out, err = _run(capsys, "servers", "--servers-file", servers, "--add", "x", "--url",
                          "https://pacs.example.org/dicom-web", "--tls")
    assert code == 2 and "https://" in err
