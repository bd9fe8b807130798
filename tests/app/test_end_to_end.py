"""End to end: the real application (``python main.py`` in its own process, on the suite's Xvfb)
opens the demo study on its first launch, synthesizes T2 from T1 in its synthesis process with a
random-weight tiny model, saves the comparison view (File → Screenshot), exports the synthetic
volume (File → Export Volume…, its file dialog answered) to a NIfTI that ``info --json`` reports
synthetic, saves what VTK's 3D view drew, and exits with status 0. It is driven by app.automation,
as scripts/screenshot.sh is."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240             # a loaded 2-core machine: ~60 s, most of it the synthesis


def read_png(path: Path) -> np.ndarray:
    """(height, width, 3) uint8."""
    from PySide6.QtGui import QImage

    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB888)
    assert not image.isNull(), path
    w, h = image.width(), image.height()
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(h, image.bytesPerLine())
    return rows[:, :3 * w].reshape(h, w, 3).copy()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from engine.inference.random_model import write_random_model

    return write_random_model(tmp_path_factory.mktemp("models") / "tiny-t1-t2", routes=[("T1", "T2")])


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="the application needs an X server (run under xvfb-run)")
def test_the_application_synthesizes_the_demo_study_and_saves_the_views(tiny_model, settings_dir, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "script.json"
    script.write_text(json.dumps({
        "source": "T1", "target": "T2", "model": str(tiny_model), "steps": 2, "device": "cpu",
        "comparison_png": str(out / "comparison.png"), "volume_3d_png": str(out / "volume_3d.png"),
        "export": str(out / "exported.nii.gz"), "timeout_s": TIMEOUT_S - 30}))
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", PYTHONPATH=str(REPO), SYNERMEDGEN_CONFIG_DIR=str(settings_dir),
               SYNERMEDGEN_AUTOMATION=str(script), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "main.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(next(line for line in done.stdout.splitlines()
                             if line.startswith("automation: {")).partition(": ")[2])
    assert report["status"] == 0
    print(f"end to end in {took:.0f} s; steps ended at (s) {report['step_ended_at_s']}")
    assert json.loads((settings_dir / "settings.json").read_text())["demo_shown"] is True   # a first launch

    comparison = read_png(out / "comparison.png")
    h, w, _ = comparison.shape
    assert h > 400 and w > 800, comparison.shape
    assert comparison.std() > 20
    # the synthetic panel: second of the four slice panels in a row, above the metrics
    synthetic = comparison[int(0.3 * h):int(0.55 * h), int(0.3 * w):int(0.45 * w)].astype(float)
    assert synthetic.std() > 10, "the synthetic panel is uniform"
    assert len(np.unique(synthetic[..., 0])) > 20

    assert report["export"] == str(out / "exported.nii.gz") and report["export_proposed_name"] == "T2_synthetic_from_T1"
    info = subprocess.run([sys.executable, "main.py", "info", "--json", report["export"]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["series"][0]["synthetic"] is True
    from engine import io

    exported, source = io.load(report["export"]), io.load(REPO / "resources" / "demo" / "brain" / "T1.nii.gz")
    assert exported.shape == source.shape and not np.allclose(exported.array, source.array)
    sidecar = json.loads((out / "exported.json").read_text())          # how it was made, beside it
    assert sidecar["Route"] == "T1→T2" and sidecar["SourceFile"] == "T1.nii.gz" and sidecar["Settings"]["steps"] > 0

    rendered = read_png(out / "volume_3d.png")
    assert rendered.shape[0] > 50 and rendered.shape[1] > 50
    background = rendered[2, 2].astype(int)
    drawn = (np.abs(rendered.astype(int) - background).sum(axis=-1) > 30).mean()
    assert drawn > 0.02 and rendered.std() > 5, f"VTK drew nothing: {drawn:.3f} of the pixels"
