"""The comparison view: the metrics it shows are the engine's for the same arrays, beside the same
metrics of the "do nothing" baseline (the source, histogram-matched) with a verdict; panels are
linked in slice and zoom; checkerboard and fade blend synthetic and reference; clicking the
per-slice plot jumps to that slice; metrics export as CSV; "Compare with…" from the browser."""
import csv

import numpy as np
import pytest
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtTest import QTest

from app.main_window import MainWindow
from app.settings import Settings
from app.state.geometry import Plane
from app.views.metrics_panel import format_value
from engine import modalities
from engine.evaluation import metrics


@pytest.fixture
def window(qtbot):
    win = MainWindow(Settings())
    qtbot.addWidget(win)
    win.resize(1500, 950)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture
def pair(tmp_path, phantom, write_nifti):
    """A reference CT and a synthetic CT (so marked in its header) with noise and a bias, on the same grid."""
    from engine import io

    ref = phantom()
    rng = np.random.default_rng(7)
    syn = write_nifti(tmp_path / "sub" / "sCT.nii.gz", ref + 25.0 + rng.normal(0, 40, ref.shape).astype(np.float32))
    io.save(io.load(syn).replace(synthetic=True, derived_from="CBCT"), syn)
    return syn, write_nifti(tmp_path / "sub" / "CT.nii.gz", ref)


def compared(qtbot, window, wait_loaded, syn_path, ref_path):
    window.open_paths([str(syn_path)])
    syn = wait_loaded(window, 1)
    window.open_paths([str(ref_path)])
    ref = wait_loaded(window, 2)
    window.comparison.set_inputs(syn, ref)
    window.tabs.setCurrentWidget(window.comparison)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    return syn, ref, window.comparison.model.result


def test_the_metrics_shown_are_the_engines_for_the_same_arrays(qtbot, window, pair, wait_loaded):
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    assert syn.synthetic and not ref.synthetic
    mask = modalities.body_mask(ref.volume.array, "CT")
    expected = metrics.evaluate(syn.volume.array, ref.volume.array, "CT", mask=mask)
    assert result.evaluation.whole == expected.whole and result.evaluation.body == expected.body
    for key in ("psnr", "ssim", "mae"):
        np.testing.assert_array_equal(result.evaluation.per_slice[key], expected.per_slice[key])
    table = window.comparison.metrics.table
    for row, scores in enumerate((expected.body, expected.whole)):          # the synthetic's rows
        shown = [table.item(row, col).text() for col in range(3)]
        assert shown == [format_value(scores.psnr), format_value(scores.ssim), format_value(scores.mae)]
    assert table.horizontalHeaderItem(2).text() == "MAE (HU)"
    assert table.verticalHeaderItem(0).text().startswith("synthetic")
    assert 20 < expected.body.mae < 60     # the bias and the noise, in HU


@pytest.fixture
def source_path(tmp_path, phantom, write_nifti):
    """A CBCT-like source of the pair's reference: 30 HU off, a little noise."""
    rng = np.random.default_rng(3)
    return write_nifti(tmp_path / "sub" / "CBCT.nii.gz", phantom() + 30.0 + rng.normal(0, 5, phantom().shape))


def test_the_do_nothing_baseline_row_shows_the_histogram_matched_sources_scores(qtbot, window, pair, source_path,
                                                                                 wait_loaded):
    from engine.evaluation import histogram_matched

    window.open_paths([str(source_path)])
    src = wait_loaded(window, 1)
    window.open_paths([str(pair[0])])
    syn = wait_loaded(window, 2)
    window.open_paths([str(pair[1])])
    ref = wait_loaded(window, 3)
    window.comparison.set_inputs(syn, ref, src)
    window.tabs.setCurrentWidget(window.comparison)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    result = window.comparison.model.result
    mask = modalities.body_mask(ref.volume.array, "CT")
    matched = histogram_matched(src.volume, ref.volume, mask)
    expected = metrics.evaluate(matched.array, ref.volume.array, "CT", mask=mask)
    assert result.baseline.body == expected.body and result.baseline.whole == expected.whole
    panel = window.comparison.metrics
    table = panel.table
    assert "histogram-matched (do nothing)" in table.verticalHeaderItem(2).text()
    for row, scores in ((2, expected.body), (3, expected.whole)):
        shown = [table.item(row, col).text() for col in range(3)]
        assert shown == [format_value(scores.psnr), format_value(scores.ssim), format_value(scores.mae)]
    # the synthetic (40 HU of noise and a 25 HU bias) is worse than the source only 30 HU off
    assert expected.body.mae < result.evaluation.body.mae
    assert panel.verdict.isVisible() and panel.verdict.text().startswith("Worse than doing nothing")
    assert "b01010" in panel.verdict.styleSheet()


