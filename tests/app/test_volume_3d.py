"""The 3D view renders the volume (VTK inside Qt needs an X server: this test starts its own
process on the xcb platform under the suite's Xvfb), and VTK is imported only when it opens."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, time
import numpy as np
from PySide6.QtWidgets import QApplication
app = QApplication(["synermedgen-3d-test"])
from app.main_window import MainWindow
from app.settings import Settings

def pump(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)

window = MainWindow(Settings())
window.resize(1200, 800)
window.show()
window.open_paths([sys.argv[1]])
deadline = time.monotonic() + 60
while not window.workspace.documents and time.monotonic() < deadline:
    pump(0.05)
vtk_before = any(m.startswith("vtkmodules") for m in sys.modules)
window.viewer.open_3d()
pump(0.5)
image = window.viewer.volume_3d.rendered_image()
background = image[2, 2].astype(int)
drawn = (np.abs(image.astype(int) - background).sum(axis=-1) > 30).mean()
print(json.dumps({"vtk_before": vtk_before, "shape": list(image.shape), "drawn": float(drawn),
                  "std": float(image.std())}))
window.close()
"""


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="VTK in Qt needs an X server (run under xvfb-run)")
def test_the_3d_view_renders_the_volume(ct_file, settings_dir):
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ct_file)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["vtk_before"], "VTK was imported before the 3D view was opened"
    assert report["shape"][0] > 50 and report["shape"][1] > 50
    assert report["drawn"] > 0.02 and report["std"] > 5, report
