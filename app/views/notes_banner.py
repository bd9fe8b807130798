"""The strip above the viewer that says what loading the volume assumed or changed (its notes: a
missing slice filled in, a picture's assumed spacing, a split series …) — or, for a synthetic
volume, how it was made and what to beware of — so no one misses it."""
from __future__ import annotations

import html

from PySide6.QtWidgets import QLabel

SHOWN = 2               # notes written out; the rest are counted (all are in the tooltip and Details)


class NotesBanner(QLabel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setStyleSheet("background: #fff3cd; color: #664d03; border: 1px solid #e0c060; padding: 3px 6px;")
        self.hide()

    def show_notes(self, notes: tuple[str, ...] | list[str], title: str = "Loading notes") -> None:
        """Show ``notes`` under ``title`` (hidden when there are none)."""
        lines = [html.escape(note) for note in notes[:SHOWN]]
        more = len(notes) - SHOWN
        if more > 0:
            lines.append(f"… and {more} more note{'s' if more > 1 else ''} in Details")
        self.setText(f"<b>{html.escape(title)}:</b> " + "<br>".join(lines))
        self.setToolTip("\n".join(notes))
        self.setVisible(bool(notes))