def test_without_a_source_the_baseline_row_says_so(qtbot, window, pair, wait_loaded):
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    assert result.baseline is None
    table = window.comparison.metrics.table
    assert "source not known" in table.item(2, 0).text() and table.columnSpan(2, 0) == 3
    assert "source not known" in window.comparison.metrics.verdict.text()


def test_the_four_panels_are_linked_and_the_synthetic_one_is_marked(qtbot, window, pair, wait_loaded):
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    views = window.comparison.views
    assert views["source"].volume is None
    assert {views[r].k for r in ("synthetic", "reference", "difference")} == {window.viewer.views[Plane.AXIAL].k}
    views["synthetic"].scroll(2)
    assert views["reference"].k == views["difference"].k == views["synthetic"].k == window.viewer.views[Plane.AXIAL].k
    views["synthetic"].viewbox.setRange(QRectF(3, 4, 10, 10), padding=0)
    qtbot.wait(50)
    a, b = views["synthetic"].viewbox.viewRange(), views["reference"].viewbox.viewRange()
    assert np.allclose(a, b, atol=0.2)          # equal up to the panels' pixel sizes (locked aspect)
    assert views["synthetic"].banner.isVisible() and not views["reference"].banner.isVisible()
    assert views["synthetic"].display is views["reference"].display          # window/level linked per modality
    views["reference"].display.apply(next(p for p in syn.presets if p.name == "Bone"))
    assert tuple(views["synthetic"].image.levels) == pytest.approx((-500.0, 1300.0))
    assert views["difference"].display.level == 0.0


def test_checkerboard_and_fade_blend_synthetic_and_reference(qtbot, window, pair, wait_loaded):
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    view = window.comparison.views["synthetic"]
    g, k = view.geometry, view.k
    s_img, r_img = g.slice_image(result.synthetic.array, k), g.slice_image(result.reference.array, k)
    window.comparison.blend.setCurrentText("Fade to reference")
    window.comparison.fade.setValue(100)
    np.testing.assert_allclose(view.image.image, r_img, atol=1e-3)
    window.comparison.fade.setValue(0)
    np.testing.assert_allclose(view.image.image, s_img, atol=1e-3)
    window.comparison.blend.setCurrentText("Checkerboard with reference")
    shown = view.image.image
    from_syn = np.isclose(shown, s_img, atol=1e-3) & ~np.isclose(s_img, r_img, atol=1e-3)
    from_ref = np.isclose(shown, r_img, atol=1e-3) & ~np.isclose(s_img, r_img, atol=1e-3)
    assert from_syn.mean() > 0.3 and from_ref.mean() > 0.3
    assert "checkerboard" in view.title_label.toolTip()


def test_clicking_the_per_slice_plot_jumps_to_that_slice(qtbot, window, pair, wait_loaded):
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    panel = window.comparison.metrics
    n = len(result.evaluation.per_slice["ssim"])
    assert panel.curve.getData()[0].tolist() == list(range(n))
    target = 3
    qtbot.waitExposed(panel.plot)
    vb = panel.plot.getPlotItem().getViewBox()
    y = float(np.nanmean(result.evaluation.per_slice["ssim"]))
    point = panel.plot.mapFromScene(vb.mapViewToScene(QPointF(target, y)))
    QTest.mouseClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, point)
    qtbot.waitUntil(lambda: window.comparison.views["synthetic"].k == target, timeout=5000)
    assert window.comparison.views["reference"].k == target
    assert window.viewer.views[Plane.AXIAL].k == target                    # the main viewer follows
    assert panel.marker.value() == target


