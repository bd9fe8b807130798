"""The Training panel: a queue of fine-tuning jobs, each stage run one at a time as its own
``python main.py train`` (or ``evaluate``) process (QProcess), so a crash or an out-of-memory never
takes the app down. Shows stage, step, loss curve, learning rate, time left, Stage I accuracy, the
latest preview and the process's stderr; Pause / Resume / Cancel (confirmed, saying what is kept);
at the end the fine-tuned model against the start model on the validation subjects (a headline that
weighs every score), to add to the model library or discard. A cohort synthesis runs in the same
queue (``python main.py cohort``); its run manifest is shown as a table, failed volumes first with
their reasons. The job list is kept across sessions (app.training.jobs)."""
from __future__ import annotations

import html
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QProcess, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.errors import describe_error
from app.settings import Settings
from app.training.jobs import (
    STAGE_NAMES,
    CohortSpec,
    FineTuneSpec,
    TrainingJob,
    command,
    load_jobs,
    parse_line,
    review_headline,
    save_jobs,
)
from engine.paths import ROOT

STOP_WAIT_MS = 30000            # closing the app: how long a running stage may take to write its checkpoint
MAX_LOG_LINES = 2000
STAGE_PENS = {"understanding": "#1f5fa8", "generation": "#d07000"}
PREVIEW_SIZE = 360
WORSE_STYLE = "color:#b01010; font-weight:bold"
CONFIRM_CANCEL, KEEP_RUNNING = "Cancel the job", "Keep it running"
MANIFEST_COLUMNS = (("item", "Volume"), ("status", "Status"), ("output", "Output"), ("seconds", "Seconds"),
                    ("model", "Model"), ("error", "Reason"))
STATUS_ORDER = {"failed": 0, "started": 1, "done": 2, "skipped": 3, "not-applicable": 4}
STATUS_TEXT = {"running": "Running.", "stopping": "Writing a checkpoint, then stopping…",
               "queued": "Waiting for the job before it."}


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def comparison_html(comparison: dict) -> str:
    """The fine-tuned model against the start model: a headline weighing every score (any that got
    worse named in red), then a row per route (better values in bold)."""
    from engine.evaluation import COLUMNS

    e = html.escape
    head = "".join(f"<th colspan='2'>{e(title)}</th>" for _key, _region, title, _higher in COLUMNS)
    sub = "<th>start</th><th>tuned</th>" * len(COLUMNS)
    rows = []
    for route in comparison["routes"]:
        cells = []
        for key, _region, _title, higher in COLUMNS:
            start, tuned = route[key]["start"], route[key]["tuned"]
            unit = f" {route['unit']}" if key == "mae" and route["unit"] else ""
            better = start is not None and tuned is not None and (tuned > start if higher else tuned < start)
            cells.append(f"<td align='right'>{_score(start)}</td><td align='right'>"
                         f"{'<b>' if better else ''}{_score(tuned)}{unit}{'</b>' if better else ''}</td>")
        rows.append(f"<tr><td>{e(route['route'])} ({route['subjects']})</td>{''.join(cells)}</tr>")
    headline, worse = review_headline(comparison)
    style = f" style='{WORSE_STYLE}'" if worse else ""
    return (f"<p><b>Validation subjects</b> ({e(str(comparison.get('split')))} split):"
            f" <span{style}>{e(headline)}</span></p>"
            f"<table cellspacing='4'><tr><th>route (subjects)</th>{head}</tr><tr><td></td>{sub}</tr>"
            f"{''.join(rows)}</table>")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"about {seconds} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


