"""One plane of one volume in a pyqtgraph view: physical aspect, orientation letters, the shared
crosshair, slice scrolling in patient space (wheel, arrow keys: up is superior / anterior / left),
zoom (Ctrl+wheel), the mouse scheme's drags (crosshair, window/level, pan, zoom: app.views.mouse),
the slice position in mm, the window/level values, the value under the mouse in its unit at a
sensible precision, the SYNTHETIC mark."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtWidgets import QGraphicsView, QLabel

from app.about import SYNTHETIC_BANNER
from app.state.cursor import Cursor
from app.state.display import DisplayState
from app.state.geometry import Plane, PlaneGeometry
from app.views import mouse

if TYPE_CHECKING:
    from engine.io import Volume

SliceFn = Callable[[PlaneGeometry, int], np.ndarray]
GREY = pg.ColorMap(pos=[0.0, 1.0], color=[(0, 0, 0), (255, 255, 255)])
INVERTED_GREY = pg.ColorMap(pos=[0.0, 1.0], color=[(255, 255, 255), (0, 0, 0)])   # DICOM MONOCHROME1: high is dark
# per plane: the LPS axis through its slices, and the letters of its + and − directions; "up"
# (wheel up, ↑) moves towards superior, anterior or left whatever the acquisition order
PLANE_AXIS = {Plane.AXIAL: (2, "S", "I"), Plane.CORONAL: (1, "P", "A"), Plane.SAGITTAL: (0, "L", "R")}
UP_LPS = {Plane.AXIAL: +1, Plane.CORONAL: -1, Plane.SAGITTAL: +1}     # sign of "up" along that LPS axis
ZOOM_PER_PIXEL = 0.01            # a zoom drag: e-fold per 100 pixels


def value_in_unit(value: float, unit: str) -> str:
    """A voxel value for people, with its unit: whole Hounsfield units, else 3 significant digits
    (MR arbitrary units, SUV), never in exponent notation."""
    suffix = f" {unit}" if unit else ""
    if not math.isfinite(value):
        return f"{value}{suffix}"
    if unit == "HU":
        return f"{round(value):d}{suffix}"
    if value == 0:
        return f"0{suffix}"
    decimals = 2 - math.floor(math.log10(abs(value)))
    return f"{round(value, decimals):.{max(decimals, 0)}f}{suffix}"


@dataclass(frozen=True)
class Probe:
    """The voxel under the mouse: where (LPS mm) and its value in physical units."""

    name: str
    lps: np.ndarray
    value: float
    unit: str

    def text(self) -> str:
        x, y, z = (float(c) + 0.0 for c in np.round(self.lps, 1))       # + 0.0: no "-0.0"
        return f"{self.name}   LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm   value {value_in_unit(self.value, self.unit)}"


class _PlaneViewBox(pg.ViewBox):
    """The mouse gestures of a slice view, after the mouse scheme in use (the owner does the work)."""

    def __init__(self, owner: SliceView) -> None:
        super().__init__(invertY=True, lockAspect=True, enableMenu=False)
        self._owner = owner

    def wheelEvent(self, ev, axis=None) -> None:
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        ev.accept()
        self._owner.scroll(1 if ev.delta() > 0 else -1)

    def mouseClickEvent(self, ev) -> None:
        ev.accept()
        if ev.button() == Qt.MouseButton.LeftButton and ev.double():
            self._owner.reset_zoom()
        elif mouse.current().action(ev.button(), ev.modifiers()) == mouse.CROSSHAIR:
            self._owner.point_at(self.mapToView(ev.pos()))

    def mouseDragEvent(self, ev, axis=None) -> None:
        action = mouse.current().action(ev.button(), ev.modifiers())
        if action is None:
            ev.ignore()
            return
        ev.accept()
        delta = ev.pos() - ev.lastPos()
        if action == mouse.CROSSHAIR:
            self._owner.point_at(self.mapToView(ev.pos()))
        elif action == mouse.WINDOW:
            self._owner.drag_window(delta.x(), delta.y())
        elif action == mouse.PAN:
            moved = self.mapToView(ev.pos()) - self.mapToView(ev.lastPos())
            self.translateBy(x=-moved.x(), y=-moved.y())
        else:                                                  # zoom: up zooms in, about where the drag began
            factor = math.exp(delta.y() * ZOOM_PER_PIXEL)
            self.scaleBy((factor, factor), center=self.mapToView(ev.buttonDownPos()))


def _overlay(parent, style: str) -> QLabel:
    label = QLabel(parent)
    label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
    label.setStyleSheet(f"background: transparent; padding: 0 2px; {style}")
    return label


class SliceView(pg.GraphicsView):
    probed = Signal(object)        # Probe, or None when the mouse is off the image

    def __init__(self, cursor: Cursor, plane: Plane | str, parent=None) -> None:
        super().__init__(parent, background="k")
        self.cursor = cursor
        self.plane = Plane(plane)
        self.volume: Volume | None = None
        self.geometry: PlaneGeometry | None = None
        self.display: DisplayState | None = None
        self.k = -1
        self._slice_fn: SliceFn | None = None
        self._title_text = ""
        self._heading = ""          # the plane and title, elided into title_label
        self.viewbox = _PlaneViewBox(self)
        self.setCentralItem(self.viewbox)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.viewbox.addItem(self.image)
        # a whole-viewport repaint: the crosshair lines never leave traces of where they were
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        pen = pg.mkPen((255, 210, 0, 170), width=1)
        self.vline = pg.InfiniteLine(angle=90, pen=pen, movable=False)
        self.hline = pg.InfiniteLine(angle=0, pen=pen, movable=False)
        for line in (self.vline, self.hline):
            self.viewbox.addItem(line, ignoreBounds=True)
        letter_style = "color: #ffd24d; font-weight: bold; font-size: 13px; background: rgba(0, 0, 0, 110);"
        self.edge_labels = {edge: _overlay(self, letter_style) for edge in ("left", "right", "top", "bottom")}
        shade = "background: rgba(0, 0, 0, 110);"          # readable over bright or coloured pixels too
        self.title_label = _overlay(self, f"color: #e0e0e0; font-size: 11px; {shade}")
        self.slice_label = _overlay(self, f"color: #c0c0c0; font-size: 11px; {shade}")
        self.window_label = _overlay(self, f"color: #c0c0c0; font-size: 11px; {shade}")
        self.banner = _overlay(self, "color: #ff5050; font-weight: bold; font-size: 12px; "
                                     "background: rgba(0, 0, 0, 150);")
        self.banner.setText(SYNTHETIC_BANNER)
        self.banner.hide()
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(96, 96)
        self.scene().sigMouseMoved.connect(self._on_mouse_moved)
        cursor.moved.connect(self._on_cursor_moved)

    # -- content --------------------------------------------------------------------------
    def set_content(self, volume: Volume | None, display: DisplayState | None, *, title: str = "",
                    synthetic: bool = False, slice_fn: SliceFn | None = None,
                    colormap: pg.ColorMap | None = None) -> None:
        """Show ``volume`` (None clears) through ``display``; ``slice_fn`` replaces the plain slice."""
        if self.display is not None:
            self.display.changed.disconnect(self._on_levels_changed)
        self.volume, self.display, self._slice_fn = volume, display, slice_fn
        self._title_text = title
        self.banner.setVisible(volume is not None and synthetic)
        inverted = volume is not None and not volume.synthetic and \
            str(volume.dicom.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
        self.image.setColorMap(colormap or (INVERTED_GREY if inverted else GREY))
        self.k = -1
        if volume is None or display is None:
            self.geometry = None
            self.image.clear()
            for label in (*self.edge_labels.values(), self.slice_label, self.window_label):
                label.setText("")
            self.set_title(title)
            self.vline.hide()
            self.hline.hide()
            return
        display.changed.connect(self._on_levels_changed)
        self._show_window()
        self._set_geometry()

    def set_title(self, title: str) -> None:
        self._title_text = title
        self._heading = f"{self.plane.value.capitalize()} · {title}" if self.geometry is not None else title
        self.title_label.setToolTip(self._heading)
        self._place_overlays()

    def set_plane(self, plane: Plane | str) -> None:
        self.plane = Plane(plane)
        if self.volume is not None:
            self.k = -1
            self._set_geometry()

    def _set_geometry(self) -> None:
        self.geometry = PlaneGeometry.of(self.volume, self.plane)
        for edge, text in self.geometry.edge_labels().items():
            self.edge_labels[edge].setText(text)
        self.set_title(self._title_text)
        self.vline.show()
        self.hline.show()
        self._sync_to_cursor()
        self.reset_zoom()

    def refresh(self) -> None:
        """Redraw the current slice (after the blend or the data changed)."""
        if self.geometry is not None:
            self._render()

    def _render(self) -> None:
        g = self.geometry
        image = self._slice_fn(g, self.k) if self._slice_fn else g.slice_image(self.volume.array, self.k)
        self.image.setImage(np.ascontiguousarray(image, dtype=np.float32), autoLevels=False,
                            levels=self.display.levels)
        self.image.setRect(QRectF(0, 0, *g.extent))      # after setImage: it scales the pixels
        self._show_slice_position()

    def _show_slice_position(self) -> None:
        """"slice k / n · S 12.5 mm": where the slice lies along the plane's patient axis, through the cursor."""
        g, lps = self.geometry, self.cursor.position
        index = g.lps_to_index(self._center_lps() if lps is None else lps)
        index[g.normal_axis] = self.k
        axis, plus, minus = PLANE_AXIS[self.plane]
        mm = float(g.index_to_lps(index)[axis])
        self.slice_label.setText(f"slice {self.k + 1} / {g.n_slices} · {plus if mm >= 0 else minus} {abs(mm):.1f} mm")
        self._place_overlays()                   # a longer text may no longer fit beside the window label

    def _show_window(self) -> None:
        unit = self.volume.unit if self.volume is not None else ""
        d = self.display
        self.window_label.setText(f"W {value_in_unit(d.width, unit)} · L {value_in_unit(d.level, unit)}")
        self.window_label.setToolTip("Window width and level (right-drag or a preset changes them)")
        self._place_overlays()

    def _center_lps(self) -> np.ndarray:
        return self.geometry.index_to_lps((np.asarray(self.geometry.size_xyz) - 1) / 2)

    def _sync_to_cursor(self) -> None:
        g = self.geometry
        lps = self.cursor.position
        if lps is None:
            lps = self._center_lps()
        k = g.slice_of(lps)
        if k != self.k:
            self.k = k
            self._render()
        else:
            self._show_slice_position()
        u, v, _ = g.index_to_view(g.lps_to_index(lps))
        self.vline.setPos(u)
        self.hline.setPos(v)

    def _on_cursor_moved(self, _position: np.ndarray) -> None:
        if self.geometry is not None:
            self._sync_to_cursor()

    def _on_levels_changed(self, levels: tuple[float, float]) -> None:
        self.image.setLevels(levels)
        self._show_window()

    # -- interaction --------------------------------------------------------------------------
    def scroll(self, step: int) -> None:
        """Move the cursor ``step`` slices "up" through this plane: towards superior (axial),
        anterior (coronal) or left (sagittal), whichever way the volume's slices are stored."""
        g = self.geometry
        if g is None:
            return
        axis = PLANE_AXIS[self.plane][0]
        towards = 1 if UP_LPS[self.plane] * g.affine[axis, g.normal_axis] >= 0 else -1
        lps = self.cursor.position
        index = g.lps_to_index(self._center_lps() if lps is None else lps)
        index[g.normal_axis] = np.clip(np.rint(index[g.normal_axis]) + towards * step, 0, g.n_slices - 1)
        self.cursor.move_to(g.index_to_lps(index))

    def point_at(self, point: QPointF) -> None:
        """Put the crosshair at a point of this view (view millimetres)."""
        g = self.geometry
        if g is None:
            return
        width, height = g.extent
        u, v = float(np.clip(point.x(), 0, width)), float(np.clip(point.y(), 0, height))
        self.cursor.move_to(g.index_to_lps(g.view_to_index(u, v, self.k)))

    def drag_window(self, dx: float, dy: float) -> None:
        if self.display is not None:
            self.display.drag(dx, dy)

    def reset_zoom(self) -> None:
        if self.geometry is not None:
            width, height = self.geometry.extent
            self.viewbox.setRange(QRectF(0, 0, width, height), padding=0.02)

    def probe_at(self, point: QPointF) -> Probe | None:
        """The voxel at a point of this view (view millimetres), or None outside the image."""
        g = self.geometry
        if g is None:
            return None
        index = g.view_to_index(point.x(), point.y(), self.k)
        voxel = np.rint(index).astype(int)
        if np.any(voxel < 0) or np.any(voxel >= np.asarray(g.size_xyz)):
            return None
        value = float(self.volume.array[voxel[2], voxel[1], voxel[0]])
        return Probe(self.volume.name, g.index_to_lps(index), value, self.volume.unit)

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        if self.geometry is None:
            return
        self.probed.emit(self.probe_at(self.viewbox.mapSceneToView(scene_pos)))

    def keyPressEvent(self, ev) -> None:
        steps = {Qt.Key.Key_Up: 1, Qt.Key.Key_Down: -1, Qt.Key.Key_PageUp: 10, Qt.Key.Key_PageDown: -10}
        if ev.key() in steps:
            self.scroll(steps[ev.key()])
        elif ev.key() == Qt.Key.Key_Home:
            self.reset_zoom()
        else:
            super().keyPressEvent(ev)

    # -- overlays -----------------------------------------------------------------------------
    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if hasattr(self, "banner"):       # pyqtgraph resizes once inside its __init__
            self._place_overlays()

    def _place_bottom_corners(self, w: int, h: int, m: int) -> None:
        """The slice position bottom-left, the window bottom-right, each beside the bottom letter; in a
        view too narrow for that, one row (or, narrower still, two) above the letter instead."""
        position, window, letter = self.slice_label, self.window_label, self.edge_labels["bottom"]
        beside = (w - letter.width()) // 2 - 2 * m               # room on either side of the letter
        if position.width() <= beside and window.width() <= beside:
            position.move(m, h - position.height() - m)
            window.move(w - window.width() - m, h - window.height() - m)
            return
        above = h - letter.height() - 2 * m                      # the bottom of the row above the letter
        if position.width() + window.width() + 3 * m <= w:
            position.move(m, above - position.height())
            window.move(w - window.width() - m, above - window.height())
        else:
            window.move(m, above - window.height())
            position.move(m, above - window.height() - position.height())

    def _place_overlays(self) -> None:
        w, h, m = self.width(), self.height(), 4
        for label in (*self.edge_labels.values(), self.title_label, self.slice_label, self.window_label, self.banner):
            label.adjustSize()
        lab = self.edge_labels
        lab["left"].move(m, (h - lab["left"].height()) // 2)
        lab["right"].move(w - lab["right"].width() - m, (h - lab["right"].height()) // 2)
        lab["top"].move((w - lab["top"].width()) // 2, m)
        lab["bottom"].move((w - lab["bottom"].width()) // 2, h - lab["bottom"].height() - m)
        room = (w - lab["top"].width()) // 2 - 2 * m     # left of the top letter
        metrics = self.title_label.fontMetrics()
        self.title_label.setText(metrics.elidedText(self._heading, Qt.TextElideMode.ElideRight, max(room, 20)))
        self.title_label.adjustSize()
        self.title_label.move(m, m)
        self._place_bottom_corners(w, h, m)
        below_top = m + max(self.title_label.height(), lab["top"].height()) + 2
        self.banner.move(max(m, (w - self.banner.width()) // 2), below_top)
