"""PACS settings and cache without a server: server definitions round-trip through their file
(private to the user, secrets never shown), bad definitions are refused with the field named,
queries become the DICOM keys a PACS matches, and the cache keeps within its size limit."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from engine.pacs import Cache, Query, Server, find_server, load_servers, parse_size, save_servers, servers_file
from engine.pacs.cache import CACHE_DIR_ENV, SUBFOLDER
from engine.paths import CONFIG_DIR_ENV

DIMSE = Server("ward", ae_title="ORTHANC", host="pacs.example", port=4242, calling_ae="ME", move_port=11112)
WEB = Server("web", url="https://pacs.example/dicom-web", username="alice", password="hunter2-secret")
TOKEN = Server("cloud", url="https://cloud.example/dicomweb", token="tok-abc-secret")


def test_servers_round_trip_through_a_private_file_and_never_show_secrets(tmp_path):
    path = save_servers([DIMSE, WEB, TOKEN], tmp_path / "config" / "pacs_servers.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_servers(path) == [DIMSE, WEB, TOKEN]
    assert find_server("cloud", path).token == "tok-abc-secret"
    for server in (WEB, TOKEN):
        for shown in (repr(server), server.describe()):
            assert "secret" not in shown
    assert WEB.describe() == "DICOMweb https://pacs.example/dicom-web, basic auth as alice"
    assert DIMSE.describe() == "ORTHANC@pacs.example:4242 (we call as ME, C-MOVE to our port 11112)"
    assert json.loads(path.read_text())["servers"][0] == DIMSE.to_dict()


def test_the_servers_file_lives_in_the_app_config_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert servers_file() == tmp_path / "SynerMedGen" / "SynerMedGen Studio" / "pacs_servers.json"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "elsewhere"))
    assert servers_file() == tmp_path / "elsewhere" / "pacs_servers.json"
    assert load_servers() == []


@pytest.mark.parametrize("fields, problem", [
    (dict(name="a", ae_title="", host="h"), "AE title '' is not a DICOM AE title"),
    (dict(name="a", ae_title="A" * 17, host="h"), "is not a DICOM AE title"),
    (dict(name="a", ae_title="X", host="h", calling_ae="BAD\\AE"), "calling AE title"),
    (dict(name="a", ae_title="PACSÉ", host="h"), "16 printable ASCII characters"),
    (dict(name="a", ae_title="PACS\x7f", host="h"), "is not a DICOM AE title"),
    (dict(name="a", ae_title="   ", host="h"), "is not a DICOM AE title"),
    (dict(name="a", ae_title="X", host=""), "needs a host"),
    (dict(name="a", ae_title="X", host="h", port=70000), "port must be a whole number"),
    (dict(name="a", url="ftp://x"), "is not an http(s):// address"),
    (dict(name="a", url="https://u:p@x/"), "not in the URL"),
    (dict(name="a", url="https://x/", username="u", token="t"), "not both"),
    (dict(name=" ", url="https://x/"), "needs a name"),
])
def test_a_bad_server_definition_names_what_is_wrong(fields, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        Server(**fields)


def test_a_damaged_servers_file_is_named(tmp_path):
    path = tmp_path / "pacs_servers.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="pacs_servers.json: not a readable servers file"):
        load_servers(path)
    path.write_text(json.dumps({"servers": [{"name": "x", "url": "https://x/", "colour": "red"}]}))
    with pytest.raises(ValueError, match="unknown field.*colour"):
        load_servers(path)
    path.write_text(json.dumps({"servers": [{"name": "x", "host": "h", "ae_title": "A", "port": "104"}]}))
    with pytest.raises(ValueError, match="port must be a whole number, got '104'"):
        load_servers(path)
    for secret in ("password", "token"):
        path.write_text(json.dumps({"servers": [{"name": "x", "url": "https://x/", secret: 12345}]}))
        with pytest.raises(ValueError, match=f"{secret} must be text, got a value of type int") as raised:
            load_servers(path)
        assert "12345" not in str(raised.value)
    with pytest.raises(ValueError, match="no PACS server named 'y' \\(known: none\\)"):
        find_server("y", tmp_path / "missing.json")


def test_a_query_becomes_the_keys_a_pacs_matches():
    keys = Query(level="series", patient_name="Doe*", date_from="20240101", modality="MR",
                 description="T1*").keys()
    assert keys["PatientName"] == "Doe*" and keys["StudyDate"] == "20240101-"
    assert keys["Modality"] == "MR" and keys["SeriesDescription"] == "T1*" and keys["SeriesInstanceUID"] == ""
    study = Query(level="study", modality="CT", date_from="20240102", date_to="20240102").keys()
    assert study["ModalitiesInStudy"] == "CT" and study["StudyDate"] == "20240102" and "Modality" not in study
    with pytest.raises(ValueError, match="YYYYMMDD"):
        Query(date_from="2024-01-01")
    with pytest.raises(ValueError, match="patient name and ID only"):
        Query(level="patient", modality="CT")


def test_the_cache_is_private_names_files_by_uid_and_keeps_within_its_limit(tmp_path):
    cache = Cache(tmp_path / "cache", limit_bytes=2500)
    (tmp_path / "cache").mkdir()
    os.chmod(tmp_path / "cache", 0o755)
    cache.ensure()
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700 and cache.root.parent == tmp_path / "cache"
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o755        # the user's folder: left alone
    assert cache.instance_path("1.2", "1.2.3", "../../etc/passwd").parent == cache.series_dir("1.2", "1.2.3")
    for k in range(3):
        for j in range(2):
            cache.write("1.2", f"1.2.{k}", f"1.2.{k}.{j}", b"x" * 500)
        os.utime(cache.series_dir("1.2", f"1.2.{k}"), (1000 + k, 1000 + k))
    assert cache.cached("1.2", "1.2.1") == {"1.2.1.0", "1.2.1.1"}
    odd = "1.2.3.junk uid"                                          # a nonconforming UID: hashed file name
    cache.write("1.2", "1.2.3", odd, b"x")
    assert cache.missing("1.2", "1.2.3", [odd, "1.2.3.4"]) == ["1.2.3.4"]
    removed = cache.prune(keep={cache.series_dir("1.2", "1.2.0")})
    assert removed == [cache.series_dir("1.2", "1.2.1")]            # the oldest not kept
    assert cache.cached("1.2", "1.2.0") and cache.cached("1.2", "1.2.2")


def test_two_servers_images_under_one_uid_are_cached_apart_and_retrieved_from_the_one_asked(tmp_path, monkeypatch):
    """A test PACS beside the clinical one may hold another patient's images under the same UIDs: a
    retrieve from B had found A's cached instances 'already received' and returned A's patient."""
    from engine.pacs import dimse, operations

    cache = Cache(tmp_path / "cache", limit_bytes=10_000)
    a_server = Server("A", ae_title="ORTHANC", host="pacs-a", port=4242)
    b_server = Server("B", ae_title="ORTHANC", host="pacs-b", port=4242)
    a, b = cache.of_server(a_server.data_key), cache.of_server(b_server.data_key)
    cache.ensure()
    with a.receiving("1.2", "1.2.3"):
        a.write("1.2", "1.2.3", "1.2.3.1", b"alice" * 10)
    assert a.cached("1.2", "1.2.3") == {"1.2.3.1"} and b.cached("1.2", "1.2.3") == set()
    assert cache.of_server(Server("A renamed", ae_title="ORTHANC", host="pacs-a", port=4242).data_key).cached(
        "1.2", "1.2.3") == {"1.2.3.1"}                                  # the server's data, not its name
    asked = []
    monkeypatch.setattr(dimse, "get", lambda server, study, series, view, *_: asked.append(view) or
                        view.series_dir(study, series))
    [folder] = operations.retrieve(b_server, "1.2", ["1.2.3"], cache=cache, method="get")
    assert folder == b.series_dir("1.2", "1.2.3") != a.series_dir("1.2", "1.2.3")
    assert cache.prune() == [] and len(cache._series()) == 1            # one limit over every server's series


def test_a_series_is_received_with_one_listing_and_one_folder_flush(tmp_path, monkeypatch):
    """Each instance is atomic and flushed, but the series folder is tidied and flushed once per
    retrieve, not once per instance (a 2000-slice CT, a cache on NFS); a killed retrieve's .part goes."""
    cache = Cache(tmp_path / "cache")
    folder = cache.series_dir("1.2", "1.2.3")
    cache.ensure()
    folder.mkdir(parents=True)
    stale = folder / ".1.2.3.9.dcm.999999999-dead.part.dcm"          # a process id that cannot exist
    stale.write_bytes(b"half")
    listings, syncs = [], []
    real_listdir, real_fsync = os.listdir, os.fsync
    monkeypatch.setattr(os, "listdir", lambda p=".": listings.append(Path(p)) or real_listdir(p))
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    with cache.receiving("1.2", "1.2.3"):
        for k in range(40):
            cache.write("1.2", "1.2.3", f"1.2.3.{k}", b"x" * 10)
    assert listings.count(folder) == 1 and len(syncs) == 40 + 1
    assert not stale.exists() and cache.missing("1.2", "1.2.3", [f"1.2.3.{k}" for k in range(41)]) == ["1.2.3.40"]
    assert not [p for p in folder.iterdir() if ".part" in p.name]


