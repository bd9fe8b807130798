"""File ▸ PACS…: the stored servers (add, edit, remove, Verify), a query form, the answers as a
patient → study → series tree (a patient's studies and a study's series are asked for when opened),
and Retrieve with progress and Cancel; retrieved series are handed to the window to open like any
folder. Send to PACS… sends a synthetic volume (exported as a DICOM series first) to a chosen server
and lists the result per instance. Every PACS call runs on a worker (engine.pacs)."""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Collection
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.export import export_volume
from app.state.workspace import Document
from app.workers import Task, TaskRunner
from engine import pacs
from engine.pacs import Match, Query, Server

MATCH_ROLE = Qt.ItemDataRole.UserRole
PLACEHOLDER = "…"
COLUMNS = ("Patient / study / series", "Modality", "Date", "Instances")


def _text(widget: QLineEdit) -> str:
    return widget.text().strip()


class ServerEditor(QDialog):
    """Add or edit one server: DIMSE (AE title, host, port, our AE, C-MOVE port) or DICOMweb (URL,
    user name and password, or a bearer token); what the form does not show (the timeout) is kept.
    OK only with a valid definition whose name no other server (``taken``) has; the problem is shown."""

    def __init__(self, server: Server | None = None, parent: QWidget | None = None,
                 taken: Collection[str] = ()) -> None:
        super().__init__(parent)
        self.original = server or Server("new PACS", ae_title="ORTHANC", host="localhost", port=4242)
        self.taken = set(taken)
        self.setWindowTitle("PACS server")
        self.name, self.ae_title, self.host, self.calling_ae = QLineEdit(), QLineEdit(), QLineEdit(), QLineEdit()
        self.url, self.username, self.password, self.token = QLineEdit(), QLineEdit(), QLineEdit(), QLineEdit()
        for secret in (self.password, self.token):
            secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.port, self.move_port = QSpinBox(), QSpinBox()
        self.port.setRange(1, 65535)
        self.move_port.setRange(0, 65535)
        self.move_port.setSpecialValueText("C-GET (no C-MOVE)")
        self.kind = QComboBox()
        self.kind.addItems(["DIMSE (C-FIND / C-GET / C-MOVE / C-STORE)", "DICOMweb (QIDO / WADO / STOW)"])
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Protocol", self.kind)
        self._dimse_rows = [("PACS AE title", self.ae_title), ("Host", self.host), ("Port", self.port),
                            ("Our AE title", self.calling_ae), ("Our C-MOVE port", self.move_port)]
        self._web_rows = [("URL", self.url), ("User name", self.username), ("Password", self.password),
                          ("Bearer token", self.token)]
        for label, widget in self._dimse_rows + self._web_rows:
            form.addRow(label, widget)
        self.form = form
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #c03030")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(buttons)
        self.kind.currentIndexChanged.connect(self._show_rows)
        self._fill(self.original)

    def _fill(self, s: Server) -> None:
        self.name.setText(s.name)
        self.kind.setCurrentIndex(1 if s.is_dicomweb else 0)
        self.ae_title.setText(s.ae_title)
        self.host.setText(s.host)
        self.port.setValue(s.port)
        self.calling_ae.setText(s.calling_ae)
        self.move_port.setValue(s.move_port)
        self.url.setText(s.url)
        self.username.setText(s.username)
        self.password.setText(s.password)
        self.token.setText(s.token)
        self._show_rows()

    def _show_rows(self) -> None:
        web = self.kind.currentIndex() == 1
        for rows, visible in ((self._dimse_rows, not web), (self._web_rows, web)):
            for _, widget in rows:
                self.form.setRowVisible(widget, visible)

    def server(self) -> Server:
        """The server the fields describe (the edited one's other fields kept); ValueError saying what is wrong."""
        name = _text(self.name)
        if name in self.taken:
            raise ValueError(f"there is already a server named {name!r}: choose another name")
        if self.kind.currentIndex() == 1:
            return dataclasses.replace(self.original, name=name, url=_text(self.url), username=_text(self.username),
                                       password=self.password.text(), token=self.token.text().strip())
        return dataclasses.replace(self.original, name=name, ae_title=_text(self.ae_title), host=_text(self.host),
                                   port=self.port.value(), calling_ae=_text(self.calling_ae),
                                   move_port=self.move_port.value(), url="")

    def accept(self) -> None:
        try:
            self.server()
        except ValueError as exc:
            self.problem.setText(str(exc))
            return
        super().accept()


