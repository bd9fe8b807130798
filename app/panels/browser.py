"""The study/series browser: every series a scan found, grouped patient → study → series, with
modality, size and spacing; double-click opens one, the context menu compares it or closes it
(a loaded volume: bold) to free its memory."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QLabel, QMenu, QProgressBar, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from engine.io import Catalog, SeriesEntry

COLUMNS = ("Series", "Modality", "Size (x×y×z)", "Spacing (mm)")
ENTRY_ROLE = Qt.ItemDataRole.UserRole


def group_names(entry: SeriesEntry) -> tuple[str, str]:
    """(patient, study) for the tree; files without DICOM tags are grouped by their folder."""
    folder = Path(entry.paths[0]).parent.name if entry.paths else ""
    patient = entry.patient or (f"Folder {folder}" if folder else "Unknown patient")
    study = entry.study or ("DICOM study" if entry.kind == "dicom" else "Image files")
    return patient, study


class BrowserPanel(QWidget):
    entry_activated = Signal(object)       # SeriesEntry to open in the viewer
    compare_requested = Signal(object)     # SeriesEntry to compare with the volume in the viewer
    close_requested = Signal(str)          # key of a loaded volume to close

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setAlternatingRowColors(True)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.itemActivated.connect(self._on_item_activated)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumHeight(10)
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.hint = QLabel("Drop files or folders here, or use File → Open.")
        self.hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.hint)
        layout.addWidget(self.busy)
        layout.addWidget(self.tree, 1)
        self._groups: dict[tuple[str, ...], QTreeWidgetItem] = {}
        self._series: dict[str, QTreeWidgetItem] = {}
        self._scanning: set[str] = set()
        self._loaded: set[str] = set()

    def set_scanning(self, path: str, scanning: bool) -> None:
        (self._scanning.add if scanning else self._scanning.discard)(path)
        self.busy.setVisible(bool(self._scanning))
        self.hint.setText(f"Scanning {Path(path).name}…" if scanning else self._summary())

    def _summary(self) -> str:
        return f"{len(self._series)} series found. Double-click to view; right-click to compare."

    def add_catalog(self, catalog: Catalog) -> None:
        for entry in catalog.entries:
            item = self._series.get(entry.key) or QTreeWidgetItem(self._group(*group_names(entry)))
            size = "×".join(str(n) for n in reversed(entry.shape_zyx))
            spacing = "×".join(f"{s:.3g}" for s in entry.spacing_xyz)
            for col, text in enumerate((entry.description, entry.modality or "?", size, spacing)):
                item.setText(col, text)
            tip = "\n".join([entry.paths[0] if entry.paths else entry.key, f"orientation {entry.orientation}",
                             *entry.notes])
            item.setToolTip(0, tip)
            item.setData(0, ENTRY_ROLE, entry)
            self._series[entry.key] = item
        self.tree.expandAll()
        for col in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(col)
        if not self._scanning:
            self.hint.setText(self._summary())

    def _group(self, patient: str, study: str) -> QTreeWidgetItem:
        if (patient,) not in self._groups:
            self._groups[(patient,)] = QTreeWidgetItem(self.tree, [patient])
        if (patient, study) not in self._groups:
            self._groups[(patient, study)] = QTreeWidgetItem(self._groups[(patient,)], [study])
        return self._groups[(patient, study)]

    def entries(self) -> list[SeriesEntry]:
        return [item.data(0, ENTRY_ROLE) for item in self._series.values()]

    def mark_loaded(self, key: str, loaded: bool = True) -> None:
        """Show a series as loaded (bold, and the current one) or, once closed, as not loaded."""
        item = self._series.get(key)
        (self._loaded.add if loaded else self._loaded.discard)(key)
        if item is not None:
            font = QFont(item.font(0))
            font.setBold(loaded)
            item.setFont(0, font)
            if loaded:
                self.tree.setCurrentItem(item)

    def _on_item_activated(self, item: QTreeWidgetItem, _column: int) -> None:
        entry = item.data(0, ENTRY_ROLE)
        if entry is not None:
            self.entry_activated.emit(entry)

    def _context_menu(self, pos) -> None:
        menu = self.menu_for(self.tree.itemAt(pos))
        if menu is not None:
            menu.exec(self.tree.viewport().mapToGlobal(pos))
            menu.deleteLater()

    def menu_for(self, item: QTreeWidgetItem | None) -> QMenu | None:
        """The context menu of a series (None for a patient or study row)."""
        entry = item.data(0, ENTRY_ROLE) if item is not None else None
        if entry is None:
            return None
        menu = QMenu(self)
        menu.addAction("Open in viewer", lambda: self.entry_activated.emit(entry))
        menu.addAction("Compare with the volume in the viewer", lambda: self.compare_requested.emit(entry))
        if entry.key in self._loaded:
            menu.addSeparator()
            menu.addAction("Close (frees its memory)", lambda: self.close_requested.emit(entry.key))
        return menu
