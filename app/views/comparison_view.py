"""Side-by-side comparison: source | synthetic | reference | difference (with its colour bar in
physical units) on the synthetic grid, linked (shared cursor and slice, zoom, window/level per
modality), checkerboard and fade between synthetic and reference, a region of interest with each
volume's statistics inside it on the slice shown, and the metrics panel. Any two loaded volumes can
be compared."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGraphicsRectItem,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.state.comparison import BlendMode, ComparisonModel, ComparisonResult
from app.state.cursor import Cursor
from app.state.geometry import Plane
from app.state.roi import Rect, roi_stats
from app.state.workspace import Document, Workspace
from app.views.metrics_panel import MetricsPanel
from app.views.slice_view import SliceView, value_in_unit
from app.workers import Task, TaskRunner

ROLES = ("source", "synthetic", "reference", "difference")
DIFFERENCE_MAP = pg.colormap.get("CET-D1A")
AUTO = "Auto (reference's modality)"
COLOUR_BAR_WIDTH = 66
COMBO_MIN_CHARACTERS = 4
ROI_PEN = "#00d0ff"
ROI_ORDER = ("synthetic", "reference", "difference", "source")     # as the statistics line lists them


def shrinkable(combo: QComboBox) -> None:
    """A combo box that lets a small screen narrow it (its text elided) rather than widen the window."""
    combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)


class ComparisonView(QWidget):
    probed = Signal(object)
    failed = Signal(str)               # why the chosen volumes could not be compared

    def __init__(self, workspace: Workspace, cursor: Cursor, runner: TaskRunner, parent=None) -> None:
        super().__init__(parent)
        self.workspace, self.cursor, self.runner = workspace, cursor, runner
        self.model = ComparisonModel()
        self._task: Task | None = None
        self.pickers = {role: QComboBox() for role in ("source", "synthetic", "reference")}
        for picker in self.pickers.values():
            shrinkable(picker)
            picker.activated.connect(self.recompute)
        self.normalise_as = QComboBox()
        self.normalise_as.addItem(AUTO)
        shrinkable(self.normalise_as)
        self.normalise_as.setToolTip("Whose intensity normalisation PSNR and SSIM use (docs/evaluation.md)")
        self.normalise_as.activated.connect(self.recompute)
        self.plane = QComboBox()
        self.plane.addItems([p.value.capitalize() for p in Plane])
        self.plane.currentIndexChanged.connect(self._on_plane_changed)
        self.blend = QComboBox()
        self.blend.addItems([m.value for m in BlendMode])
        shrinkable(self.blend)
        self.blend.currentIndexChanged.connect(self._on_blend_changed)
        self.fade = QSlider(Qt.Orientation.Horizontal)
        self.fade.setRange(0, 100)
        self.fade.setValue(50)
        self.fade.setMaximumWidth(160)
        self.fade.setToolTip("Fade from the synthetic (left) to the reference (right)")
        self.fade.valueChanged.connect(self._on_blend_changed)
        self.fade.setEnabled(False)
        self.status = QLabel("Pick a synthetic (or any test) volume and a reference to compare.")
        self.status.setWordWrap(True)
        self.roi_button = QPushButton("ROI statistics")
        self.roi_button.setCheckable(True)
        self.roi_button.setToolTip("A rectangle on the synthetic panel (drag it, or its corner to resize): each "
                                   "volume's mean ± SD inside it on the slice shown, in its unit")
        self.roi_button.toggled.connect(self._toggle_roi)
        self.roi: pg.RectROI | None = None
        self._outlines: dict[str, QGraphicsRectItem] = {}
        self.roi_label = QLabel()
        self.roi_label.setWordWrap(True)
        self.roi_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.roi_label.hide()

        controls = QGridLayout()
        for col, (text, widget) in enumerate((("Source", self.pickers["source"]),
                                              ("Synthetic / test", self.pickers["synthetic"]),
                                              ("Reference", self.pickers["reference"]),
                                              ("Normalise as", self.normalise_as))):
            controls.addWidget(QLabel(text), 0, col)
            controls.addWidget(widget, 1, col)
        controls.addWidget(QLabel("Plane"), 0, 4)
        controls.addWidget(self.plane, 1, 4)
        blend_row = QHBoxLayout()
        blend_row.addWidget(QLabel("Synthetic panel shows:"))
        blend_row.addWidget(self.blend)
        blend_row.addWidget(QLabel("fade"))
        blend_row.addWidget(self.fade)
        blend_row.addWidget(self.roi_button)
        blend_row.addWidget(self.status, 1)

        self.views = {role: SliceView(cursor, Plane.AXIAL) for role in ROLES}
        panels = QWidget()
        row = QHBoxLayout(panels)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        for view in self.views.values():
            view.probed.connect(self.probed)
            row.addWidget(view)
        self.colour_bar = pg.ColorBarItem(values=(-1.0, 1.0), colorMap=DIFFERENCE_MAP, interactive=False, width=14)
        self.colour_bar_view = pg.GraphicsLayoutWidget()
        self.colour_bar_view.setFixedWidth(COLOUR_BAR_WIDTH)
        self.colour_bar_view.addItem(self.colour_bar)
        self.colour_bar_view.setToolTip("Difference colours: synthetic − reference in physical units")
        self.colour_bar_view.hide()
        self._difference_display = None
        row.addWidget(self.colour_bar_view)
        anchor = self.views["synthetic"].viewbox
        for role in ("source", "reference", "difference"):
            self.views[role].viewbox.setXLink(anchor)
            self.views[role].viewbox.setYLink(anchor)
        self.metrics = MetricsPanel()
        self.metrics.slice_clicked.connect(self.jump_to_slice)
        top = QWidget()
        stacked = QVBoxLayout(top)
        stacked.setContentsMargins(0, 0, 0, 0)
        stacked.addWidget(panels, 1)
        stacked.addWidget(self.roi_label)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self.metrics)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addLayout(blend_row)
        layout.addWidget(splitter, 1)

        self.model.result_changed.connect(self._on_result_changed)
        self.model.blend_changed.connect(self.views["synthetic"].refresh)
        workspace.added.connect(self._on_document_added)
        cursor.moved.connect(self._on_cursor_moved)

    # -- inputs -------------------------------------------------------------------------------
    def set_modalities(self, names: list[str]) -> None:
        """The modality names of the engine's registry (known once the engine is imported)."""
        self.normalise_as.addItems([n for n in names if self.normalise_as.findText(n) < 0])

    def _on_document_added(self, doc: Document) -> None:
        for role, picker in self.pickers.items():
            if picker.count() == 0:
                picker.addItem("—" if role == "source" else "(choose)", None)
            picker.addItem(doc.label, doc)

    def _chosen(self, role: str) -> Document | None:
        return self.pickers[role].currentData()

    def chosen_test(self) -> Document | None:
        """The synthetic (or test) volume being compared."""
        return self._chosen("synthetic")

    def forget(self, doc: Document) -> None:
        """A closed document leaves the pickers; a comparison that used it is cleared."""
        used = False
        for picker in self.pickers.values():
            chosen = picker.currentData() is doc
            index = next((i for i in range(picker.count()) if picker.itemData(i) is doc), -1)
            if index >= 0:
                picker.removeItem(index)
            if chosen:
                picker.setCurrentIndex(0)
                used = True
        if used:
            self.recompute()

    def set_inputs(self, synthetic: Document, reference: Document, source: Document | None = None) -> None:
        """Compare ``synthetic`` (any test volume) with ``reference``; ``source`` is optional."""
        for role, doc in (("synthetic", synthetic), ("reference", reference), ("source", source)):
            picker = self.pickers[role]
            found = next((i for i in range(picker.count()) if picker.itemData(i) is doc), 0)
            picker.setCurrentIndex(found)
        self.recompute()

    def recompute(self, *_args) -> None:
        """Resample and score the chosen volumes on a worker thread."""
        if self._task is not None:
            self._task.cancel()
        syn, ref, src = self._chosen("synthetic"), self._chosen("reference"), self._chosen("source")
        if syn is None or ref is None:
            self._task = None
            self.model.set_result(None)
            return
        modality = None if self.normalise_as.currentIndex() == 0 else self.normalise_as.currentText()
        registrations = list(self.workspace.registrations)
        self._set_status(f"Comparing {syn.title} with {ref.title}…")

        def score(progress, cancel) -> ComparisonResult:
            from app.state.scoring import compare  # SimpleITK and scipy: off the UI thread

            return compare(syn.volume, ref.volume, src.volume if src else None, modality, progress, cancel,
                           plane=syn.plane, registrations=registrations)

        task = self.runner.run(
            score, name="comparison", finished=lambda result: self._on_compared(task, result),
            failed=lambda message: self._on_failed(task, message),
            progressed=lambda p: self._set_status(f"Comparing… {100 * p.fraction:.0f} %"))
        self._task = task

    def _on_compared(self, task: Task, result: ComparisonResult) -> None:
        if task is not self._task:                    # a newer comparison replaced this one
            return
        self._task = None
        self.model.set_result(result)
        self._set_status("")

    def _on_failed(self, task: Task, message: str) -> None:
        if task is not self._task:
            return
        self._task = None
        self.model.set_result(None)                   # no earlier pair's numbers under this pair's names
        self._set_status(f"Cannot compare: {message}")
        self.failed.emit(message)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    # -- display ------------------------------------------------------------------------------
    def _on_result_changed(self, result: ComparisonResult | None) -> None:
        self.metrics.show_result(result)
        self._show_colour_bar(result)
        if result is None:
            for view in self.views.values():
                view.set_content(None, None)
            self._show_roi()
            return
        if result.source is None:
            self.views["source"].set_content(None, None, title="source: none chosen")
        syn_doc = self._chosen("synthetic")
        titles = {"source": "source", "synthetic": self._synthetic_title(),
                  "reference": "reference", "difference": f"difference (synthetic − reference, {result.difference.unit or 'a.u.'})"}
        for role in ROLES:
            volume = result.difference if role == "difference" else getattr(result, role)
            if volume is None:
                continue
            name = titles[role] if role == "difference" else f"{titles[role]}: {volume.name}"
            self.views[role].set_content(
                volume, self.model.display_for(role), title=name,
                synthetic=role == "synthetic" and syn_doc is not None and syn_doc.synthetic,
                slice_fn=self._blended_slice if role == "synthetic" else None,
                colormap=DIFFERENCE_MAP if role == "difference" else None)
        self._fit_roi()
        self._on_cursor_moved(self.cursor.position)                   # the ROI's values too

    def _show_colour_bar(self, result: ComparisonResult | None) -> None:
        """The difference map's colour bar, following its window, labelled with the unit."""
        if self._difference_display is not None:
            self._difference_display.changed.disconnect(self._on_difference_levels)
        self._difference_display = self.model.display_for("difference") if result is not None else None
        self.colour_bar_view.setVisible(self._difference_display is not None)
        if self._difference_display is None:
            return
        self.colour_bar.axis.setLabel(f"synthetic − reference ({result.difference.unit or 'a.u.'})")
        self._difference_display.changed.connect(self._on_difference_levels)
        self._on_difference_levels(self._difference_display.levels)

    def _on_difference_levels(self, levels: tuple[float, float]) -> None:
        self.colour_bar.setLevels(levels)

    def _synthetic_title(self) -> str:
        mode = self.model.mode
        if mode is BlendMode.CHECKERBOARD:
            return "checkerboard synthetic/reference"
        if mode is BlendMode.FADE:
            return f"fade {100 - round(100 * self.model.fade)}:{round(100 * self.model.fade)} synthetic/reference"
        return "synthetic"

    def _blended_slice(self, geometry, k: int) -> np.ndarray:
        result = self.model.result
        return self.model.blend(geometry.slice_image(result.synthetic.array, k),
                                geometry.slice_image(result.reference.array, k))

    def _on_blend_changed(self, *_args) -> None:
        mode = BlendMode(self.blend.currentText())
        self.fade.setEnabled(mode is BlendMode.FADE)
        self.model.set_blend(mode, self.fade.value() / 100)
        if self.model.result is not None:
            self.views["synthetic"].set_title(f"{self._synthetic_title()}: {self.model.result.synthetic.name}")

    def _on_plane_changed(self, index: int) -> None:
        for view in self.views.values():
            view.set_plane(list(Plane)[index])
        self._fit_roi(centre=True)                     # millimetres of another plane: other anatomy
        self._show_roi()

    # -- region of interest -------------------------------------------------------------------
    def _toggle_roi(self, on: bool) -> None:
        if on and self.roi is None:
            view = self.views["synthetic"]
            self.roi = pg.RectROI((40.0, 40.0), (20.0, 20.0), pen=pg.mkPen(ROI_PEN, width=2))
            self._fit_roi(centre=True)
            self.roi.sigRegionChanged.connect(self._show_roi)
            view.viewbox.addItem(self.roi)
            for role in ROLES:
                if role != "synthetic":
                    outline = self._outlines[role] = QGraphicsRectItem()
                    outline.setPen(pg.mkPen(ROI_PEN, width=1, style=Qt.PenStyle.DashLine))
                    self.views[role].viewbox.addItem(outline, ignoreBounds=True)
        elif not on and self.roi is not None:
            self.views["synthetic"].viewbox.removeItem(self.roi)
            for role, outline in self._outlines.items():
                self.views[role].viewbox.removeItem(outline)
            self.roi, self._outlines = None, {}
        self._show_roi()

    def _fit_roi(self, centre: bool = False) -> None:
        """Keep the ROI on the synthetic panel's image: in its middle (a fifth of each side, at least
        three pixels) when ``centre`` or when it lies off the image (another grid), and never dragged
        beyond the image."""
        view = self.views["synthetic"]
        if self.roi is None or view.geometry is None:
            return
        (width, height), (du, dv) = view.geometry.extent, view.geometry.pixel_size
        self.roi.maxBounds = QRectF(0.0, 0.0, width, height)
        rect = self.roi_rect()
        if centre or rect is None or rect.u >= width or rect.v >= height or rect.u + rect.width <= 0 \
                or rect.v + rect.height <= 0:
            w, h = min(width, max(0.2 * width, 3 * du)), min(height, max(0.2 * height, 3 * dv))
            self.roi.setPos(((width - w) / 2, (height - h) / 2), update=False)
            self.roi.setSize((w, h))

    def roi_rect(self) -> Rect | None:
        """The region of interest in view millimetres (None while it is off)."""
        if self.roi is None:
            return None
        pos, size = self.roi.pos(), self.roi.size()
        return Rect(pos.x(), pos.y(), size.x(), size.y())

    def _show_roi(self, *_args) -> None:
        """Each compared volume's statistics inside the region on the slice shown, on one line."""
        rect, result = self.roi_rect(), self.model.result
        self.roi_label.setVisible(rect is not None)
        if rect is None:
            return
        for role, outline in self._outlines.items():
            outline.setRect(QRectF(rect.u, rect.v, rect.width, rect.height))
            outline.setVisible(self.views[role].geometry is not None)      # not on an empty panel (no source)
        if result is None:
            self.roi_label.setText("ROI: compare two volumes to see their values inside it")
            return
        parts, counts = [], {}
        for role in ROI_ORDER:
            volume, view = (result.difference if role == "difference" else getattr(result, role)), self.views[role]
            if volume is None or view.volume is not volume or view.geometry is None:
                continue                                   # no such volume, or its panel not yet showing it
            covered = result.covered if role in ("reference", "difference") else None
            stats = roi_stats(view.geometry, volume, view.k, rect, covered)
            if stats is None:
                parts.append(f"{role}: no data here" if role in ("reference", "difference") else "")
                continue
            counts[role] = stats.voxels
            mean = value_in_unit(stats.mean, stats.unit).removesuffix(f" {stats.unit}")
            fewer = f" (on its {stats.voxels} voxels)" if stats.voxels < counts.get("synthetic", 0) else ""
            parts.append(f"{role} {mean} ± {value_in_unit(stats.sd, stats.unit)}{fewer}")
        if "synthetic" not in counts:
            self.roi_label.setText("ROI: no voxel centre of the synthetic inside it on this slice")
            return
        k = self.views["synthetic"].k
        self.roi_label.setText(f"ROI {rect.width:.1f} × {rect.height:.1f} mm on slice {k + 1}, {counts['synthetic']} "
                               "voxels (mean ± SD): " + " · ".join(part for part in parts if part))

    # -- slices -------------------------------------------------------------------------------
    def jump_to_slice(self, k: int) -> None:
        """Move the cursor to slice ``k`` of the per-slice scores (along the scored axis)."""
        result = self.model.result
        if result is None:
            return
        affine = result.synthetic.index_to_lps()
        lps = self.cursor.position if self.cursor.position is not None else affine[:3, 3]
        index = np.linalg.solve(affine, np.append(lps, 1.0))
        index[2 - result.slice_axis] = k                 # array axis 0/1/2 is index z/y/x
        self.cursor.move_to((affine @ index)[:3])

    def _on_cursor_moved(self, lps) -> None:
        self._show_roi()                               # the views' slice follows the cursor first
        result = self.model.result
        if result is None or lps is None:
            return
        index = np.linalg.solve(result.synthetic.index_to_lps(), np.append(lps, 1.0))
        n = result.synthetic.shape[result.slice_axis]
        self.metrics.set_current_slice(int(np.clip(np.rint(index[2 - result.slice_axis]), 0, n - 1)))
