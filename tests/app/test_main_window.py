"""The main window as a user meets it: drop a file to open it, the browser lists a folder's
series, bad files give a message naming them, the status bar reads values in HU, the
synthesis panel says plainly that no model is available, screenshots are not blank."""
import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QMessageBox

from app import about
from app.main_window import MainWindow
from app.settings import load_settings
from app.state.geometry import Plane
from app.views.window_layout import STUDIES_MIN_ROWS


@pytest.fixture
def window(make_window):
    return make_window()


def file_mime(*paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


@pytest.mark.parametrize("where", ["window", "slice view"])
def test_dropping_a_file_on_the_window_opens_it(qtbot, window, ct_file, wait_loaded, where):
    target = window if where == "window" else window.viewer.views[Plane.SAGITTAL].viewport()
    mime = file_mime(ct_file)
    pos = QPointF(target.rect().center())
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, drop)
    doc = wait_loaded(window)
    assert doc.volume.name == "CT.nii.gz" and doc.volume.unit == "HU"
    assert window.workspace.active is doc and window.viewer.document is doc
    assert window.viewer.views[Plane.AXIAL].image.image is not None
    assert window.settings.recent_files[0] == str(ct_file.resolve())
    assert [a.text() for a in window.recent_menu.actions()] == [str(ct_file.resolve())]


def test_the_browser_lists_the_series_of_a_folder(qtbot, window, study_folder, wait_loaded):
    window.open_paths([str(study_folder)])
    wait_loaded(window)
    tree = window.browser.tree
    patient = tree.topLevelItem(0)
    assert patient.text(0) == "Folder SUBJ01"
    study = patient.child(0)
    series = sorted((study.child(i).text(0), study.child(i).text(1), study.child(i).text(2), study.child(i).text(3))
                    for i in range(study.childCount()))
    assert series == [("CT.nii.gz", "CT", "30×36×20", "0.8×1.2×2.5"), ("T2.nii.gz", "T2", "30×36×20", "0.8×1.2×2.5")]
    assert "2 series found" in window.browser.hint.text()


def test_opening_another_series_from_the_browser(qtbot, window, study_folder, wait_loaded):
    window.open_paths([str(study_folder)])
    wait_loaded(window)
    t2 = next(e for e in window.browser.entries() if e.modality == "T2")
    window.load_entry(t2)
    doc = wait_loaded(window, 2)
    assert window.viewer.document is doc and doc.volume.modality == "T2"
    assert window.synthesis.input_label.text().startswith("T2.nii.gz")


def test_a_broken_file_gives_a_message_naming_it(qtbot, window, tmp_path):
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    window.open_paths([str(bad)])
    qtbot.waitUntil(lambda: any("truncated.nii.gz" in line for line in window.log.lines), timeout=10000)
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert boxes and str(bad) in boxes[-1].text()
    assert "Traceback" not in boxes[-1].text()
    missing = tmp_path / "nothing-here"
    window.open_paths([str(missing)])
    qtbot.waitUntil(lambda: any(str(missing) in line for line in window.log.lines), timeout=10000)


def test_skipped_files_are_listed_with_their_reason(qtbot, window, study_folder, wait_loaded):
    (study_folder / "broken.nii.gz").write_bytes(b"garbage")
    window.open_paths([str(study_folder)])
    wait_loaded(window)
    qtbot.waitUntil(lambda: any(line.startswith("Skipped") for line in window.log.lines), timeout=10000)
    line = next(line for line in window.log.lines if line.startswith("Skipped"))
    assert "broken.nii.gz" in line and ":" in line
    assert window.docks["log"].isVisible()


def test_the_status_bar_shows_the_value_in_hu_and_the_notice(qtbot, window, ct_file, wait_loaded):
    window.open_paths([str(ct_file)])
    doc = wait_loaded(window)
    axial = window.viewer.views[Plane.AXIAL]
    g = axial.geometry
    u, v = g.extent[0] / 2, g.extent[1] / 2
    pos = axial.mapFromScene(axial.viewbox.mapViewToScene(QPointF(u, v)))
    from PySide6.QtTest import QTest

    QTest.mouseMove(axial.viewport(), pos)
    x, y, z = np.rint(g.view_to_index(u, v, axial.k)).astype(int)
    text = window.status.probe_label.text()
    assert f"value {doc.volume.array[z, y, x]:.6g} HU" in text and "LPS (" in text and "mm" in text
    assert window.status.notice_label.isVisible()
    assert window.status.notice_label.text() == about.RESEARCH_NOTICE
    qtbot.waitUntil(lambda: window.status.device_label.text().startswith("Device: ")
                    and "detecting" not in window.status.device_label.text(), timeout=60000)
    assert "GiB" in window.status.memory_label.text()


