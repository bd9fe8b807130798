"""Opening what users have, as they meet it: a DICOM series with a missing slice shows a banner,
2-D pictures open, a 4-D file asks which volume, the Open dialog lists DICOM files without a suffix
and pictures, exports never start in the install folder, a header promising more than its file
holds is refused, closing a volume frees it, and handled errors leave no traceback on the terminal
(only in the log file)."""
import gc
import logging
import weakref
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QFileDialog, QListView, QMessageBox

from app import about
from app.open_dialogs import VolumePicker
from app.state.geometry import Plane

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"


@pytest.fixture
def window(make_window):
    return make_window()


def test_a_dicom_series_with_a_missing_slice_shows_a_banner_and_keeps_true_positions(
        qtbot, window, tmp_path, phantom, wait_loaded):
    from engine import io

    ct = phantom(shape=(10, 24, 20))
    series = io.save(io.Volume(ct, spacing=(0.8, 0.8, 2.0), modality="CT", unit="HU"), tmp_path / "ct_series")
    files = sorted(series.iterdir(), key=lambda f: float(io.load(f).origin[2]))
    files[4].unlink()                                        # the fifth slice is gone
    window.open_paths([str(series)])
    doc = wait_loaded(window)
    assert doc.volume.shape == (10, 24, 20) and doc.volume.spacing[2] == pytest.approx(2.0)
    banner = window.viewer.notes_banner
    assert banner.isVisible() and "missing slice" in banner.text() and "interpolation" in banner.text()


def test_a_folder_whose_first_series_is_refused_opens_the_next_one(qtbot, window, tmp_path, phantom, wait_loaded):
    from engine import io

    ct = phantom(shape=(10, 24, 20))
    study = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "PatientID": "P1"}      # one study, listed by number
    first = io.Volume(ct, spacing=(0.8, 0.8, 2.0), modality="CT", unit="HU", dicom={**study, "SeriesNumber": "1"})
    series = io.save(first, tmp_path / "study" / "a_gapped")
    for f in sorted(series.iterdir(), key=lambda f: float(io.load(f).origin[2]))[2:7]:
        f.unlink()                                          # five slices in a row: too many to fill
    io.save(first.replace(dicom={**study, "SeriesNumber": "2"}), tmp_path / "study" / "b_whole")
    entries = io.scan(tmp_path / "study").entries
    assert [bool(e.refusal) for e in entries] == [True, False]     # the refused one is listed first
    window.open_paths([str(tmp_path / "study")])
    doc = wait_loaded(window)
    assert doc.volume.shape == (10, 24, 20) and len(window.browser.entries()) == 2


def test_a_study_opens_at_a_scan_not_at_its_localizer(qtbot, window, tmp_path, phantom, wait_loaded):
    """A study listing its localizer first had opened it, with the synthesis panel set on it."""
    from engine import io

    ct = phantom(shape=(6, 24, 20))
    study = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.2", "PatientID": "P1"}
    scout = io.Volume(ct[:1], spacing=(0.8, 0.8, 2.0), modality="CT", unit="HU",
                      dicom={**study, "SeriesNumber": "1", "SeriesDescription": "Topogram"})
    io.save(scout, tmp_path / "study" / "a_scout", description="Topogram 0.6")
    io.save(io.Volume(ct, spacing=(0.8, 0.8, 2.0), modality="CT", unit="HU", dicom={**study, "SeriesNumber": "2"}),
            tmp_path / "study" / "b_head")
    entries = io.scan(tmp_path / "study").entries
    assert entries[0].not_anatomy and not entries[1].not_anatomy               # the localizer is listed first
    window.open_paths([str(tmp_path / "study")])
    doc = wait_loaded(window)
    assert doc.volume.shape == (6, 24, 20) and not doc.volume.not_anatomy


def test_a_png_picture_opens_as_a_one_slice_volume_and_says_what_it_assumed(qtbot, window, tmp_path, wait_loaded):
    pixels = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    path = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    window.open_paths([str(path)])
    doc = wait_loaded(window)
    assert doc.volume.shape == (1, 48, 64) and doc.volume.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(doc.volume.array[0], pixels)
    assert window.viewer.views[Plane.AXIAL].image.image is not None
    banner = window.viewer.notes_banner
    assert banner.isVisible() and "one-slice volume" in banner.text() and "1 × 1 mm" in banner.text()


def test_a_4d_file_offers_a_volume_picker(qtbot, window, wait_loaded):
    src = NIBABEL_DATA / "example4d.nii.gz"
    window.open_paths([str(src)])
    qtbot.waitUntil(lambda: window.findChild(VolumePicker) is not None, timeout=20000)
    picker = window.findChild(VolumePicker)
    assert picker.isVisible() and picker.volumes.count() == 2
    picker.volumes.setCurrentRow(1)
    picker.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Open).click()
    doc = wait_loaded(window)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))[1]
    np.testing.assert_allclose(doc.volume.array, expected)
    assert doc.key == f"{src}#1" and window.viewer.document is doc
    listed = window.browser.tree.findItems("volume 2 of 2", Qt.MatchFlag.MatchContains | Qt.MatchFlag.MatchRecursive)
    assert len(listed) == 1 and listed[0].font(0).bold()


