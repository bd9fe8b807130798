"""The PACS servers in File ▸ PACS…: the stored list (the servers file in the settings folder)
with Add, Edit, Remove and Verify, and the editor of one server (DIMSE or DICOMweb)."""
from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.workers import Task, TaskRunner
from engine import pacs
from engine.pacs import Server


def text_of(widget: QLineEdit) -> str:
    """A line edit's text without surrounding spaces."""
    return widget.text().strip()


class PemField(QWidget):
    """A certificate file: its path, typed or browsed for (PEM files)."""

    def __init__(self, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = QLineEdit()
        self.path.setPlaceholderText(placeholder)
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the file")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path, 1)
        row.addWidget(browse)

    def _browse(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(self, "Certificate file", self.path.text(),
                                                "PEM files (*.pem *.crt *.cer *.key);;All files (*)")
        if chosen:
            self.path.setText(chosen)


class ServerEditor(QDialog):
    """Add or edit one server: DIMSE (AE title, host, port, our AE, C-MOVE port, TLS and its certificate
    files) or DICOMweb (URL,
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
        self.tls = QCheckBox("Secure transport (DICOM over TLS)")
        self.tls_ca = PemField("the system's certificate authorities")
        self.tls_cert = PemField("none (for a PACS that asks for ours, and for C-MOVE)")
        self.tls_key = PemField("in the certificate file")
        self.tls.toggled.connect(self._tls_files)
        self.kind = QComboBox()
        self.kind.addItems(["DIMSE (C-FIND / C-GET / C-MOVE / C-STORE)", "DICOMweb (QIDO / WADO / STOW)"])
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Protocol", self.kind)
        self._dimse_rows = [("PACS AE title", self.ae_title), ("Host", self.host), ("Port", self.port),
                            ("Our AE title", self.calling_ae), ("Our C-MOVE port", self.move_port), ("TLS", self.tls),
                            ("Trusted authorities", self.tls_ca), ("Our certificate", self.tls_cert),
                            ("Its private key", self.tls_key)]
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
        for field in (self.url, self.username, self.password, self.token):
            field.textChanged.connect(self._warn)
        self.kind.currentIndexChanged.connect(self._warn)
        self._warn()

    def _warn(self) -> None:
        """Say, as the fields are typed, when the password or token would travel unencrypted."""
        try:
            warning = self.server().clear_text_warning() if self.kind.currentIndex() == 1 else ""
        except ValueError:
            warning = ""
        self.problem.setText(warning)

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
        self.tls.setChecked(s.tls)
        for field, value in ((self.tls_ca, s.tls_ca), (self.tls_cert, s.tls_cert), (self.tls_key, s.tls_key)):
            field.path.setText(value)
        self._tls_files(s.tls)
        self._show_rows()

    def _tls_files(self, on: bool) -> None:
        for field in (self.tls_ca, self.tls_cert, self.tls_key):
            field.setEnabled(on)

    def _show_rows(self) -> None:
        web = self.kind.currentIndex() == 1
        for rows, visible in ((self._dimse_rows, not web), (self._web_rows, web)):
            for _, widget in rows:
                self.form.setRowVisible(widget, visible)

    def server(self) -> Server:
        """The server the fields describe (the edited one's other fields kept); ValueError saying what is wrong."""
        name = text_of(self.name)
        if name in self.taken:
            raise ValueError(f"there is already a server named {name!r}: choose another name")
        if self.kind.currentIndex() == 1:
            return dataclasses.replace(self.original, name=name, url=text_of(self.url),
                                       username=text_of(self.username), password=self.password.text(),
                                       token=self.token.text().strip(), tls=False, tls_ca="", tls_cert="", tls_key="")
        on = self.tls.isChecked()
        files = {key: text_of(field.path) if on else "" for key, field in
                 (("tls_ca", self.tls_ca), ("tls_cert", self.tls_cert), ("tls_key", self.tls_key))}
        for path in filter(None, files.values()):
            if not Path(path).expanduser().is_file():
                raise ValueError(f"{path}: no such certificate file")
        return dataclasses.replace(self.original, name=name, ae_title=text_of(self.ae_title),
                                   host=text_of(self.host), port=self.port.value(), calling_ae=text_of(self.calling_ae),
                                   move_port=self.move_port.value(), url="", tls=on,
                                   **{key: str(Path(path).expanduser()) if path else "" for key, path in files.items()})

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
