"""A scripted run of the real application, for the end-to-end test and the README screenshot.

``SYNERMEDGEN_AUTOMATION=script.json python main.py`` starts the application as usual (on a
first launch it opens the demo study) and then does what a user would, one step after another,
each step started by the signal or event that ends the one before (no sleeps):

1. wait for the study to be scanned and its first series loaded;
2. load the ``source`` and ``reference`` series (by modality) and show the source in the viewer;
3. wait for the Synthesize button to become enabled (engine imported, model and route known);
4. pick the ``target``, ``steps`` and ``device``, press Synthesize, wait for the result;
5. wait for the comparison (source | synthetic | reference | difference, metrics) and save it
   with File → Screenshot to ``comparison_png``;
5b. when ``export`` names a path: File → Export Volume… (the action a user clicks), answer its file
   dialog with that path and the NIfTI filter, and wait for the file to be written;
6. show the synthetic volume in the viewer, open its 3D tab (VTK), wait for the render window's
   first paint and save what VTK drew to ``volume_3d_png`` (and, when given, the whole window as
   the X server shows it to ``window_png``);
7. print one JSON line (``automation: {...}``) with the paths (``export`` too) and the time of each step, close the
   window and exit with status 0 — or, on any failure or after ``timeout_s``, print the reason to
   stderr and exit with status 1.

The script is a JSON object; every key is optional::

    {"source": "T1", "target": "T2", "reference": "T2" (default: the target),
     "model": "path/to/model-dir" (added to the model list, as Import… does, and selected),
     "steps": 2 (default: the model's), "device": "cpu" (default: the settings'),
     "comparison_png": "comparison.png", "export": "" (e.g. "synthetic.nii.gz"),
     "volume_3d_png": "volume_3d.png", "window_png": "", "timeout_s": 600}
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QApplication, QFileDialog

from app.export import VOLUME_FILTERS, save_png

if TYPE_CHECKING:
    from app.main_window import MainWindow
    from app.state.workspace import Document

ENV = "SYNERMEDGEN_AUTOMATION"
DEFAULTS = {"source": "T1", "target": "T2", "reference": None, "model": None, "steps": None, "device": None,
            "comparison_png": "comparison.png", "export": "", "volume_3d_png": "volume_3d.png", "window_png": "",
            "timeout_s": 600}
NIFTI_FILTER = next(name for name, suffix in VOLUME_FILTERS.items() if suffix == ".nii.gz")
DIALOG_POLL_MS = 50


class _OnEvent(QObject):
    """Calls ``callback`` once, at the first event of ``kind`` on ``widget`` for which ``when()``."""

    def __init__(self, widget, kind: QEvent.Type, when: Callable[[], bool], callback: Callable[[], None]) -> None:
        super().__init__(widget)
        self._kind, self._when, self._callback = kind, when, callback
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == self._kind and self._callback is not None and self._when():
            callback, self._callback = self._callback, None
            watched.removeEventFilter(self)
            QTimer.singleShot(0, callback)            # after the widget has handled the event
        return False


class Automation(QObject):
    def __init__(self, window: MainWindow, script: dict) -> None:
        super().__init__(window)
        unknown = set(script) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"automation script: unknown keys {sorted(unknown)}")
        self.window, self.s = window, {**DEFAULTS, **script}
        self.s["reference"] = self.s["reference"] or self.s["target"]
        self.step, self.times, self._t0, self._ended = "start", {}, time.monotonic(), False
        self.source_doc: Document | None = None
        self.proposed_export_name = ""
        self.reference_doc: Document | None = None
        QApplication.instance().setQuitOnLastWindowClosed(False)     # the exit status is ours to give
        QTimer.singleShot(int(1000 * self.s["timeout_s"]), self, self._timed_out)
        window.synthesis.failed.connect(lambda message: self.fail(message))
        if self.s["model"]:
            self._add_model(str(Path(self.s["model"]).resolve()))
        self._begin("study loaded")
        window.workspace.added.connect(self._on_first_document)

    # -- steps ----------------------------------------------------------------------------------
    def _begin(self, step: str) -> None:
        self.times[self.step] = round(time.monotonic() - self._t0, 2)
        self.step = step
        print(f"automation: {step}…", file=sys.stderr, flush=True)

    def _add_model(self, path: str) -> None:
        panel = self.window.synthesis
        if path not in panel.settings.model_dirs:
            panel.settings.model_dirs.append(path)
        panel.refresh_models()
        index = next((i for i in range(panel.model.count()) if str(panel.model.itemData(i)) == path), -1)
        if index < 0:
            raise ValueError(f"automation script: {path} is not a model directory")
        panel.model.setCurrentIndex(index)

    def _on_first_document(self, _doc) -> None:
        self.window.workspace.added.disconnect(self._on_first_document)
        QTimer.singleShot(0, self._load_series)           # once the window has shown the first series

    def _load_series(self) -> None:
        self._begin("series loaded")
        entries = {e.modality: e for e in self.window.browser.entries()}
        missing = [m for m in (self.s["source"], self.s["reference"]) if m not in entries]
        if missing:
            self.fail(f"the study has no {', '.join(missing)} series (it has {', '.join(map(str, entries))})")
            return
        self.window.load_entry(entries[self.s["reference"]], then=self._on_reference)

    def _on_reference(self, doc: Document) -> None:
        self.reference_doc = doc
        self.window.load_entry(self._entry(self.s["source"]), then=self._on_source)

    def _entry(self, modality: str):
        return next(e for e in self.window.browser.entries() if e.modality == modality)

    def _on_source(self, doc: Document) -> None:
        self.source_doc = doc
        self.window.workspace.activate(doc)
        self._begin("engine ready")
        button = self.window.synthesis.run_button
        if button.isEnabled():
            self._synthesize()
        else:
            _OnEvent(button, QEvent.Type.EnabledChange, button.isEnabled, self._synthesize)

    def _synthesize(self) -> None:
        panel = self.window.synthesis
        self._begin("synthesis")
        if panel.document is not self.source_doc:
            self.fail("the synthesis panel does not show the source series")
            return
        if panel.target.findText(self.s["target"]) < 0:
            self.fail(f"the model has no route {self.s['source']} → {self.s['target']}")
            return
        panel.target.setCurrentText(self.s["target"])
        if self.s["steps"]:
            panel.steps.setValue(int(self.s["steps"]))
        if self.s["device"]:
            panel.device.setCurrentIndex(max(0, panel.device.findData(self.s["device"])))
        panel.synthesis_finished.connect(self._on_synthesized)
        panel.run_button.click()

    def _on_synthesized(self, _source, _volume, _plane) -> None:
        # MainWindow._on_synthesized ran first: the synthetic document is added and compared
        self._begin("comparison")
        self.window.comparison.model.result_changed.connect(self._on_compared)

    def _on_compared(self, result) -> None:
        if result is None:
            return
        self.window.comparison.model.result_changed.disconnect(self._on_compared)
        QTimer.singleShot(0, self._save_comparison)        # after the views have taken the result

    def _save_comparison(self) -> None:
        window = self.window
        window.tabs.setCurrentWidget(window.comparison)
        self._begin("comparison screenshot")
        path = self._out("comparison_png")
        window.save_screenshot(str(path))                 # File → Screenshot…
        if not path.is_file():
            self.fail(f"the comparison screenshot was not written to {path}")
            return
        if self.s["export"]:
            self._export()
        else:
            self._show_3d()

    def _export(self) -> None:
        """File → Export Volume… as a user does it: the action opens the file dialog (modal), which
        is answered once it shows; the export runs on a worker and ends with ``exported``."""
        self._begin("export")
        self.window.exported.connect(self._on_exported)
        QTimer.singleShot(0, self._answer_export_dialog)
        self.window.actions["export"].trigger()

    def _answer_export_dialog(self) -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            QTimer.singleShot(DIALOG_POLL_MS, self._answer_export_dialog)     # not shown yet
            return
        self.proposed_export_name = Path(dialog.selectedFiles()[0]).name if dialog.selectedFiles() else ""
        dialog.selectNameFilter(NIFTI_FILTER)
        dialog.selectFile(str(self._out("export")))
        dialog.accept()

    def _on_exported(self, path: str) -> None:
        self.window.exported.disconnect(self._on_exported)
        if Path(path) != self._out("export"):
            self.fail(f"Export wrote {path}, not {self._out('export')}")
            return
        self._show_3d()

    def _show_3d(self) -> None:
        window = self.window
        synthetic = next(d for d in window.workspace.documents if d.synthetic)
        window.workspace.activate(synthetic)              # the viewer shows it (already, since the synthesis)
        window.tabs.setCurrentWidget(window.viewer)
        self._begin("3D view")
        window.viewer.open_3d()                           # imports VTK, renders
        widget = window.viewer.volume_3d.vtk_widget
        _OnEvent(widget, QEvent.Type.Paint, lambda: True, self._save_3d)
        widget.update()

    def _save_3d(self) -> None:
        view = self.window.viewer.volume_3d
        pixels = np.ascontiguousarray(view.rendered_image())
        h, w, _ = pixels.shape
        save_png(QImage(pixels.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy(), str(self._out("volume_3d_png")))
        if self.s["window_png"]:
            # the X server's pixels: the Qt widgets and the OpenGL render window together
            screen = QGuiApplication.primaryScreen()
            frame = self.window.frameGeometry()
            image = screen.grabWindow(0, frame.x(), frame.y(), frame.width(), frame.height()).toImage()
            save_png(image, str(self._out("window_png")))
        self._finish(0)

    # -- ending ---------------------------------------------------------------------------------
    def _out(self, key: str) -> Path:
        path = Path(self.s[key]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _timed_out(self) -> None:
        detail = self.window.comparison.status.text() if self.step == "comparison" else ""
        self.fail(f"timed out after {self.s['timeout_s']} s waiting for: {self.step}. {detail}".strip())

    def fail(self, message: str) -> None:
        if self._ended:
            return
        print(f"automation failed at step '{self.step}': {message}", file=sys.stderr, flush=True)
        self._finish(1)

    def _finish(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        self._begin("done" if status == 0 else "failed")
        report = {"status": status, "step_ended_at_s": self.times,
                  **{k: str(self._out(k)) for k in ("comparison_png", "export", "volume_3d_png", "window_png")
                     if self.s[k]}}
        if self.s["export"]:
            report["export_proposed_name"] = self.proposed_export_name
        print("automation: " + json.dumps(report), flush=True)
        self.window.ask_before_discarding = False          # unattended: what the script made but did not export goes
        self.window.close()                               # saves settings, stops the engine, frees VTK
        QApplication.instance().exit(status)


def start(window: MainWindow, script_path: str) -> Automation:
    """Run the script at ``script_path`` (JSON) on ``window``; see the module's docstring."""
    return Automation(window, json.loads(Path(script_path).read_text(encoding="utf-8")))
