"""Start the GUI: logging, the QApplication, the settings, the main window; open the given files
(or, on first launch, the demo study). Nothing here imports torch or VTK, so the window appears at once."""
from __future__ import annotations

import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app import about
from app.main_window import MainWindow
from app.settings import config_dir, load_settings

log = logging.getLogger(__name__)
LOG_FILE = "studio.log"


class _OneLine(logging.Formatter):
    """A terminal line per message, never a traceback (those are in the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def configure_logging(folder: Path | None = None) -> Path | None:
    """Log the app's and the engine's messages, tracebacks included, to ``studio.log`` in the settings
    folder (or ``folder``), and warnings and errors, one line each, on the terminal. Returns the
    log file's path (None when it cannot be written)."""
    root = logging.getLogger()
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(_OneLine())
    root.addHandler(console)
    root.setLevel(logging.INFO)
    for name in ("app", "engine"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    path = (folder or config_dir()) / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=2**20, backupCount=2, encoding="utf-8")
    except OSError as exc:
        log.warning("no log file: %s", exc)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return path


def seconds_since_process_start() -> float | None:
    """How long this process has run (Linux: from /proc), or None where that is unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def missing_display() -> str | None:
    """Why no window can open here (Linux without X11/Wayland and no Qt platform chosen), or None."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display: the desktop app needs X11 or Wayland. On a server run it under a virtual "
            "screen (xvfb-run -a python main.py), or use the headless subcommands (python main.py --help)")


def run(paths: list[str]) -> int:
    """Run the application until its window closes; returns the exit status."""
    problem = missing_display()
    if problem and QApplication.instance() is None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(about.APP_NAME)
    app.setOrganizationName(about.ORGANISATION)
    app.setOrganizationDomain(about.ORGANISATION_DOMAIN)
    app.setApplicationVersion(about.version())
    configure_logging()                       # in the settings folder, which the names above locate
    settings = load_settings()
    window = MainWindow(settings)
    window.show()
    app.processEvents()
    shown = seconds_since_process_start()
    if shown is not None:
        log.info("window shown %.2f s after the process started", shown)
    if paths:
        window.open_paths(list(paths))
    elif not settings.demo_shown and about.DEMO_DIR.is_dir():
        settings.demo_shown = True
        window.open_paths([str(about.DEMO_DIR)])
    script = os.environ.get("SYNERMEDGEN_AUTOMATION")
    if script:              # a scripted run (the end-to-end test, the README screenshot): app.automation
        from app.automation import start

        automation = start(window, script)  # noqa: F841 - alive until the event loop ends
    return app.exec()