def test_metrics_export_as_csv(qtbot, window, pair, wait_loaded, tmp_path):
    from app.export import write_metrics_csv

    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    out = write_metrics_csv(result, tmp_path / "out" / "metrics.csv")
    rows = list(csv.DictReader(out.open()))
    whole = next(r for r in rows if r["scope"] == "whole")
    assert float(whole["ssim_x100"]) == pytest.approx(result.evaluation.whole.ssim)
    assert float(whole["mae"]) == pytest.approx(result.evaluation.whole.mae) and whole["unit"] == "HU"
    assert sum(r["scope"] == "slice" for r in rows) == result.synthetic.shape[0]
    shot = tmp_path / "out" / "comparison.png"
    window.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_compare_with_from_the_browser(qtbot, window, study_folder, wait_loaded):
    window.open_paths([str(study_folder)])
    active = wait_loaded(window)
    other = next(e for e in window.browser.entries() if e.key != active.key)
    window.browser.compare_requested.emit(other)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    assert window.tabs.currentWidget() is window.comparison
    assert window.comparison.pickers["synthetic"].currentData() is active
    assert window.comparison.pickers["reference"].currentData().key == other.key
    reference = window.comparison.pickers["reference"].currentData().volume
    assert {active.volume.modality, reference.modality} == {"CT", "T2"}       # unlike: shown, and said to mean nothing
    assert any(f"its modality is {reference.modality}" in note and "mean nothing" in note
               for note in window.comparison.model.result.notes)


def test_the_per_slice_curve_follows_the_acquisition_axis(qtbot, phantom):
    from app.state.cursor import Cursor
    from app.state.workspace import Workspace
    from app.views.comparison_view import ComparisonView
    from app.workers import TaskRunner
    from engine.io import Volume

    ws, cursor, runner = Workspace(), Cursor(), TaskRunner()
    view = ComparisonView(ws, cursor, runner)
    qtbot.addWidget(view)
    ref = Volume(phantom(), spacing=(3.0, 1.0, 1.0), modality="CT", unit="HU", name="CT")   # thick along x
    syn = ws.add(ref.with_array(ref.array + 10, name="sCT"), synthetic=True)
    view.set_inputs(syn, ws.add(ref))
    qtbot.waitUntil(lambda: view.model.result is not None, timeout=30000)
    result = view.model.result
    assert result.slice_axis == 2 and len(result.evaluation.per_slice["mae"]) == ref.shape[2]
    view.plane.setCurrentText("Sagittal")                   # the planes through index x
    view.jump_to_slice(4)
    index = np.linalg.solve(ref.index_to_lps(), np.append(cursor.position, 1.0))
    assert round(index[0]) == 4 and view.metrics.marker.value() == 4
    assert view.views["synthetic"].k == view.views["reference"].k == 4
    runner.shutdown()


def test_the_difference_map_has_a_colour_bar_in_physical_units(qtbot, window, pair, wait_loaded):
    view = window.comparison
    assert not view.colour_bar_view.isVisible()                     # nothing compared yet
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    difference = view.views["difference"]
    assert view.colour_bar_view.isVisible()
    assert view.colour_bar.levels() == pytest.approx(difference.display.levels)
    assert "synthetic − reference (HU)" in view.colour_bar.axis.labelText
    difference.display.set_window(10.0, 300.0)                       # a drag or preset on the map: the bar follows
    assert view.colour_bar.levels() == pytest.approx((-140.0, 160.0))
    window.comparison.model.set_result(None)
    assert not view.colour_bar_view.isVisible()


def synthetic_of(source, modality: str = "CT"):
    """What a synthesis hands the window: a synthetic volume carrying its input's identity."""
    return source.volume.with_array(source.volume.array + 5.0, modality=modality, unit="HU", synthetic=True,
                                    derived_from=source.volume.modality, name=f"synthetic {modality}", source="")


