"""The main window: menus and toolbar, the study browser / synthesis / training / log docks, the
viewer and comparison tabs, the status bar, the fine-tuning wizard. Opening (also by drag and drop),
loading and exporting run on workers; failures become a message that names the file, never a traceback."""
from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QMainWindow, QMessageBox, QStyle, QTabWidget

from app import about
from app.errors import describe_error
from app.export import (
    BURNED_IN_QUESTION,
    VOLUME_FILTERS,
    anonymised_export_session,
    asks_for_patient,
    export_path,
    export_volume,
    proposed_name,
    save_png,
    says_burned_in,
    write_metrics_csv,
)
from app.open_dialogs import VolumePicker, open_file_dialog
from app.panels.browser import BrowserPanel
from app.panels.log_panel import LogPanel
from app.panels.synthesis_panel import SynthesisPanel
from app.patient_dialog import PatientDialog
from app.settings import Settings, pacs_servers_file, save_settings
from app.state.cursor import Cursor
from app.state.workspace import Document, Workspace
from app.status_bar import StatusBar
from app.synthesis import guard_notes_of
from app.training.cohort_dialog import CohortDialog
from app.training.train_panel import TrainPanel
from app.training.wizard import FineTuneWizard
from app.views.comparison_view import ComparisonView
from app.views.mouse import MouseKeysDialog, use_scheme
from app.views.ortho_viewer import OrthoViewer
from app.views.window_layout import fit_to_screen, restore_layout
from app.workers import Task, TaskRunner
from engine import paths

if TYPE_CHECKING:
    from engine.io import Anonymiser, Catalog, SeriesEntry


STARTUP_DELAY_MS = 150     # let the window paint before the engine imports compete for the CPU


def _start_engine() -> tuple[list[str], str | None, str]:
    """Import the engine (SimpleITK, scipy, torch) after the window shows: the modality names,
    why synthesis cannot run (None when it can), and the compute device."""
    import engine.io  # noqa: F401 - warms the import for the first file the user opens
    from app.status_bar import describe_device
    from app.synthesis import inference_unavailable_reason
    from engine import modalities

    return list(modalities.MODALITIES), inference_unavailable_reason(), describe_device()


def _scan(path: str, cancel) -> Catalog:
    from engine import io

    return io.scan(path, cancel=cancel, keep_registrations=True)     # a REG opened alone places scans too


