"""The synthesis panel with a real (tiny, random-weight) model from the engine: targets follow
the model's routes and its card sets the defaults; a run stays off the UI thread with progress,
preview and remaining time, can be cancelled, fails with a clear message, and its result is
compared with the reference, marked synthetic. Without a model the panel says so
(test_main_window)."""
import json
import os
import signal
import time

import numpy as np
import pytest
from PySide6.QtCore import QTimer

from app.main_window import MainWindow
from app.settings import Settings
from engine.inference.random_model import write_random_model

ROUTES = (("T2", "CT"), ("CT", "T2"), ("T2", "FLAIR"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = write_random_model(tmp_path_factory.mktemp("models") / "tiny", routes=ROUTES, image_size=32,
                                metadata={"inference_defaults": {"steps": 3, "seed": 7}})
    assert json.loads((folder / "metadata.json").read_text())["inference_defaults"]["steps"] == 3
    return folder


@pytest.fixture
def window(no_default_model, tiny_model, study_window):
    return study_window(tiny_model)


def targets(panel) -> list[str]:
    return [panel.target.itemText(i) for i in range(panel.target.count())]


def test_the_model_card_sets_the_routes(window):
    panel = window.synthesis
    assert panel.model.currentText() == "tiny" and panel.source.currentText() == "T2"
    assert targets(panel) == ["FLAIR", "CT"]
    panel.source.setCurrentText("CT")
    assert targets(panel) == ["T2"]
    panel.source.setCurrentText("T2")
    assert panel.steps.text() == panel.seed.text() == panel.noise_correlation.text() == "model default"
    request = panel.request()
    assert (request.source, request.target, request.steps, request.seed) == ("T2", "FLAIR", None, None)
    assert request.noise_correlation is None
    panel.noise_correlation.setValue(0.0)                     # independent slices: a value, not the default
    assert panel.request().noise_correlation == 0.0
    panel.noise_correlation.setValue(panel.noise_correlation.minimum())
    assert panel.guided_filter.text() == "model default" and request.guided_filter is None
    panel.guided_filter.setValue(0.0)                         # off: a value, not the default
    assert panel.request().guided_filter == 0.0
    panel.guided_filter.setValue(-0.2)                        # typed below 0: no setting takes it, the default
    assert panel.request().guided_filter is None
    panel.guided_filter.setValue(panel.guided_filter.minimum())
    assert panel.guided_filter_depth.text() == "model default" and request.guided_filter_depth is None
    panel.guided_filter_depth.setValue(0.0)                   # each slice alone: a value, not the default
    assert panel.request().guided_filter_depth == 0.0 and panel.request().guided_filter is None
    panel.guided_filter_depth.setValue(panel.guided_filter_depth.minimum())
    assert panel.run_button.isEnabled() and not panel.notice.isVisible()
    assert panel.backend.model().item(1).isEnabled() and panel.backend.itemData(1) == "onnx"


def test_a_run_stays_off_the_ui_thread_and_its_result_is_compared(qtbot, window):
    panel = window.synthesis
    panel.target.setCurrentText("CT")                         # steps and seed: the card's 3 and 7
    panel.noise_correlation.setValue(0.5)
    panel.guided_filter.setValue(1.5)
    panel.guided_filter_depth.setValue(2.0)
    beats, reports = [], []
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
    heartbeat.start(10)
    panel.progress.valueChanged.connect(lambda _value: reports.append(time.perf_counter()))
    panel.run_button.click()
    assert panel.cancel_button.isEnabled() and not panel.run_button.isEnabled()
    qtbot.waitUntil(lambda: len(window.workspace.documents) == 3, timeout=120000)
    heartbeat.stop()
    running = np.array([t for t in beats if reports[0] <= t <= reports[-1]])     # while the model ran
    assert len(running) > 10 and np.diff(running).max() < 0.100, f"UI blocked {np.diff(running).max():.3f} s"
    synthetic = window.workspace.documents[2]
    source = window.workspace.documents[1].volume
    assert synthetic.synthetic and synthetic.volume.modality == "CT" and synthetic.volume.unit == "HU"
    assert synthetic.volume.same_grid(source)
    assert any("synthetic" in note for note in synthetic.volume.notes)
    assert any(note.startswith("sampling: 3 euler steps") and note.endswith("seed 7, noise correlated across "
                                                                          "slices (ρ 0.5)")
               for note in synthetic.volume.notes)
    assert any(note.startswith("source-guided filter") and "(radius 1.5 in model pixels) across" in note
               and "slices (depth 2 in model pixels)" in note for note in synthetic.volume.notes)
    assert panel.progress.value() == 100 and panel.eta.text().startswith("Done")
    assert not panel.preview.pixmap().isNull()
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    assert window.tabs.currentWidget() is window.comparison
    views = window.comparison.views
    assert views["source"].volume.name == "T2.nii.gz" and views["reference"].volume.name == "CT.nii.gz"
    assert views["synthetic"].banner.isVisible()


def test_without_a_reference_the_result_is_shown_and_the_next_run_starts_from_the_same_scan(qtbot, window):
    panel = window.synthesis
    source = window.workspace.active
    panel.target.setCurrentText("FLAIR")                      # no FLAIR is loaded: nothing to compare with
    panel.run_button.click()
    qtbot.waitUntil(lambda: len(window.workspace.documents) == 3, timeout=120000)
    synthetic = window.workspace.documents[2]
    assert synthetic.synthetic and window.workspace.active is synthetic and window.viewer.document is synthetic
    assert panel.document is source and panel.input_label.text() == source.label     # not the synthetic FLAIR
    assert panel.source.currentText() == "T2" and panel.target.currentText() == "FLAIR"
    assert panel.request().volume is source.volume


def test_a_run_can_be_cancelled(qtbot, window):
    panel = window.synthesis
    panel.steps.setValue(200)
    panel.run_button.click()
    qtbot.waitUntil(lambda: panel.progress.value() > 0 or "step" in panel.eta.text(), timeout=60000)
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: panel.eta.text() == "Cancelled.", timeout=60000)
    assert len(window.workspace.documents) == 2 and panel.run_button.isEnabled()


def test_a_failed_run_says_why(qtbot, window):
    panel = window.synthesis
    panel.precision.setCurrentIndex(panel.precision.findData("fp16"))
    assert window.settings.precision == "fp16"
    panel.run_button.click()
    qtbot.waitUntil(lambda: any(line.startswith("Synthesis failed") for line in window.log.lines), timeout=60000)
    assert "fp16 needs a CUDA GPU" in window.log.lines[-1]
    assert panel.run_button.isEnabled()


def test_a_crash_of_the_synthesis_process_leaves_the_viewer_running(qtbot, window):
    panel = window.synthesis
    panel.steps.setValue(200)
    panel.run_button.click()
    qtbot.waitUntil(lambda: panel.progress.value() > 0 or "step" in panel.eta.text(), timeout=60000)
    os.kill(panel.engine.pid, signal.SIGKILL)                # as the kernel's out-of-memory killer would
    qtbot.waitUntil(lambda: any(line.startswith("Synthesis failed") for line in window.log.lines), timeout=30000)
    assert "stopped unexpectedly" in window.log.lines[-1]
    assert panel.run_button.isEnabled() and window.viewer.document is not None


# -- the out-of-distribution guard and the model card ------------------------------------------------
@pytest.fixture
def guarded_model(tmp_path, study_folder):
    """A tiny model whose card has an input profile measured on the study's T2 and CT, and limitations."""
    import engine.io as io
    from engine.inference.ood import profile_from_volumes

    profile = profile_from_volumes([("head", m, io.load(study_folder / f"{m}.nii.gz")) for m in ("T2", "CT")])
    return write_random_model(tmp_path / "models" / "guarded", routes=ROUTES, image_size=32,
                              metadata={"inference_defaults": {"steps": 2, "seed": 7}, "input_profile": profile,
                                        "limitations": ["Trained on one phantom head only.",
                                                        "Research use only, not for diagnosis."]})


@pytest.fixture
def guarded_window(no_default_model, guarded_model, study_window):
    return study_window(guarded_model)


def synthesize(qtbot, window, count: int):
    panel = window.synthesis
    panel.target.setCurrentText("FLAIR")                      # nothing to compare with: the viewer shows it
    panel.run_button.click()
    qtbot.waitUntil(lambda: len(window.workspace.documents) == count, timeout=120000)
    qtbot.waitUntil(lambda: panel.run_button.isEnabled(), timeout=10000)
    return window.workspace.documents[count - 1]


def test_the_panel_warns_when_the_input_is_unlike_the_training_data(qtbot, guarded_window, tmp_path, phantom,
                                                                    write_nifti, wait_loaded):
    window, panel = guarded_window, guarded_window.synthesis
    window.tabs.setCurrentWidget(window.viewer)
    synthetic = synthesize(qtbot, window, 3)                  # the T2 the profile was measured on: quiet
    assert not any(n.startswith("input check") for n in synthetic.volume.notes)
    assert not panel.input_check.isVisible()

    ct = phantom()                                             # the same head with a tenfold spacing
    crafted = write_nifti(tmp_path / "far" / "T2_wrong_spacing.nii.gz", np.where(ct > -500, 1000.0 - ct, 0.0),
                          spacing=(8.0, 12.0, 25.0))
    window.open_paths([str(crafted)])
    doc = wait_loaded(window, 4)
    window.workspace.activate(doc)
    assert panel.document is doc and panel.source.currentText() == "T2"
    synthetic = synthesize(qtbot, window, 5)
    warnings = [n for n in synthetic.volume.notes if n.startswith("input check")]
    assert any("larger than any training scan" in w for w in warnings)
    assert panel.input_check.isVisible()
    assert "unlike this model's training data" in panel.input_check.text()
    assert "larger than any training scan" in panel.input_check.text()
    assert any("larger than any training scan" in line for line in window.log.lines)


def test_the_panel_shows_what_the_cards_benchmark_says_of_the_route(qtbot, window):
    panel = window.synthesis
    volume = window.workspace.documents[0].volume
    panel.show_input_check(volume.replace(notes=("benchmark: made CTs worse than doing nothing",)))
    assert panel.input_check.isVisible()
    assert "own benchmark" in panel.input_check.text() and "• made CTs worse than doing nothing" in panel.input_check.text()
    floor = "source floor 0 (the model card's, chosen on 2 val-split subjects): the output is the source itself"
    panel.show_input_check(volume.replace(notes=(floor,)))
    assert "• Source floor 0 (the model card's, chosen on 2 val-split subjects): the output is the source itself" \
        in panel.input_check.text()
    assert "unlike this model's training data" not in panel.input_check.text()
    panel.show_input_check(volume.replace(notes=()))
    assert not panel.input_check.isVisible()


def test_the_model_cards_limitations_are_one_click_away(qtbot, guarded_window):
    panel = guarded_window.synthesis
    assert panel.card_button.isEnabled() and not panel.limitations.isVisible()
    assert "Trained on one phantom head only." in panel.card_button.toolTip()
    panel.card_button.click()
    assert panel.limitations.isVisible()
    assert "• Trained on one phantom head only." in panel.limitations.text()
    assert "Research use only" in panel.limitations.text()


def test_a_model_without_a_profile_says_it_cannot_check(qtbot, window):
    panel = window.synthesis
    synthetic = synthesize(qtbot, window, 3)
    assert any(n.startswith("input check") and "cannot be checked" in n for n in synthetic.volume.notes)
    assert panel.input_check.isVisible() and "cannot be checked" in panel.input_check.text()
    assert "The model card lists no limitations." in panel.card_button.toolTip()


def test_the_plane_reaches_the_engine_the_target_stays_and_each_run_starts_a_fresh_preview(
        qtbot, no_default_model, tiny_model, study_folder, wait_loaded, phantom, write_nifti, tmp_path):
    win = MainWindow(Settings(model_dirs=[str(tiny_model)]))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: bool(win.synthesis.modalities), timeout=60000)
    win.open_paths([str(study_folder / "T2.nii.gz")])          # no CT loaded: the result is shown in the viewer
    source = wait_loaded(win)
    panel = win.synthesis
    assert targets(panel) == ["FLAIR", "CT"]
    panel.target.setCurrentText("CT")
    panel.plane.setCurrentIndex(panel.plane.findData("coronal"))
    panel.run_button.click()
    qtbot.waitUntil(lambda: len(win.workspace.documents) == 2 and panel.run_button.isEnabled(), timeout=120000)
    synthetic = win.workspace.documents[1]
    assert any("coronal slices synthesized along array axis" in note and "(plane coronal)" in note
               for note in synthetic.volume.notes)
    assert synthetic.plane == "coronal"                                          # the comparison scores it so
    assert panel.document is source and panel.target.currentText() == "CT"      # as chosen, after the run
    assert not panel.preview.pixmap().isNull()

    panel.run_button.click()
    assert panel.preview.pixmap().isNull()                                       # not the last run's slice
    qtbot.waitUntil(lambda: len(win.workspace.documents) == 3 and panel.run_button.isEnabled(), timeout=120000)

    unknown = write_nifti(tmp_path / "other" / "scan_0001.nii.gz", phantom())
    win.open_paths([str(unknown)])
    doc = wait_loaded(win, 4)
    assert doc.volume.modality is None and panel.document is doc
    assert panel.source.currentIndex() == 0 and panel.source.currentText().startswith("Auto")
    assert targets(panel) == ["T2", "FLAIR", "CT"] and panel.target.currentText() == "CT"


def test_a_source_the_user_overrode_stays_after_the_run_and_the_input_is_never_its_own_reference(qtbot, window):
    # a CBCT stored as DICOM CT: the file says CT, the user says what it is; here the CT volume, run as "T2"
    panel = window.synthesis
    ct = next(d for d in window.workspace.documents if d.volume.modality == "CT")
    window.workspace.activate(ct)
    qtbot.waitUntil(lambda: panel.document is ct, timeout=5000)
    assert panel.source.currentText() == "CT"
    panel.source.setCurrentText("T2")
    panel.target.setCurrentText("CT")
    panel.run_button.click()
    qtbot.waitUntil(lambda: len(window.workspace.documents) == 3, timeout=120000)
    qtbot.waitUntil(lambda: panel.run_button.isEnabled(), timeout=30000)
    assert panel.document is ct and (panel.source.currentText(), panel.target.currentText()) == ("T2", "CT")
    assert window.comparison.model.result is None           # the only CT loaded is the input: nothing to compare
    window.workspace.activate(next(d for d in window.workspace.documents if d.volume.modality == "T2"))
    qtbot.waitUntil(lambda: panel.document is not ct, timeout=5000)
    assert panel.source.currentText() == "T2"               # another scan: its own modality
