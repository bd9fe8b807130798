"""Export from the window: NIfTI, MHA and a DICOM derived series read back by engine.io with the
same geometry and values; synthetic volumes are marked; a failed export names the path and
leaves nothing behind."""
import numpy as np
import pytest
import SimpleITK as sitk

from engine import io
from app.export import VOLUME_FILTERS, export_path
from app.main_window import MainWindow
from app.settings import Settings
from app.state.scoring import resample_onto
from app.state.workspace import SYNTHETIC_MARK


@pytest.fixture
def window(qtbot, ct_file, wait_loaded):
    win = MainWindow(Settings())
    qtbot.addWidget(win)
    win.open_paths([str(ct_file)])
    wait_loaded(win)
    return win


def export(qtbot, window, path):
    with qtbot.waitSignal(window.exported, timeout=60000) as blocker:
        window.export_active_to(path)
    return blocker.args[0]


def assert_same_geometry(a, b, atol=1e-4):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_exported_files_read_back_with_the_same_geometry(qtbot, window, tmp_path, suffix):
    original = window.workspace.active.volume
    out = tmp_path / "export" / f"copy{suffix}"
    assert export(qtbot, window, out) == str(out)
    back = io.load(out)
    assert_same_geometry(back, original)
    np.testing.assert_array_equal(back.array, original.array)
    assert back.orientation() == original.orientation() == "RPS"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]        # no temporary left behind


def test_a_dicom_series_reads_back_with_the_same_geometry_and_hu(qtbot, window, tmp_path):
    original = window.workspace.active.volume
    out = tmp_path / "export" / "CT_dicom"
    export(qtbot, window, export_path(str(out), "DICOM derived series (folder)"))
    back = io.load(out)
    assert back.modality == "CT" and back.unit == "HU"
    # DICOM stacks slices along row × column, a right-handed frame; this volume's index frame is
    # left-handed (x flipped), so its slices come back in reverse order: the same voxels in space.
    assert back.shape == original.shape and sorted(back.spacing) == pytest.approx(sorted(original.spacing))
    corners = np.array([[i, j, k, 1] for i in (0, 29) for j in (0, 35) for k in (0, 19)], float).T
    lps = lambda v: {tuple(np.round(p, 3)) for p in (v.index_to_lps() @ corners)[:3].T}  # noqa: E731
    assert lps(back) == lps(original)
    on_grid, inside = resample_onto(back, original)
    assert inside.all()
    np.testing.assert_allclose(on_grid.array, original.array, atol=1.0)


def test_a_synthetic_export_is_marked(qtbot, window, tmp_path):
    doc = window.workspace.add(window.workspace.active.volume.replace(name="sCT"), synthetic=True)
    window.workspace.activate(doc)
    out = tmp_path / "sCT_synthetic.nii.gz"
    export(qtbot, window, out)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    assert SYNTHETIC_MARK in reader.GetMetaData("descrip")
    assert io.load(out).name == "sCT_synthetic.nii.gz"
    assert window.workspace.add(io.load(out)).synthetic            # reopened: still synthetic


def test_export_paths_get_the_filters_suffix():
    assert export_path("/x/scan", "NIfTI (*.nii.gz)").name == "scan.nii.gz"
    assert export_path("/x/scan.nii.gz", "NIfTI (*.nii.gz)").name == "scan.nii.gz"
    assert export_path("/x/scan", "MetaImage (*.mha)").name == "scan.mha"
    assert export_path("/x/series", "DICOM derived series (folder)").name == "series"
    assert set(VOLUME_FILTERS.values()) == {".nii.gz", ".mha", ""}


def test_a_failed_export_names_the_path(qtbot, window, tmp_path):
    out = tmp_path / "copy.xyz"
    window.export_active_to(out)
    qtbot.waitUntil(lambda: any("copy.xyz" in line for line in window.log.lines), timeout=10000)
    assert not out.exists()
