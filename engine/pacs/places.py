"""Where PACS work keeps its files without asking Qt (the command line never imports the app):
the user's config folder, as Qt's AppConfigLocation names it for this app, for the servers file,
and the user's cache folder for retrieved instances. Environment variables override both."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ORGANISATION = "SynerMedGen"            # QApplication's organisation and application names (app/about.py)
APPLICATION = "SynerMedGen Studio"
CONFIG_DIR_ENV = "SYNERMEDGEN_CONFIG_DIR"
CACHE_DIR_ENV = "SYNERMEDGEN_PACS_CACHE"


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def config_dir() -> Path:
    """``$SYNERMEDGEN_CONFIG_DIR``, else the folder Qt's AppConfigLocation gives the app."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or _home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = _home() / "Library" / "Preferences"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")
    return base / ORGANISATION / APPLICATION


def cache_dir() -> Path:
    """``$SYNERMEDGEN_PACS_CACHE``, else a ``pacs`` folder in the user's cache folder."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or _home() / "AppData" / "Local") / "cache"
    elif sys.platform == "darwin":
        base = _home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or _home() / ".cache")
    return base / ORGANISATION / APPLICATION / "pacs"