class ServerList(QWidget):
    """The stored servers (the servers file in the settings folder), with Add, Edit, Remove and Verify."""

    changed = Signal()

    def __init__(self, runner: TaskRunner, path: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner, self.path = runner, path
        self.list = QListWidget()
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.buttons = {name: QPushButton(name) for name in ("Add…", "Edit…", "Remove", "Verify")}
        for name, slot in (("Add…", self.add), ("Edit…", self.edit), ("Remove", self.remove),
                           ("Verify", self.verify)):
            self.buttons[name].clicked.connect(slot)
        row = QHBoxLayout()
        for button in self.buttons.values():
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self.list.currentRowChanged.connect(lambda _row: self._update())
        self.servers: list[Server] = []
        self.reload()

    def reload(self) -> None:
        try:
            self.servers = pacs.load_servers(self.path)
        except ValueError as exc:
            self.servers = []
            self.status.setText(str(exc))
        self._fill()

    def _fill(self, current: str = "") -> None:
        self.list.clear()
        for server in self.servers:
            item = QListWidgetItem(server.name)
            item.setToolTip(server.describe())
            self.list.addItem(item)
        names = [s.name for s in self.servers]
        self.list.setCurrentRow(names.index(current) if current in names else (0 if names else -1))
        self._update()
        self.changed.emit()

    def _update(self) -> None:
        chosen = self.current() is not None
        for name in ("Edit…", "Remove", "Verify"):
            self.buttons[name].setEnabled(chosen)

    def current(self) -> Server | None:
        row = self.list.currentRow()
        return self.servers[row] if 0 <= row < len(self.servers) else None

    def _store(self, servers: list[Server], current: str) -> bool:
        try:
            pacs.save_servers(servers, self.path)
        except (OSError, ValueError) as exc:
            self.status.setText(str(exc))
            return False
        self.servers = servers
        self._fill(current)
        return True

    def add(self) -> ServerEditor:
        return self._open_editor(None)

    def edit(self) -> ServerEditor | None:
        return self._open_editor(self.current()) if self.current() else None

    def _open_editor(self, old: Server | None) -> ServerEditor:
        editor = ServerEditor(old, self, taken=[s.name for s in self.servers if s is not old])
        editor.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        editor.accepted.connect(lambda: self._edited(old, editor.server()))
        editor.open()
        return editor

    def _edited(self, old: Server | None, new: Server) -> None:
        servers = [new if s is old else s for s in self.servers] if old else [*self.servers, new]
        if self._store(servers, new.name):
            self.status.setText(f"Saved {new.name}: {new.describe()}")

    def remove(self) -> None:
        server = self.current()
        if server is not None and self._store([s for s in self.servers if s is not server], ""):
            self.status.setText(f"Removed {server.name}")

    def verify(self) -> Task | None:
        server = self.current()
        if server is None:
            return None
        self.status.setText(f"Verifying {server.name}…")
        return self.runner.run(lambda _progress, _cancel: pacs.echo(server), name=f"verify {server.name}",
                               finished=lambda s: self.status.setText(f"{server.name}: answered in {s * 1000:.0f} ms"),
                               failed=self.status.setText)


class PacsDialog(QDialog):
    """The PACS browser. ``retrieved`` carries the folders of the retrieved series (to open)."""

    retrieved = Signal(list)
    searched = Signal(int)                  # matches found (tests and the status line)

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
        layout.addWidget(QLabel("Retrieved series are kept in a private cache folder: " + str(self.cache.root)))
        layout.addWidget(close)
        self.task: Task | None = None
        self._server: Server | None = None          # the server the tree's answers came from
        self.servers.changed.connect(self._update)
        self.resize(1100, 640)
        self._update()

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

        def failed(message: str) -> None:
            self.task = None
            self.message.setText(message)
            self._update()

        def cancelled() -> None:
            self.task = None
            self.message.setText("Cancelled; the instances already received stay in the cache.")
            self._update()

        self.task = self.runner.run(fn, name=name, finished=done, failed=failed, progressed=progressed,
                                    cancelled=cancelled)
        self._update()
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    # -- query -----------------------------------------------------------------------------------
    def query(self) -> Query:
        values = {name: _text(widget) for name, widget in self.fields.items()}
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
        """A patient's studies, or a study's series, are asked for the first time the node opens."""
        if item.childCount() != 1 or item.child(0).text(0) != PLACEHOLDER or self._busy():
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



class SendDialog(QDialog):
    """Send a synthetic volume to a chosen server: exported as a DICOM derived series (its
    synthetic and research markings included) into a temporary folder, then sent; the result per
    instance is listed. Closed, it deletes itself (and lets go of the volume) once no send runs."""

    sent = Signal(list)                     # engine.pacs.sending.SendResult per instance

    def __init__(self, runner: TaskRunner, servers_path: Path, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Send {doc.title} to a PACS")
        self.runner, self.doc = runner, doc
        try:
            self.servers = pacs.load_servers(servers_path)
            problem = "" if self.servers else "No PACS server is stored yet: add one in File ▸ PACS…."
        except ValueError as exc:                   # a damaged servers file, named
            self.servers, problem = [], str(exc)
        self.server = QComboBox()
        self.server.addItems([s.name for s in self.servers])
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.results = QListWidget()
        self.message = QLabel(f"{doc.title} goes as a new DICOM series marked synthetic, research use only.")
        self.message.setWordWrap(True)
        self.send_button = QPushButton("Send")
        self.send_button.setEnabled(bool(self.servers))
        self.send_button.clicked.connect(self.send)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(QLabel("Server"))
        row.addWidget(self.server, 1)
        row.addWidget(self.send_button)
        row.addWidget(self.cancel_button)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.results, 1)
        layout.addWidget(self.message)
        layout.addWidget(close)
        if problem:
            self.message.setText(problem)
        self.task: Task | None = None
        self.resize(640, 420)

    def send(self) -> Task | None:
        if not self.servers or self.task is not None:
            return None
        server, doc = self.servers[self.server.currentIndex()], self.doc

        def work(progress, cancel):
            with tempfile.TemporaryDirectory(prefix="synermedgen-send-") as folder:
                series = export_volume(doc, Path(folder) / "series", cancel=cancel)
                return pacs.send(server, series, progress, cancel)

        def finished(results) -> None:
            self.task = None
            self._set_busy(False)
            failed = [r for r in results if not r.ok]
            for r in results:
                self.results.addItem(f"{'sent' if r.ok else 'FAILED'}  {r.path.name}  {r.detail}")
            self.message.setText(f"Sent {len(results) - len(failed)} of {len(results)} instances to {server.name}.")
            self.sent.emit(results)

        def failed(message: str) -> None:
            self.task = None
            self._set_busy(False)
            self.message.setText(message)

        def cancelled() -> None:
            self.task = None
            self._set_busy(False)
            self.message.setText("Cancelled; instances sent before stay on the server.")

        self.results.clear()
        self._set_busy(True)
        self.message.setText(f"Sending to {server.name}…")
        self.task = self.runner.run(work, name=f"send to {server.name}", finished=finished, failed=failed,
                                    cancelled=cancelled,
                                    progressed=lambda p: self.progress.setValue(int(1000 * p.fraction)))
        return self.task

    def _set_busy(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy and bool(self.servers))
        self.cancel_button.setEnabled(busy)
        if not busy and not self.isVisible():
            self.deleteLater()                      # closed during the send: gone now it has ended

    def done(self, result: int) -> None:
        super().done(result)
        if self.task is None:
            self.deleteLater()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()



def not_sendable(doc: Document | None) -> str | None:
    """Why ``doc`` cannot be sent to a PACS (None when it can): only synthetic volumes are sent."""
    if doc is None:
        return "There is no volume in the viewer to send."
    if not doc.synthetic:
        return ("Send to PACS sends a synthetic volume (made here) back to the PACS; the one in the viewer "
                "was acquired. Show a synthetic volume first.")
    return None

