"""Where the program's own files are: the install (repository) root, its resources and the default model."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
DEFAULT_MODEL_DIR = RESOURCES / "models" / "default"