def test_the_synthesis_panel_lists_the_shipped_default_model(qtbot, window):
    panel = window.synthesis
    assert panel.model.itemText(0) == "Default model"
    assert str(panel.model.itemData(0)).endswith("resources/models/default")


def test_the_synthesis_panel_says_no_model_is_available(qtbot, no_default_model, window, ct_file, wait_loaded):
    window.open_paths([str(ct_file)])
    wait_loaded(window)
    panel = window.synthesis
    qtbot.waitUntil(lambda: bool(panel.modalities), timeout=60000)     # the engine was imported
    assert panel.notice.isVisible() and "No model available yet" in panel.notice.text()
    assert not panel.run_button.isEnabled() and "No model available yet" in panel.run_button.toolTip()
    assert panel.source.currentText() == "CT" and panel.target.count() > 0


def test_about_names_the_version_the_notice_and_the_model_card():
    text = about.about_html()
    assert about.version() in text and about.RESEARCH_NOTICE in text and "metadata.json" in text


def test_a_screenshot_of_the_view_is_a_non_blank_png(qtbot, window, ct_file, tmp_path, wait_loaded):
    window.open_paths([str(ct_file)])
    wait_loaded(window)
    out = tmp_path / "shots" / "viewer.png"
    window.save_screenshot(str(out))
    image = QImage(str(out))
    assert not image.isNull() and image.width() > 400
    grey = np.array([image.pixelColor(x, y).value() for x in range(0, image.width(), 7)
                     for y in range(0, image.height(), 7)])
    assert grey.std() > 10
    assert not list(out.parent.glob(".*part*"))


def test_restored_docks_never_squeeze_the_studies_tree(qtbot, window):
    window.docks["training"].show()
    window.resizeDocks([window.docks["browser"], window.docks["synthesis"]], [5, 2000], Qt.Orientation.Vertical)
    window.close()                                         # keeps the layout in the settings
    again = MainWindow(load_settings())
    qtbot.addWidget(again)
    again.show()
    qtbot.waitExposed(again)
    tree = again.browser.tree
    assert tree.height() >= STUDIES_MIN_ROWS * tree.fontMetrics().lineSpacing() > 100
    assert again.docks["training"].isVisible()             # the rest of the saved layout is kept


def test_the_window_never_opens_larger_than_the_screen(qtbot, window):
    window.move(-300, -200)
    window.resize(3200, 2400)                              # saved on a bigger monitor
    window.close()
    again = MainWindow(load_settings())
    qtbot.addWidget(again)
    again.show()
    qtbot.waitExposed(again)
    area = again.screen().availableGeometry()
    assert area.contains(again.frameGeometry()), (area, again.frameGeometry())


def test_help_mouse_and_keys_chooses_the_scheme_and_it_is_kept(qtbot, window):
    from app.views import mouse

    assert mouse.current().name == "synermedgen"
    window.actions["controls"].trigger()
    dialog = window.findChild(mouse.MouseKeysDialog)
    assert dialog.isVisible() and "Right drag" in dialog.table.toPlainText() and "window" in \
        dialog.table.toPlainText()
    dialog.scheme.setCurrentIndex(dialog.scheme.findData("ohif"))
    text = dialog.table.toPlainText()
    assert "OHIF" in text and "Left drag" in text and "Ctrl + left drag" in text
    assert "Shift + left click" in text and "Right drag" in text and "zoom" in text
    assert mouse.current().name == "ohif" and window.settings.mouse_scheme == "ohif"
    dialog.close()
    window.close()
    try:
        mouse.use_scheme("synermedgen")
        again = MainWindow(load_settings())                # the choice survives a restart
        qtbot.addWidget(again)
        assert mouse.current().name == "ohif"
        again.actions["controls"].trigger()
        assert again.findChild(mouse.MouseKeysDialog).scheme.currentData() == "ohif"
    finally:
        mouse.use_scheme(mouse.DEFAULT_SCHEME)


def test_a_study_row_shows_its_uid_s_end_so_the_series_columns_stay_in_view():
    from app.panels.browser import _shown

    study = "Head^Routine | 2024-03-01 | 1.2.826.0.1.3680043.8.498.12345678901234567890"
    assert _shown(study) == "Head^Routine | 2024-03-01 | …901234567890" and _shown("Image files") == "Image files"
    assert _shown("CT.HEAD.W.O.CONTRAST | 2024-03-01") == "CT.HEAD.W.O.CONTRAST | 2024-03-01"   # a name, no UID
