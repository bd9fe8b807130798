"""The fine-tuning wizard: a paired dataset folder is checked before anything trains (subjects,
modalities, routes, the validation split, what is left out and why, by file); series not named by a
modality are mapped and misaligned volumes registered into a prepared copy when there are any
(app.training.prepare_page); then routes, start model and stages, budget, device, output and the
comparison with the start model, and a summary with the exact commands and their torchrun form.
Finishing hands a FineTuneSpec to the Training panel."""
from __future__ import annotations

import html
import re
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from app.settings import Settings, config_dir
from app.synthesis import available_models, is_model_dir
from app.training.jobs import (
    STAGE_NAMES,
    STAGE_PLANS,
    FineTuneSpec,
    command_line,
    evaluate_arguments,
    stage_outputs,
    train_arguments,
)
from app.training.prepare_page import PreparePage
from app.training.widgets import ERROR_STYLE, CheckedPage, absolute_path, row
from app.workers import Task, TaskRunner
from engine.split import TEST_FRACTION, VAL_FRACTION
from engine.training import DEFAULT_STEPS

CHECK_DELAY_MS = 300            # typing a folder name: check once the user pauses
DEFAULT_IMAGE_SIZE = 64         # the train command's default
NAME_PATTERN = re.compile(r"^[\w.-]+$")
STAGE_CHOICES = [("Stage I, then Stage II (recommended)", "both"),
                 (f"{STAGE_NAMES['understanding']} only", "understanding"),
                 (f"{STAGE_NAMES['generation']} only", "generation")]
DEFAULT_EVALUATE_SLICES = 16    # central slices per validation volume in the comparison with the start model
WIZARD_SIZE = (980, 760)        # the pages' tables and registration overlays fit, on most screens


def _validate(folder: str, seed: int, val_percent: int, test_percent: int, deep: bool, progress, cancel):
    """The report, and the volumes that may need registering (the preparation page's candidates)."""
    from engine.tasks import misaligned_volumes, validate_dataset

    report = validate_dataset(folder, seed=seed, val_fraction=val_percent / 100, test_fraction=test_percent / 100,
                              deep=deep, progress=progress, cancel=cancel)
    return report, misaligned_volumes(report)


def _mappable(report) -> int:
    from engine.tasks import mappable

    return len(mappable(report))


def fractions_problem(val_percent: int, test_percent: int) -> str | None:
    """The held-out shares leave no subject to train on (the split refuses them): the fix."""
    if val_percent + test_percent < 100:
        return None
    return (f"Validation {val_percent} % and test {test_percent} % hold out every subject, leaving none to train on: "
            "lower them (together under 100 %; 10 % each is usual).")


def default_model_name(dataset_name: str, folder: Path) -> str:
    """``DATASET-finetuned`` in the characters a model name takes, numbered when that folder is taken."""
    stem = re.sub(r"[^\w.-]+", "-", dataset_name).strip("-.") or "model"
    name, n = f"{stem}-finetuned", 2
    while any(p.exists() for p in (folder / name, folder / f"{name}-stage1")):
        name, n = f"{stem}-finetuned-{n}", n + 1
    return name


def report_html(report) -> str:
    """The validation report for people: subjects with their modalities and split, routes, and
    every file or subject left out with the reason."""
    e = html.escape
    if not report.usable:
        return f"<p style='{ERROR_STYLE}'>{e(report.error_message()).replace(chr(10), '<br>')}</p>"
    part_of = {name: part for part, names in report.split.items() for name in names}
    rows = "".join(f"<tr><td>{e(s.name)}</td><td>{e(', '.join(s.modalities))}</td><td>{e(part_of.get(s.name, ''))}"
                   f"</td></tr>" for s in report.subjects)
    routes = ", ".join(f"{a}→{b} ({n})" for (a, b), n in report.route_counts().items())
    split = " · ".join(f"{part} {len(names)}" for part, names in report.split.items())
    text = [f"<p><b>{e(report.name)}</b>: {len(report.subjects)} usable of {len(report.subjects_found)} subjects"
            f"</p><table cellspacing='6'><tr><th align='left'>Subject</th><th align='left'>Modalities</th>"
            f"<th align='left'>Split</th></tr>{rows}</table>",
            f"<p><b>Routes</b> (subjects): {e(routes)}</p><p><b>Split</b> (subjects): {e(split)}</p>"]
    for title, findings in (("Left out", report.problems), ("Notes", report.notes)):
        if findings:
            items = "".join(f"<li>{e(str(f))}</li>" for f in findings)
            text.append(f"<p><b>{title}</b> ({len(findings)}):</p><ul>{items}</ul>")
    return "".join(text)


