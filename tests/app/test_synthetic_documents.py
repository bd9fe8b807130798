"""Synthetic volumes are documents of their own, with a real (tiny, random-weight) model: after a
synthesis with a reference of the same modality loaded, File → Export Volume writes the synthetic
volume (not the source) under a name that says what it is; the result has its row in the Studies
tree beside its source, shows in the Viewer from there, and closes; two of a kind get distinct
names; a synthetic input is used only after the user confirms; a synthetic volume written nowhere
and a running synthesis are discarded only when the user says so."""
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

from app.main_window import MainWindow
from engine import io
from engine.inference.random_model import write_random_model

ROUTES = (("T2", "CT"), ("CT", "T2"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("models") / "tiny", routes=ROUTES, image_size=32,
                              metadata={"inference_defaults": {"steps": 1, "seed": 7}})


@pytest.fixture
def window(qtbot, no_default_model, tiny_model, study_window) -> MainWindow:
    """The CT (the reference) and the T2 (the source, in the viewer) of one study loaded."""
    win = study_window(tiny_model)
    qtbot.waitUntil(lambda: win.synthesis.run_button.isEnabled(), timeout=30000)
    return win


def synthesize(qtbot, window, target: str = "CT"):
    count = len(window.workspace.documents)
    window.synthesis.target.setCurrentText(target)
    window.synthesis.run_button.click()
    qtbot.waitUntil(lambda: len(window.workspace.documents) == count + 1, timeout=120000)
    return window.workspace.documents[-1]


def answer_save_dialog(monkeypatch, folder: Path) -> list[str]:
    """File dialogs answer with the proposed name in ``folder``; returns the names proposed."""
    proposed = []

    def answer(_parent, _title, start, _filters):
        proposed.append(Path(start).name)
        return str(folder / Path(start).name), "NIfTI (*.nii.gz)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer)
    return proposed


def test_export_after_a_synthesis_writes_the_synthetic_volume(qtbot, window, tmp_path, monkeypatch):
    source = window.workspace.active
    made = synthesize(qtbot, window)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    assert window.tabs.currentWidget() is window.comparison          # a CT reference is loaded: compared
    proposed = answer_save_dialog(monkeypatch, tmp_path)
    with qtbot.waitSignal(window.exported, timeout=60000) as written:
        window.actions["export"].trigger()                           # File → Export Volume…
    assert proposed == ["CT_synthetic_from_T2"]
    back = io.load(written.args[0])
    assert back.synthetic and back.derived_from == "T2"
    assert made.volume.provenance["Summary"].endswith("synthetic CT from T2 (random-tiny, 1 steps)")   # the header's words
    np.testing.assert_allclose(back.array, made.volume.array)
    assert not np.allclose(back.array, source.volume.array)           # not the source's values


def _double_click(qtbot, tree, item) -> None:
    tree.scrollToItem(item)
    centre = tree.visualItemRect(item).center()
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=centre)


def test_a_synthetic_volume_has_its_row_beside_its_source_shows_and_closes(qtbot, window, tmp_path, monkeypatch):
    browser, source = window.browser, window.workspace.active
    first, second = synthesize(qtbot, window), synthesize(qtbot, window)
    rows = [browser.item(doc.key) for doc in (first, second)]
    assert all(row.parent() is browser.item(source.key).parent() for row in rows)          # in its study
    assert [row.text(0) for row in rows] == ["synthetic CT from T2", "synthetic CT from T2 (2)"]
    assert rows[0].text(1) == "CT (synthetic)"

    reference = next(d for d in window.workspace.documents if d.volume.modality == "CT" and not d.synthetic)
    window.workspace.activate(reference)                              # the CT reference in the viewer
    _double_click(qtbot, browser.tree, rows[0])
    assert window.viewer.document is first and window.tabs.currentWidget() is window.viewer
    assert window.viewer.views[next(iter(window.viewer.views))].banner.isVisibleTo(window.viewer)
    assert window.viewer.notes_banner.text().startswith("<b>Notes on this synthetic volume:</b>")
    window.workspace.activate(reference)
    assert "Notes on this synthetic volume" not in window.viewer.notes_banner.text()
    _double_click(qtbot, browser.tree, rows[0])

    proposed = answer_save_dialog(monkeypatch, tmp_path)
    menu = browser.context_menu(rows[1])
    with qtbot.waitSignal(window.exported, timeout=60000):
        next(a for a in menu.actions() if a.text() == "Export…").trigger()
    assert proposed == ["CT_synthetic_from_T2_2"]

    window.comparison.set_inputs(first, reference, source)
    next(a for a in browser.context_menu(rows[0]).actions() if a.text().startswith("Close")).trigger()
    assert first not in window.workspace.documents and browser.item(first.key) is None
    assert window.viewer.document is source                          # it was shown: its source is now
    assert window.comparison.chosen_test() is None
    assert all(picker.findData(first) < 0 for picker in window.comparison.pickers.values())
    assert browser.item(second.key) is not None


