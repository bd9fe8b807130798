"""The three-plane viewer as a user drives it: clicks move the linked crosshair (across planes and
across viewers of different grids), keys and the wheel scroll in patient space, presets and
right-drag set the window (its values shown), the slice position shows in mm, hovering reads the
value in its unit, the mouse schemes, and the picture has the right orientation and aspect."""
import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app.state.cursor import Cursor
from app.state.geometry import Plane
from app.state.workspace import Workspace
from app.views import mouse
from app.views.ortho_viewer import OrthoViewer
from app.views.slice_view import Probe, value_in_unit
from engine.io import load


@pytest.fixture
def shown(qtbot):
    """shown(document, cursor=None) → an OrthoViewer showing it, on screen."""
    def make(doc, cursor=None):
        viewer = OrthoViewer(cursor or Cursor())
        qtbot.addWidget(viewer)
        viewer.resize(900, 700)
        viewer.show()
        qtbot.waitExposed(viewer)
        viewer.show_document(doc)
        return viewer
    return make


@pytest.fixture
def ct_doc(ct_file):
    return Workspace().add(load(ct_file), key=str(ct_file))


def widget_point(view, u: float, v: float) -> QPoint:
    """Where view millimetres (u, v) of a slice view are on its viewport."""
    return view.mapFromScene(view.viewbox.mapViewToScene(QPointF(u, v)))


def test_a_click_moves_the_crosshair_in_all_three_planes(shown, ct_doc):
    viewer = shown(ct_doc)
    axial, coronal, sagittal = (viewer.views[p] for p in (Plane.AXIAL, Plane.CORONAL, Plane.SAGITTAL))
    g = axial.geometry
    col, row = 4, 9                                  # a pixel of the axial image
    u, v = (col + 0.5) * g.pixel_size[0], (row + 0.5) * g.pixel_size[1]
    QTest.mouseClick(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, widget_point(axial, u, v))
    index = g.view_to_index(u, v, axial.k)
    np.testing.assert_allclose(viewer.cursor.position, g.index_to_lps(index), atol=0.5)
    assert coronal.k == round(index[coronal.geometry.normal_axis])
    assert sagittal.k == round(index[sagittal.geometry.normal_axis])
    cu, _, _ = coronal.geometry.index_to_view(coronal.geometry.lps_to_index(viewer.cursor.position))
    assert coronal.vline.value() == pytest.approx(cu)


