"""Starting the application: nothing heavy is imported before the window shows (torch, VTK,
SimpleITK, scipy come later, on workers or on demand), `run(paths)` opens the given files, and the
first launch (only the first) opens the demo study."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUN = r"""
import json, logging, os, sys, time
from pathlib import Path
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
logging.basicConfig(level=logging.INFO)
qapp = QApplication(["synermedgen-test"])
from app import about, application
if os.environ.get("TEST_DEMO_DIR"):
    about.DEMO_DIR = Path(os.environ["TEST_DEMO_DIR"])
started, patience = time.monotonic(), float(os.environ.get("TEST_PATIENCE", "60"))

def check():
    windows = [w for w in qapp.topLevelWidgets() if hasattr(w, "workspace") and w.isVisible()]
    if windows and (windows[0].workspace.documents or time.monotonic() - started > patience):
        window = windows[0]
        print(json.dumps({"app": qapp.applicationName(), "title": window.windowTitle(),
                          "documents": [d.title for d in window.workspace.documents]}))
        window.close()
    else:
        QTimer.singleShot(100, check)

QTimer.singleShot(100, check)
sys.exit(application.run(sys.argv[1:]))
"""


def launch(*paths, patience: float = 60, demo: Path | None = None) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), TEST_PATIENCE=str(patience))
    if demo is not None:
        env["TEST_DEMO_DIR"] = str(demo)
    done = subprocess.run([sys.executable, "-c", RUN, *map(str, paths)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_window_module_imports_nothing_heavy():
    code = ("import sys, app.application; "
            "print([m for m in ('torch', 'vtkmodules', 'vtk', 'SimpleITK', 'scipy', 'engine.io') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_view_models_run_without_qt():
    code = ("import sys, app.state.comparison, app.state.cursor, app.state.display, app.state.geometry, "
            "app.state.scoring, app.state.workspace; print([m for m in ('PySide6', 'pyqtgraph') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_run_opens_the_files_it_is_given(ct_file):
    report, log = launch(ct_file)
    assert report["app"] == "SynerMedGen Studio"
    assert report["documents"] == ["CT.nii.gz"]
    assert "research use only" in report["title"]
    shown = re.search(r"window shown ([0-9.]+) s after the process started", log)
    assert shown, log[-2000:]
    print(f"window shown {shown.group(1)} s after the process started")


def test_the_first_launch_opens_the_demo_study_once(study_folder, settings_dir):
    first, _ = launch(demo=study_folder)
    assert first["documents"] == ["CT.nii.gz"]
    again, _ = launch(demo=study_folder, patience=2)
    assert again["documents"] == []
    assert json.loads((settings_dir / "settings.json").read_text())["demo_shown"] is True


def test_without_a_display_the_app_says_so_instead_of_aborting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "main.py")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "no display" in done.stderr and "xvfb-run" in done.stderr
    assert "Traceback" not in done.stderr
