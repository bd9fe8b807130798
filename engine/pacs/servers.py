"""PACS server definitions: a DIMSE server (its AE title, host and port, our calling AE, and the
port of our own storage SCP when it retrieves by C-MOVE) or a DICOMweb server (a base URL with
optional basic auth or a bearer token); stored by name in a JSON file in the user's config folder.
Secrets are stored (the file is private to the user) but never shown: not in ``repr``, not in
:meth:`Server.describe`, not in any error message."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from engine import paths
from engine.atomic import atomic_file

FILE_NAME = "pacs_servers.json"
SCHEMA_VERSION = 1
DEFAULT_CALLING_AE = "SYNERMEDGEN"
_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {"port": (int, "a whole number"), "move_port": (int, "a whole number"),
          "timeout_s": ((int, float), "a number of seconds"), "tls": (bool, "true or false")}
SECRETS = ("password", "token")          # stored, never shown
# PS3.5 6.2: AE is 1–16 characters of the default repertoire (printable ASCII: no control character,
# no DEL, nothing beyond ASCII), no backslash, not only spaces
_AE_TITLE = re.compile(r"[\x20-\x5B\x5D-\x7E]{1,16}")


def check_ae_title(value: str, what: str, server: str) -> None:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError(f"server {server!r}: {what} {value!r} is not a DICOM AE title "
                         "(1 to 16 printable ASCII characters, no backslash)")


@dataclass(frozen=True)
class Server:
    """One PACS. A ``url`` makes it a DICOMweb server; otherwise ``ae_title``, ``host`` and
    ``port`` name a DIMSE one. ``move_port`` > 0 retrieves by C-MOVE to our storage SCP on that
    port (the PACS must know ``calling_ae`` at this machine's address); 0 retrieves by C-GET."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 104
    calling_ae: str = DEFAULT_CALLING_AE
    move_port: int = 0
    url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout_s: float = 30.0
    tls: bool = False                    # DIMSE over TLS (engine/pacs/tls.py)
    tls_ca: str = ""                     # certificate authorities to trust (PEM file); "" = the system's
    tls_cert: str = ""                   # our certificate (PEM), for a PACS that asks for one and for C-MOVE
    tls_key: str = ""                    # its private key (PEM), when not in tls_cert

    @property
    def data_key(self) -> str:
        """What names whose images a retrieve gets: the DICOMweb URL, else the called AE at its address
        (not the name the user gave it, which may be renamed or reused)."""
        return self.url.rstrip("/") if self.url else f"{self.ae_title}@{self.host}:{self.port}"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a PACS server needs a name")
        if self.timeout_s <= 0:
            raise ValueError(f"server {self.name!r}: timeout_s must be positive, got {self.timeout_s}")
        if self.tls_key and not self.tls_cert:
            raise ValueError(f"server {self.name!r}: tls_key goes with tls_cert (our certificate)")
        if (self.tls_ca or self.tls_cert) and not self.tls:
            raise ValueError(f"server {self.name!r}: TLS files are given but TLS is off (tls)")
        if self.url:
            if self.tls:
                raise ValueError(f"server {self.name!r}: tls is for DIMSE; a DICOMweb server is secured by an https:// "
                                 "URL")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"server {self.name!r}: DICOMweb URL {self.url!r} is not an http(s):// address")
            if parts.username or parts.password:
                raise ValueError(f"server {self.name!r}: put the user name and password in their own fields, "
                                 "not in the URL")
            if self.token and (self.username or self.password):
                raise ValueError(f"server {self.name!r}: give a user name and password or a bearer token, not both")
            return
        check_ae_title(self.ae_title, "AE title", self.name)
        check_ae_title(self.calling_ae, "calling AE title", self.name)
        if not self.host.strip():
            raise ValueError(f"server {self.name!r}: needs a host (or a DICOMweb URL)")
        for what, port, low in (("port", self.port, 1), ("move_port", self.move_port, 0)):
            if not isinstance(port, int) or not low <= port <= 65535:
                raise ValueError(f"server {self.name!r}: {what} must be a whole number from {low} to 65535, got {port!r}")

    @property
    def is_dicomweb(self) -> bool:
        return bool(self.url)

    def clear_text_warning(self) -> str:
        """A warning when a password or token would travel unencrypted (``http://`` to another computer);
        empty otherwise."""
        parts = urlsplit(self.url) if self.url else None
        if parts is None or parts.scheme != "http" or not (self.password or self.token):
            return ""
        if (parts.hostname or "") in ("localhost", "127.0.0.1", "::1"):
            return ""
        secret = "password" if self.password else "token"
        return (f"server {self.name!r}: its {secret} travels unencrypted over http:// to {parts.hostname} with every "
                "request; use an https:// URL")

    def describe(self) -> str:
        """Where the server is and how we log in, without any secret."""
        if self.is_dicomweb:
            login = (f", basic auth as {self.username}" if self.username else
                     ", bearer token" if self.token else "")
            return f"DICOMweb {self.url}{login}"
        move = f", C-MOVE to our port {self.move_port}" if self.move_port else ""
        tls = (", over TLS" + (" with our certificate" if self.tls_cert else "")) if self.tls else ""
        return f"{self.ae_title}@{self.host}:{self.port} (we call as {self.calling_ae}{move}{tls})"

    def to_dict(self) -> dict:
        """Every field that differs from the default (secrets included: this is what is stored)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k == "name" or v != defaults[k]}

    @classmethod
    def from_dict(cls, data: dict) -> Server:
        if not isinstance(data, dict):
            raise ValueError(f"a server must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        name = data.get("name", "?")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"server {name!r}: unknown field(s) {', '.join(unknown)}")
        for key, value in data.items():
            expected, what = _TYPES.get(key, (str, "text"))
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                shown = f"a value of type {type(value).__name__}" if key in SECRETS else repr(value)
                raise ValueError(f"server {name!r}: {key} must be {what}, got {shown}")
        return cls(**data)


def servers_file(config_dir: str | Path | None = None) -> Path:
    """The servers file in ``config_dir`` (default: the app's config folder, engine.paths.config_dir)."""
    return Path(config_dir or paths.config_dir()) / FILE_NAME


def load_servers(path: str | Path | None = None) -> list[Server]:
    """The servers stored in ``path`` (default: :func:`servers_file`); none when it does not exist.
    A damaged file raises ValueError naming it."""
    path = Path(path) if path else servers_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable servers file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
        raise ValueError(f"{path}: expected a JSON object with a \"servers\" list")
    try:
        servers = [Server.from_dict(item) for item in data["servers"]]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two servers share a name")
    return servers


def save_servers(servers: list[Server], path: str | Path | None = None) -> Path:
    """Write the servers atomically, readable by the user only (the file may hold passwords)."""
    path = Path(path) if path else servers_file()
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError("two servers share a name")
    text = json.dumps({"schema_version": SCHEMA_VERSION, "servers": [s.to_dict() for s in servers]}, indent=2)
    with atomic_file(path, mode=0o600) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def find_server(name: str, path: str | Path | None = None) -> Server:
    """The server called ``name``; ValueError listing the known names when there is none."""
    path = Path(path) if path else servers_file()
    servers = load_servers(path)
    for server in servers:
        if server.name == name:
            return server
    known = ", ".join(s.name for s in servers) or "none"
    raise ValueError(f"{path}: no PACS server named {name!r} (known: {known})")