def test_the_open_dialog_lists_dicom_files_without_a_suffix_and_pictures(qtbot, window, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("IM0001", "1.2.840.113619.2.55.3.604688119", "scan.nii.gz", "slice.png", "photo.JPG",
                 "notes.txt", "report.pdf"):
        (folder / name).write_bytes(b"x")
    window.settings.last_folder = str(folder)
    seen: list[str] = []

    def look_and_close():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            QTimer.singleShot(50, look_and_close)
            return
        view = dialog.findChild(QListView, "listView")
        model = view.model()

        def names():
            root = view.rootIndex()
            return sorted(model.index(r, 0, root).data() for r in range(model.rowCount(root)))
        try:
            qtbot.waitUntil(lambda: len(names()) >= 5, timeout=5000)
        finally:                                             # whatever it lists, the dialog closes
            seen.extend(names())
            dialog.reject()

    QTimer.singleShot(50, look_and_close)
    window.choose_file()
    assert seen == sorted(["IM0001", "1.2.840.113619.2.55.3.604688119", "scan.nii.gz", "slice.png", "photo.JPG"])


def test_the_export_dialog_never_starts_in_the_install_folder(qtbot, window, ct_file, wait_loaded, monkeypatch):
    window.open_paths([str(ct_file)])
    wait_loaded(window)
    window.settings.last_folder = str(about.DEMO_DIR)        # the first launch opened the demo study
    starts = []

    def answer(_parent, _caption, start, *_args, **_kwargs):
        starts.append(Path(start).parent)
        return "", ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer)
    window.choose_export()
    window.choose_screenshot()
    assert starts == [Path.home(), Path.home()]
    window.settings.last_folder = str(ct_file.parent)        # a folder of the user's: kept
    window.choose_export()
    assert starts[-1] == ct_file.parent


def test_a_file_promising_more_voxels_than_it_holds_is_refused_naming_it(qtbot, window, tmp_path):
    header = nibabel.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.int16)
    lying = tmp_path / "lying.nii"
    lying.write_bytes(header.binaryblock + bytes(4) + b"\1" * 8192)
    window.open_paths([str(lying)])
    qtbot.waitUntil(lambda: any("lying.nii" in line for line in window.log.lines), timeout=10000)
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert boxes and str(lying) in boxes[-1].text() and "promises 2.0 GiB" in boxes[-1].text()
    assert window.workspace.documents == []


def test_closing_a_volume_in_the_studies_tree_frees_its_memory(qtbot, window, study_folder, wait_loaded):
    window.open_paths([str(study_folder)])
    ct = wait_loaded(window)
    t2_entry = next(e for e in window.browser.entries() if e.modality == "T2")
    window.load_entry(t2_entry)
    t2 = wait_loaded(window, 2)
    window.comparison.set_inputs(t2, ct)
    gone = weakref.ref(t2.volume)
    item = window.browser.tree.findItems("T2.nii.gz", Qt.MatchFlag.MatchRecursive)[0]
    assert item.font(0).bold()
    close = next(a for a in window.browser.context_menu(item).actions() if a.text().startswith("Close"))
    del t2
    close.trigger()
    assert [d.volume.name for d in window.workspace.documents] == ["CT.nii.gz"]
    assert window.viewer.document is ct and not item.font(0).bold()
    assert window.synthesis.document is ct
    assert all(p.findText("T2.nii.gz (T2)") < 0 for p in window.comparison.pickers.values())
    qtbot.waitUntil(lambda: window.runner.running == 0, timeout=20000)
    gc.collect()
    assert gone() is None                                    # nothing holds the closed volume
    assert not any(a.text().startswith("Close") for a in window.browser.context_menu(item).actions())
    ct_item = window.browser.tree.findItems("CT.nii.gz", Qt.MatchFlag.MatchRecursive)[0]
    next(a for a in window.browser.context_menu(ct_item).actions() if a.text().startswith("Close")).trigger()
    assert window.workspace.documents == [] and window.viewer.document is None
    assert window.viewer.views[Plane.AXIAL].geometry is None


@pytest.fixture
def app_logging():
    """The app's logging, as ``application.run`` sets it up; the test's handlers are removed after."""
    from app.application import configure_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield configure_logging
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_a_handled_error_prints_no_traceback_and_the_log_file_keeps_it(qtbot, window, tmp_path, capfd, app_logging):
    log_file = app_logging(tmp_path / "logs")
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    window.open_paths([str(bad)])
    qtbot.waitUntil(lambda: any("truncated.nii.gz" in line for line in window.log.lines), timeout=10000)
    assert "Traceback" not in capfd.readouterr().err
    text = log_file.read_text(encoding="utf-8")
    assert "truncated.nii.gz" in text and "Traceback" in text and "DEBUG" in text