def test_after_synthesis_only_a_scan_of_the_same_subject_is_compared_unasked(qtbot, window, phantom, wait_loaded):
    from engine.io import Volume

    identity = {"PatientID": "P1", "FrameOfReferenceUID": "1.2.1", "SeriesInstanceUID": "1.2.1.1"}
    ws = window.workspace
    cbct = ws.add(Volume(phantom(), modality="CBCT", unit="HU", name="CBCT", dicom=identity))
    other = ws.add(Volume(phantom(), modality="CT", unit="HU", name="CT of P2",
                          dicom={"PatientID": "P2", "FrameOfReferenceUID": "1.2.1", "SeriesInstanceUID": "1.2.2.1"}))
    window.synthesis.synthesis_finished.emit(cbct, synthetic_of(cbct), "auto")
    assert window.comparison.model.result is None and window.comparison.chosen_test() is None
    assert window.tabs.currentWidget() is not window.comparison
    assert any("Not compared: no open CT scan is known to be" in line for line in window.log.lines)
    own = ws.add(Volume(phantom(), modality="CT", unit="HU", name="planning CT of P1",
                        dicom={"PatientID": "P1", "FrameOfReferenceUID": "1.2.9", "SeriesInstanceUID": "1.2.9.1"}))
    window.synthesis.synthesis_finished.emit(cbct, synthetic_of(cbct), "auto")
    assert window.comparison.model.result is None                   # another frame, nothing relating them: not scored
    assert any("Not compared: planning CT of P1 was acquired in another frame of reference" in line
               for line in window.log.lines)
    from engine.io.dicom_reg import StoredRegistration

    ws.add_registrations([StoredRegistration("/export/REG1.dcm", "1.2.9", {"1.2.9": np.eye(4), "1.2.1": np.eye(4)})])
    window.synthesis.synthesis_finished.emit(cbct, synthetic_of(cbct), "auto")
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    assert window.comparison.pickers["reference"].currentData() is own is not other
    assert any("placed in the other scan's by the spatial registration REG1.dcm" in note
               for note in window.comparison.model.result.notes)


def test_a_failed_comparison_clears_the_previous_numbers_and_says_why(qtbot, window, pair, wait_loaded):
    from engine.io import Volume

    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    far = window.workspace.add(Volume(ref.volume.array, origin=(900.0, 0.0, 0.0), modality="CT", unit="HU",
                                      name="elsewhere"))
    with qtbot.waitSignal(window.comparison.failed, timeout=30000) as failed:
        window.comparison.set_inputs(syn, far)
    assert "does not overlap" in failed.args[0]
    assert window.comparison.model.result is None
    assert window.comparison.metrics.table.item(0, 0).text() == "" and window.comparison.metrics.verdict.text() == ""
    assert any(line.startswith("Cannot compare:") for line in window.log.lines)


def test_only_what_the_reference_covers_is_scored(qtbot, window, pair, wait_loaded):
    from engine.io import Volume

    syn, ref, _result = compared(qtbot, window, wait_loaded, *pair)
    half = ref.volume.shape[2] // 2
    slab = window.workspace.add(Volume(ref.volume.array[:, :, :half], spacing=ref.volume.spacing,
                                       origin=ref.volume.origin, direction=ref.volume.direction, modality="CT",
                                       unit="HU", name="half CT"))
    window.comparison.set_inputs(syn, slab)
    qtbot.waitUntil(lambda: (r := window.comparison.model.result) is not None and r.reference.name != ref.volume.name
                    and r.coverage < 0.9, timeout=30000)
    result = window.comparison.model.result
    covered = np.zeros(syn.volume.shape, bool)
    covered[:, :, :half] = True
    expected = metrics.evaluate(syn.volume.array, np.where(covered, ref.volume.array, -1024.0), "CT",
                                mask=modalities.body_mask(ref.volume.array, "CT") & covered, covered=covered)
    assert result.evaluation.whole.mae == pytest.approx(expected.whole.mae, rel=1e-5)
    assert 20 < result.evaluation.whole.mae < 60                  # the bias and noise, not the missing half
    assert np.all(result.difference.array[:, :, half + 1:] == 0.0)
    assert any("only that part is scored" in note for note in result.notes)


def test_an_mr_difference_is_on_normalised_intensities(qtbot, window, phantom, wait_loaded):
    from engine.io import Volume

    t2 = np.where(phantom() > -500, 1000.0 - phantom(), 0.0).astype(np.float32)
    ws = window.workspace
    ref = ws.add(Volume(t2, modality="T2", unit="a.u.", name="T2"))
    syn = ws.add(Volume(3.0 * t2, modality="T2", unit="a.u.", name="synthetic T2"), synthetic=True)  # another scale
    window.comparison.set_inputs(syn, ref)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    result = window.comparison.model.result
    assert result.evaluation.unit == result.difference.unit == metrics.RELATIVE_MAE_UNIT
    assert np.abs(result.difference.array).max() < 1e-3 and result.evaluation.whole.mae < 1e-3
    assert window.comparison.metrics.table.horizontalHeaderItem(2).text() == f"MAE ({metrics.RELATIVE_MAE_UNIT})"


