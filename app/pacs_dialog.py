"""File ▸ PACS…: the stored servers (app.pacs_servers), a query form, the answers as a
patient → study → series tree (a patient's studies and a study's series are asked for when opened,
or when the task running then ends), and Retrieve with progress and Cancel; retrieved series are
handed to the window to open like any folder. Send to PACS… is app.pacs_send. Every PACS call runs
on a worker (engine.pacs)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.pacs_servers import ServerList, text_of
from app.workers import Task, TaskRunner
from engine import pacs
from engine.pacs import Match, Query, Server

MATCH_ROLE = Qt.ItemDataRole.UserRole
PLACEHOLDER = "…"
COLUMNS = ("Patient / study / series", "Modality", "Date", "Instances")
GIB = 1024 ** 3


class PacsDialog(QDialog):
    """The PACS browser. ``retrieved`` carries the folders of the retrieved series (to open)."""

    retrieved = Signal(list)
    searched = Signal(int)                  # matches found (tests and the status line)
    cache_limit_changed = Signal(int)       # the cache's size limit in GiB, set by the user (kept in the settings)

    def __init__(self, runner: TaskRunner, servers_path: Path, parent: QWidget | None = None,
                 cache: pacs.Cache | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS — query and retrieve (research use only)")
        self.runner, self.cache = runner, cache or pacs.Cache()
        self.servers = ServerList(runner, servers_path)
        self.level = QComboBox()
        self.level.addItems(["study", "series", "patient"])
        self.fields = {name: QLineEdit() for name in ("patient_name", "patient_id", "date_from", "date_to",
                                                      "modality", "description")}
        self.fields["patient_name"].setPlaceholderText("e.g. DOE^* (wildcards * and ?)")
        for name in ("date_from", "date_to"):
            self.fields[name].setPlaceholderText("YYYYMMDD")
        query_box = QGroupBox("Query")
        grid = QGridLayout(query_box)
        labels = {"patient_name": "Patient name", "patient_id": "Patient ID", "date_from": "Study date from",
                  "date_to": "to", "modality": "Modality", "description": "Description"}
        grid.addWidget(QLabel("Level"), 0, 0)
        grid.addWidget(self.level, 0, 1)
        for k, (name, widget) in enumerate(self.fields.items(), start=1):
            grid.addWidget(QLabel(labels[name]), (k + 1) // 2, 2 * ((k + 1) % 2))
            grid.addWidget(widget, (k + 1) // 2, 2 * ((k + 1) % 2) + 1)
            widget.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        grid.addWidget(self.search_button, 4, 3)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setSelectionMode(QTreeWidget.SelectionMode.ExtendedSelection)
        self.tree.itemExpanded.connect(self._expand)
        self.tree.itemSelectionChanged.connect(self._update)
        self.tree.setColumnWidth(0, 360)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.message = QLabel("Choose a server and search.")
        self.message.setWordWrap(True)
        self.retrieve_button = QPushButton("Retrieve")
        self.retrieve_button.setToolTip("Fetch the chosen studies or series into the local cache and open them")
        self.retrieve_button.clicked.connect(self.retrieve)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        bottom = QHBoxLayout()
        bottom.addWidget(self.progress, 1)
        bottom.addWidget(self.retrieve_button)
        bottom.addWidget(self.cancel_button)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(query_box)
        right_layout.addWidget(self.tree, 1)
        right_layout.addLayout(bottom)
        right_layout.addWidget(self.message)
        servers_box = QGroupBox("Servers")
        QVBoxLayout(servers_box).addWidget(self.servers)
        splitter = QSplitter()
        splitter.addWidget(servers_box)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 840])
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        self.cache_limit = QSpinBox()
        self.cache_limit.setRange(1, 100_000)
        self.cache_limit.setSuffix(" GiB")
        self.cache_limit.setValue(max(1, self.cache.limit_bytes // GIB))
        self.cache_limit.setToolTip("Beyond this size the least recently used series leave the cache, before and "
                                    "after each retrieve; the series being retrieved always stay")
        self.cache_limit.valueChanged.connect(self._set_cache_limit)
        cache_row = QHBoxLayout()
        cache_row.addWidget(QLabel("Retrieved series are kept in a private cache folder: " + str(self.cache.root)), 1)
        cache_row.addWidget(QLabel("Size limit"))
        cache_row.addWidget(self.cache_limit)
        layout.addLayout(cache_row)
        layout.addWidget(close)
        self.task: Task | None = None
        self._server: Server | None = None          # the server the tree's answers came from
        self._waiting: list[QTreeWidgetItem] = []   # nodes opened while a task ran: fetched when it ends
        self.servers.changed.connect(self._update)
        self.resize(1100, 640)
        self._update()

    def _set_cache_limit(self, gib: int) -> None:
        self.cache.limit_bytes = gib * GIB          # read by the next prune (a retrieve's start and end)
        self.cache_limit_changed.emit(gib)

    # -- state -----------------------------------------------------------------------------------
    def _busy(self) -> bool:
        return self.task is not None

    def _update(self) -> None:
        busy, server = self._busy(), self.servers.current()
        self.search_button.setEnabled(server is not None and not busy)
        self.retrieve_button.setEnabled(server is not None and not busy and bool(self._plan()))
        self.cancel_button.setEnabled(busy)
        self.search_button.setToolTip("" if server else "Add a server first")

    def _run(self, fn, name: str, finished, progressed=None) -> Task:
        def done(result) -> None:
            self.task = None
            self._update()
            finished(result)
            self._expand_waiting()

        def failed(message: str) -> None:
            self.task = None
            self.message.setText(message)
            self._update()
            self._expand_waiting()

        def cancelled() -> None:
            self.task = None
            self.message.setText("Cancelled; the instances already received stay in the cache.")
            self._update()
            self._expand_waiting()

        self.task = self.runner.run(fn, name=name, finished=done, failed=failed, progressed=progressed,
                                    cancelled=cancelled)
        self._update()
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    # -- query -----------------------------------------------------------------------------------
    def query(self) -> Query:
        values = {name: text_of(widget) for name, widget in self.fields.items()}
        return Query(level=self.level.currentText(), **values)

    def search(self) -> Task | None:
        server = self.servers.current()
        if server is None or self._busy():
            return None
        try:
            query = self.query()
        except ValueError as exc:
            self.message.setText(str(exc))
            return None
        self.message.setText(f"Searching {server.name}…")
        return self._run(lambda _progress, cancel: pacs.find(server, query, cancel), f"find on {server.name}",
                         lambda matches: self._show(matches, server))

    def _show(self, matches: list[Match], server: Server) -> None:
        self._waiting = []                          # their nodes are gone with the old answers
        self.tree.clear()
        self._server = server
        for match in matches:
            self._add_match(match)
        self.message.setText(f"{len(matches)} {self.level.currentText()} match(es) on {server.name}")
        self.searched.emit(len(matches))

    def _node(self, parent: QTreeWidgetItem | None, match: Match, text: str, expandable: bool) -> QTreeWidgetItem:
        item = QTreeWidgetItem([text, match.modality, match.study_date, str(match.instances or "")])
        item.setData(0, MATCH_ROLE, match)
        if expandable:
            item.addChild(QTreeWidgetItem([PLACEHOLDER]))
        if parent is None:
            self.tree.addTopLevelItem(item)
        else:
            parent.addChild(item)
        return item

    def _patient_node(self, match: Match) -> QTreeWidgetItem:
        for k in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(k)
            known = item.data(0, MATCH_ROLE)
            if (known.patient_id, known.patient_name) == (match.patient_id, match.patient_name):
                return item
        patient = Match("patient", patient_name=match.patient_name, patient_id=match.patient_id)
        item = self._node(None, patient, f"{match.patient_name or '(no name)'}  [{match.patient_id}]",
                          match.level == "patient")
        item.setExpanded(match.level != "patient")
        return item

    def _study_node(self, patient: QTreeWidgetItem, match: Match, expandable: bool) -> QTreeWidgetItem:
        for k in range(patient.childCount()):
            known = patient.child(k).data(0, MATCH_ROLE)
            if known is not None and known.study_uid == match.study_uid:
                return patient.child(k)
        study = Match("study", match.patient_name, match.patient_id, match.study_uid, match.study_date,
                      match.study_description, modality=match.modality if match.level == "study" else "",
                      instances=match.instances if match.level == "study" else 0)
        item = self._node(patient, study, match.study_description or "(no description)", expandable)
        item.setExpanded(not expandable)
        return item

    def _add_match(self, match: Match) -> None:
        patient = self._patient_node(match)
        if match.level == "patient":
            return
        study = self._study_node(patient, match, match.level == "study")
        if match.level == "series":
            self._node(study, match, f"{match.series_number}  {match.series_description or '(no description)'}",
                       False)

    def _expand(self, item: QTreeWidgetItem) -> None:
        """A patient's studies, or a study's series, are asked for the first time the node opens
        (or, opened while a task runs, when that task ends)."""
        if item.childCount() != 1 or item.child(0).text(0) != PLACEHOLDER:
            return
        if self._busy():
            if item not in self._waiting:
                self._waiting.append(item)
            return
        known: Match = item.data(0, MATCH_ROLE)
        server = self._server
        query = (Query(level="series", study_uid=known.study_uid) if known.level == "study"
                 else Query(level="study", patient_id=known.patient_id, patient_name=known.patient_name))

        def fill(matches: list[Match]) -> None:
            item.takeChildren()
            for match in matches:
                if known.level == "study":
                    self._node(item, match, f"{match.series_number}  {match.series_description or '(no description)'}",
                               False)
                else:
                    self._study_node(item, match, True)
            self.message.setText(f"{len(matches)} {query.level} match(es)")

        self._run(lambda _progress, cancel: pacs.find(server, query, cancel), f"find on {server.name}", fill)

    def _expand_waiting(self) -> None:
        """Ask for the nodes opened while the task that just ended ran (one task at a time: the
        others wait for the next end)."""
        waiting, self._waiting = self._waiting, []
        for item in waiting:
            if item.isExpanded():
                self._expand(item)

    # -- retrieve --------------------------------------------------------------------------------
    def _plan(self) -> dict[str, list[str]]:
        """study UID → the chosen series UIDs of it (empty: the whole study, when the study is chosen)."""
        chosen = [m for m in (item.data(0, MATCH_ROLE) for item in self.tree.selectedItems())
                  if m is not None and m.level != "patient" and m.study_uid]
        plan: dict[str, list[str]] = {m.study_uid: [] for m in chosen if m.level == "study"}
        whole = set(plan)
        for m in chosen:
            if m.level == "series" and m.series_uid and m.study_uid not in whole:
                plan.setdefault(m.study_uid, []).append(m.series_uid)
        return plan

    def retrieve(self) -> Task | None:
        plan, server = self._plan(), self._server
        if not plan or server is None or self._busy():
            return None
        cache = self.cache

        def fetch(progress, cancel) -> list[Path]:
            folders: list[Path] = []
            for study_uid, series in plan.items():
                folders += pacs.retrieve(server, study_uid, series or None, cache, progress=progress, cancel=cancel)
            return folders

        def progressed(p) -> None:
            self.progress.setValue(int(1000 * p.fraction))
            self.message.setText(p.message)

        self.progress.setValue(0)
        self.message.setText(f"Retrieving from {server.name} by {pacs.method_of(server)}…")
        return self._run(fetch, f"retrieve from {server.name}", self._retrieved, progressed)

    def _retrieved(self, folders: list[Path]) -> None:
        self.progress.setValue(1000)
        self.message.setText(f"Retrieved {len(folders)} series; they open in the Studies tree.")
        self.retrieved.emit([str(f) for f in folders])
