"""A real Orthanc for the PACS tests: started on loopback with a temporary configuration (its own
storage folder, free DICOM and HTTP ports, the DICOMweb plugin, HTTP authentication on, our AE
registered for C-GET / C-MOVE), waited on until it answers, stopped at the end. Tests that need it
skip only when the Orthanc binary is not installed (Debian package ``orthanc``; scripts/setup.sh)."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from engine.pacs import Server

PLUGIN_CANDIDATES = (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),)
PACS_AE = "TESTPACS"
OUR_AE = "SYNERMEDGEN"
USER, PASSWORD = "researcher", "s3cret-pw"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                            if Path(p).is_file()), None)


def dicomweb_plugin() -> Path:
    """The DICOMweb plugin's library, as the Debian package orthanc-dicomweb installs it."""
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True).stdout.split()
    except OSError:
        listed = []
    found = [Path(p) for p in listed if "plugins" in p and p.endswith(".so")] + list(PLUGIN_CANDIDATES)
    for path in found:
        if path.exists():
            return path
    raise RuntimeError("the Orthanc DICOMweb plugin is missing: install the Debian package orthanc-dicomweb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    process: subprocess.Popen
    folder: Path
    dicom_port: int
    http_port: int
    move_port: int
    log: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def dimse(self, name: str = "test-orthanc", **changes) -> Server:
        fields = dict(name=name, ae_title=PACS_AE, host="127.0.0.1", port=self.dicom_port, calling_ae=OUR_AE,
                      timeout_s=10.0)
        return Server(**{**fields, **changes})

    def web(self, name: str = "test-orthanc-web", **changes) -> Server:
        fields = dict(name=name, url=f"{self.url}/dicom-web", username=USER, password=PASSWORD, timeout_s=10.0)
        return Server(**{**fields, **changes})

    def rest(self, path: str, method: str = "GET", **kwargs):
        response = requests.request(method, f"{self.url}{path}", auth=(USER, PASSWORD), timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def upload(self, folder: Path) -> None:
        """Store every file of a folder through Orthanc's own REST API (not our code)."""
        for path in sorted(folder.iterdir()):
            self.rest("/instances", "POST", data=path.read_bytes())

    def series_tags(self) -> list[dict]:
        """The main tags of every series stored, with one instance's ImageType."""
        found = []
        for series_id in self.rest("/series"):
            series = self.rest(f"/series/{series_id}")
            first = self.rest(f"/instances/{series['Instances'][0]}/simplified-tags")
            found.append({**series["MainDicomTags"], "ImageType": first.get("ImageType", ""),
                          "Instances": len(series["Instances"])})
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.log is not None:
            self.log.close()


# what Orthanc logs when a port chosen by free_port was taken by another process in the meantime
BIND_FAILURE = re.compile(r"cannot bind|address already in use|unable to bind|port .*(?:in use|busy)", re.I)
ATTEMPTS = 3


def start_orthanc(folder: Path) -> Orthanc:
    """Start Orthanc; a port freed by :func:`free_port` can be taken by another process before Orthanc
    binds it (a loaded CI machine), so a start that fails to bind is retried with fresh ports."""
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc, installed by scripts/setup.sh)")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _start(binary, folder)
        except PortTaken as exc:
            if attempt == ATTEMPTS:
                raise RuntimeError(f"Orthanc could not bind its ports in {ATTEMPTS} tries: {exc}") from None
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """Orthanc exited because one of its ports was already in use."""


def _start(binary: str, folder: Path) -> Orthanc:
    dicom_port, http_port, move_port = free_port(), free_port(), free_port()
    storage = folder / "storage"
    if storage.exists():
        shutil.rmtree(storage)                  # a failed start's index, made with other ports
    config = {
        "Name": "SynerMedGen test PACS", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": PACS_AE, "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "DicomModalities": {"synermedgen": [OUR_AE, "127.0.0.1", move_port]},
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "StorageCompression": False,
        "HttpCompressionEnabled": False,
        "DefaultEncoding": "Utf8",                  # C-FIND answers keep the mark's em dash
        "ConcurrentJobs": 1, "SaveJobs": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               cwd=folder)
    server = Orthanc(process, folder, dicom_port, http_port, move_port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.close()
            text = (folder / "orthanc.log").read_text(errors="replace")[-2000:]
            if BIND_FAILURE.search(text):
                raise PortTaken(text)
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {text}")
        try:
            server.rest("/system")
            return server
        except requests.RequestException:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within 30 s; see {folder / 'orthanc.log'}")
