"""Where the program's own files are: the install (repository) root, its resources and the default
model; and the user's folders for it (config, cache), by the rule Qt's AppConfigLocation and
CacheLocation follow for this app's organisation and application names, so that the command line
(which never imports Qt) and the app use the same folders."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
DEFAULT_MODEL_DIR = RESOURCES / "models" / "default"

APP_NAME = "SynerMedGen Studio"          # QApplication's application and organisation names
ORGANISATION = "SynerMedGen"
CONFIG_DIR_ENV = "SYNERMEDGEN_CONFIG_DIR"


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _local_app_data() -> Path:
    return Path(os.environ.get("LOCALAPPDATA") or _home() / "AppData" / "Local")


def config_dir() -> Path:
    """The user's config folder for the app (settings, PACS servers): ``$SYNERMEDGEN_CONFIG_DIR``,
    else where Qt's AppConfigLocation puts it."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = _local_app_data()
    elif sys.platform == "darwin":
        base = _home() / "Library" / "Preferences"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")
    return base / ORGANISATION / APP_NAME


def cache_dir() -> Path:
    """The user's cache folder for the app, where Qt's CacheLocation puts it."""
    if sys.platform == "win32":
        return _local_app_data() / ORGANISATION / APP_NAME / "cache"
    if sys.platform == "darwin":
        return _home() / "Library" / "Caches" / ORGANISATION / APP_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or _home() / ".cache") / ORGANISATION / APP_NAME
