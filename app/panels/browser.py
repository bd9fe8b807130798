"""The study/series browser: every series a scan found, grouped patient → study → series, with
modality, size and spacing, and every synthetic volume made in this session beside its source in
the same study; double-click shows one, the context menu compares, exports or closes it."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QLabel, QMenu, QProgressBar, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from app.state.workspace import Document
    from engine.io import Catalog, SeriesEntry

COLUMNS = ("Series", "Modality", "Size (x×y×z)", "Spacing (mm)")
ENTRY_ROLE = Qt.ItemDataRole.UserRole
DOCUMENT_ROLE = Qt.ItemDataRole.UserRole + 1
SYNTHETIC_COLOUR = QColor("#d03030")


MAX_NAME_WIDTH = 300         # px
_UID = re.compile(r"\d+(\.\d+)+")


def _shown(study: str) -> str:
    """A study's row: its description and date, its UID cut to the end that tells UIDs apart."""
    return " | ".join(f"…{part[-12:]}" if _UID.fullmatch(part) and len(part) > 16 else part for part in study.split(" | "))


def group_names(entry: SeriesEntry) -> tuple[str, str]:
    """(patient, study) for the tree; files without DICOM tags are grouped by their folder."""
    folder = Path(entry.paths[0]).parent.name if entry.paths else ""
    patient = entry.patient or (f"Folder {folder}" if folder else "Unknown patient")
    study = entry.study or ("DICOM study" if entry.kind == "dicom" else "Image files")
    return patient, study


class BrowserPanel(QWidget):
    entry_activated = Signal(object)       # SeriesEntry to open in the viewer
    compare_requested = Signal(object)     # SeriesEntry to compare with the volume in the viewer
    document_activated = Signal(object)    # a synthetic Document to show in the viewer
    export_requested = Signal(object)      # Document to export
    close_requested = Signal(object)       # Document to close (frees its memory)

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
        self._loaded: dict[str, Document] = {}          # key → the document loaded from it (or made)
        self._scanning: set[str] = set()

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
            modality = f"{entry.modality or '?'}{' (synthetic)' if entry.synthetic else ''}"
            for col, text in enumerate((entry.description, modality, size, spacing)):
                item.setText(col, text)
                if entry.synthetic:                      # its header says a model made it
                    item.setForeground(col, SYNTHETIC_COLOUR)
            tip = "\n".join([entry.paths[0] if entry.paths else entry.key, f"orientation {entry.orientation}",
                             *entry.notes])
            item.setToolTip(0, tip)
            item.setData(0, ENTRY_ROLE, entry)
            self._series[entry.key] = item
        self.tree.expandAll()
        for col in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(col)
        # the names column no wider than leaves the modality in view in a narrow dock (whole names in tooltips)
        self.tree.setColumnWidth(0, min(self.tree.columnWidth(0), MAX_NAME_WIDTH))
        if not self._scanning:
            self.hint.setText(self._summary())

    def _group(self, patient: str, study: str) -> QTreeWidgetItem:
        if (patient,) not in self._groups:
            self._groups[(patient,)] = QTreeWidgetItem(self.tree, [patient])
        if (patient, study) not in self._groups:
            item = QTreeWidgetItem(self._groups[(patient,)], [_shown(study)])
            item.setToolTip(0, study)
            self._groups[(patient, study)] = item
        return self._groups[(patient, study)]

    def entries(self) -> list[SeriesEntry]:
        """The scanned series (not the synthetic documents' rows)."""
        return [entry for item in self._series.values() if (entry := item.data(0, ENTRY_ROLE)) is not None]

    def item(self, key: str) -> QTreeWidgetItem | None:
        """The row of a scanned series or of a synthetic document, by key."""
        return self._series.get(key)

    def mark_loaded(self, doc: Document) -> None:
        """Bold the row ``doc`` was loaded from; a synthetic document gets its own row in its
        source's study (a loose one at the top level when the source is not listed)."""
        self._loaded[doc.key] = doc
        item = self._series.get(doc.key)
        if item is None and doc.synthetic:
            item = self._add_synthetic(doc)
        if item is not None:
            font = QFont(item.font(0))
            font.setBold(True)
            item.setFont(0, font)
            self.tree.setCurrentItem(item)

    def _add_synthetic(self, doc: Document) -> QTreeWidgetItem:
        source = self._series.get(doc.source.key) if doc.source is not None else None
        group = source.parent() if source is not None else None
        item = QTreeWidgetItem(group) if group is not None else QTreeWidgetItem(self.tree)
        volume = doc.volume
        made_from = f" from {doc.source.title}" if doc.source is not None else ""
        for col, text in enumerate((doc.title, f"{volume.modality or '?'} (synthetic)",
                                    "×".join(str(n) for n in volume.size_xyz),
                                    "×".join(f"{s:.3g}" for s in volume.spacing))):
            item.setText(col, text)
            item.setForeground(col, SYNTHETIC_COLOUR)
        item.setToolTip(0, f"Synthetic {volume.modality or 'volume'}{made_from}, made in this session: "
                           "research use only, not for diagnosis. Right-click to export or close it.")
        item.setData(0, DOCUMENT_ROLE, doc)
        self._series[doc.key] = item
        self.tree.expandAll()
        return item

    def mark_closed(self, doc: Document) -> None:
        """A closed document's row goes back to plain (a synthetic one's row goes: it has no file)."""
        self._loaded.pop(doc.key, None)
        item = self._series.get(doc.key)
        if item is None:
            return
        if item.data(0, DOCUMENT_ROLE) is not None:
            del self._series[doc.key]
            (item.parent() or self.tree.invisibleRootItem()).removeChild(item)
        else:
            font = QFont(item.font(0))
            font.setBold(False)
            item.setFont(0, font)

    def _on_item_activated(self, item: QTreeWidgetItem, _column: int) -> None:
        entry, doc = item.data(0, ENTRY_ROLE), item.data(0, DOCUMENT_ROLE)
        if entry is not None:
            self.entry_activated.emit(entry)
        elif doc is not None:
            self.document_activated.emit(doc)

    def _context_menu(self, pos) -> None:
        item = self.tree.itemAt(pos)
        if item is None:
            return
        menu = self.context_menu(item)
        if menu is not None:
            menu.exec(self.tree.viewport().mapToGlobal(pos))
            menu.deleteLater()

    def context_menu(self, item: QTreeWidgetItem) -> QMenu | None:
        """The actions on one row: open (show), compare, export and close what is loaded."""
        entry, doc = item.data(0, ENTRY_ROLE), item.data(0, DOCUMENT_ROLE)
        menu = QMenu(self)
        if entry is not None:
            doc = self._loaded.get(entry.key)
            menu.addAction("Open in viewer", lambda: self.entry_activated.emit(entry))
            menu.addAction("Compare with the volume in the viewer", lambda: self.compare_requested.emit(entry))
        elif doc is None:
            return None
        # the document is looked up by key when an action is chosen: a menu kept alive keeps no closed volume
        key = doc.key if doc is not None else ""
        if entry is None:
            menu.addAction("Show in viewer", lambda: self._emit_loaded(self.document_activated, key))
        if doc is not None:
            menu.addSeparator()
            menu.addAction("Export…", lambda: self._emit_loaded(self.export_requested, key))
            menu.addAction("Close (frees its memory)", lambda: self._emit_loaded(self.close_requested, key))
        return menu

    def _emit_loaded(self, signal, key: str) -> None:
        doc = self._loaded.get(key)
        if doc is not None:
            signal.emit(doc)
