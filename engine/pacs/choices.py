"""The names a face offers as choices for PACS work (a command line's ``choices``, a dialog's list),
importable without the DIMSE and DICOMweb libraries: query levels and retrieve methods."""
from __future__ import annotations

LEVELS = ("patient", "study", "series")
METHODS = ("auto", "get", "move", "wado")     # auto: WADO-RS for DICOMweb, C-MOVE with a move port, else C-GET
