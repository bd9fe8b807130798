"""The log the user can read: files a scan skipped (with the reason), notes on loaded volumes,
errors and exports, each with the time."""
from __future__ import annotations

import html
import time

from PySide6.QtWidgets import QTextEdit

COLOURS = {"info": "#303030", "note": "#7a5a00", "error": "#b01010"}


class LogPanel(QTextEdit):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.lines: list[str] = []

    def add(self, text: str, kind: str = "info") -> None:
        self.lines.append(text)
        stamp = time.strftime("%H:%M:%S")
        self.append(f"<span style='color:#808080'>{stamp}</span> "
                    f"<span style='color:{COLOURS.get(kind, COLOURS['info'])}'>{html.escape(text)}</span>")
