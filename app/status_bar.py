"""The status bar: the value and LPS position under the mouse, background-task progress, the
compute device (asked of torch on a worker: ``describe_device``), the process memory, the
research-use notice."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar

from app.about import RESEARCH_NOTICE
from app.views.slice_view import Probe
from engine.jobs import Progress

MEMORY_INTERVAL_MS = 2000


def describe_device() -> str:
    """The device synthesis would use by default: the CUDA GPU's name, Apple MPS, or CPU."""
    try:
        import torch
    except ImportError:
        return "unknown (PyTorch is not installed)"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple GPU (MPS)"
    return f"CPU ({os.cpu_count()} cores)"


def process_memory_bytes(pid: int | None = None) -> int | None:
    """Resident memory of this process or of ``pid`` (Linux), else this process's peak
    (macOS/BSD), else None."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        if pid is not None:
            return None
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class StatusBar(QStatusBar):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.probe_label = QLabel("")
        self.task_bar = QProgressBar()
        self.task_bar.setMaximumWidth(160)
        self.task_bar.setMaximumHeight(14)
        self.task_bar.hide()
        self.device_label = QLabel("Device: detecting…")
        self.memory_label = QLabel("")
        self.notice_label = QLabel(RESEARCH_NOTICE)
        self.notice_label.setStyleSheet("color:#9a3412; font-weight:bold; padding:0 6px;")
        self.addWidget(self.probe_label, 1)
        self.addPermanentWidget(self.task_bar)
        for label in (self.device_label, self.memory_label, self.notice_label):
            self.addPermanentWidget(label)
        self.engine_pid: Callable[[], int | None] = lambda: None     # the synthesis process, if running
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.update_memory)
        self._timer.start(MEMORY_INTERVAL_MS)
        self.update_memory()

    def show_device(self, text: str) -> None:
        self.device_label.setText(f"Device: {text}")

    def update_memory(self) -> None:
        used = process_memory_bytes()
        pid = self.engine_pid()
        engine = process_memory_bytes(pid) if pid else None
        text = "" if used is None else f"Memory {used / 2**30:.2f} GiB"
        if engine is not None:
            text += f" + synthesis {engine / 2**30:.2f} GiB"
        self.memory_label.setText(text)

    def show_probe(self, probe: Probe | None) -> None:
        self.probe_label.setText(probe.text() if probe is not None else "")

    def show_task(self, progress: Progress | None) -> None:
        """Progress of the latest background task; None hides the bar."""
        if progress is None:
            self.task_bar.hide()
            return
        self.task_bar.show()
        self.task_bar.setValue(round(100 * progress.fraction))
        self.task_bar.setFormat(progress.message[:40] or "%p %")
