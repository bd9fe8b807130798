"""The three-plane viewer as a user drives it: clicks move the linked crosshair (across planes and
across viewers of different grids), keys and the wheel scroll, presets and right-drag set the
window, hovering reads the value in HU, and the picture has the right orientation and aspect."""
import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication
from PySide6.QtTest import QTest

from engine.io import load
from app.state.cursor import Cursor
from app.state.geometry import Plane
from app.state.workspace import Workspace
from app.views.ortho_viewer import OrthoViewer


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
    assert probe.unit == "HU" and f"{probe.value:.6g} HU" in probe.text()


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