class DatasetPage(CheckedPage):
    """The folder, checked on a worker whenever it (or the seed) changes; Next waits for usable pairs."""

    def __init__(self, runner: TaskRunner, settings: Settings) -> None:
        super().__init__()
        self.runner, self.settings = runner, settings
        self.setTitle("Paired dataset")
        self.setSubTitle("One folder per subject with a volume per modality (SUBJECT/T1.nii.gz, SUBJECT/T2.nii.gz, "
                         "a DICOM folder named by its modality, or DICOM series in any folders below the subject, "
                         "mapped to modalities on the next page), or a BIDS dataset (each session a subject, "
                         "sub-01/anat/sub-01_T1w.nii.gz). It is checked before anything trains.")
        self.report = None
        self.misaligned = []
        self._task: Task | None = None
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("dataset folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seeds the training order and, unless dataset.json lists a split, which subjects are "
                             "held out for validation and test")
        self.val_percent, self.test_percent = QSpinBox(), QSpinBox()
        for box, share, held in (
                (self.val_percent, VAL_FRACTION, "validation (loss, accuracy, the comparison with the start model)"),
                (self.test_percent, TEST_FRACTION, "a final test that training never sees")):
            box.setRange(0, 50)
            box.setValue(round(100 * share))
            box.setSuffix(" % of subjects")
            box.setToolTip(f"Subjects held out for {held}, unless dataset.json lists a split")
        self.deep = QCheckBox("Read every voxel (slower; also finds truncated files)")
        self.status = QLabel("Choose a dataset folder.")
        self.status.setWordWrap(True)
        self.report_view = QTextBrowser()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(CHECK_DELAY_MS)
        self._timer.timeout.connect(self.check)
        self.folder.textChanged.connect(self._schedule)
        self.seed.valueChanged.connect(self._schedule)
        self.val_percent.valueChanged.connect(self._schedule)
        self.test_percent.valueChanged.connect(self._schedule)
        self.deep.toggled.connect(self._schedule)
        form = QFormLayout()
        form.addRow("Folder", row(self.folder, browse))
        form.addRow("Seed (split)", self.seed)
        form.addRow("Validation", self.val_percent)
        form.addRow("Test", self.test_percent)
        form.addRow("", self.deep)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.report_view, 1)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a paired dataset folder", self.settings.last_folder)
        if folder:
            self.folder.setText(folder)

    def _key(self) -> tuple[str, int, int, int, bool]:
        return (absolute_path(self.folder.text()), self.seed.value(), self.val_percent.value(),
                self.test_percent.value(), self.deep.isChecked())

    def fractions(self) -> tuple[float, float]:
        return self.val_percent.value() / 100, self.test_percent.value() / 100

    def _schedule(self, *_args) -> None:
        self.report = None
        self.completeChanged.emit()
        self._timer.start()

    def check(self) -> None:
        """Validate the folder now (on a worker); an earlier check still running is cancelled."""
        self._timer.stop()
        if self._task is not None:
            self._task.cancel()
        key = self._key()
        if not key[0]:
            self.status.setText("Choose a dataset folder.")
            return
        problem = fractions_problem(key[2], key[3])
        if problem:
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText(problem)
            self.report_view.clear()
            return
        self.status.setStyleSheet("")
        self.status.setText(f"Checking {key[0]}…")
        self.report_view.clear()
        self._task = self.runner.run(lambda progress, cancel: _validate(*key, progress, cancel),
                                     name=f"validate {key[0]}", finished=lambda report: self._on_checked(key, report),
                                     failed=lambda message: self._on_failed(key, message))

    def _on_checked(self, key, result) -> None:
        if key != self._key():
            return                                       # the folder changed meanwhile: another check follows
        self._task, (self.report, self.misaligned) = None, result
        report = self.report
        self.report_view.setHtml(report_html(report))
        todo = [f"map {n} folder(s) or file(s) to modalities" for n in [_mappable(report)] if n]
        needed = sum(m.needs_it for m in self.misaligned)
        todo += [f"register {needed} volume(s) left out as their headers place them"] if needed else []
        todo += [f"register, if you want, {n} on another grid" for n in [len(self.misaligned) - needed] if n]
        next_page = f" On the next page you can {' and '.join(todo)}." if todo else ""
        no_training = report.training_problem()
        self.status.setStyleSheet("" if (report.usable and not no_training) or todo else ERROR_STYLE)
        if no_training:
            self.status.setText(no_training + next_page)
        elif not report.usable:
            self.status.setText("No subject has two usable modalities as the folder is (details below)."
                                + (next_page or " Nothing to train on."))
        elif report.problems:
            self.status.setText(f"{len(report.subjects)} subjects usable. {len(report.problems)} problem(s): those "
                                f"files are left out and training runs on the rest (--skip-invalid).{next_page}")
        else:
            self.status.setText(f"{len(report.subjects)} subjects usable; no problems found.{next_page}")
        self.completeChanged.emit()

    def _on_failed(self, key, message: str) -> None:
        if key == self._key():
            self._task = None
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText(f"The dataset could not be checked: {message}")

    def preparable(self) -> bool:
        return self.report is not None and bool(_mappable(self.report) or self.misaligned)

    def isComplete(self) -> bool:
        return self.report is not None and ((self.report.usable and not self.report.training_problem())
                                            or self.preparable())

    def nextId(self) -> int:
        wizard = self.wizard()
        return wizard.prepare_id if self.preparable() else wizard.model_id


