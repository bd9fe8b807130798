"""The app's settings: one typed object with a schema version, stored as JSON in the user's
config folder (engine.paths.config_dir: ``SYNERMEDGEN_CONFIG_DIR`` overrides it), migrated from older
schema versions."""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from engine.inference import BACKENDS, DEVICES, PRECISION_NAMES
from engine.paths import CONFIG_DIR_ENV, config_dir  # noqa: F401 - the app's config folder, the command line's too

SCHEMA_VERSION = 2
FILE_NAME = "settings.json"
MAX_RECENT = 10

log = logging.getLogger(__name__)


@dataclass
class Settings:
    schema_version: int = SCHEMA_VERSION
    last_folder: str = ""
    recent_files: list[str] = field(default_factory=list)
    device: str = "auto"
    backend: str = "torch"
    precision: str = "fp32"
    model_dirs: list[str] = field(default_factory=list)   # imported BAGEL-layout / fine-tuned models
    window_geometry: str = ""                             # QMainWindow.saveGeometry(), base64
    window_state: str = ""                                # QMainWindow.saveState(), base64
    demo_shown: bool = False
    mouse_scheme: str = "synermedgen"                     # app.views.mouse.SCHEMES (an unknown name: the default)
    pacs_cache_limit_gib: int = 20                        # File ▸ PACS…: the retrieve cache's size limit

    def add_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        self.recent_files = [path, *(p for p in self.recent_files if p != path)][:MAX_RECENT]
        self.last_folder = path if Path(path).is_dir() else str(Path(path).parent)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        """Settings from stored JSON of any schema version; unknown keys and values of the
        wrong type are dropped (with a log line), so a damaged file never stops the app."""
        data = migrate(dict(data))
        defaults = cls()
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], getattr(defaults, f.name)
            if isinstance(default, list):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                ok = type(value) is type(default)
            if ok:
                values[f.name] = value
            else:
                log.warning("settings: ignoring %s=%r (expected %s)", f.name, value, type(default).__name__)
        settings = cls(**values)
        for name, allowed in (("device", DEVICES), ("backend", BACKENDS), ("precision", PRECISION_NAMES)):
            if getattr(settings, name) not in allowed:
                setattr(settings, name, getattr(defaults, name))
        if settings.pacs_cache_limit_gib <= 0:
            settings.pacs_cache_limit_gib = defaults.pacs_cache_limit_gib
        settings.schema_version = SCHEMA_VERSION
        return settings


def _v1_to_v2(data: dict) -> dict:
    """Version 1 kept ``recent`` and ``device_preference`` and one ``window`` geometry string,
    and had no precision or model list."""
    data["recent_files"] = data.pop("recent", [])
    data["device"] = data.pop("device_preference", "auto")
    data["window_geometry"] = data.pop("window", "")
    data["schema_version"] = 2
    return data


_MIGRATIONS = {1: _v1_to_v2}


def migrate(data: dict) -> dict:
    """Bring stored settings up to :data:`SCHEMA_VERSION`, one version step at a time."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        log.warning("settings: schema version %r is not known; starting from defaults", version)
        return {}
    while version < SCHEMA_VERSION:
        data = _MIGRATIONS[version](data)
        version = data["schema_version"]
    return data


def pacs_servers_file() -> Path:
    """The PACS servers (engine.pacs.servers) live beside the settings, where the command line finds them too."""
    from engine.pacs import servers_file

    return servers_file(config_dir())


def load_settings() -> Settings:
    path = config_dir() / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        log.warning("settings: %s is unreadable (%s); using defaults", path, exc)
        return Settings()
    return Settings.from_dict(data) if isinstance(data, dict) else Settings()


def save_settings(settings: Settings) -> Path:
    from engine.atomic import atomic_file

    path = config_dir() / FILE_NAME
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(settings.to_dict(), indent=2), encoding="utf-8")
    return path