def test_a_cache_folder_open_to_others_is_refused_not_changed(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "shared"))
    cache = Cache()
    assert cache.root == tmp_path / "shared" / SUBFOLDER
    cache.root.mkdir(parents=True)
    os.chmod(cache.root, 0o750)
    with pytest.raises(ValueError, match=f"{cache.root}: the PACS cache folder is open to other users.*chmod 700"):
        cache.ensure()
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o750


def test_a_retrieve_prunes_an_over_full_cache_before_it_fetches(tmp_path, monkeypatch):
    """Over the limit before a retrieve (a lower limit set since): the oldest series go first,
    the series about to be retrieved (here half cached) stays."""
    from engine.pacs import operations

    whole = Cache(tmp_path, limit_bytes=1000)
    cache = whole.of_server(DIMSE.data_key)                                  # as the retrieve files DIMSE's
    with cache.receiving("1.2", "1.2.1"):
        cache.write("1.2", "1.2.1", "1.2.1.1", b"x" * 800)
    with cache.receiving("1.2", "1.2.2"):
        cache.write("1.2", "1.2.2", "1.2.2.1", b"x" * 800)
    os.utime(cache.series_dir("1.2", "1.2.2"), (1000, 1000))                 # the one to retrieve: oldest
    seen = []

    def fetch(server, study_uid, series_uid, cache, progress, cancel):
        seen.append((cache.cached("1.2", "1.2.1"), cache.cached("1.2", "1.2.2")))
        return cache.touch(study_uid, series_uid)

    monkeypatch.setattr(operations.dimse, "get", fetch)
    operations.retrieve(DIMSE, "1.2", ["1.2.2"], whole, method="get")
    assert seen == [(set(), {"1.2.2.1"})]


@pytest.mark.parametrize("text, size", [("20G", 20 * 1024**3), ("500M", 500 * 1024**2), ("1.5T", int(1.5 * 1024**4)),
                                        ("4096", 4096), ("2 GiB", 2 * 1024**3)])
def test_a_cache_limit_reads_with_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-5G", "5X", "G"])
def test_a_bad_cache_limit_is_named(text):
    with pytest.raises(ValueError, match=f"cache limit {text!r}"):
        parse_size(text)
