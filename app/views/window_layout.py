"""The main window's size and dock layout at launch: the saved geometry and dock state restored
(or the default layout), then kept usable — the window never larger than the screen's available
area nor outside it, the Studies tree never squeezed below a few rows by a restored dock state."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QGuiApplication

if TYPE_CHECKING:
    from app.main_window import MainWindow
    from app.settings import Settings

DEFAULT_SIZE = (1500, 920)
STUDIES_MIN_ROWS = 8          # text lines the Studies tree always keeps (a header and a few series)


def restore_layout(window: MainWindow, settings: Settings) -> None:
    """Size, place and arrange ``window`` from the settings (or by default), within the screen."""
    tree = window.browser.tree
    tree.setMinimumHeight(STUDIES_MIN_ROWS * tree.fontMetrics().lineSpacing())
    if settings.window_geometry:
        window.restoreGeometry(QByteArray.fromBase64(settings.window_geometry.encode()))
    else:
        window.resize(*DEFAULT_SIZE)
    if settings.window_state:
        window.restoreState(QByteArray.fromBase64(settings.window_state.encode()))
    else:
        docks = window.docks
        window.resizeDocks([docks["browser"]], [330], Qt.Orientation.Horizontal)
        window.resizeDocks([docks["browser"], docks["synthesis"]], [260, 520], Qt.Orientation.Vertical)
        window.resizeDocks([docks["log"]], [120], Qt.Orientation.Vertical)
    fit_to_screen(window)


def fit_to_screen(window: MainWindow) -> None:
    """Shrink the window (frame included) to the available area of its screen and move it inside."""
    if window.isMaximized() or window.isFullScreen():
        return
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return
    area = screen.availableGeometry()
    frame, inner = window.frameGeometry(), window.geometry()
    extra_w, extra_h = frame.width() - inner.width(), frame.height() - inner.height()
    width = min(inner.width(), area.width() - extra_w)
    height = min(inner.height(), area.height() - extra_h)
    if (width, height) != (inner.width(), inner.height()):
        window.resize(width, height)
    x = min(max(frame.x(), area.left()), area.left() + area.width() - width - extra_w)
    y = min(max(frame.y(), area.top()), area.top() + area.height() - height - extra_h)
    if (x, y) != (frame.x(), frame.y()):
        window.move(x, y)
