"""Crosshair lines leave no stale traces on a real X server: after dragging the crosshair, zooming
and scrolling, each slice view's framebuffer holds exactly one vertical and one horizontal line
(partial viewport repaints left old copies of the lines behind). Screen pixels need the xcb
platform, so the check runs in its own process under the suite's Xvfb, as the 3D view's test does."""
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
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
app = QApplication(["synermedgen-crosshair-test"])
from engine.io import load
from app.state.cursor import Cursor
from app.state.workspace import Workspace
from app.views.ortho_viewer import OrthoViewer

def pump(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.005)

viewer = OrthoViewer(Cursor())
viewer.resize(1000, 800)
viewer.show()
viewer.show_document(Workspace().add(load(sys.argv[1])))
pump(0.3)
views = list(viewer.views.values())
axial = views[0]
centre = axial.viewport().rect().center()
QTest.mousePress(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, centre)
for k in range(40):
    QTest.mouseMove(axial.viewport(), centre + QPoint(3 * k - 60, 2 * k - 40))
    pump(0.005)
QTest.mouseRelease(axial.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, centre)
axial.viewbox.scaleBy((0.7, 0.7))
for _ in range(8):
    views[1].scroll(1)
    pump(0.01)
pump(0.3)
screen = app.primaryScreen().grabWindow(0).toImage()
lines = {}
for plane, view in viewer.views.items():
    corner = view.viewport().mapToGlobal(QPoint(0, 0))
    w, h = view.viewport().width(), view.viewport().height()
    rgb = np.array([[screen.pixelColor(corner.x() + x, corner.y() + y).getRgb()[:3] for x in range(w)]
                    for y in range(h)])
    yellow = (rgb[..., 0] > 150) & (rgb[..., 1] > 120) & (rgb[..., 2] < 90)
    lines[plane.value] = [int((yellow.sum(axis=0) > 0.25 * h).sum()), int((yellow.sum(axis=1) > 0.25 * w).sum())]
print(json.dumps(lines))
"""


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="screen pixels need an X server (run under xvfb-run)")
def test_crosshair_lines_leave_no_traces_on_the_screen(ct_file, settings_dir):
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ct_file)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json.loads(done.stdout.strip().splitlines()[-1])
    assert lines == {"axial": [1, 1], "sagittal": [1, 1], "coronal": [1, 1]}, lines