def test_keys_and_the_wheel_scroll_slices(shown, ct_doc):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    start = axial.k
    axial.setFocus()
    QTest.keyClick(axial, Qt.Key.Key_Up)
    assert axial.k == start + 1
    QTest.keyClick(axial, Qt.Key.Key_PageDown)
    assert axial.k == max(0, start + 1 - 10)
    k = axial.k
    centre = QPointF(axial.viewport().rect().center())
    wheel = QWheelEvent(centre, QPointF(axial.viewport().mapToGlobal(centre.toPoint())), QPoint(0, 0), QPoint(0, 120),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(axial.viewport(), wheel)
    assert axial.k == k + 1


def test_crosshair_links_two_viewers_of_different_grids(shown, ct_file, tmp_path, write_nifti, phantom):
    fine = Workspace().add(load(ct_file))
    # the same physical space on an isotropic LPS grid: index axes and spacing both differ
    coarse_file = write_nifti(tmp_path / "iso.nii.gz", np.zeros((26, 30, 14), np.float32), spacing=(2.0, 1.5, 2.0),
                              origin=(-30.0, -20.0, -30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    coarse = Workspace().add(load(coarse_file))
    cursor = Cursor()
    first, second = shown(fine, cursor), shown(coarse, cursor)
    axial = first.views[Plane.AXIAL]
    axial.setFocus()
    for _ in range(3):
        QTest.keyClick(axial, Qt.Key.Key_Down)
    sagittal = first.views[Plane.SAGITTAL]
    g = sagittal.geometry
    sagittal.point_at(QPointF(*g.index_to_view(np.array([3.0, 10.0, 6.0]))[:2]))
    lps = cursor.position
    for viewer in (first, second):
        for view in viewer.views.values():
            g = view.geometry
            index = g.lps_to_index(lps)
            assert view.k == int(np.clip(np.rint(index[g.normal_axis]), 0, g.n_slices - 1))
            u, v, _ = g.index_to_view(index)
            assert (view.vline.value(), view.hline.value()) == pytest.approx((u, v))
    z_of_second_axial = second.views[Plane.AXIAL].geometry.index_to_lps(
        np.array([0, 0, second.views[Plane.AXIAL].k]))[2]
    assert abs(z_of_second_axial - lps[2]) <= 1.0 + 1e-6       # within half of its 2 mm slices


def test_a_window_preset_changes_the_displayed_levels(shown, ct_doc):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    assert tuple(axial.image.levels) == pytest.approx((-160.0, 240.0))       # default: soft tissue
    row = viewer.presets.findText("Brain")
    viewer.presets.setCurrentIndex(row)
    viewer.presets.activated.emit(row)
    for view in viewer.views.values():
        assert tuple(view.image.levels) == pytest.approx((0.0, 80.0))
    lung = viewer.presets.findText("Lung")
    viewer.presets.activated.emit(lung)
    assert tuple(axial.image.levels) == pytest.approx((-1350.0, 150.0))


def test_right_drag_changes_the_window_and_the_preset_reads_custom(shown, ct_doc):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    before = tuple(axial.image.levels)
    start = axial.viewport().rect().center()
    QTest.mousePress(axial.viewport(), Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, start)
    for step in range(1, 6):
        QTest.mouseMove(axial.viewport(), start + QPoint(12 * step, 6 * step))
    QTest.mouseRelease(axial.viewport(), Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier,
                       start + QPoint(60, 30))
    lo, hi = axial.image.levels
    assert hi - lo > before[1] - before[0]
    assert viewer.presets.currentText() == "Custom"


def test_hovering_reads_the_voxel_value_in_hounsfield_units(shown, ct_doc):
    viewer = shown(ct_doc)
    probes = []
    viewer.probed.connect(probes.append)
    axial = viewer.views[Plane.AXIAL]
    g = axial.geometry
    centre_col, centre_row = g.image_shape[1] // 2, g.image_shape[0] // 2
    u, v = (centre_col + 0.5) * g.pixel_size[0], (centre_row + 0.5) * g.pixel_size[1]
    QTest.mouseMove(axial.viewport(), widget_point(axial, u, v))
    qprobe = [p for p in probes if p is not None]
    assert qprobe, "no value was read under the mouse"
    x, y, z = np.rint(g.view_to_index(u, v, axial.k)).astype(int)
    probe = qprobe[-1]
    assert probe.value == pytest.approx(float(ct_doc.volume.array[z, y, x]))
    assert probe.unit == "HU" and f"value {round(probe.value)} HU" in probe.text()


def test_orientation_labels_aspect_and_the_flip_reach_the_screen(shown, ct_doc):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    assert {e: axial.edge_labels[e].text() for e in axial.edge_labels} == \
        {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert viewer.views[Plane.SAGITTAL].edge_labels["left"].text() == "A"
    rect = axial.image.mapRectToView(axial.image.boundingRect())
    width, height = axial.geometry.extent                      # 30 × 0.8 mm by 36 × 1.2 mm
    assert (rect.width(), rect.height()) == pytest.approx((30 * 0.8, 36 * 1.2))
    assert (rect.width(), rect.height()) == pytest.approx((width, height))
    axial.scroll(ct_doc.volume.shape[0] // 2 - axial.k)        # the marker's slice
    shown_image = axial.image.image
    marker_cols = np.nonzero((shown_image == 300.0).any(axis=0))[0]
    # the marker sits at index x > centre, which in this flipped volume is the patient's right:
    # it must be drawn on the screen's left half, where the "R" label is
    assert marker_cols.size and marker_cols.max() < shown_image.shape[1] / 2


def test_synthetic_volumes_carry_the_overlay(shown, ct_file):
    doc = Workspace().add(load(ct_file), synthetic=True)
    viewer = shown(doc)
    assert all(view.banner.isVisible() for view in viewer.views.values())
    assert "SYNTHETIC" in viewer.views[Plane.AXIAL].banner.text()
    assert "SYNTHETIC" in viewer.title.text()


def test_values_print_in_their_unit_at_a_sensible_precision():
    assert [value_in_unit(v, "HU") for v in (40.37, -1000.0, 1523.5, -0.4)] == ["40 HU", "-1000 HU", "1524 HU", "0 HU"]
    assert [value_in_unit(v, "a.u.") for v in (523.456, 0.0012345, 1234.5, 0.0, 87.96)] == \
        ["523 a.u.", "0.00123 a.u.", "1230 a.u.", "0 a.u.", "88.0 a.u."]
    assert value_in_unit(3.14159, "SUV") == "3.14 SUV" and value_in_unit(12.345, "") == "12.3"
    probe = Probe("T2", np.array([1.0, -2.25, 30.0]), 523.456, "a.u.")
    assert probe.text() == "T2   LPS (1.0, -2.2, 30.0) mm   value 523 a.u."
    assert Probe("CR", np.array([920.0, -0.04, -0.0]), 5.0, "HU").text() == "CR   LPS (920.0, 0.0, 0.0) mm   value 5 HU"


def test_the_window_values_and_the_slice_position_in_mm_are_shown(shown, ct_doc):
    viewer = shown(ct_doc)
    axial, coronal = viewer.views[Plane.AXIAL], viewer.views[Plane.CORONAL]
    assert axial.window_label.text() == "W 400 HU · L 40 HU" and axial.window_label.isVisible()      # soft tissue
    viewer.presets.activated.emit(viewer.presets.findText("Brain"))
    assert {view.window_label.text() for view in viewer.views.values()} == {"W 80 HU · L 40 HU"}
    g = axial.geometry
    z = g.index_to_lps(np.array([0.0, 0.0, axial.k]))[2]
    assert axial.slice_label.text() == f"slice {axial.k + 1} / {g.n_slices} · {'S' if z >= 0 else 'I'} {abs(z):.1f} mm"
    axial.scroll(1)
    assert f"{'S' if z + 2.5 >= 0 else 'I'} {abs(z + 2.5):.1f} mm" in axial.slice_label.text()    # 2.5 mm slices
    index = coronal.geometry.lps_to_index(viewer.cursor.position)
    index[coronal.geometry.normal_axis] = coronal.k                    # the slice shown, where the cursor is
    y = coronal.geometry.index_to_lps(index)[1]
    assert coronal.slice_label.text().endswith(f"{'P' if y >= 0 else 'A'} {abs(y):.1f} mm")


@pytest.mark.parametrize("width", [900, 330, 270, 170])
def test_the_corner_values_never_overlap_each_other_or_the_bottom_letter(shown, ct_doc, width):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    axial.resize(width, 300)
    axial._place_overlays()
    position, window, letter = (label.geometry() for label in (axial.slice_label, axial.window_label,
                                                               axial.edge_labels["bottom"]))
    assert not position.intersects(window) and not position.intersects(letter) and not window.intersects(letter)
    assert all(0 <= r.left() and r.right() < width and 0 <= r.top() and r.bottom() < 300
               for r in (position, window) if r.width() < width)


def test_the_window_of_an_mr_volume_reads_in_three_significant_digits(shown, tmp_path, write_nifti, phantom):
    mr = Workspace().add(load(write_nifti(tmp_path / "T2.nii.gz", np.clip(phantom(), 0, None) * 1.2345)))
    viewer = shown(mr)
    d = mr.display
    assert mr.volume.unit == "a.u." and (d.width, d.level) != (round(d.width), round(d.level))
    assert viewer.views[Plane.AXIAL].window_label.text() == \
        f"W {value_in_unit(d.width, 'a.u.')} · L {value_in_unit(d.level, 'a.u.')}"


@pytest.mark.parametrize("direction", [(-1, 0, 0, 0, -1, 0, 0, 0, -1), (1, 0, 0, 0, 0, 1, 0, -1, 0)],
                         ids=["all axes flipped", "acquired coronally"])
def test_wheel_up_moves_towards_superior_anterior_and_left_whatever_the_acquisition(shown, tmp_path, write_nifti,
                                                                                   phantom, direction):
    doc = Workspace().add(load(write_nifti(tmp_path / "CT.nii.gz", phantom(), spacing=(1.0, 1.5, 2.0),
                                           origin=(0.0, 0.0, 0.0), direction=direction)))
    viewer = shown(doc)

    def shown_at(view, axis: int) -> float:                 # the shown slice's position along the patient axis
        index = view.geometry.lps_to_index(viewer.cursor.position)
        index[view.geometry.normal_axis] = view.k
        return float(view.geometry.index_to_lps(index)[axis])

    for plane, axis, sign in ((Plane.AXIAL, 2, +1), (Plane.CORONAL, 1, -1), (Plane.SAGITTAL, 0, +1)):
        view = viewer.views[plane]
        before = shown_at(view, axis)
        centre = QPointF(view.viewport().rect().center())
        wheel = QWheelEvent(centre, QPointF(view.viewport().mapToGlobal(centre.toPoint())), QPoint(0, 0),
                            QPoint(0, 120), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                            Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(view.viewport(), wheel)
        step = view.geometry.spacing[view.geometry.normal_axis]
        assert sign * (shown_at(view, axis) - before) == pytest.approx(step), plane     # one slice, the patient's way
        view.setFocus()
        QTest.keyClick(view, Qt.Key.Key_Down)
        assert shown_at(view, axis) == pytest.approx(before)


@pytest.fixture
def scheme():
    yield mouse.use_scheme
    mouse.use_scheme(mouse.DEFAULT_SCHEME)


def drag(view, button, start: QPoint, end: QPoint, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    QTest.qWait(QApplication.doubleClickInterval() + 50)     # a press, not the second of a double-click
    QTest.mousePress(view.viewport(), button, modifier, start)
    for step in range(1, 6):
        QTest.mouseMove(view.viewport(), start + (end - start) * step / 5)
    QTest.mouseRelease(view.viewport(), button, modifier, end)


def test_the_slicer_and_ohif_mouse_schemes(shown, ct_doc, scheme):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    centre = axial.viewport().rect().center()
    levels = tuple(axial.image.levels)

    scheme("slicer")                                          # 3D Slicer / ITK-SNAP: middle-drag pans …
    x_range = axial.viewbox.viewRange()[0]
    drag(axial, Qt.MouseButton.MiddleButton, centre, centre + QPoint(40, 0))
    assert axial.viewbox.viewRange()[0][0] < x_range[0] - 1
    width = np.diff(axial.viewbox.viewRange()[0])[0]
    drag(axial, Qt.MouseButton.RightButton, centre, centre + QPoint(0, -60))     # … right-drag zooms
    assert np.diff(axial.viewbox.viewRange()[0])[0] < 0.8 * width and tuple(axial.image.levels) == levels
    before = viewer.cursor.position
    QTest.mouseClick(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     centre + QPoint(15, 10))
    assert not np.allclose(viewer.cursor.position, before)

    scheme("ohif")                                            # OHIF: left-drag sets the window
    before = viewer.cursor.position
    drag(axial, Qt.MouseButton.LeftButton, centre, centre + QPoint(50, 20))
    assert tuple(axial.image.levels) != levels and np.allclose(viewer.cursor.position, before)
    QTest.mouseClick(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier,
                     centre + QPoint(-20, 5))
    assert not np.allclose(viewer.cursor.position, before)    # Shift + click moves the crosshair


def test_the_corner_values_are_placed_again_when_the_slice_text_is_set(shown, ct_doc):
    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    axial.resize(245, 300)                       # a comparison pane's width
    axial.set_content(None, None)                # then content arrives: its slice text is set last
    axial.set_content(ct_doc.volume, ct_doc.display, title="CT")
    for _ in range(3):
        position, window = axial.slice_label.geometry(), axial.window_label.geometry()
        assert axial.slice_label.text() and not position.intersects(window), \
            (axial.slice_label.text(), axial.window_label.text())
        axial.scroll(1)


def test_a_monochrome1_image_is_shown_as_its_scanner_shows_it(shown, ct_doc):
    from app.views.slice_view import GREY, INVERTED_GREY

    viewer = shown(ct_doc)
    axial = viewer.views[Plane.AXIAL]
    assert axial.image.getColorMap() is GREY
    film = ct_doc.volume.replace(dicom={"PhotometricInterpretation": "MONOCHROME1"})   # high values dark
    axial.set_content(film, ct_doc.display, title="CR")
    assert axial.image.getColorMap() is INVERTED_GREY
