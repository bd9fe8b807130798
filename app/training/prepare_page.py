"""The fine-tuning wizard's preparation page, shown when the checked dataset has volumes that no name
maps to a modality (DICOM series in any folder tree, oddly named files) or volumes that do not line
up with their subject's reference: the user maps each series to a modality (guessed from its DICOM
tags or name) and picks the volumes to register rigidly; before preparing, each mapped series in
another frame of reference than its subject's reference says how it will be placed (by a stored DICOM
REG, else from its intensities); a new paired dataset folder is written (engine.tasks.prepare) and
checked, and every registration is shown as a before/after overlay."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from app.settings import Settings, config_dir
from app.training.widgets import ERROR_STYLE, CheckedPage, absolute_path, rgb_pixmap, row
from app.workers import Task, TaskRunner

OVERLAY_SIZE = 220
LEAVE_OUT = "— leave out —"


class PreparePage(CheckedPage):
    def __init__(self, runner: TaskRunner, settings: Settings) -> None:
        super().__init__()
        self.runner, self.settings = runner, settings
        self.setTitle("Map series and align volumes")
        self.setSubTitle("Some volumes are not named by a modality, or do not line up with their subject's other "
                         "volumes. Map and register them here: a new dataset folder is written and checked; the "
                         "original folder is only read.")
        self.source = None                 # the checked report this page was filled for
        self.misaligned = []
        self.choices = []
        self.stored = None                 # the dataset's spatial registrations (DICOM REG) and why any is not used
        self.report = None                 # the prepared dataset's report
        self.prepared = None
        self._task: Task | None = None
        self.series = QTableWidget(0, 4)
        self.series.setHorizontalHeaderLabels(["Subject", "Series", "Use as", "Placement"])
        self.series.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.series.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.series.verticalHeader().hide()
        self.register = QListWidget()
        self.register.itemChanged.connect(self._choices_changed)
        self.use_stored = QCheckBox("Place series in another frame of reference by the dataset's spatial "
                                    "registrations (DICOM REG)")
        self.use_stored.setChecked(True)
        self.use_stored.setToolTip("Unticked, every series in another frame of reference is registered from its "
                                   "intensities instead: for a stored registration the overlay shows to be wrong")
        self.use_stored.toggled.connect(self._choices_changed)
        self.out = QLineEdit()
        self.out.textChanged.connect(self._changed)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.prepare_button = QPushButton("Prepare dataset")
        self.prepare_button.clicked.connect(self.prepare)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.results = QListWidget()
        self.results.currentRowChanged.connect(self._show_registration)
        self.before, self.after = QLabel(), QLabel()
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        overlays = QGridLayout()
        overlays.addWidget(QLabel("Before (header geometry)"), 0, 0)
        self.after_label = QLabel("After rigid registration")
        overlays.addWidget(self.after_label, 0, 1)
        overlays.addWidget(self.before, 1, 0)
        overlays.addWidget(self.after, 1, 1)
        form = self.form = QFormLayout()
        form.addRow("Series to map", self.series)
        form.addRow("Register (rigid) onto\nthe subject's reference", self.register)
        form.addRow("Stored registrations", self.use_stored)
        form.addRow("New dataset folder", row(self.out, browse))
        layout = QVBoxLayout(self)
        layout.addLayout(form, 2)
        layout.addLayout(row(self.prepare_button, self.status))
        layout.addWidget(self.results, 1)
        layout.addWidget(self.detail)
        layout.addLayout(overlays)
        self.results.setToolTip("Green: the reference volume; magenta: the registered one; grey where they agree")

    # -- filling ---------------------------------------------------------------------------------
    def initializePage(self) -> None:
        page = self.wizard().dataset
        if page.report is self.source:
            return                                     # back and forth: keep the choices and the result
        self.source, self.misaligned = page.report, page.misaligned
        self.report = self.prepared = None
        self.series.setRowCount(0)
        self.choices, self.stored = [], None               # the last dataset's: none of this one's subjects
        self.results.clear()
        self.out.setText(str(config_dir() / "datasets" / f"{self.source.name}-prepared"))
        self.register.blockSignals(True)
        self.register.clear()
        for m in self.misaligned:
            item = QListWidgetItem(m.describe())
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if m.needs_it else Qt.CheckState.Unchecked)
            item.setToolTip(f"{m.path}: {m.reason}")
            item.setData(Qt.ItemDataRole.UserRole, m)
            self.register.addItem(item)
        self.register.blockSignals(False)
        self.form.setRowVisible(self.register, bool(self.misaligned))   # nothing to register: room for the series
        self.form.setRowVisible(self.use_stored, False)                   # until the dataset's REGs are found
        self.use_stored.blockSignals(True)
        self.use_stored.setChecked(True)                                  # another dataset: its own REGs used
        self.use_stored.blockSignals(False)
        self._run(self._find_series, "Looking for series…", self._on_series)

    def _find_series(self, progress, cancel):
        """The series to map and, when a subject's series name several frames of reference, the
        dataset's spatial registrations (the walk reads every file's header: only when one may place)."""
        from engine.io import find_registrations
        from engine.tasks import find_unnamed_series

        choices, errors = find_unnamed_series(self.source, progress, cancel)
        frames: dict[str, set[str]] = {}
        for choice in choices:
            if choice.entry.frame:
                frames.setdefault(choice.subject, set()).add(choice.entry.frame)
        several = any(len(named) > 1 for named in frames.values()) or any(
            m.kind == "other_frame" for m in self.misaligned)          # a modality folder in another frame too
        return (choices, errors), find_registrations(self.source.root, cancel) if several else ([], [])

    def _on_series(self, found) -> None:
        from engine.modalities import MODALITIES  # the engine loads after the window shows

        (self.choices, errors), self.stored = found
        self.form.setRowVisible(self.use_stored, bool(self.stored[0]))       # shown only when there are some
        self.series.setRowCount(len(self.choices))
        for i, choice in enumerate(self.choices):
            for column, text in enumerate((choice.subject, choice.describe())):
                item = QTableWidgetItem(text)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                item.setToolTip(choice.entry.paths[0] if choice.entry.paths else choice.entry.key)
                self.series.setItem(i, column, item)
            combo = QComboBox()
            combo.addItem(LEAVE_OUT, "")
            for name in MODALITIES:
                combo.addItem(name, name)
            combo.setCurrentIndex(max(0, combo.findData(choice.guess or "")))
            combo.currentIndexChanged.connect(self._choices_changed)
            self.series.setCellWidget(i, 2, combo)
        self.series.resizeColumnToContents(0)
        self.series.setVisible(bool(self.choices))         # nothing to map: no empty table
        self._show_placements()
        text = (f"{len(self.choices)} series to map. Check the modalities, then Prepare dataset" if self.choices
                else "Nothing to map: choose the volumes to register, then Prepare dataset")
        text += f"; not scanned: {'; '.join(errors)}" if errors else ""
        self._set_status(text + ".", bool(errors))
        self.completeChanged.emit()

    # -- choices ---------------------------------------------------------------------------------
    def mapping(self) -> dict:
        return {choice: self.series.cellWidget(i, 2).currentData() for i, choice in enumerate(self.choices)
                if self.series.cellWidget(i, 2) is not None}

    def registrations(self) -> list:
        items = (self.register.item(i) for i in range(self.register.count()))
        return [item.data(Qt.ItemDataRole.UserRole) for item in items if item.checkState() == Qt.CheckState.Checked]

    def _pending(self) -> bool:
        return any(self.mapping().values()) or bool(self.registrations())

    def _show_placements(self) -> None:
        """The Placement column, from the headers alone: how preparing will place each mapped series
        acquired in another frame of reference than its subject's reference, and why a mapped series or
        its subject is left out (another patient's series; a subject that cannot be paired); hidden when
        there is none of these."""
        from engine.tasks import placements, plan_subjects

        if self.stored is None:
            return
        mapping = self.mapping()
        plan = plan_subjects(self.source, mapping, self.registrations())
        ahead = placements(plan, self.stored[0], set_aside=not self.use_stored.isChecked())
        placed = {id(unit.held[modality]): how for unit in plan.units for modality in unit.held
                  if (how := ahead.get((unit.name, modality)))}
        shown = False
        for i, choice in enumerate(self.choices):
            how = placed.get(id(choice.entry))
            why_out = plan.left_out.get(choice.subject, "") if mapping[choice] else ""
            if how is not None:
                text, tip = how.short(), how.describe()
            elif choice.entry.key in plan.dropped:             # another patient's series filed in this folder
                text, tip = "left out", plan.dropped[choice.entry.key]
            else:
                text, tip = ("subject left out", why_out) if why_out else ("", "")
            item = QTableWidgetItem(text)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            item.setToolTip(tip)
            self.series.setItem(i, 3, item)
            shown = shown or bool(text)
        self.series.setColumnHidden(3, not shown)
        self.series.resizeColumnToContents(3)

    def _choices_changed(self, *_args) -> None:
        self._show_placements()
        self._changed()

    def _changed(self, *_args) -> None:
        if self.report is not None:
            self._set_status("The choices changed: Prepare dataset again to use them.", False)
        self.report = self.prepared = None
        self.completeChanged.emit()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Where to write the prepared dataset", self.settings.last_folder)
        if folder:
            self.out.setText(folder)

    # -- preparing -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write the prepared dataset (on a worker) and check it with the first page's seed and fractions."""
        page = self.wizard().dataset
        mapping, register, out = self.mapping(), self.registrations(), absolute_path(self.out.text())
        stored, set_aside = self.stored, not self.use_stored.isChecked()
        seed, fractions = page.seed.value(), page.fractions()

        def work(progress, cancel):
            from engine.tasks import prepare_dataset, validate_dataset

            prepared = prepare_dataset(self.source, out, mapping=mapping, register=register, seed=seed,
                                       registrations=stored, set_aside=set_aside, progress=progress,
                                       cancel=cancel)
            return prepared, validate_dataset(prepared.root, seed=seed, val_fraction=fractions[0],
                                              test_fraction=fractions[1])

        self._run(work, f"Preparing {out}…", self._on_prepared)

    def _on_prepared(self, result) -> None:
        self.prepared, self.report = result
        self.results.clear()
        for r in self.prepared.registered:
            self.results.addItem(f"{r.subject}: {r.modality} onto {r.reference} — {r.describe()}")
        if self.results.count():
            self.results.setCurrentRow(0)
        skipped = f" Left out (fewer than two volumes): {', '.join(self.prepared.skipped)}." if self.prepared.skipped \
            else ""
        if self.prepared.split_subjects:     # a planning CT beside several daily CBCTs
            skipped += f" One subject per repeated volume: {self.prepared.describe_split()}."
        if self.prepared.notes:             # a spatial registration (REG) found but not used
            skipped += " " + " ".join(f"{note}." for note in self.prepared.notes)
        if self.report.problems:            # what checking the prepared folder left out (a CT shared by two subjects)
            listed = "; ".join(f.message for f in self.report.problems[:2])
            more = f" (and {len(self.report.problems) - 2} more)" if len(self.report.problems) > 2 else ""
            skipped += f" Checking it left out: {listed}{more}."
        no_training = self.report.training_problem()
        if no_training:
            self._set_status(f"Prepared {self.prepared.root}, but {no_training[0].lower()}{no_training[1:]}{skipped}",
                             True)
        elif self.report.usable:
            applied = [r for r in self.prepared.registered if r.registration.improved]
            placed = sum(bool(r.registration.stored) for r in applied)
            refused = len(self.prepared.registered) - len(applied)
            moved = [f"{len(applied) - placed} registered from intensities" if len(applied) > placed else "",
                     f"{placed} placed by stored registrations (REG)" if placed else ""]
            self._set_status(f"Prepared {self.prepared.root}: {_subjects(len(self.report.subjects))} usable"
                             + "".join(f", {text}" for text in moved if text)
                             + (f", {refused} registration(s) not applied (worse than the "
                                                        "headers' placement; see the list: a volume that is no pair "
                                                        "as placed is left out)" if refused else "")
                             + f".{skipped}", bool(refused or self.report.problems))
        else:
            self._set_status(f"Prepared {self.prepared.root}, but it has no usable pairs.{skipped}", True)
        self.completeChanged.emit()

    def _show_registration(self, index: int) -> None:
        if self.prepared is None or not 0 <= index < len(self.prepared.registered):
            self.before.clear()
            self.after.clear()
            self.detail.clear()
            return
        r = self.prepared.registered[index]
        self.before.setPixmap(rgb_pixmap(r.before, OVERLAY_SIZE))
        self.after.setPixmap(rgb_pixmap(r.after, OVERLAY_SIZE))
        how = r.describe()
        self.after_label.setText("After the stored registration" if r.registration.stored else
                                 "After registration from intensities")
        self.detail.setText(f"{r.subject}: {r.modality} (magenta) on {r.reference} (green), central slice. "
                            f"{how[:1].upper()}{how[1:]}")

    def _run(self, fn, message: str, finished) -> None:
        """Run ``fn`` on a worker (cancelling the one before); only the latest one's result counts."""
        if self._task is not None:
            self._task.cancel()
        self.prepare_button.setEnabled(False)
        self._set_status(message, False)

        def ended() -> bool:
            if self._task is not task:
                return False
            self._task = None
            self.prepare_button.setEnabled(True)
            return True

        def done(result) -> None:
            if ended():
                finished(result)

        def failed(text: str) -> None:
            if ended():
                self._set_status(text, True)
                self.completeChanged.emit()

        task = self._task = self.runner.run(fn, name=message, finished=done, failed=failed)

    def _set_status(self, text: str, error: bool) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)

    def isComplete(self) -> bool:
        """Prepared and usable, or nothing chosen here and the checked dataset usable as it is."""
        if self._task is not None:
            return False
        if self.report is not None:
            return self.report.usable and not self.report.training_problem()
        return self.source is not None and self.source.usable and not self._pending()


def _subjects(count: int) -> str:
    return f"{count} subject{'' if count == 1 else 's'}"
