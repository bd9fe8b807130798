"""The dialogs of opening: the Open dialog, which lists what the app opens (volume files, DICOM
files with or without a suffix, 2-D pictures), and the picker of one volume of a 4-D file."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSortFilterProxyModel, Signal
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFileDialog, QLabel, QListWidget, QVBoxLayout

if TYPE_CHECKING:
    from engine.io import SeriesEntry

OPENABLE = "Volumes, DICOM files and 2-D pictures (*)"
ALL_FILES = "All files (*)"


class OpenableFilter(QSortFilterProxyModel):
    """Folders, and the files whose names ``engine.io.openable_name`` accepts (a Qt name filter
    cannot list DICOM files without a suffix); everything when ``show_all`` is set."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.show_all = False

    def set_show_all(self, show_all: bool) -> None:
        self.show_all = show_all
        self.invalidateRowsFilter()

    def filterAcceptsRow(self, row: int, parent) -> bool:
        from engine.io import openable_name

        model = self.sourceModel()
        index = model.index(row, 0, parent)
        return self.show_all or model.isDir(index) or openable_name(model.fileName(index))


def open_file_dialog(parent, folder: str) -> QFileDialog:
    """The Open dialog (Qt's own, so that the filter applies on every platform), starting in ``folder``."""
    dialog = QFileDialog(parent, "Open volumes, DICOM files or pictures", folder)
    dialog.setOption(QFileDialog.Option.DontUseNativeDialog)
    dialog.setFileMode(QFileDialog.FileMode.ExistingFiles)
    dialog.setNameFilters([OPENABLE, ALL_FILES])
    proxy = OpenableFilter(dialog)
    dialog.setProxyModel(proxy)
    dialog.filterSelected.connect(lambda name: proxy.set_show_all(name == ALL_FILES))
    return dialog


class VolumePicker(QDialog):
    """Which volume of a 4-D file to open: a list of its volumes; ``picked`` gives the index."""

    picked = Signal(int)

    def __init__(self, entry: SeriesEntry, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Pick a volume")
        size = "×".join(str(n) for n in reversed(entry.shape_zyx))
        label = QLabel(f"<b>{entry.description}</b> is a 4-D image: {entry.volumes} volumes of {size} voxels. "
                       f"Pick the one to open (double-click it, or Open).")
        label.setWordWrap(True)
        self.volumes = QListWidget()
        self.volumes.addItems([f"Volume {i + 1} of {entry.volumes}  (index {i})" for i in range(entry.volumes)])
        self.volumes.setCurrentRow(0)
        self.volumes.itemDoubleClicked.connect(lambda _item: self.accept())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(self.volumes)
        layout.addWidget(buttons)
        self.accepted.connect(lambda: self.picked.emit(self.volumes.currentRow()))