class ModelPage(CheckedPage):
    """Start model, stages, and the routes Stage II trains."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.setTitle("Routes, start model and stages")
        self.setSubTitle("Stage I (understanding) learns CTS, MI and TIA questions built from all pairs; Stage II "
                         "(generation) learns synthesis on the routes ticked below, starting from Stage I's result.")
        self.model = QComboBox()
        for choice in available_models(settings.model_dirs):
            self.model.addItem(choice.label, str(choice.path))
        self.model.setToolTip("The default model, the models imported in the Synthesis panel, and earlier "
                              "fine-tuned ones")
        other = QPushButton("Other folder…")
        other.clicked.connect(self._choose_model)
        self.stages = QComboBox()
        for text, value in STAGE_CHOICES:
            self.stages.addItem(text, value)
        self.routes = QListWidget()
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet(ERROR_STYLE)
        self._routes_of = None
        self.model.currentIndexChanged.connect(self._update)
        self.stages.currentIndexChanged.connect(self._update)
        self.routes.itemChanged.connect(self._update)
        form = QFormLayout()
        form.addRow("Start model", row(self.model, other))
        form.addRow("Stages", self.stages)
        form.addRow("Routes (Stage II)", self.routes)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.notice)

    def initializePage(self) -> None:
        report = self.wizard().report()
        if report is self._routes_of:
            return                                       # back and forth: keep the ticks
        self._routes_of = report
        self.routes.blockSignals(True)
        self.routes.clear()
        training = [s for s in report.subjects if s.name in set(report.split["train"])]
        for (a, b), n in report.route_counts().items():
            trained = sum((a, b) in s.routes for s in training)
            item = QListWidgetItem(f"{a} → {b}  ({n} subject{'s' if n != 1 else ''}"
                                   + (")" if trained else ", none in the training split)"))
            item.setData(Qt.ItemDataRole.UserRole, (a, b))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if trained else Qt.CheckState.Unchecked)
            if not trained:          # held out only: Stage II would have no slice of it to learn from
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                item.setToolTip("Every subject with this route is held out for validation or test")
            self.routes.addItem(item)
        self.routes.blockSignals(False)
        self._update()

    def _choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder to start from",
                                                  self.settings.last_folder)
        if not folder:
            return
        if not is_model_dir(Path(folder)):
            self.notice.setText(f"{folder}: not a model folder (it has no config.json or llm_config.json)")
            return
        self.model.addItem(Path(folder).name, folder)
        self.model.setCurrentIndex(self.model.count() - 1)

    def stage_plan(self) -> tuple[str, ...]:
        return STAGE_PLANS[self.stages.currentData()]

    def chosen_routes(self) -> list[tuple[str, str]]:
        return [self.routes.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.routes.count())
                if self.routes.item(i).checkState() == Qt.CheckState.Checked]

    def _why_not(self) -> str | None:
        if self.model.count() == 0:
            return ("No model to start from: install the default model (resources/models/default), import one in "
                    "the Synthesis panel, or choose a folder (Other folder…). A model from scratch starts with "
                    "python main.py train --stage vae (see docs/training.md).")
        if "generation" in self.stage_plan() and not self.chosen_routes():
            return "Tick at least one route for Stage II."
        return None

    def _update(self, *_args) -> None:
        self.routes.setEnabled("generation" in self.stage_plan())
        self.notice.setText(self._why_not() or "")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self._why_not() is None


class BudgetPage(CheckedPage):
    """Steps or minutes per stage, batch and slice size, device, CPU threads, and the output folder."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.setTitle("Budget, device and output")
        self.setSubTitle("The budget applies to each stage. A run can be paused and resumed from the Training panel.")
        self.budget = QComboBox()
        self.budget.addItem("Steps per stage", "steps")
        self.budget.addItem("Minutes per stage", "minutes")
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.steps.setValue(DEFAULT_STEPS)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 100_000.0)
        self.minutes.setValue(30.0)
        self.minutes.hide()
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 4096)
        self.batch_size.setValue(4)
        self.image_size = QSpinBox()
        self.image_size.setRange(16, 2048)
        self.image_size.setSingleStep(16)
        self.image_size.setValue(DEFAULT_IMAGE_SIZE)
        self.image_size.setToolTip("Square slice size in pixels (default: the start model's)")
        self.pixel_mm = 0.0                            # the start model's pixel size (0: slices fitted to the size)
        self.pixel_label = QLabel()
        self.pixel_label.setToolTip("Slices are resampled to the start model's pixel size, so the fine-tuned model "
                                    "sees anatomy at the scale it learnt")
        self.device = QComboBox()
        for text, value in (("Auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda")):
            self.device.addItem(text, value)
        self.device.setCurrentIndex(max(0, self.device.findData(settings.device)))
        self.threads = QSpinBox()
        self.threads.setRange(0, 1024)
        self.threads.setSpecialValueText("all cores")
        self.threads.setToolTip("CPU threads of the training process; fewer keep the app responsive")
        self.name = QLineEdit()
        self.folder = QLineEdit(str(config_dir() / "models"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.reason = QLabel()
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet(ERROR_STYLE)
        self._size_of = None
        self.budget.currentIndexChanged.connect(self._on_budget)
        self.name.textChanged.connect(self._update)
        self.folder.textChanged.connect(self._update)
        form = QFormLayout()
        form.addRow("Budget", row(self.budget, self.steps, self.minutes))
        form.addRow("Batch size", self.batch_size)
        form.addRow("Image size", self.image_size)
        form.addRow("Pixel size", self.pixel_label)
        form.addRow("Device", self.device)
        form.addRow("CPU threads", self.threads)
        form.addRow("Model name", self.name)
        form.addRow("Save in", row(self.folder, browse))
        self.evaluate = QCheckBox("Afterwards, compare with the start model on the validation subjects, central slices "
                                  "per volume:")
        self.evaluate.setChecked(True)
        self.evaluate_slices = QSpinBox()
        self.evaluate_slices.setRange(1, 4096)
        self.evaluate_slices.setValue(DEFAULT_EVALUATE_SLICES)
        self.evaluate.toggled.connect(self.evaluate_slices.setEnabled)
        form.addRow("Evaluation", row(self.evaluate, self.evaluate_slices))
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.reason)

    def initializePage(self) -> None:
        wizard = self.wizard()
        if not self.name.text():
            self.name.setText(default_model_name(wizard.report().name, Path(absolute_path(self.folder.text()))))
        start = wizard.model_page.model.currentData()
        if start != self._size_of:                     # the start model's slice size, from its card
            from engine.inference import ModelCard

            self._size_of = start
            try:
                card = ModelCard.read(start)
                size, self.pixel_mm = card.image_size, card.pixel_mm or 0.0
            except ValueError:
                size, self.pixel_mm = None, 0.0
            self.image_size.setValue(size or DEFAULT_IMAGE_SIZE)
            self.pixel_label.setText(f"{self.pixel_mm:g} mm (the start model's)" if self.pixel_mm
                                     else "each slice fitted to the image size (the start model's slicing)")
        why_not = self._why_no_evaluation()
        self.evaluate.setEnabled(why_not is None)
        self.evaluate_slices.setEnabled(why_not is None and self.evaluate.isChecked())
        self.evaluate.setToolTip(why_not or "python main.py evaluate of both models; the Training panel shows the "
                                            "comparison before the model joins the library")
        self._update()

    def _why_no_evaluation(self) -> str | None:
        wizard = self.wizard()
        if not wizard.report().split["val"]:
            return "No comparison: the split holds out no validation subject (raise Validation on the first page)."
        if "generation" not in wizard.model_page.stage_plan():
            return "No comparison: Stage I alone does not change synthesis."
        return None

    def evaluate_slices_or_none(self) -> int | None:
        if self.evaluate.isChecked() and self._why_no_evaluation() is None:
            return self.evaluate_slices.value()
        return None

    def _on_budget(self) -> None:
        by_steps = self.budget.currentData() == "steps"
        self.steps.setVisible(by_steps)
        self.minutes.setVisible(not by_steps)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Where to save the fine-tuned model", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def out_dir(self) -> Path:
        return Path(absolute_path(self.folder.text())) / self.name.text().strip()

    def _why_not(self) -> str | None:
        name = self.name.text().strip()
        if not NAME_PATTERN.match(name):
            return "Name the model with letters, digits, '-', '_' or '.'."
        if not self.folder.text().strip():
            return "Choose where to save the model."
        for out in stage_outputs(self.wizard().spec()):
            if out.exists():
                return f"{out} exists already: choose another name (or resume its job in the Training panel)."
        return None

    def _update(self, *_args) -> None:
        self.reason.setText(self._why_not() or "")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return self._why_not() is None


class SummaryPage(QWizardPage):
    """The exact commands the Training panel runs, and the same on several GPUs with torchrun."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Summary")
        self.setSubTitle("The Training panel runs these commands one after the other, each in its own process. Running "
                         "one again (in the panel or a terminal) resumes it from its last checkpoint.")
        self.commands = QPlainTextEdit()
        self.commands.setReadOnly(True)
        self.nproc = QSpinBox()
        self.nproc.setRange(2, 1024)
        self.nproc.setToolTip("Processes per node, usually one per GPU")
        self.nproc.valueChanged.connect(self._fill)
        self.torchrun = QPlainTextEdit()
        self.torchrun.setReadOnly(True)
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.notes)
        layout.addWidget(self.commands, 1)
        layout.addLayout(row(QLabel("On a GPU machine or cluster with torchrun, processes per node:"), self.nproc,
                              self._copy_button(self.commands, "Copy the commands"),
                              self._copy_button(self.torchrun, "Copy the torchrun commands")))
        layout.addWidget(self.torchrun, 1)
        layout.addWidget(QLabel("Several nodes: add --nnodes=N --node_rank=R --rdzv_backend=c10d "
                                "--rdzv_endpoint=HOST:29400 after --nproc_per_node."))

    @staticmethod
    def _copy_button(source: QPlainTextEdit, text: str) -> QPushButton:
        button = QPushButton(text)
        button.clicked.connect(lambda: QApplication.clipboard().setText(source.toPlainText()))
        return button

    def initializePage(self) -> None:
        self._fill()

    def _fill(self, *_args) -> None:
        wizard = self.wizard()
        spec = wizard.spec()
        arguments = train_arguments(spec)
        titles = [STAGE_NAMES[stage] for stage in spec.stages]
        evaluations = [f"# {STAGE_NAMES[stage]}\n{command_line(a, subcommand='evaluate')}"
                       for stage, a in zip(("evaluate-start", "evaluate"), evaluate_arguments(spec))]
        self.commands.setPlainText("\n\n".join([f"# {t}\n{command_line(a)}" for t, a in zip(titles, arguments)]
                                                + evaluations))
        self.torchrun.setPlainText("\n\n".join(f"# {t}\n{command_line(a, self.nproc.value())}"
                                               for t, a in zip(titles, arguments)))
        notes = [f"Model: {spec.out_dir}" + (" (Stage I writes to " + str(stage_outputs(spec)[0]) + ")"
                                             if len(spec.stages) > 1 else "")]
        if spec.data != wizard.dataset.report.root:
            notes.append(f"Data: the prepared dataset {spec.data} (made from {wizard.dataset.report.root}).")
        if spec.skip_invalid:
            notes.append(f"--skip-invalid: the {len(wizard.report().problems)} problem(s) listed when the dataset was "
                         "checked are left out.")
        if spec.evaluate_slices:
            notes.append(f"Then both models are scored on {len(wizard.report().split['val'])} validation subject(s) "
                         f"({spec.evaluate_slices} central slices per volume); the model joins the library once "
                         "you accept it in the Training panel.")
        self.notes.setText("\n".join(notes))


class FineTuneWizard(QWizard):
    job_requested = Signal(object)          # a FineTuneSpec, when the user starts the training

    def __init__(self, runner: TaskRunner, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Fine-tune a model")
        self.dataset = DatasetPage(runner, settings)
        self.prepare = PreparePage(runner, settings)
        self.model_page = ModelPage(settings)
        self.budget = BudgetPage(settings)
        self.summary = SummaryPage()
        self.dataset_id, self.prepare_id, self.model_id = (self.addPage(p) for p in
                                                           (self.dataset, self.prepare, self.model_page))
        for page in (self.budget, self.summary):
            self.addPage(page)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start training")
        self.accepted.connect(lambda: self.job_requested.emit(self.spec()))
        area = self.screen().availableGeometry() if self.screen() else None      # room for the overlays and tables
        self.resize(*(min(want, room) for want, room in zip(WIZARD_SIZE, (area.width(), area.height()) if area
                                                             else WIZARD_SIZE)))

    def report(self):
        """The dataset training reads: the prepared one when the preparation page made it for the
        checked dataset, the checked one otherwise."""
        prepared = self.prepare
        if prepared.report is not None and prepared.source is self.dataset.report and self.dataset.preparable():
            return prepared.report
        return self.dataset.report

    def spec(self) -> FineTuneSpec:
        report, b = self.report(), self.budget
        routes = self.model_page.chosen_routes()
        by_steps = b.budget.currentData() == "steps"
        return FineTuneSpec(
            name=b.name.text().strip(), data=report.root, start_model=self.model_page.model.currentData(),
            stages=self.model_page.stage_plan(), out_dir=str(b.out_dir()),
            routes=None if len(routes) == len(report.routes) else tuple(routes),
            steps=b.steps.value() if by_steps else None, minutes=None if by_steps else b.minutes.value(),
            batch_size=b.batch_size.value(), image_size=b.image_size.value(), pixel_mm=b.pixel_mm,
            device=b.device.currentData(),
            seed=self.dataset.seed.value(), val_fraction=self.dataset.fractions()[0],
            test_fraction=self.dataset.fractions()[1], threads=b.threads.value() or None,
            skip_invalid=bool(report.problems), evaluate_slices=b.evaluate_slices_or_none())