def test_compare_with_from_the_browser_scores_a_synthetics_baseline(qtbot, window, study_folder, wait_loaded):
    window.open_paths([str(study_folder)])
    acquired = wait_loaded(window)
    made = window.workspace.add(synthetic_of(acquired, "T2" if acquired.volume.modality == "CT" else "CT"),
                                synthetic=True, source=acquired)
    window.workspace.activate(made)
    other = next(e for e in window.browser.entries() if e.key != acquired.key and e.modality == made.volume.modality)
    window.browser.compare_requested.emit(other)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    assert window.comparison.pickers["source"].currentData() is acquired
    assert window.comparison.model.result.baseline is not None


def test_after_synthesis_one_grid_or_two_equally_likely_scans_are_left_to_the_user(qtbot, window, phantom):
    from engine.io import Volume

    ws = window.workspace
    t1 = ws.add(Volume(phantom(), modality="T1", unit="a.u.", name="T1 of BraTS 001"))
    ws.add(Volume(phantom(), modality="T2", unit="a.u.", name="T2 of BraTS 002"))        # one atlas grid, no more
    window.synthesis.synthesis_finished.emit(t1, synthetic_of(t1, "T2"), "auto")
    assert window.comparison.model.result is None
    assert "no open T2 scan is known to be T1 of BraTS 001's subject" in window.log.lines[-1]
    identity = {"PatientID": "P1", "FrameOfReferenceUID": "1.2.1", "SeriesInstanceUID": "1.2.1.1"}
    cbct = ws.add(Volume(phantom(), modality="CBCT", unit="HU", name="CBCT", dicom=identity))
    for k in (1, 2):
        ws.add(Volume(phantom(), modality="CT", unit="HU", name=f"CT {k}", dicom={**identity, "SeriesInstanceUID": f"9.{k}"}))
    window.synthesis.synthesis_finished.emit(cbct, synthetic_of(cbct), "auto")
    assert window.comparison.model.result is None
    assert "2 open CT scans are CBCT's subject's" in window.log.lines[-1]


