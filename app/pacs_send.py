"""File ▸ Send to PACS…: a synthetic volume, exported as a DICOM derived series, sent to a chosen
server with the result per instance; :func:`not_sendable` says why a volume cannot be sent."""
from __future__ import annotations

import tempfile
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.export import export_volume
from app.state.workspace import Document
from app.workers import Task, TaskRunner
from engine import pacs


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
