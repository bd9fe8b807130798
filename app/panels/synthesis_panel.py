"""The synthesis panel: source and target modality (the target stays as the user chose it while
inputs come and go), the slicing plane, model (its card's limitations one click away), backend,
device, precision, steps and guidance under Advanced; runs in the synthesis process (through a
worker) with progress, remaining time, a per-slice preview (cleared at each run) and Cancel, then
shows the out-of-distribution guard's warnings about the input and what the model card's benchmark
says of the route. Without an engine or a model it says so; Run stays disabled. A synthetic input is
used only after the user confirms it."""
from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.engine_process import EngineProcess
from app.errors import describe_error
from app.settings import Settings
from app.state.workspace import Document
from app.synthesis import (
    SynthesisRequest,
    available_models,
    benchmark_notes_of,
    guard_notes_of,
    is_model_dir,
    model_limitations,
    model_routes,
)
from app.workers import Task, TaskRunner
from engine.inference import SLICING_PLANES
from engine.jobs import Progress

AUTO_SOURCE = "Auto (identify with the model)"
WARNING_STYLE = "background:#fde2e1; color:#6b1410; border:1px solid #d9534f; padding:6px;"
NOTE_STYLE = "color:#666; padding:2px;"
MODEL_DEFAULT = "model default"
PLANE_LABELS = {"auto": "Auto (acquisition plane)", "axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}


def _combo(items: list[tuple[str, str]], current: str) -> QComboBox:
    combo = QComboBox()
    for text, value in items:
        combo.addItem(text, value)
    combo.setCurrentIndex(max(0, combo.findData(current)))
    return combo


def _model_pixels_box(tooltip: str) -> QDoubleSpinBox:
    """A spin box of 0 to 16 model pixels in half-pixel steps (below 0: the model's default)."""
    box = QDoubleSpinBox()
    box.setRange(-0.5, 16.0)
    box.setSingleStep(0.5)
    box.setSuffix(" px")
    box.setToolTip(tooltip)
    return box


def preview_pixmap(image: np.ndarray, size: int = 160) -> QPixmap:
    """A grey preview of a 2-D slice, scaled to ``size`` pixels."""
    a = np.asarray(image, dtype=np.float32)
    lo, hi = np.nanpercentile(a, (1, 99)) if a.size else (0.0, 1.0)
    grey = np.ascontiguousarray(np.clip((a - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8))
    qimage = QImage(grey.data, grey.shape[1], grey.shape[0], grey.strides[0], QImage.Format.Format_Grayscale8)
    return QPixmap.fromImage(qimage.copy()).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio)


class SynthesisPanel(QWidget):
    synthesis_finished = Signal(object, object, str)    # (source Document, synthetic Volume, the plane it cut)
    failed = Signal(str)

    def __init__(self, runner: TaskRunner, settings: Settings, parent=None) -> None:
        super().__init__(parent)
        self.runner, self.settings = runner, settings
        self.engine = EngineProcess()
        self.document: Document | None = None
        self._task: Task | None = None
        self._started = 0.0
        self.unavailable: str | None = None          # why synthesis cannot run, once the engine is known
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("background:#fff3cd; color:#5c4400; border:1px solid #e0c060; padding:6px;")
        self.input_label = QLabel("—")
        self.input_label.setWordWrap(True)
        self.modalities: list[str] = []
        self.source = QComboBox()
        self.source.addItem(AUTO_SOURCE)
        self.source.currentIndexChanged.connect(self._update_targets)
        self.target = QComboBox()
        self.target.currentIndexChanged.connect(self._on_target_chosen)
        self._chosen_target = ""                      # the user's choice, restored whenever the list offers it
        # the last run's input (weakly: closing it frees its memory) and the source the user gave it
        self._ran_from: tuple[weakref.ref[Document], str | None] | None = None
        self.plane = _combo([(PLANE_LABELS[p], p) for p in SLICING_PLANES], "auto")
        self.plane.setToolTip("The patient plane the 2-D model works in, slice by slice: auto is the plane the "
                              "volume was acquired in (its thick slices, or its stored slices when voxels are "
                              "near-isotropic); other planes may show stripes across those slices")
        self.model = QComboBox()
        self.model.currentIndexChanged.connect(self._update_targets)
        import_button = QPushButton("Import…")
        import_button.setToolTip("Add a SynerMedGen or BAGEL-layout model directory")
        import_button.clicked.connect(self._import_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(import_button)
        self.card_button = QToolButton()
        self.card_button.setText("Model card: limitations")
        self.card_button.setCheckable(True)
        self.card_button.setAutoRaise(True)
        self.card_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.card_button.setArrowType(Qt.ArrowType.RightArrow)
        self.limitations = QLabel()
        self.limitations.setWordWrap(True)
        self.limitations.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.limitations.setContentsMargins(12, 0, 0, 0)
        self.limitations.setVisible(False)
        self.card_button.toggled.connect(self.limitations.setVisible)
        self.card_button.toggled.connect(lambda on: self.card_button.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow))
        self.model.currentIndexChanged.connect(self._show_limitations)
        self.input_check = QLabel()                 # the guard's warnings about the last run's input
        self.input_check.setWordWrap(True)
        self.input_check.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.input_check.hide()
        self.backend = _combo([("PyTorch", "torch"), ("ONNX Runtime", "onnx")], settings.backend)
        self.backend.setToolTip("ONNX Runtime exports the model's graphs beside it on first use (seconds to minutes)")
        self.device = _combo([("Auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda")], settings.device)
        self.precision = _combo([("fp32 (highest)", "fp32"), ("fp16", "fp16"), ("bf16", "bf16")], settings.precision)
        for combo, name in ((self.backend, "backend"), (self.device, "device"), (self.precision, "precision")):
            combo.currentIndexChanged.connect(lambda _i, c=combo, n=name: setattr(self.settings, n, c.currentData()))

        # each starts at its lowest value, shown as "model default": the model card's choice (so does any
        # negative value typed into one, which no setting takes)
        self.steps = QSpinBox()
        self.steps.setRange(0, 250)
        self.text_guidance = QDoubleSpinBox()
        self.text_guidance.setRange(0.0, 20.0)
        self.text_guidance.setToolTip("Classifier-free guidance on the instruction; 1 turns it off")
        self.image_guidance = QDoubleSpinBox()
        self.image_guidance.setRange(0.0, 10.0)
        self.image_guidance.setToolTip("Guidance on the source image; 1 turns it off")
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.noise_correlation = QDoubleSpinBox()
        self.noise_correlation.setRange(-0.05, 0.99)
        self.noise_correlation.setSingleStep(0.05)
        self.noise_correlation.setToolTip("How alike neighbouring slices' starting noise is: 0 samples every slice "
                                          "independently (stripes across slices), near 1 the same noise for all")
        self.guided_filter = _model_pixels_box(
            "Re-draw each synthetic slice from the source slice at the input's resolution, in windows of this "
            "radius (model pixels): sharper edges where the source has them, less mottling; 0 turns it off")
        self.guided_filter_depth = _model_pixels_box(
            "How far the filter's windows also reach across slices (model pixels, converted through the slice "
            "spacing): neighbouring slices agree, no stripes in the other planes; 0 filters each slice alone")
        self._sampling_boxes = (self.steps, self.text_guidance, self.image_guidance, self.seed, self.noise_correlation,
                                self.guided_filter, self.guided_filter_depth)
        for box in self._sampling_boxes:
            box.setSpecialValueText(MODEL_DEFAULT)
            box.setValue(box.minimum())
        advanced = QToolButton()
        advanced.setText("Advanced")
        advanced.setCheckable(True)
        advanced.setAutoRaise(True)
        advanced.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        advanced.setArrowType(Qt.ArrowType.RightArrow)
        advanced_body = QWidget()
        adv_form = QFormLayout(advanced_body)
        adv_form.setContentsMargins(12, 0, 0, 0)
        for text, widget in (("Steps", self.steps), ("Text guidance", self.text_guidance),
                             ("Image guidance", self.image_guidance), ("Seed", self.seed),
                             ("Slice noise correlation", self.noise_correlation),
                             ("Source-guided filter", self.guided_filter),
                             ("Filter across slices", self.guided_filter_depth)):
            adv_form.addRow(text, widget)
        advanced_body.setVisible(False)
        advanced.toggled.connect(advanced_body.setVisible)
        advanced.toggled.connect(lambda on: advanced.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow))

        self.run_button = QPushButton("Synthesize")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.hide()
        self.eta = QLabel("")
        self.eta.setWordWrap(True)
        self.preview = QLabel()
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)

        form = QFormLayout()
        for text, widget in (("Input", self.input_label), ("Source", self.source), ("Target", self.target),
                             ("Slicing plane", self.plane), ("Backend", self.backend), ("Device", self.device),
                             ("Precision", self.precision)):
            form.addRow(text, widget)
        form.insertRow(3, "Model", model_row)
        layout = QVBoxLayout(self)
        layout.addWidget(self.notice)
        layout.addLayout(form)
        layout.addWidget(self.card_button)
        layout.addWidget(self.limitations)
        layout.addWidget(advanced)
        layout.addWidget(advanced_body)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta)
        layout.addWidget(self.input_check)
        layout.addWidget(self.preview)
        layout.addStretch(1)
        self.refresh_models()

    # -- choices ------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        self.model.blockSignals(True)
        self.model.clear()
        for choice in available_models(self.settings.model_dirs):
            self.model.addItem(choice.label, choice.path)
        self.model.blockSignals(False)
        self._show_limitations()
        self._update_targets()

    def _show_limitations(self, *_args) -> None:
        """The chosen model card's limitations, under the "Model card" expander and as its tooltip."""
        model_dir = self.model.currentData()
        try:
            items = model_limitations(model_dir) if model_dir is not None else []
        except ValueError as exc:
            items = [f"The model card cannot be read: {describe_error(exc)}"]
        text = "\n".join(f"• {item}" for item in items) if items else "The model card lists no limitations."
        self.limitations.setText(text)
        self.card_button.setToolTip(text)
        self.card_button.setEnabled(model_dir is not None)

    def _import_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a model directory", self.settings.last_folder)
        if not folder:
            return
        if not is_model_dir(Path(folder)):
            self.failed.emit(f"{folder}: not a model directory (it has no config.json or llm_config.json)")
            return
        if folder not in self.settings.model_dirs:
            self.settings.model_dirs.append(folder)
        self.refresh_models()

    def set_engine(self, names: list[str], unavailable: str | None) -> None:
        """What the engine offers, known once it is imported: the modality names, and why
        synthesis cannot run (None when it can)."""
        self.modalities, self.unavailable = list(names), unavailable
        self.source.blockSignals(True)
        self.source.addItems([n for n in names if self.source.findText(n) < 0])
        self.source.blockSignals(False)
        self.set_document(self.document)

    def set_document(self, doc: Document | None) -> None:
        self.document = doc
        self.input_label.setText(doc.label if doc else "—")
        ran = self._ran_from[1] if self._ran_from is not None and self._ran_from[0]() is doc else None
        if ran is not None:                  # back on the last run's input: the source the user gave it
            self.source.setCurrentIndex(max(0, self.source.findText(ran)))
        elif doc is not None:                # an unknown modality: identified with the model
            self.source.setCurrentIndex(max(0, self.source.findText(doc.volume.modality))
                                        if doc.volume.modality else 0)
        self._update_targets()

    def _source_modality(self) -> str | None:
        return None if self.source.currentIndex() == 0 else self.source.currentText()

    def _update_targets(self, *_args) -> None:
        """Targets: the routes the chosen model supports from this source (all when unknown)."""
        current = self.target.currentText()
        source = self._source_modality()
        names = [m for m in self.modalities if m != source]
        model_dir = self.model.currentData()
        try:
            routes = model_routes(model_dir) if names and model_dir is not None else None
        except ValueError as exc:
            routes = ()
            self.failed.emit(describe_error(exc))
        if routes is not None:
            names = [m for m in names if any(r[1] == m and (source is None or r[0] == source) for r in routes)]
        self.target.blockSignals(True)
        self.target.clear()
        self.target.addItems(names)
        for wanted in (self._chosen_target, current):
            if wanted in names:
                self.target.setCurrentText(wanted)
                break
        self.target.blockSignals(False)
        self._update_enabled()

    def _on_target_chosen(self, *_args) -> None:
        self._chosen_target = self.target.currentText()
        self._update_enabled()

    def _why_not(self) -> str | None:
        if not self.modalities:
            return "Checking for the inference engine…"
        if self.unavailable:
            return f"No model available yet: {self.unavailable}."
        if self.model.count() == 0:
            return "No model available yet: install the default model or import a model directory."
        if self.document is None:
            return "Open a volume to synthesize from."
        if self.target.count() == 0:
            return "The chosen model has no route from this source modality."
        return None

    def _update_enabled(self, *_args) -> None:
        reason = self._why_not()
        running = self.busy
        self.notice.setVisible(reason is not None and reason.startswith("No model"))
        self.notice.setText(f"{reason} Loading, viewing, comparing and exporting volumes work without it."
                            if reason else "")
        self.run_button.setEnabled(reason is None and not running)
        self.run_button.setToolTip(reason or "Synthesize the target modality on the input's grid")
        self.cancel_button.setEnabled(running)

    # -- running ------------------------------------------------------------------------------
    def request(self) -> SynthesisRequest:
        return SynthesisRequest(
            self.document.volume, self._source_modality(), self.target.currentText(), self.model.currentData(),
            self.backend.currentData(), self.device.currentData(), self.precision.currentData(),
            *(None if box.value() == box.minimum() or box.value() < 0 else box.value() for box in self._sampling_boxes),
            plane=self.plane.currentData())

    def start(self) -> None:
        if self._why_not() is not None or self._task is not None:
            return
        if self.document.synthetic and not self.confirm_synthetic_input():
            return
        request, source_doc = self.request(), self.document
        self._ran_from = (weakref.ref(source_doc), request.source)
        self._started = time.monotonic()
        self.progress.setValue(0)
        self.progress.show()
        self.input_check.hide()
        self.preview.clear()                         # the last run's slice is not this run's
        self.eta.setText("Starting the synthesis process and loading the model…")
        self._task = self.runner.run(
            lambda progress, cancel: self.engine.synthesize(request, progress, cancel), name="synthesis",
            progressed=self._on_progress, finished=lambda volume: self._on_done(source_doc, volume, request.plane),
            failed=self._on_failed, cancelled=lambda: self._end("Cancelled."))
        self._update_enabled()

    def confirm_synthetic_input(self) -> bool:
        """Ask before a synthetic volume becomes the input of another synthesis (default: no)."""
        box = QMessageBox(QMessageBox.Icon.Warning, "Synthetic input",
                          f"{self.document.title} is synthetic: a model made it, it was not acquired. "
                          "Synthesizing from it compounds the model's errors, and the result is not a "
                          "scan of the patient (research use only).\n\nUse it as the input anyway?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        return box.exec() == QMessageBox.StandardButton.Yes

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self.eta.setText("Cancelling…")

    def _on_progress(self, progress: Progress) -> None:
        self.progress.setValue(round(100 * progress.fraction))
        elapsed = time.monotonic() - self._started
        if progress.fraction > 0:
            remaining = elapsed * (1 - progress.fraction) / progress.fraction
            self.eta.setText(f"{progress.message}  ·  about {remaining:.0f} s left")
        preview = getattr(progress, "preview", None)
        if isinstance(preview, np.ndarray) and preview.ndim == 2:
            self.preview.setPixmap(preview_pixmap(preview))

    def _on_done(self, source_doc: Document, volume, plane: str) -> None:
        self._end(f"Done in {time.monotonic() - self._started:.0f} s.")
        self.progress.setValue(100)
        self.show_input_check(volume)
        self.synthesis_finished.emit(source_doc, volume, plane)

    def show_input_check(self, volume) -> None:
        """The guard's verdict on the input of ``volume`` (a synthetic result) and what the model
        card's benchmark says of the route: warnings in a red banner, or the guard's note that this
        model cannot check inputs in grey; nothing when all looked fine."""
        warnings, notes = guard_notes_of(volume)
        known = benchmark_notes_of(volume)
        parts = []
        if warnings:
            parts.append("The input is unlike this model's training data — treat the result with caution:\n"
                         + "\n".join(f"• {w.split(': ', 1)[-1]}" for w in warnings))
        if known:
            parts.append("This model's own benchmark:\n" + "\n".join(f"• {w}" for w in known))
        if parts:
            self.input_check.setText("\n".join(parts))
            self.input_check.setStyleSheet(WARNING_STYLE)
        elif notes:
            self.input_check.setText(notes[0].split(": ", 1)[-1].capitalize() + ".")
            self.input_check.setStyleSheet(NOTE_STYLE)
        self.input_check.setVisible(bool(parts or notes))

    def _on_failed(self, message: str) -> None:
        self._end("Failed.")
        self.failed.emit(f"Synthesis failed: {message}")

    def _end(self, text: str) -> None:
        self._task = None
        self.eta.setText(text)
        self._update_enabled()

    @property
    def busy(self) -> bool:
        """Whether a synthesis is running."""
        return self._task is not None

    def shutdown(self) -> None:
        """Stop the synthesis process (the window is closing; running tasks were cancelled)."""
        self.engine.close()
