"""The comparison's numbers: PSNR / SSIM / MAE inside the body mask and over the whole image, for
the synthetic and — always — for the "do nothing" baseline (the source, histogram-matched to the
reference) with a one-line verdict, and a per-slice metric plot whose points jump to their slice
when clicked."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.state.comparison import ComparisonResult

PLOTTED = {"SSIM (×100)": "ssim", "PSNR (dB)": "psnr", "MAE": "mae"}
SYNTHETIC_ROW = "synthetic"
BASELINE_ROW = "source, histogram-matched (do nothing)"
ROWS = (f"{SYNTHETIC_ROW} · body", f"{SYNTHETIC_ROW} · whole", f"{BASELINE_ROW} · body",
        f"{BASELINE_ROW} · whole")
COLUMNS = ("PSNR (dB)", "SSIM (×100)", "MAE")
WORSE_STYLE = "color:#b01010; font-weight:bold;"
JUMP_TIP = "Click to jump to a slice"


def format_value(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


class MetricsPanel(QWidget):
    slice_clicked = Signal(int)        # a slice index along the scored axis
    export_requested = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.result: ComparisonResult | None = None
        self.table = QTableWidget(len(ROWS), len(COLUMNS))          # rows: what is scored; columns: metrics
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setVerticalHeaderLabels(list(ROWS))
        self.table.setToolTip("The do-nothing baseline is the source volume with its intensities mapped onto the "
                              "reference's histogram inside the body: a synthetic that scores worse than it has "
                              "not helped")
        self.verdict = QLabel()
        self.verdict.setWordWrap(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setWordWrap(False)           # a note spanning a row is elided; its tooltip and the verdict hold it
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.notes.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        notes_area = QScrollArea()              # long notes scroll instead of pushing over the table in a small window
        notes_area.setWidget(self.notes)
        notes_area.setWidgetResizable(True)
        notes_area.setFrameShape(QScrollArea.Shape.NoFrame)
        notes_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        notes_area.setMaximumWidth(440)
        export = QPushButton("Export metrics (CSV)…")
        export.clicked.connect(self.export_requested)
        self.metric = QComboBox()
        self.metric.addItems(list(PLOTTED))
        self.metric.currentIndexChanged.connect(self._plot)
        self.plot = pg.PlotWidget(background="w")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.setMenuEnabled(False)
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#1f5fa8", width=1.5), symbol="o", symbolSize=4,
                                    symbolBrush="#1f5fa8", connect="finite")
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen("#d07000", width=1.5), movable=False)
        self.plot.addItem(self.marker, ignoreBounds=True)
        self.plot.scene().sigMouseClicked.connect(self._on_plot_clicked)
        self.plot.setToolTip(JUMP_TIP)

        left = QVBoxLayout()
        left.addWidget(self.table)
        left.addWidget(notes_area, 1)
        left.addWidget(export)
        right = QVBoxLayout()
        top = QHBoxLayout()
        top.addWidget(QLabel("Per slice:"))
        top.addWidget(self.metric)
        top.addStretch(1)
        right.addLayout(top)
        right.addWidget(self.plot, 1)
        columns = QHBoxLayout()
        columns.addLayout(left)
        columns.addLayout(right, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.verdict)          # above both: the first thing read
        layout.addLayout(columns, 1)

    def show_result(self, result: ComparisonResult | None) -> None:
        self.result = result
        self.table.clearSpans()
        for row in range(len(ROWS)):
            for col in range(len(COLUMNS)):
                self.table.setItem(row, col, QTableWidgetItem(""))
        if result is None:
            self.notes.setText("")
            self.verdict.setText("")
            self.curve.setData([], [])
            self.plot.setToolTip(JUMP_TIP)
            return
        ev = result.evaluation
        self.table.setHorizontalHeaderLabels([*COLUMNS[:2], f"MAE ({ev.unit})"])
        base = result.baseline
        for row, scores in enumerate((ev.body, ev.whole, base.body if base else None, base.whole if base else None)):
            values = (None, None, None) if scores is None else (scores.psnr, scores.ssim, scores.mae)
            for col, value in enumerate(values):
                item = QTableWidgetItem(format_value(value))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if base is None and row >= 2:
                    item.setToolTip(result.baseline_note)
                self.table.setItem(row, col, item)
        self._fit_table()                   # to the numbers: a note spanning a row must not widen a column
        if base is None:                    # the row says why it is empty
            note = QTableWidgetItem(result.baseline_note)
            note.setToolTip(result.baseline_note)
            self.table.setItem(2, 0, note)
            self.table.setSpan(2, 0, 1, len(COLUMNS))
        self.verdict.setText(result.verdict() if base is not None else f"Do-nothing baseline: {result.baseline_note}.")
        self.verdict.setStyleSheet(WORSE_STYLE if result.model_worse else "")
        norm = ev.normalisations[1]
        lines = [f"Normalised as {ev.modality} (reference {norm.lo:.4g}…{norm.hi:.4g} {result.reference.unit or 'a.u.'} "
                 "→ 0…1); "
                 f"body mask: {100 * ev.mask_fraction:.0f} % of voxels.", *result.notes]
        self.notes.setText("\n".join(lines))
        self._plot()

    def _fit_table(self) -> None:
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()
        width = self.table.verticalHeader().width() + self.table.horizontalHeader().length()
        height = self.table.horizontalHeader().height() + self.table.verticalHeader().length()
        self.table.setFixedSize(width + 2 * self.table.frameWidth(), height + 2 * self.table.frameWidth())

    def _plot(self) -> None:
        if self.result is None:
            return
        key = PLOTTED[self.metric.currentText()]
        values = np.asarray(self.result.evaluation.per_slice[key], dtype=float)
        self.curve.setData(np.arange(len(values)), np.where(np.isfinite(values), values, np.nan))
        self.plot.setXRange(-0.5, len(values) - 0.5, padding=0.02)
        unit = self.result.evaluation.unit if key == "mae" else ""
        axis = "zyx"[self.result.slice_axis]
        self.plot.setLabel("bottom", f"slice ({axis})")
        self.plot.setToolTip(f"{JUMP_TIP}. x: the slice's index {axis} on the synthetic grid, the axis scored slice "
                             "by slice")
        self.plot.setLabel("left", self.metric.currentText().replace("MAE", f"MAE ({unit})"))

    def set_current_slice(self, k: int) -> None:
        self.marker.setValue(k)

    def _on_plot_clicked(self, ev) -> None:
        if self.result is None or ev.button() != Qt.MouseButton.LeftButton:
            return
        vb = self.plot.getPlotItem().getViewBox()
        if not vb.sceneBoundingRect().contains(ev.scenePos()):
            return
        n = len(self.result.evaluation.per_slice["ssim"])
        k = int(np.clip(np.rint(vb.mapSceneToView(ev.scenePos()).x()), 0, n - 1))
        self.slice_clicked.emit(k)
