"""File ▸ Synthesize a cohort…: the input (a folder tree, a BIDS dataset or a CSV manifest), the
target, the output folder and the model; OK queues ``python main.py cohort`` in the Training panel
(its progress, Cancel and the run manifest are shown there). OK is enabled only when the choices can
run, with the reason beside it."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from app.settings import Settings
from app.synthesis import available_models
from app.training.jobs import CohortSpec
from app.training.widgets import ERROR_STYLE, absolute_path, row
from engine.inference import DEVICES
from engine.modalities import MODALITIES

FROM_FILE = "From the files (BIDS suffix, header or name)"
IDENTIFY = "Identify with the model"


class CohortDialog(QDialog):
    cohort_requested = Signal(object)        # a CohortSpec

    def __init__(self, settings: Settings, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Synthesize a cohort")
        self.input = QLineEdit()
        self.input.setPlaceholderText("a study folder, a BIDS dataset or a CSV manifest (input,target[,source,output])")
        folder, table = QPushButton("Folder…"), QPushButton("CSV…")
        folder.clicked.connect(self._choose_folder)
        table.clicked.connect(self._choose_csv)
        self.target = QComboBox()
        self.source = QComboBox()
        self.source.addItem(FROM_FILE, None)
        self.source.addItem(IDENTIFY, "auto")
        for name, modality in MODALITIES.items():
            self.target.addItem(f"{name} — {modality.description}", name)
            self.source.addItem(f"{name} — {modality.description}", name)
        self.target.setCurrentIndex(self.target.findData("T2"))
        self.output = QLineEdit()
        self.output.setPlaceholderText("a folder (a BIDS input: its derivatives/synermedgen)")
        out_button = QPushButton("Folder…")
        out_button.clicked.connect(self._choose_output)
        self.model = QComboBox()
        for choice in available_models(settings.model_dirs):
            self.model.addItem(choice.label, str(choice.path))
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setCurrentText(settings.device if settings.device in DEVICES else "auto")
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText("all")
        self.threads.setToolTip("CPU threads of the synthesis process (torch, ONNX Runtime, SimpleITK, BLAS)")
        self.problem = QLabel()
        self.problem.setStyleSheet(ERROR_STYLE)
        self.problem.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Synthesize")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Input", row(self.input, folder, table))
        form.addRow("Target", self.target)
        form.addRow("Source", self.source)
        form.addRow("Output", row(self.output, out_button))
        form.addRow("Model", self.model)
        form.addRow("Device", self.device)
        form.addRow("CPU threads", self.threads)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Runs in the Training panel; rerunning skips the volumes already made. "
                                "Synthetic images — research use only, not for diagnosis."))
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        for widget in (self.input, self.output):
            widget.textChanged.connect(self._check)
        for combo in (self.target, self.source, self.model):
            combo.currentIndexChanged.connect(self._check)
        self.input.editingFinished.connect(self._suggest_output)
        self._check()

    # -- choosing ---------------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "A study folder or a BIDS dataset", self.input.text())
        if path:
            self.set_input(path)

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "A CSV manifest", self.input.text(), "CSV manifest (*.csv)")
        if path:
            self.set_input(path)

    def _choose_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.output.text() or self.input.text())
        if path:
            self.output.setText(path)

    def set_input(self, path: str) -> None:
        self.input.setText(path)
        self._suggest_output()

    def _suggest_output(self) -> None:
        """An empty output gets the input's convention: a BIDS dataset's derivatives folder, else a
        folder beside the input."""
        text = absolute_path(self.input.text())
        if not text or self.output.text().strip():
            return
        from engine.io import is_bids  # loads the engine's I/O: only when a folder is chosen

        path = Path(text)
        if is_bids(path):
            self.output.setText(str(path / "derivatives" / "synermedgen"))
        else:
            stem = path.stem if path.is_file() else path.name
            self.output.setText(str(path.parent / f"{stem}-synthetic-{self.target.currentData()}"))

    # -- checking -----------------------------------------------------------------------------------
    def problem_text(self) -> str:
        """Why the choices cannot run ("" when they can)."""
        source, target = absolute_path(self.input.text()), self.target.currentData()
        output = absolute_path(self.output.text())
        if not source:
            return "Choose the input: a study folder, a BIDS dataset or a CSV manifest."
        if not Path(source).exists():
            return f"The input {source} does not exist."
        if Path(source).is_file() and Path(source).suffix.lower() != ".csv":
            return "A file input must be a CSV manifest (input,target[,source,output]); choose a folder otherwise."
        if not output:
            return "Choose the output folder."
        if Path(output).is_file():
            return f"The output {output} is a file; choose a folder."
        if self.model.currentData() is None:
            return "No model is installed: import one in the Synthesis panel first."
        if self.source.currentData() == target:
            return f"The source and the target are both {target}."
        return ""

    def _check(self) -> None:
        text = self.problem_text()
        self.problem.setText(text)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not text)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setToolTip(text)

    def spec(self) -> CohortSpec:
        source = absolute_path(self.input.text())
        return CohortSpec(name=f"Cohort {Path(source).name} → {self.target.currentData()}", input=source,
                          target=self.target.currentData(), out_dir=absolute_path(self.output.text()),
                          model=self.model.currentData(), source=self.source.currentData(),
                          device=self.device.currentText(), threads=self.threads.value() or None)

    def accept(self) -> None:
        if self.problem_text():
            return
        self.cohort_requested.emit(self.spec())
        super().accept()
