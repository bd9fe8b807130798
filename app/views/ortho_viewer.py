"""The main viewer: axial, sagittal and coronal planes of one volume linked by the shared cursor,
its window/level presets, and a fourth pane with the volume's details and the 3D view (VTK,
imported only when that tab is opened)."""
from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.state.cursor import Cursor
from app.state.geometry import Plane
from app.state.workspace import Document
from app.views.notes_banner import NotesBanner
from app.views.slice_view import SliceView

CUSTOM_WINDOW = "Custom"
TITLE_MIN_WIDTH = 120
EMPTY_TITLE = "Drop a volume or a study folder anywhere on the window, or use File → Open."


def volume_details(doc: Document) -> str:
    v = doc.volume
    rows = [
        ("Name", v.name), ("Modality", v.modality or "unknown"), ("Unit", v.unit or "—"),
        ("Size (x × y × z)", " × ".join(map(str, v.size_xyz))),
        ("Spacing (mm)", " × ".join(f"{s:.3g}" for s in v.spacing)),
        ("Orientation", v.orientation()),
        ("Origin LPS (mm)", ", ".join(f"{o:.1f}" for o in v.origin)),
        ("File", v.source),
    ]
    body = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(val))}</td></tr>" for k, val in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in v.notes)
    made_from = f" (made from {html.escape(v.derived_from)})" if v.derived_from else ""
    warning = (f"<p style='color:#d03030'><b>Synthetic volume{made_from} — research use only.</b></p>"
               if doc.synthetic else "")
    return f"{warning}<table cellspacing='4'>{body}</table>" + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "")


class OrthoViewer(QWidget):
    probed = Signal(object)

    def __init__(self, cursor: Cursor, parent=None) -> None:
        super().__init__(parent)
        self.cursor = cursor
        self.document: Document | None = None
        self.title = QLabel(EMPTY_TITLE)
        self.title.setMinimumWidth(TITLE_MIN_WIDTH)       # elided by the layout rather than widening the window
        self.notes_banner = NotesBanner()
        self.presets = QComboBox()
        self.presets.setToolTip("Window/level preset (or right-drag on an image)")
        self.presets.setMinimumContentsLength(12)
        self.presets.activated.connect(self._on_preset_chosen)
        reset = QPushButton("Reset zoom")
        reset.clicked.connect(self.reset_zoom)
        bar = QHBoxLayout()
        bar.addWidget(self.title, 1)
        bar.addWidget(QLabel("Window:"))
        bar.addWidget(self.presets)
        bar.addWidget(reset)

        self.views = {plane: SliceView(cursor, plane) for plane in Plane}
        for view in self.views.values():
            view.probed.connect(self.probed)
        self.details = QTextBrowser()
        self.side_tabs = QTabWidget()
        self.side_tabs.addTab(self.details, "Details")
        self.render_tab = QWidget()
        self.render_tab.setLayout(QVBoxLayout())
        self.side_tabs.addTab(self.render_tab, "3D")
        self.side_tabs.currentChanged.connect(self._on_side_tab_changed)
        self.volume_3d = None

        grid = QGridLayout()
        grid.setSpacing(2)
        grid.addWidget(self.views[Plane.AXIAL], 0, 0)
        grid.addWidget(self.views[Plane.SAGITTAL], 0, 1)
        grid.addWidget(self.views[Plane.CORONAL], 1, 0)
        grid.addWidget(self.side_tabs, 1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        layout.addWidget(self.notes_banner)
        layout.addLayout(grid, 1)

    def show_document(self, doc: Document) -> None:
        if self.document is not None:
            self.document.display.changed.disconnect(self._on_window_changed)
        self.document = doc
        volume = doc.volume
        if not self._contains(doc, self.cursor.position):
            centre = np.append((np.asarray(volume.size_xyz) - 1) / 2, 1.0)
            self.cursor.move_to((volume.index_to_lps() @ centre)[:3])
        for view in self.views.values():
            view.set_content(volume, doc.display, title=doc.title, synthetic=doc.synthetic)
        self.title.setText(f"<b>{doc.title}</b> — {volume.modality or 'modality unknown'}"
                           + (" — <span style='color:#d03030'>SYNTHETIC</span>" if doc.synthetic else ""))
        self.presets.clear()
        self.presets.addItems([p.name for p in doc.presets] + [CUSTOM_WINDOW])
        doc.display.changed.connect(self._on_window_changed)
        self._on_window_changed(doc.display.levels)
        self.details.setHtml(volume_details(doc))
        self.notes_banner.show_notes(volume.notes, "Notes on this synthetic volume" if doc.synthetic
                                     else "Loading notes")
        if self.volume_3d is not None:
            self.volume_3d.show_document(doc)

    def clear(self) -> None:
        """Show nothing (the volume shown was closed)."""
        if self.document is not None:
            self.document.display.changed.disconnect(self._on_window_changed)
        self.document = None
        for view in self.views.values():
            view.set_content(None, None)
        self.title.setText(EMPTY_TITLE)
        self.presets.clear()
        self.details.clear()
        self.notes_banner.show_notes(())
        if self.volume_3d is not None:
            self.volume_3d.clear()

    @staticmethod
    def _contains(doc: Document, lps: np.ndarray | None) -> bool:
        if lps is None:
            return False
        index = np.linalg.solve(doc.volume.index_to_lps(), np.append(lps, 1.0))[:3]
        return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(doc.volume.size_xyz) - 0.5))

    def _on_preset_chosen(self, row: int) -> None:
        if self.document is not None and row < len(self.document.presets):
            self.document.display.apply(self.document.presets[row])

    def _on_window_changed(self, _levels) -> None:
        names = [p.name for p in self.document.presets]
        name = self.document.display.preset_name
        self.presets.setCurrentIndex(names.index(name) if name in names else len(names))

    def reset_zoom(self) -> None:
        for view in self.views.values():
            view.reset_zoom()

    def _on_side_tab_changed(self, index: int) -> None:
        if self.side_tabs.widget(index) is self.render_tab and self.volume_3d is None:
            from app.views.volume_3d import VolumeRenderView  # imports VTK: only now

            self.volume_3d = VolumeRenderView(self.render_tab)
            self.render_tab.layout().addWidget(self.volume_3d)
            if self.document is not None:
                self.volume_3d.show_document(self.document)

    def open_3d(self) -> None:
        self.side_tabs.setCurrentWidget(self.render_tab)

    def close_3d(self) -> None:
        """Release the VTK render window before the widgets go (avoids X errors at exit)."""
        if self.volume_3d is not None:
            self.volume_3d.close_render_window()