def _answer_question(button: QMessageBox.StandardButton, seen: list[str]) -> None:
    box = QApplication.activeModalWidget()
    if not isinstance(box, QMessageBox):
        QTimer.singleShot(20, lambda: _answer_question(button, seen))
        return
    seen.append(box.text())
    box.button(button).click()


def test_a_synthetic_input_is_used_only_after_confirmation(qtbot, window):
    panel = window.synthesis
    ct = window.workspace.documents[0]
    made = window.workspace.add(ct.volume.replace(name="synthetic CT from T2", synthetic=True, derived_from="T2"),
                                source=ct)
    window.workspace.activate(made)
    assert panel.document is made and panel.run_button.isEnabled()
    seen: list[str] = []
    QTimer.singleShot(0, lambda: _answer_question(QMessageBox.StandardButton.No, seen))
    panel.run_button.click()
    assert seen and "synthetic" in seen[0] and "anyway" in seen[0]
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()       # nothing started

    QTimer.singleShot(0, lambda: _answer_question(QMessageBox.StandardButton.Yes, seen))
    panel.run_button.click()
    assert len(seen) == 2 and panel.cancel_button.isEnabled()                         # started
    qtbot.waitUntil(lambda: len(window.workspace.documents) == 4, timeout=120000)
    assert window.workspace.documents[-1].synthetic and window.workspace.documents[-1].volume.derived_from == "CT"


def test_the_context_menu_closes_a_loaded_series(qtbot, window):
    t2 = window.workspace.active
    row = window.browser.item(t2.key)
    assert row.font(0).bold()
    next(a for a in window.browser.context_menu(row).actions() if a.text().startswith("Close")).trigger()
    assert t2 not in window.workspace.documents and not row.font(0).bold()
    assert window.viewer.document is window.workspace.documents[-1]
    window.workspace.close(window.workspace.documents[0])
    assert window.viewer.document is None and window.synthesis.document is None
    assert not window.synthesis.run_button.isEnabled()


def test_nothing_made_is_lost_without_the_users_word(qtbot, window, tmp_path, monkeypatch):
    window.ask_before_discarding = True
    made = synthesize(qtbot, window)
    assert made.unkept and window.workspace.unkept() == [made]
    seen: list[str] = []
    QTimer.singleShot(0, lambda: _answer_question(QMessageBox.StandardButton.Cancel, seen))
    assert not window.close()                                          # Cancel: the window stays, the volume too
    assert "Quitting now discards 1 synthetic volume not exported or sent to a PACS (synthetic CT from T2)" in seen[0]
    assert window.isVisible() and made in window.workspace.documents
    QTimer.singleShot(0, lambda: _answer_question(QMessageBox.StandardButton.Cancel, seen))
    window.close_document(made)                                        # the Studies tree's Close
    assert "has not been exported or sent to a PACS" in seen[1] and made in window.workspace.documents

    answer_save_dialog(monkeypatch, tmp_path)
    with qtbot.waitSignal(window.exported, timeout=60000):
        window.actions["export"].trigger()
    assert made.kept == str(tmp_path / "CT_synthetic_from_T2.nii.gz") and not window.workspace.unkept()
    window.close_document(made)                                        # written: closed without a question
    assert made not in window.workspace.documents and len(seen) == 2

    again = synthesize(qtbot, window)
    QTimer.singleShot(0, lambda: _answer_question(QMessageBox.StandardButton.Discard, seen))
    assert window.close() and again.unkept and len(seen) == 3          # Discard: it closes


def test_quitting_during_a_synthesis_says_it_stops_it(qtbot, window, monkeypatch):
    window.ask_before_discarding = True
    monkeypatch.setattr(type(window.synthesis), "busy", property(lambda _panel: True))
    seen: list[str] = []
    QTimer.singleShot(0, lambda: _answer_question(QMessageBox.StandardButton.Cancel, seen))
    assert not window.close()
    assert seen == ["Quitting now discards the synthesis that is running. Training jobs pause and can be resumed."]
    window.ask_before_discarding = False