class MainWindow(QMainWindow):
    exported = Signal(str)              # path written

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.setWindowTitle(f"{about.APP_NAME} — {about.RESEARCH_NOTICE.lower()}")
        self.runner = TaskRunner(self)
        self.workspace = Workspace()
        self._export_session: Anonymiser | None = None      # anonymised exports' session, made on first use
        # the patient named for a scan's exports, by its document (gone with it: no later scan inherits it)
        self._patients: weakref.WeakKeyDictionary[Document, tuple[str, str]] = weakref.WeakKeyDictionary()
        self._pacs_dialog = None                            # File ▸ PACS…, made on first use
        self.cursor = Cursor()
        self.viewer = OrthoViewer(self.cursor)
        self.comparison = ComparisonView(self.workspace, self.cursor, self.runner)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.viewer, "Viewer")
        self.tabs.addTab(self.comparison, "Comparison")
        self.setCentralWidget(self.tabs)
        self.browser = BrowserPanel()
        self.synthesis = SynthesisPanel(self.runner, settings)
        self.log = LogPanel()
        self.training = TrainPanel(settings)
        self.docks = {
            "browser": self._dock("Studies", self.browser, Qt.DockWidgetArea.LeftDockWidgetArea),
            "synthesis": self._dock("Synthesis", self.synthesis, Qt.DockWidgetArea.LeftDockWidgetArea),
            "log": self._dock("Log", self.log, Qt.DockWidgetArea.BottomDockWidgetArea),
            "training": self._dock("Training", self.training, Qt.DockWidgetArea.BottomDockWidgetArea),
        }
        self.splitDockWidget(self.docks["browser"], self.docks["synthesis"], Qt.Orientation.Vertical)
        self.tabifyDockWidget(self.docks["log"], self.docks["training"])
        self.docks["log"].hide()
        self.docks["training"].hide()
        self.status = StatusBar()
        self.status.engine_pid = lambda: self.synthesis.engine.pid
        self.setStatusBar(self.status)
        self._build_menus()
        self.setAcceptDrops(True)

        self.browser.entry_activated.connect(self.load_entry)
        self.browser.compare_requested.connect(self.compare_with_entry)
        self.browser.document_activated.connect(self.workspace.activate)
        self.browser.export_requested.connect(self.choose_export)
        self.browser.close_requested.connect(self.close_document)
        self.viewer.probed.connect(self.status.show_probe)
        self.comparison.probed.connect(self.status.show_probe)
        self.comparison.metrics.export_requested.connect(self.export_metrics)
        self.comparison.failed.connect(lambda message: self.log.add(f"Cannot compare: {message}", "error"))
        self.synthesis.synthesis_finished.connect(self._on_synthesized)
        self.synthesis.failed.connect(self.report_error)
        self.training.new_job_requested.connect(self.open_finetune_wizard)
        self.training.model_finished.connect(self._on_model_trained)
        self.training.job_ended.connect(lambda job: self.log.add(job.message, "error" if job.status == "failed"
                                                                 else "info"))
        self.workspace.activated.connect(self._on_activated)
        self.workspace.closed.connect(self._on_closed)
        self._started_up = False
        use_scheme(settings.mouse_scheme)
        restore_layout(self, settings)

    def _dock(self, title: str, widget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{title.lower()}")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, text: str, slot: Callable, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        action.triggered.connect(lambda _checked=False: slot())
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip)
        return action

    def _build_menus(self) -> None:
        self.actions = {
            "open_file": self._action("Open File…", self.choose_file, QKeySequence.StandardKey.Open,
                                      "Open NIfTI, MHA, NRRD or DICOM files, or 2-D pictures"),
            "open_folder": self._action("Open Folder…", self.choose_folder, "Ctrl+Shift+O",
                                        "Scan a folder for volumes and DICOM series"),
            "cohort": self._action("Synthesize a Cohort…", self.open_cohort_dialog,
                                   tip="Synthesize every volume of a study folder, a BIDS dataset or a CSV manifest; "
                                       "it runs in the Training panel"),
            "export": self._action("Export Volume…", self.choose_export, "Ctrl+E",
                                   "Write the volume you are looking at (the viewer's, or the comparison's "
                                   "synthetic) as NIfTI, MHA or a DICOM series"),
            "pacs": self._action("PACS…", self.open_pacs, tip="Query a PACS (DIMSE or DICOMweb), retrieve series "
                                 "into the Studies tree"),
            "send_pacs": self._action("Send to PACS…", self.send_to_pacs,
                                      tip="Send the synthetic volume you are looking at to a PACS as a DICOM series"),
            "export_anonymised": self._action("Export Anonymised…", self.choose_anonymised_export,
                                              tip="Export without names, IDs, dates or source descriptions "
                                                  "(DICOM PS3.15 Basic Confidentiality Profile)"),
            "metrics": self._action("Export Metrics (CSV)…", self.export_metrics),
            "screenshot": self._action("Screenshot…", self.choose_screenshot, "Ctrl+Shift+S",
                                       "Save the current view (viewer or comparison) as PNG"),
            "quit": self._action("Quit", self.close, QKeySequence.StandardKey.Quit),
            "viewer": self._action("Viewer", lambda: self.tabs.setCurrentWidget(self.viewer), "Ctrl+1"),
            "compare": self._action("Comparison", lambda: self.tabs.setCurrentWidget(self.comparison), "Ctrl+2"),
            "reset": self._action("Reset Zoom", self.viewer.reset_zoom, "Ctrl+0"),
            "3d": self._action("3D View", self.viewer.open_3d, "Ctrl+3"),
            "finetune": self._action("Fine-tune…", self.open_finetune_wizard, tip="Fine-tune a model on your "
                                     "paired data; the jobs run in the Training panel"),
            "demo": self._action("Open Demo Study", lambda: self.open_paths([str(about.DEMO_DIR)])),
            "controls": self._action("Mouse and Keys", self.show_mouse_and_keys,
                                     tip="The mouse scheme (as before, 3D Slicer / ITK-SNAP, OHIF) and its gestures"),
            "about": self._action("About", self.show_about),
        }
        a = self.actions
        a["demo"].setEnabled(about.DEMO_DIR.is_dir())
        style = self.style()
        for name, icon in (("open_file", QStyle.StandardPixmap.SP_DialogOpenButton),
                           ("open_folder", QStyle.StandardPixmap.SP_DirOpenIcon),
                           ("export", QStyle.StandardPixmap.SP_DialogSaveButton)):
            a[name].setIcon(style.standardIcon(icon))
        menu = self.menuBar().addMenu("&File")
        menu.addActions([a["open_file"], a["open_folder"], a["pacs"]])
        self.recent_menu = menu.addMenu("Recent")
        menu.addAction(a["cohort"])
        menu.addSeparator()
        menu.addActions([a["export"], a["export_anonymised"], a["send_pacs"], a["metrics"], a["screenshot"]])
        menu.addSeparator()
        menu.addAction(a["quit"])
        view = self.menuBar().addMenu("&View")
        view.addActions([a["viewer"], a["compare"], a["reset"], a["3d"]])
        view.addSeparator()
        view.addActions([dock.toggleViewAction() for dock in self.docks.values()])
        self.menuBar().addMenu("&Training").addAction(a["finetune"])
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addActions([a["demo"], a["controls"], a["about"]])
        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("toolbar-main")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        toolbar.addActions([a["open_file"], a["open_folder"]])
        toolbar.addSeparator()
        toolbar.addActions([a["viewer"], a["compare"], a["3d"]])
        toolbar.addSeparator()
        toolbar.addActions([a["export"], a["screenshot"]])
        self._rebuild_recent()

    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent_files:
            self.recent_menu.addAction(path, lambda p=path: self.open_paths([p]))
        self.recent_menu.setEnabled(bool(self.settings.recent_files))

    # -- opening ------------------------------------------------------------------------------
    def choose_file(self) -> None:
        dialog = open_file_dialog(self, self.settings.last_folder or str(Path.home()))
        if dialog.exec():
            self.open_paths(dialog.selectedFiles())
        dialog.deleteLater()

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a study folder", self.settings.last_folder)
        if path:
            self.open_paths([path])

    def open_paths(self, paths: list[str]) -> None:
        """Scan each file or folder on a worker, list what it holds, and open its first series."""
        for path in paths:
            self.browser.set_scanning(path, True)
            self.runner.run(lambda _progress, cancel, p=path: _scan(p, cancel), name=f"scan {path}",
                            finished=lambda catalog, p=path: self._on_scanned(p, catalog),
                            failed=lambda message, p=path: self._on_scan_failed(p, message))

    def _on_scanned(self, path: str, catalog: Catalog) -> None:
        self.browser.set_scanning(path, False)
        new = self.workspace.add_registrations(catalog.registrations)
        for registration in new:
            self.log.add(f"Spatial registration {registration.describe()}: the comparison places a scan of one of "
                         f"its {len(registration.frames)} frames of reference in another's by it", "note")
        for skipped in catalog.skipped:
            self.log.add(f"Skipped {skipped.path}: {skipped.reason}", "note")
        if catalog.skipped:
            self.docks["log"].show()
            self.status.showMessage(f"{len(catalog.skipped)} file(s) in {path} skipped; reasons in the Log", 8000)
        self.settings.add_recent(path)
        self._rebuild_recent()
        if new and self.comparison.model.result is not None:
            self.comparison.recompute()             # the pair shown may be placed by a new registration
        if not catalog.entries:             # spatial registrations (DICOM REG) alone: nothing to list or show
            skipped = f"; {len(catalog.skipped)} file(s) skipped, reasons in the Log" if catalog.skipped else ""
            self.status.showMessage(f"{len(new)} spatial registration(s) added from {path} (the Log names them): "
                                    f"comparisons place scans by them{skipped}" if new else
                                    f"The spatial registrations in {path} were opened already{skipped}", 10000)
            return
        self.browser.add_catalog(catalog)
        # the first series that can be loaded and synthesized from (a refused one stays listed with its reason;
        # a localizer, a DWI only when nothing else is there)
        loadable = [e for e in catalog.entries if not e.refusal] or catalog.entries
        self.load_entry(next((e for e in loadable if not e.not_anatomy), loadable[0]))

    def _on_scan_failed(self, path: str, message: str) -> None:
        self.browser.set_scanning(path, False)
        self.report_error(message if path in message else f"{path}: {message}")

    def load_entry(self, entry: SeriesEntry, then: Callable[[Document], None] | None = None) -> None:
        """Load a series on a worker (or reuse it when loaded) and show it, or hand it to ``then``."""
        done = then or self.workspace.activate
        if entry.volumes > 1:
            self._pick_volume(entry, done)
            return
        loaded = self.workspace.find(entry.key)
        if loaded is not None:
            done(loaded)
            return
        where = entry.paths[0] if entry.paths else "volume"     # not the key: a DICOM key is a UID (PHI in the log)
        self.runner.run(lambda progress, cancel: entry.load(progress, cancel), name=f"load {where}",
                        progressed=self.status.show_task,
                        finished=lambda volume: self._on_loaded(entry, volume, done),
                        failed=lambda message: self._on_load_failed(entry, message))

    def _pick_volume(self, entry: SeriesEntry, done: Callable[[Document], None]) -> None:
        """A 4-D file: ask which of its volumes to open, list that one in the browser and load it."""
        picker = VolumePicker(entry, self)
        picker.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        path = entry.paths[0]
        picker.picked.connect(lambda index: self.runner.run(
            lambda _progress, cancel: _scan(f"{path}#{index}", cancel), name=f"scan {path}#{index}",
            finished=lambda catalog: self._on_volume_picked(catalog, done), failed=self.report_error))
        picker.open()

    def _on_volume_picked(self, catalog: Catalog, done: Callable[[Document], None]) -> None:
        self.browser.add_catalog(catalog)
        self.load_entry(catalog.entries[0], done)

    def _on_loaded(self, entry: SeriesEntry, volume, done: Callable[[Document], None]) -> None:
        self.status.show_task(None)
        doc = self.workspace.add(volume, key=entry.key)
        for note in volume.notes:
            self.log.add(f"{doc.title}: {note}", "note")
        self.browser.mark_loaded(doc)
        done(doc)

    def _on_load_failed(self, entry: SeriesEntry, message: str) -> None:
        self.status.show_task(None)
        where = entry.paths[0] if entry.paths else entry.key
        # the engine's message names the file or the series' folder already: say the path once
        named = where in message or any(str(Path(p).parent) in message for p in entry.paths[:1])
        self.report_error(message if named else f"{where}: {message}")

    def _on_activated(self, doc: Document | None) -> None:
        if doc is None:                          # the last document was closed
            self.viewer.clear()
            self.synthesis.set_document(None)
            return
        self.viewer.show_document(doc)
        self.synthesis.set_document(doc)
        self.tabs.setCurrentWidget(self.viewer)

    def _on_closed(self, doc: Document) -> None:
        self.browser.mark_closed(doc)
        self.comparison.forget(doc)
        if self.synthesis.document is doc:
            self.synthesis.set_document(self.workspace.active)
        self.log.add(f"Closed {doc.title}")

    def document_in_view(self) -> Document | None:
        """What the user is looking at: the comparison's synthetic (test) volume on the Comparison
        tab, else the viewer's volume."""
        if self.tabs.currentWidget() is self.comparison and self.comparison.chosen_test() is not None:
            return self.comparison.chosen_test()
        return self.workspace.active

    def compare_with_entry(self, entry: SeriesEntry) -> None:
        test = self.workspace.active
        if test is None:
            self.report_error("Open a volume in the viewer first; it is compared with the series you pick.")
            return

        def compare(reference: Document) -> None:       # a synthetic one's source gives the do-nothing baseline
            source = test.source if test.source in self.workspace.documents else None
            self.comparison.set_inputs(test, reference, source)
            self.tabs.setCurrentWidget(self.comparison)

        self.load_entry(entry, then=compare)

    def _on_synthesized(self, source: Document, volume, plane: str) -> None:
        doc = self.workspace.add(volume, synthetic=True, source=source, plane=plane)
        self.browser.mark_loaded(doc)                # its own row, beside its source
        self.log.add(f"Synthesized {doc.title} (input: {source.title})")
        for warning in guard_notes_of(volume)[0]:
            self.log.add(f"{source.title}: {warning}", "note")
        reference, why_not = self._reference_for(source, volume.modality)
        self.workspace.activate(doc)                 # the viewer shows it (and Export writes it)
        if source in self.workspace.documents:       # the next run starts from the same acquired volume
            self.synthesis.set_document(source)
        if reference is not None:
            self.log.add(f"Comparing {doc.title} with {reference.title}, a real {volume.modality} scan of the same "
                         "subject")
            self.comparison.set_inputs(doc, reference, source)
            self.tabs.setCurrentWidget(self.comparison)
        elif why_not:
            self.log.add(f"Not compared: {why_not}; pick the reference on the Comparison tab", "note")

    def _reference_for(self, source: Document, modality: str | None) -> tuple[Document | None, str]:
        """(the open real scan of ``modality`` surely of ``source``'s subject (``kinship`` 2 or more), else
        None and why not — "" when no such scan is open). Never the input itself (a CBCT stored as DICOM
        CT has the target's modality: compared with itself, "doing nothing" would score perfectly);
        another patient's scan, a scan that shares only a grid (every subject of an atlas-space dataset
        does), one of several equally likely, or one in another frame of reference that no opened REG
        relates to the source's is never scored unasked."""
        from app.state.comparison import unplaced
        from engine.io import frames_differ, in_frame_of, kinship

        candidates = sorted(((kinship(source.volume, d.volume), d) for d in self.workspace.documents
                             if d is not source and not d.synthetic and d.volume.modality == modality),
                            key=lambda pair: -pair[0])
        if not candidates:
            return None, ""
        best = [d for k, d in candidates if k == candidates[0][0]]
        if candidates[0][0] < 2:
            return None, (f"no open {modality} scan is known to be {source.title}'s subject (by patient, frame of "
                          "reference or file name)")
        if len(best) > 1:
            return None, f"{len(best)} open {modality} scans are {source.title}'s subject's"
        placed, note = in_frame_of(best[0].volume, source.volume, self.workspace.registrations)
        if placed is best[0].volume and frames_differ(best[0].volume, source.volume):
            return None, (f"{best[0].title} was acquired in another frame of reference than {source.title}: "
                          f"{note or unplaced()}; "
                          "scored as they lie, the anatomy would not match")
        return best[0], ""

    # -- PACS -----------------------------------------------------------------------------------
    def open_pacs(self):
        """File ▸ PACS…: retrieved series open like a folder (listed in the Studies tree). One dialog
        for the window's life: closed, it keeps its answers and a retrieve goes on."""
        from app.pacs_dialog import PacsDialog
        from engine.pacs import Cache

        if self._pacs_dialog is None:
            cache = Cache(limit_bytes=self.settings.pacs_cache_limit_gib * 1024**3)
            self._pacs_dialog = PacsDialog(self.runner, pacs_servers_file(), self, cache)
            self._pacs_dialog.retrieved.connect(self.open_paths)
            self._pacs_dialog.cache_limit_changed.connect(self._on_pacs_cache_limit)
        self._pacs_dialog.show()
        self._pacs_dialog.raise_()
        return self._pacs_dialog

    def _on_pacs_cache_limit(self, gib: int) -> None:
        self.settings.pacs_cache_limit_gib = gib
        try:
            save_settings(self.settings)
        except OSError as exc:
            self.log.add(f"Settings not saved: {describe_error(exc)}", "error")

    def send_to_pacs(self, doc: Document | None = None):
        """File ▸ Send to PACS…: the synthetic volume in view (or ``doc``), to a chosen server."""
        from app.pacs_send import SendDialog, not_sendable

        doc = doc or self.document_in_view()
        problem = not_sendable(doc)
        if problem:
            self.report_error(problem)
            return None
        dialog = SendDialog(self.runner, pacs_servers_file(), doc, self)      # deletes itself once closed and idle
        dialog.sent.connect(lambda results, d=doc: self._on_sent(d, results))
        dialog.show()
        return dialog

    def _on_sent(self, doc: Document, results) -> None:
        stored = sum(r.ok for r in results)
        self.log.add(f"Sent {doc.title} to a PACS: {stored} of {len(results)} instances stored")
        if results and stored == len(results):
            doc.kept = "a PACS"

    # -- fine-tuning ----------------------------------------------------------------------------
    def open_finetune_wizard(self) -> FineTuneWizard:
        wizard = FineTuneWizard(self.runner, self.settings, self)
        wizard.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        wizard.job_requested.connect(self._start_training)
        wizard.open()
        return wizard

    def open_cohort_dialog(self) -> CohortDialog:
        dialog = CohortDialog(self.settings, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.cohort_requested.connect(self._start_training)
        dialog.open()
        return dialog

    def _start_training(self, spec) -> None:
        self.training.add_job(spec)
        self.docks["training"].show()
        self.docks["training"].raise_()

    def _on_model_trained(self, _model_dir: str) -> None:
        """A finished job's model joined ``settings.model_dirs``: list it and keep the settings."""
        self.synthesis.refresh_models()
        try:
            save_settings(self.settings)
        except OSError as exc:
            self.log.add(f"Settings not saved: {describe_error(exc)}", "error")

    # -- exporting ----------------------------------------------------------------------------
    def choose_export(self, doc: Document | None = None, anonymised: bool = False) -> None:
        """Ask where to write ``doc`` (by default what the user is looking at), proposing a name
        that says what it is, and export it (``anonymised``: de-identified, after asking whether a
        series with burned-in annotation may go)."""
        doc = doc or self.document_in_view()
        if doc is None:
            self.report_error("There is no volume in the viewer to export.")
            return
        anonymiser = self._anonymiser_for(doc) if anonymised else None
        if anonymised and anonymiser is None:
            return
        start = str(self._save_folder() / proposed_name(doc, anonymised))
        title = "Export anonymised" if anonymised else f"Export {doc.title}"
        path, name_filter = QFileDialog.getSaveFileName(self, title, start, ";;".join(VOLUME_FILTERS))
        if not path:
            return
        target, patient = export_path(path, name_filter), ("", "")
        if asks_for_patient(doc, target, anonymised):
            scan = doc
            while scan.source is not None:          # a synthetic's patient is its scan's: one answer for both
                scan = scan.source
            dialog = PatientDialog(doc.title, doc.volume, self._patients.get(scan, ("", "")), self)
            if not dialog.exec():                   # cancelled: nothing is written
                return
            patient = self._patients[scan] = dialog.patient()
        self.export_to(target, doc, anonymiser, patient)

    def choose_anonymised_export(self) -> None:
        self.choose_export(anonymised=True)

    def _anonymiser_for(self, doc: Document) -> Anonymiser | None:
        """This window's export session (one for the app's run: two series of one study exported
        anonymised still match), accepting burned-in annotation only when the user says so; None
        when the user declines."""
        if self._export_session is None:
            self._export_session = anonymised_export_session()
        if not says_burned_in(doc):
            return self._export_session
        answer = QMessageBox.question(self, "Burned-in annotation", BURNED_IN_QUESTION,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return self._export_session.accepting_burned_in() if answer == QMessageBox.StandardButton.Yes else None

    def _save_folder(self) -> Path:
        """Where save dialogs start: the folder last opened from, or home when there is none or it
        lies inside the app's own folder (the demo study) — exports never land in the install."""
        folder = Path(self.settings.last_folder) if self.settings.last_folder else Path.home()
        if not folder.is_dir() or folder.resolve().is_relative_to(paths.ROOT):
            return Path.home()
        return folder

    def export_to(self, path: Path, doc: Document | None = None, anonymiser: Anonymiser | None = None,
                  patient: tuple[str, str] = ("", "")) -> Task:
        """Write ``doc`` (by default what the user is looking at) to ``path`` on a worker (de-identified
        with an ``anonymiser``; naming the ``patient`` of a volume that names none)."""
        doc = doc or self.document_in_view()

        def exported(written) -> None:
            if doc is not None:
                doc.kept = str(written)
            self._on_exported(written)

        return self.runner.run(lambda progress, cancel: export_volume(doc, path, progress, cancel, anonymiser, patient),
                               name=f"export {path}", progressed=self.status.show_task,
                               finished=exported, failed=self.report_error)

    def _on_exported(self, path) -> None:
        self.status.show_task(None)
        self.log.add(f"Exported {path}")
        self.status.showMessage(f"Exported {path}", 8000)
        self.exported.emit(str(path))

    def choose_screenshot(self) -> None:
        name = "comparison.png" if self.tabs.currentWidget() is self.comparison else "viewer.png"
        start = str(self._save_folder() / name)
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", start, "PNG image (*.png)")
        if path:
            self.save_screenshot(path if path.lower().endswith(".png") else path + ".png")

    def save_screenshot(self, path: str) -> None:
        """Save the visible tab (viewer or comparison, with its panels) as a PNG."""
        try:
            save_png(self.tabs.currentWidget().grab().toImage(), path)
        except (OSError, ValueError) as exc:
            self.report_error(describe_error(exc))
        else:
            self._on_exported(path)

    def export_metrics(self) -> None:
        result = self.comparison.model.result
        if result is None:
            self.report_error("There are no metrics yet: compare two volumes in the Comparison tab first.")
            return
        start = str(self._save_folder() / "metrics.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", start, "CSV (*.csv)")
        if path:
            try:
                self._on_exported(write_metrics_csv(result, path))
            except OSError as exc:
                self.report_error(describe_error(exc))

    # -- messages, drops, lifetime --------------------------------------------------------------
    def report_error(self, message: str) -> None:
        """Tell the user, without blocking: a message box, the status bar and the log."""
        self.log.add(message, "error")
        self.status.showMessage(message, 10000)
        box = QMessageBox(QMessageBox.Icon.Warning, about.APP_NAME, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    def show_mouse_and_keys(self) -> MouseKeysDialog:
        dialog = MouseKeysDialog(self.settings, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def show_about(self) -> None:
        QMessageBox.about(self, f"About {about.APP_NAME}", about.about_html())

    @staticmethod
    def _dropped_paths(event) -> list[str]:
        mime = event.mimeData()
        return [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []

    def dragEnterEvent(self, event) -> None:
        if self._dropped_paths(event):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        if self._dropped_paths(event):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = self._dropped_paths(event)
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._started_up:
            self._started_up = True
            fit_to_screen(self)                  # again, now that the window frame is known
            QTimer.singleShot(STARTUP_DELAY_MS, self, self._finish_startup)

    def _finish_startup(self) -> None:
        """Once the window shows: import the engine and ask torch for the device, on one worker
        (the other stays free for the files the user opens meanwhile)."""
        self.runner.run(lambda _progress, _cancel: _start_engine(), name="engine start",
                        finished=self._on_engine_started, failed=self.report_error)

    def _on_engine_started(self, info: tuple[list[str], str | None, str]) -> None:
        names, synthesis_unavailable, device = info
        self.synthesis.set_engine(names, synthesis_unavailable)
        self.comparison.set_modalities(names)
        self.status.show_device(device)

    # -- nothing lost -----------------------------------------------------------------------------
    ask_before_discarding = True        # False: close without asking (an unattended script, the tests)

    def close_document(self, doc: Document) -> None:
        """Close ``doc`` (the Studies tree's Close): a synthetic volume not exported or sent yet only
        once the user says to discard it."""
        if doc.unkept and not self._discard_ok(f"{doc.title} has not been exported or sent to a PACS: closing it "
                                                "discards it."):
            return
        self.workspace.close(doc)

    def _discard_ok(self, what: str) -> bool:
        """Whether the user agrees to lose ``what`` (Discard / Cancel, Cancel the default)."""
        if not self.ask_before_discarding:
            return True
        box = QMessageBox(QMessageBox.Icon.Warning, about.APP_NAME, what, QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        return box.exec() == QMessageBox.StandardButton.Discard

    def _what_closing_loses(self) -> str:
        """What quitting now would lose ("" nothing): synthetic volumes written nowhere, a running synthesis."""
        unkept = [d.title for d in self.workspace.unkept()]
        lost = []
        if unkept:
            lost.append(f"{len(unkept)} synthetic volume{'s' if len(unkept) > 1 else ''} not exported or sent to a "
                        f"PACS ({', '.join(unkept[:3])}{', …' if len(unkept) > 3 else ''})")
        if self.synthesis.busy:
            lost.append("the synthesis that is running")
        return " and ".join(lost)

    def closeEvent(self, event) -> None:
        lost = self._what_closing_loses()
        if lost and not self._discard_ok(f"Quitting now discards {lost}. Training jobs pause and can be resumed."):
            event.ignore()
            return
        self.settings.window_geometry = bytes(self.saveGeometry().toBase64()).decode()
        self.settings.window_state = bytes(self.saveState().toBase64()).decode()
        self.training.shutdown()
        try:
            save_settings(self.settings)
        except OSError as exc:
            self.log.add(f"Settings not saved: {describe_error(exc)}", "error")
        self.runner.shutdown()
        self.synthesis.shutdown()
        self.viewer.close_3d()
        super().closeEvent(event)
