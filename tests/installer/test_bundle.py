"""The installer: installer/build.sh builds the one-folder bundle into a temporary folder; the bundled
executable, run outside the source tree, passes ``--selftest`` without a window, and its GUI (on the
suite's Xvfb) shows the main window and synthesizes in its own bundled synthesis process, driven by
app.automation as the end-to-end test drives ``python main.py``."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 1800      # ~10 min on a loaded 2-core machine
SELFTEST_TIMEOUT_S = 300
GUI_TIMEOUT_S = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + SELFTEST_TIMEOUT_S + GUI_TIMEOUT_S)]


def bundle_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's machine: nothing from the source tree or the venv on the paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return {**env, "HOME": str(tmp), "SYNERMEDGEN_CONFIG_DIR": str(tmp / "config"), **extra}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The built bundle, removed after this module's tests: a bundle and its build folder hold
    gigabytes, and a machine that runs the suite again and again must not fill its disk with them."""
    out = tmp_path_factory.mktemp("bundle")
    try:
        yield build_bundle(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def build_bundle(out: Path) -> Path:
    started = time.monotonic()
    done = subprocess.run(["nice", "-n", "19", str(REPO / "installer" / "build.sh"), str(out / "dist"),
                           str(out / "work")], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    print(f"bundle built in {time.monotonic() - started:.0f} s\n{done.stdout[-3000:]}")
    assert "CUDA libraries: none" in done.stdout           # the size report: a CPU bundle
    return out / "dist" / "SynerMedGen"


def test_the_bundle_holds_what_the_app_needs_and_not_what_it_does_not(bundle):
    internal = bundle / "_internal"
    assert (bundle / "SynerMedGen").is_file() and os.access(bundle / "SynerMedGen", os.X_OK)
    for needed in ("resources/models/default/model.safetensors", "resources/demo/brain/T1.nii.gz",
                   "PySide6/Qt/plugins/platforms/libqxcb.so", "onnxruntime", "vtkmodules", "torch"):
        assert (internal / needed).exists(), needed
    for unused in ("monai", "pytest", "tkinter", "matplotlib", "resources/models/default/onnx"):
        assert not (internal / unused).exists(), unused
    desktop = (bundle / "synermedgen.desktop").read_text()
    assert "Exec=@BUNDLE@/SynerMedGen %F" in desktop and "Icon=synermedgen" in desktop
    assert (bundle / "synermedgen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_bundled_selftest_synthesizes_a_slab_of_the_demo_study(bundle, tmp_path):
    done = subprocess.run([str(bundle / "SynerMedGen"), "--selftest"], cwd=tmp_path, env=bundle_env(tmp_path),
                          capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    print(done.stdout)
    assert "(frozen: True)" in done.stdout
    assert f"from {bundle / '_internal' / 'resources' / 'models' / 'default'}" in done.stdout
    assert "T1 → FLAIR: slab of 4 slices" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("selftest: ok in ")


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="the application needs an X server (run under xvfb-run)")
def test_the_bundled_gui_shows_its_window_and_synthesizes(bundle, tmp_path):
    from engine.inference.random_model import write_random_model

    model = write_random_model(tmp_path / "models" / "tiny-t1-t2", routes=[("T1", "T2")])
    out = tmp_path / "out"
    script = tmp_path / "script.json"
    script.write_text(json.dumps({
        "source": "T1", "target": "T2", "model": str(model), "steps": 2, "device": "cpu",
        "comparison_png": str(out / "comparison.png"), "volume_3d_png": str(out / "volume_3d.png"),
        "window_png": str(out / "window.png"), "timeout_s": GUI_TIMEOUT_S - 30}))
    env = bundle_env(tmp_path, QT_QPA_PLATFORM="xcb", SYNERMEDGEN_AUTOMATION=str(script))
    done = subprocess.run([str(bundle / "SynerMedGen")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=GUI_TIMEOUT_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads(next(line for line in done.stdout.splitlines()
                             if line.startswith("automation: {")).partition(": ")[2])
    assert report["status"] == 0
    print(f"bundled GUI: steps ended at (s) {report['step_ended_at_s']}")
    assert json.loads((tmp_path / "config" / "settings.json").read_text())["demo_shown"] is True   # opened the demo

    from PySide6.QtGui import QImage

    window = QImage(str(out / "window.png"))
    assert window.width() > 800 and window.height() > 400, (window.width(), window.height())
    pixels = np.frombuffer(window.convertToFormat(QImage.Format.Format_Grayscale8).constBits(), np.uint8)
    assert pixels.std() > 20, "the main window is blank"
    assert sys.platform != "linux" or (out / "volume_3d.png").stat().st_size > 1000     # VTK drew in the bundle
