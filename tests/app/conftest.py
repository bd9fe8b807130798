"""Shared fixtures of the GUI tests: the offscreen Qt platform (VTK's test starts its own xcb
process), a temporary settings folder for every test, windows that close without asking, and small NIfTI volumes written with
SimpleITK with non-identity spacing and flipped or oblique directions."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from app.settings import CONFIG_DIR_ENV  # noqa: E402

SPACING = (0.8, 1.2, 2.5)               # x, y, z in mm
FLIPPED_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)    # index x runs towards the patient's right
OBLIQUE = tuple(np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]]).ravel())


@pytest.fixture(autouse=True)
def settings_dir(tmp_path, monkeypatch) -> Path:
    """Every test keeps its settings in its own folder, never in the user's config."""
    folder = tmp_path / "config"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def close_without_asking(monkeypatch):
    """Windows close without asking whether to discard what a test made; the tests of that question
    turn it back on for their window."""
    from app.main_window import MainWindow

    monkeypatch.setattr(MainWindow, "ask_before_discarding", False)


def head_phantom(shape=(20, 36, 30), marker=True) -> np.ndarray:
    """A CT-like head in HU: air, a skull shell, brain; a bright marker at index x > centre."""
    z, y, x = np.indices(shape, dtype=float)
    c = (np.asarray(shape) - 1) / 2
    r = np.sqrt(((z - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.45 * shape[1])) ** 2
                + ((x - c[2]) / (0.45 * shape[2])) ** 2)
    vol = np.where(r < 1.0, 700.0, -1000.0)
    vol[r < 0.85] = 40.0
    if marker:
        vol[int(c[0]) - 1:int(c[0]) + 2, int(c[1]) - 2:int(c[1]) + 2, int(c[2]) + 5:int(c[2]) + 8] = 300.0
    return vol.astype(np.float32)


def write_volume(path: Path, array: np.ndarray, spacing=SPACING, origin=(-10.0, -20.0, -30.0),
                 direction=FLIPPED_X) -> Path:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def ct_file(tmp_path) -> Path:
    """A head CT (HU) whose index x runs towards the patient's right, with anisotropic voxels."""
    return write_volume(tmp_path / "data" / "CT.nii.gz", head_phantom())


@pytest.fixture
def study_folder(tmp_path) -> Path:
    """A subject folder with a CT and a T2 on the same grid, plus a file that is not an image. The T2 has
    mild noise in the head: a noiseless one, four values, reads as a label map."""
    folder = tmp_path / "SUBJ01"
    ct = head_phantom()
    write_volume(folder / "CT.nii.gz", ct)
    noise = np.random.default_rng(0).normal(0.0, 5.0, ct.shape)
    write_volume(folder / "T2.nii.gz", np.where(ct > -500, 1000.0 - ct + noise, 0.0))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def phantom():
    return head_phantom


@pytest.fixture
def write_nifti():
    return write_volume


@pytest.fixture
def wait_loaded(qtbot):
    """wait_loaded(window, count): wait until ``count`` documents are loaded; the last one."""
    def wait(window, count: int = 1, timeout: int = 20000):
        qtbot.waitUntil(lambda: len(window.workspace.documents) >= count, timeout=timeout)
        return window.workspace.documents[count - 1]
    return wait


@pytest.fixture
def no_default_model(monkeypatch, tmp_path):
    """As if resources/models/default were absent: tests about imported or fine-tuned models see
    only those (and the panel's no-model notice when there are none)."""
    import app.synthesis

    monkeypatch.setattr(app.synthesis, "DEFAULT_MODEL_DIR", tmp_path / "no-default-model")


@pytest.fixture
def make_window(qtbot):
    """make_window(settings=None): a main window with ``settings`` (default: none set), shown and
    exposed at a desktop size."""
    from app.main_window import MainWindow
    from app.settings import Settings

    def make(settings=None):
        win = MainWindow(settings or Settings())
        qtbot.addWidget(win)
        win.resize(1400, 900)
        win.show()
        qtbot.waitExposed(win)
        return win
    return make


@pytest.fixture
def study_window(qtbot, make_window, study_folder, wait_loaded):
    """study_window(model_dir): a window with that model, the study's CT (the reference) and T2 (the
    source, in the viewer) loaded, once the engine is imported."""
    from app.settings import Settings

    def make(model):
        win = make_window(Settings(model_dirs=[str(model)]))
        qtbot.waitUntil(lambda: bool(win.synthesis.modalities), timeout=60000)   # the engine is imported
        win.open_paths([str(study_folder)])
        wait_loaded(win)
        win.load_entry(next(e for e in win.browser.entries() if e.modality == "T2"))
        wait_loaded(win, 2)
        return win
    return make