class TrainPanel(QWidget):
    model_finished = Signal(str)        # the model folder of a finished job (added to settings.model_dirs)
    job_ended = Signal(object)          # a TrainingJob that stopped, failed or finished
    new_job_requested = Signal()

    def __init__(self, settings: Settings, parent=None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.jobs: list[TrainingJob] = load_jobs()
        self.process: QProcess | None = None
        self.running: TrainingJob | None = None
        self._requested: str | None = None        # "paused" / "cancelled" asked of the running stage
        self._reading = False                     # the running stage reads OUT/STOP (it has reported start)
        self._stderr_tail = ""
        self._closing = False
        self._logs: dict[str, list[str]] = {}     # job id → lines of this session
        self._history_read: set[str] = set()
        self._shown_preview: str | None = None

        self.list = QListWidget()
        self.list.currentRowChanged.connect(lambda _row: self._show())
        buttons = {}
        for name, tip in (("New…", "Start the fine-tuning wizard"),
                          ("Pause", "Write a checkpoint and stop; Resume continues from it"),
                          ("Resume", "Run the same command again: it continues from the last checkpoint"),
                          ("Cancel", "Stop this job, after confirming (its checkpoint and models are kept)"),
                          ("Remove", "Take the job off the list (its folders stay on disk)")):
            buttons[name] = QPushButton(name)
            buttons[name].setToolTip(tip)
        self.new_button, self.pause_button, self.resume_button, self.cancel_button, self.remove_button = \
            buttons.values()
        self.accept_button = QPushButton("Add to model library")
        self.accept_button.setToolTip("List the fine-tuned model in the Synthesis panel, with this comparison in its "
                                      "model card")
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Do not list the model (its folder stays on disk)")
        self.accept_button.clicked.connect(self.accept_selected)
        self.discard_button.clicked.connect(self.discard_selected)
        self.comparison = QLabel()
        self.comparison.setWordWrap(True)
        self.comparison.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.new_button.clicked.connect(self.new_job_requested)
        self.pause_button.clicked.connect(lambda: self.stop_selected("paused"))
        self.cancel_button.clicked.connect(self.confirm_cancel)
        self.resume_button.clicked.connect(self.resume_selected)
        self.remove_button.clicked.connect(self.remove_selected)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fields = {name: QLabel("—") for name in ("Stage", "Step", "Learning rate", "Time left",
                                                       "Understanding accuracy", "Validation loss")}
        self.plot = pg.PlotWidget(background="w")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.setLabel("left", "loss")
        self.plot.setLabel("bottom", "step")
        self.plot.addLegend(offset=(-10, 10))
        self.curves = {stage: self.plot.plot([], [], pen=pg.mkPen(colour, width=1.5), name=STAGE_NAMES[stage])
                       for stage, colour in STAGE_PENS.items()}
        self.preview = QLabel()
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setToolTip("The latest preview: source | synthesized | target")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(MAX_LOG_LINES)
        self.manifest = QTableWidget(0, len(MANIFEST_COLUMNS))
        self.manifest.setHorizontalHeaderLabels([title for _key, title in MANIFEST_COLUMNS])
        self.manifest.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.manifest.horizontalHeader().setStretchLastSection(True)
        self.manifest.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.manifest.setToolTip("The cohort's run manifest: each volume's status, output, time and the model "
                                 "its run used (rows of earlier runs into the folder stay); failed ones first, "
                                 "with the reason")
        self.manifest.hide()
        self._shown_items: tuple | None = None

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.list, 1)
        row = QHBoxLayout()
        for button in buttons.values():
            row.addWidget(button)
        left_layout.addLayout(row)
        left_layout.addWidget(self.message)
        left_layout.addWidget(self.comparison)
        review = QHBoxLayout()
        review.addWidget(self.accept_button)
        review.addWidget(self.discard_button)
        review.addStretch(1)
        left_layout.addLayout(review)
        form = QFormLayout()
        for name, label in self.fields.items():
            form.addRow(name, label)
        left_layout.addLayout(form)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.preview)
        right_layout.addWidget(self.manifest, 2)
        right_layout.addWidget(self.log_view, 1)
        splitter = QSplitter()
        for widget in (left, self.plot, right):
            splitter.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(splitter)
        self._rebuild_list()

    # -- the list -------------------------------------------------------------------------------
    def selected(self) -> TrainingJob | None:
        row = self.list.currentRow()
        return self.jobs[row] if 0 <= row < len(self.jobs) else None

    def _rebuild_list(self, select: TrainingJob | None = None) -> None:
        current = select or self.selected()
        self.list.blockSignals(True)
        self.list.clear()
        for job in self.jobs:
            item = QListWidgetItem(job.describe())
            item.setToolTip(job.message or job.model_dir)
            self.list.addItem(item)
        self.list.setCurrentRow(self.jobs.index(current) if current in self.jobs else -1)
        self.list.blockSignals(False)
        self._show()

    def _refresh(self, job: TrainingJob) -> None:
        if job in self.jobs:
            item = self.list.item(self.jobs.index(job))
            item.setText(job.describe())
            item.setToolTip(job.message or job.model_dir)
        if job is self.selected():
            self._show_progress(job)

    def _show(self) -> None:
        """The selected job's progress, message, log and the buttons that apply to it."""
        job = self.selected()
        if job is None:
            for button in (self.pause_button, self.resume_button, self.cancel_button, self.remove_button):
                button.setEnabled(False)
            self._show_review(None)
            self.message.setText("No job selected." if self.jobs else "No training jobs yet: New… starts the "
                                 "fine-tuning wizard.")
            for label in self.fields.values():
                label.setText("—")
            for curve in self.curves.values():
                curve.setData([], [])
            self.log_view.clear()
            self.manifest.hide()
            self.plot.show()
            self.preview.clear()
            self._shown_preview = None
            return
        if job.id not in self._history_read and job is not self.running:
            job.read_history()                   # a job of an earlier session: its curve from progress.jsonl
        self._history_read.add(job.id)
        self.log_view.setPlainText("\n".join(self._logs.get(job.id, [])))
        self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())
        self._show_progress(job)

    def _show_progress(self, job: TrainingJob) -> None:
        active = job.status in ("running", "queued")
        self.pause_button.setEnabled(active)
        self.cancel_button.setEnabled(active)
        self.resume_button.setEnabled(job.resumable and job is not self.running)
        self.remove_button.setEnabled(job is not self.running and job.status != "queued")
        colour = "#b01010" if job.status == "failed" else "#303030"
        self.message.setStyleSheet(f"color:{colour}")
        self.message.setText(job.message or STATUS_TEXT.get(job.status, ""))
        live = job.live
        self.fields["Stage"].setText(f"{job.stage.title} ({job.current + 1} of {len(job.stages)})")
        self.fields["Step"].setText(f"{job.step}" + (f" of {job.steps}" if job.steps else ""))
        self.fields["Learning rate"].setText("—" if live.lr is None else f"{live.lr:.3g}")
        self.fields["Time left"].setText(format_seconds(live.eta_s) if job is self.running else "—")
        self.fields["Understanding accuracy"].setText(
            " · ".join(f"{task} {value:.0%}" for task, value in live.accuracy.items()) or "—")
        self.fields["Validation loss"].setText("—" if live.val_loss is None else f"{live.val_loss:.4g}")
        self._show_review(job)
        self._show_items(job)
        for stage, curve in self.curves.items():
            points = live.losses.get(stage, [])
            curve.setData([p[0] for p in points], [p[1] for p in points])
        if live.preview != self._shown_preview:
            self._shown_preview = live.preview
            pixmap = QPixmap(live.preview) if live.preview else QPixmap()
            self.preview.setPixmap(pixmap.scaledToWidth(PREVIEW_SIZE) if not pixmap.isNull() else QPixmap())

    def _show_items(self, job: TrainingJob) -> None:
        """A cohort's run manifest as a table (rebuilt when an item's record changed)."""
        self.manifest.setVisible(job.is_cohort)
        self.plot.setVisible(not job.is_cohort)
        shown = (job.id, job.step, len(job.live.items))
        if not job.is_cohort or shown == self._shown_items:
            return
        self._shown_items = shown
        records = sorted(job.live.items.values(), key=lambda r: (STATUS_ORDER.get(r.get("status"), 9), r["item"]))
        self.manifest.setRowCount(len(records))
        for row, record in enumerate(records):
            for column, (key, _title) in enumerate(MANIFEST_COLUMNS):
                value = record.get(key, "")
                self.manifest.setItem(row, column, QTableWidgetItem("" if value is None else str(value)))

    def _show_review(self, job: TrainingJob | None) -> None:
        """The comparison with the start model once both evaluations ran; Add / Discard while it waits."""
        reviewing = job is not None and job.status == "review"
        self.accept_button.setVisible(reviewing)
        self.discard_button.setVisible(reviewing)
        finished = job is not None and job.status in ("review", "done", "discarded")
        try:                                     # read once the job has ended, not at every step record
            comparison = job.comparison() if finished else None
        except ValueError as exc:
            self.comparison.setText(html.escape(str(exc)))
            return
        self.comparison.setText(comparison_html(comparison) if comparison else "")

    # -- user actions ---------------------------------------------------------------------------
    def accept_selected(self) -> None:
        """Add the reviewed model to the library (the Synthesis panel lists it; its card gets the comparison)."""
        job = self.selected()
        if job is None or job.status != "review":
            return
        try:
            job.accept()
        except (OSError, ValueError) as exc:
            job.message = f"The model card could not be updated: {describe_error(exc)}"
            self._refresh(job)
            return
        if job.model_dir not in self.settings.model_dirs:
            self.settings.model_dirs.append(job.model_dir)
        self._log(job, job.message)
        self._save()
        self._refresh(job)
        self.model_finished.emit(job.model_dir)

    def discard_selected(self) -> None:
        job = self.selected()
        if job is None or job.status != "review":
            return
        job.discard()
        self._log(job, job.message)
        self._save()
        self._refresh(job)

    def add_job(self, spec: FineTuneSpec | CohortSpec) -> TrainingJob:
        """Queue a job for ``spec`` (a fine-tuning or a cohort synthesis); it starts when no other job runs."""
        job = TrainingJob.from_cohort(spec) if isinstance(spec, CohortSpec) else TrainingJob.from_spec(spec)
        self.jobs.append(job)
        self._history_read.add(job.id)
        self._save()
        self._rebuild_list(select=job)
        self._start_next()
        return job

    def confirm_cancel(self) -> QMessageBox | None:
        """Ask before cancelling the selected job, saying what is kept; the job is cancelled once
        the user confirms (the returned box is open meanwhile)."""
        job = self.selected()
        if job is None or job.status not in ("running", "queued"):
            return None
        box = QMessageBox(QMessageBox.Icon.Question, "Cancel training", f"Cancel the job “{job.name}”?",
                          QMessageBox.StandardButton.NoButton, self)
        box.setInformativeText(job.kept_if_cancelled())
        confirm = box.addButton(CONFIRM_CANCEL, QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(box.addButton(KEEP_RUNNING, QMessageBox.ButtonRole.RejectRole))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.buttonClicked.connect(lambda button: self.stop_selected("cancelled", job) if button is confirm else None)
        box.open()
        return box

    def stop_selected(self, status: str, job: TrainingJob | None = None) -> None:
        """Pause (``"paused"``) or cancel (``"cancelled"``) ``job`` (the selected one): a running
        stage writes a checkpoint and stops (the OUT/STOP file); a queued job just does not start."""
        job = job or self.selected()
        if job is None or job.status not in ("running", "queued"):
            return
        if job is self.running and job.status == "running":
            self._requested, job.status = status, "stopping"
            if not job.stage.trains:
                self.process.kill()              # an evaluation has nothing to save; Resume runs it again
            elif self._reading:
                self._write_stop(job)            # else once the stage reports start (it clears an early STOP)
        elif job.status == "queued":
            job.status, job.message = status, f"{status.capitalize()} before it started."
        self._save()
        self._refresh(job)

    def resume_selected(self) -> None:
        """Queue the selected job again: its stage's command reruns and continues from the checkpoint."""
        job = self.selected()
        if job is None or not job.resumable or job is self.running:
            return
        job.status, job.message = "queued", ""
        self._save()
        self._refresh(job)
        self._start_next()

    def remove_selected(self) -> None:
        job = self.selected()
        if job is None or job is self.running or job.status == "queued":
            return
        self.jobs.remove(job)
        self._save()
        self._rebuild_list()

    # -- the process ----------------------------------------------------------------------------
    def _start_next(self) -> None:
        if self.process is None and not self._closing:
            job = next((j for j in self.jobs if j.status == "queued"), None)
            if job is not None:
                self._start(job)

    def _start(self, job: TrainingJob) -> None:
        args = command(job.stage.args, job.stage.subcommand)
        job.status, job.message, job.live.error = "running", "", ""
        self.running, self._requested, self._reading, self._stderr_tail = job, None, False, ""
        process = QProcess(self)
        process.setWorkingDirectory(str(ROOT))
        process.setProgram(args[0])
        process.setArguments(args[1:])
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_process_error)
        self.process = process
        self._log(job, f"$ {job.stage.command_line()}")
        process.start()
        self._save()
        self._refresh(job)

    def _read_stdout(self) -> None:
        process, job = self.process, self.running
        while process is not None and process.canReadLine():
            line = bytes(process.readLine()).decode("utf-8", "replace").strip()
            record = parse_line(line)
            if record is None:
                if line:
                    self._log(job, line)
                continue
            job.apply(record)
            if record["event"] in ("start", "resumed"):
                self._reading = True
                for warning in job.live.warnings:
                    self._log(job, f"warning: {warning}")
                if self._requested and job.stage.trains:
                    self._write_stop(job)
            self._refresh(job)

    def _read_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self._stderr_tail = line.strip()
                self._log(self.running, line.rstrip())

    def _write_stop(self, job: TrainingJob) -> None:
        from engine.training import STOP_FILE

        try:
            (Path(job.stage.out) / STOP_FILE).touch()
        except OSError as exc:                   # the folder is gone or read-only: a signal does the same
            self._log(job, f"could not write {STOP_FILE} ({describe_error(exc)}); sending a stop signal instead")
            self.process.terminate()

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._read_stderr()
        job, process = self.running, self.process
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        next_stage = job.process_ended(exit_code, crashed, self._requested, self._stderr_tail)
        self.process = self.running = None
        process.deleteLater()
        self._log(job, job.message or f"{job.stages[job.current - 1].title} finished.")
        self._save()
        self._refresh(job)
        if next_stage and not self._closing:
            self._start(job)
            return
        if not next_stage:
            self.job_ended.emit(job)
        self._start_next()

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart:
            return                               # a crash: finished() follows and says so
        job, process = self.running, self.process
        job.status = "failed"
        job.message = f"Could not start the training process ({process.program()}): {process.errorString()}"
        self.process = self.running = None
        process.deleteLater()
        self._log(job, job.message)
        self._save()
        self._refresh(job)
        self.job_ended.emit(job)
        self._start_next()

    def _log(self, job: TrainingJob | None, line: str) -> None:
        if job is None:
            return
        lines = self._logs.setdefault(job.id, [])
        lines.append(line)
        del lines[:-MAX_LOG_LINES]
        if job is self.selected():
            self.log_view.appendPlainText(line)

    def _save(self) -> None:
        try:
            save_jobs(self.jobs)
        except OSError as exc:
            self.message.setText(f"The job list was not saved: {describe_error(exc)}")

    def shutdown(self) -> None:
        """The app is closing: a running stage writes its checkpoint and stops (killed after
        STOP_WAIT_MS); the job stays resumable in the stored list."""
        self._closing = True
        process = self.process
        if process is None:
            return
        if self._reading and self.running.stage.trains:
            self._requested = "paused"
            self._write_stop(self.running)
            process.waitForFinished(STOP_WAIT_MS)
        if self.process is not None:
            self._requested = "paused"
            process.kill()
            process.waitForFinished(3000)
