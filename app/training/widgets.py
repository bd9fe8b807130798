"""Small pieces the fine-tuning wizard's pages share: a form row, a page that cannot be left
forward while incomplete, the error colour, numpy RGB images shown as pixmaps, typed folders made absolute,
and why a checked dataset leaves nothing to train on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLineEdit, QWizardPage

ERROR_STYLE = "color:#b01010"


def row(*widgets) -> QHBoxLayout:
    layout = QHBoxLayout()
    for widget in widgets:
        layout.addWidget(widget, 1 if isinstance(widget, (QLineEdit, QComboBox)) else 0)
    return layout


def rgb_pixmap(image: np.ndarray, size: int) -> QPixmap:
    """A (rows, cols, 3) uint8 image as a pixmap ``size`` pixels wide (nearest neighbour: no blur)."""
    data = np.ascontiguousarray(image, dtype=np.uint8)
    rows, cols = data.shape[:2]
    qimage = QImage(data.data, cols, rows, 3 * cols, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaledToWidth(size)


def absolute_path(text: str) -> str:
    """A folder the user typed, as an absolute path ("~" expanded; "" stays ""): the training
    processes run from the install folder, so a relative path would mean another folder there."""
    text = text.strip()
    return str(Path(text).expanduser().absolute()) if text else ""


class CheckedPage(QWizardPage):
    """A page that cannot be left forward while incomplete, also not by a programmatic next()."""

    def validatePage(self) -> bool:
        return self.isComplete()