def _planning_export(export, reg, phantom):
    """A planning CT (the CT scanner's frame) and a synthetic CT made from a linac's CBCT (the linac's
    frame, 25 HU above the CT) written to ``export``, the REG relating them to ``reg``."""
    from dicom_objects import write_registration

    from engine import io
    from engine.io import Volume

    planning, daily = "1.2.826.0.1.3680043.10.4.1", "1.2.826.0.1.3680043.10.4.2"
    c, s = np.cos(0.2), np.sin(0.2)
    matrix = np.array([[c, -s, 0, 12.0], [s, c, 0, -7.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])      # linac → CT scanner
    identity = {"PatientID": "RT-7", "StudyInstanceUID": "1.2.826.0.1.3680043.10.4.3"}
    ct = Volume(phantom(), spacing=(1.0, 1.0, 2.5), modality="CT", unit="HU", name="planning CT",
                dicom={**identity, "FrameOfReferenceUID": planning})
    rotation, shift = matrix[:3, :3], matrix[:3, 3]
    synthetic = ct.replace(array=ct.array + 25.0, synthetic=True, derived_from="CBCT", name="sCT",
                           origin=tuple(rotation.T @ (np.asarray(ct.origin) - shift)), direction=tuple(rotation.T.ravel()),
                           dicom={**identity, "FrameOfReferenceUID": daily})
    io.save(ct, export / "ct", description="planning CT")
    io.save(synthetic, export / "sct", description="sCT")
    return write_registration(reg, planning, {daily: matrix})


def _compare_the_export(qtbot, window, export, wait_loaded):
    """Open ``export``'s two series and compare the synthetic CT with the planning CT: the result."""
    from engine import io

    window.open_paths([str(export)])
    wait_loaded(window, 1)
    for entry in io.scan(export).entries:
        window.load_entry(entry)
    wait_loaded(window, 2)
    syn = next(d for d in window.workspace.documents if d.synthetic)
    ref = next(d for d in window.workspace.documents if not d.synthetic)
    window.comparison.model.result = None
    window.comparison.set_inputs(syn, ref)
    qtbot.waitUntil(lambda: window.comparison.model.result is not None, timeout=30000)
    return window.comparison.model.result


def test_a_planning_ct_in_another_frame_is_placed_by_the_registration_the_opened_folder_held(qtbot, window, tmp_path,
                                                                                            phantom, wait_loaded):
    """An export folder with the planning CT, a synthetic CT made from a linac's CBCT and the REG relating
    them: opening it lists the registration in the Log, and the comparison places the CT by it (all of
    the synthetic grid covered, the 25 HU offset found)."""
    _planning_export(tmp_path / "export", tmp_path / "export" / "REG0001.dcm", phantom)
    result = _compare_the_export(qtbot, window, tmp_path / "export", wait_loaded)
    assert len(window.workspace.registrations) == 1
    assert any("Spatial registration REG0001.dcm" in line for line in window.log.lines)
    assert result.coverage == pytest.approx(1.0) and any("placed in the other scan's by the spatial registration "
                                                         "REG0001.dcm" in n for n in result.notes)
    assert result.evaluation.whole.mae == pytest.approx(25.0, abs=1.0)


def test_a_registration_opened_alone_places_the_reference_of_the_next_comparison(qtbot, window, tmp_path, phantom,
                                                                                wait_loaded, monkeypatch):
    """A REG exported apart from the scans (another folder) could not be given to the app: opening it
    was refused as "not a supported image", and the comparison could only score the CT as it lay."""
    from dicom_objects import write_registration

    reg = _planning_export(tmp_path / "export", tmp_path / "registrations" / "REG0001.dcm", phantom)
    before = _compare_the_export(qtbot, window, tmp_path / "export", wait_loaded)
    assert any("open the REG, or the patient's folder holding it" in n for n in before.notes)
    errors: list[str] = []
    monkeypatch.setattr(window, "report_error", errors.append)
    write_registration(reg.parent / "scaled.dcm", "1.2.3.100", {"1.2.3.200": np.diag([2.0, 2.0, 2.0, 1.0])})
    window.open_paths([str(reg.parent)])                            # a folder of REGs: one usable, one not rigid
    qtbot.waitUntil(lambda: len(window.workspace.registrations) == 1, timeout=10000)
    assert errors == [] and any(line.startswith("Skipped ") and "scaled.dcm" in line for line in window.log.lines)
    assert "1 spatial registration(s) added" in window.status.currentMessage()
    assert len(window.workspace.documents) == 2 and str(reg.parent) in window.settings.recent_files
    qtbot.waitUntil(lambda: window.comparison.model.result is not before, timeout=30000)   # scored again, placed
    after = window.comparison.model.result
    assert any("by the spatial registration REG0001.dcm" in n for n in after.notes)
    assert after.evaluation.whole.mae == pytest.approx(25.0, abs=1.0)


def test_in_a_small_window_the_notes_scroll_below_the_table_and_a_row_note_widens_no_column(qtbot, window, pair,
                                                                                          wait_loaded):
    """At 1065 × 796 (xvfb's screen) long notes had been drawn over the metrics table, and the baseline row's
    note, spanning the row, had widened the PSNR column to its own length."""
    window.resize(1065, 796)
    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    panel = window.comparison.metrics
    panel.notes.setText(panel.notes.text() + "\nA note of the comparison." * 20)
    qtbot.wait(200)
    table_bottom = panel.table.mapTo(panel, panel.table.rect().bottomLeft()).y()
    notes_area = panel.notes.parentWidget().parentWidget()          # the scroll area's viewport's parent
    assert notes_area.mapTo(panel, notes_area.rect().topLeft()).y() > table_bottom
    assert notes_area.height() < panel.notes.height()               # it scrolls instead
    assert "source not known" in panel.table.item(2, 0).text()
    assert panel.table.columnWidth(0) < panel.table.fontMetrics().horizontalAdvance(result.baseline_note) / 2


def test_roi_statistics_give_each_volumes_values_inside_it_on_the_slice_shown(qtbot, window, pair, wait_loaded):
    """A physicist reads a region's HU in the synthetic CT against the planning CT: the line under the
    panels gives each volume's mean ± SD there, the engine's arrays' own, and follows the slice."""
    from app.state.roi import Rect, roi_stats

    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    view = window.comparison
    assert not view.roi_label.isVisible()
    view.roi_button.click()
    assert view.roi is not None and view.roi_label.isVisible()
    geometry = view.views["synthetic"].geometry
    width, height = geometry.extent
    view.roi.setPos((0.3 * width, 0.3 * height))
    view.roi.setSize((0.4 * width, 0.4 * height))
    rect, k = view.roi_rect(), view.views["synthetic"].k
    assert rect == Rect(0.3 * width, 0.3 * height, 0.4 * width, 0.4 * height)
    synthetic = roi_stats(geometry, result.synthetic, k, rect)
    reference = roi_stats(geometry, result.reference, k, rect)
    difference = roi_stats(geometry, result.difference, k, rect)
    assert difference.mean == pytest.approx(synthetic.mean - reference.mean, abs=1e-3)
    assert 10 < difference.mean < 40                                     # the pair's 25 HU offset, with noise
    text = view.roi_label.text()
    assert f"{synthetic.voxels} voxels" in text and f"slice {k + 1}" in text
    assert f"synthetic {round(synthetic.mean)} ± {round(synthetic.sd)} HU" in text
    assert f"reference {round(reference.mean)} ± {round(reference.sd)} HU" in text
    assert f"difference {round(difference.mean)} ± {round(difference.sd)} HU" in text
    outline = view._outlines["reference"].rect()
    assert (outline.x(), outline.width()) == pytest.approx((rect.u, rect.width))    # drawn on the other panels too
    assert view._outlines["reference"].isVisible() and not view._outlines["source"].isVisible()   # no source chosen
    view.views["synthetic"].scroll(1)                                    # another slice: its values
    assert f"slice {view.views['synthetic'].k + 1}," in view.roi_label.text() and view.views["synthetic"].k != k
    view.roi_button.click()
    assert view.roi is None and not view.roi_label.isVisible() and view._outlines == {}


def test_the_roi_follows_a_new_pair_a_plane_and_the_reference_s_coverage(qtbot, window, pair, wait_loaded):
    """Comparing a smaller pair with the ROI on a high slice had raised IndexError (the old panels' slice on
    the new arrays); beyond the reference it had reported the padding (−1000 HU) and a zero difference."""
    from engine.io import Volume

    syn, ref, result = compared(qtbot, window, wait_loaded, *pair)
    view = window.comparison
    view.roi_button.click()
    for _ in range(result.synthetic.shape[0]):
        view.views["synthetic"].scroll(1)                             # the top slice
    half = ref.volume.shape[2] // 2                                    # a reference covering x < half only
    slab = window.workspace.add(Volume(ref.volume.array[:, :, :half], spacing=ref.volume.spacing,
                                       origin=ref.volume.origin, direction=ref.volume.direction, modality="CT",
                                       unit="HU", name="half CT"))
    thin = window.workspace.add(syn.volume.replace(array=syn.volume.array[:4], name="four slices"))
    view.set_inputs(thin, slab)
    qtbot.waitUntil(lambda: (r := view.model.result) is not None and r.synthetic.shape[0] == 4, timeout=30000)
    assert f"on slice {view.views['synthetic'].k + 1}," in view.roi_label.text()
    width, height = view.views["synthetic"].geometry.extent
    g = view.views["synthetic"].geometry
    u_half = g.index_to_view(np.array([half - 0.5, 0.0, 0.0]))[0]     # where the reference's data ends on screen
    low, high = (0.0, u_half) if g.col_flip else (u_half, width)        # the part it does not cover
    view.roi.setPos((low + 0.3 * (high - low), 0.4 * height))
    view.roi.setSize((0.4 * (high - low), 0.2 * height))
    text = view.roi_label.text()
    assert "synthetic " in text and "reference: no data here" in text and "difference: no data here" in text
    view.roi.setPos((u_half - 0.2 * (high - low), 0.4 * height))      # across the edge of its data
    assert "(on its " in view.roi_label.text()                          # half on it: the voxels it has data in
    view.plane.setCurrentIndex(2)                                      # sagittal: the ROI back on the image
    rect, (width, height) = view.roi_rect(), view.views["synthetic"].geometry.extent
    assert 0 <= rect.u and rect.u + rect.width <= width and 0 <= rect.v and rect.v + rect.height <= height
    assert "voxels (mean ± SD): synthetic" in view.roi_label.text()
