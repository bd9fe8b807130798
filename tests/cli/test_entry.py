"""``main.py``, the entry point of the app, the command line and every process they start."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import main
from engine.paths import ROOT


def test_torch_threads_spin_briefly_in_every_process_unless_the_environment_sets_a_policy(monkeypatch):
    """OpenMP's default spinning had made synthesis 24 times slower beside one busy process on 2 cores
    (bench speed --shared-cpu); the setting is read once, when torch starts, so it is made before any
    import of torch, and inherited by the processes started from here."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    child = subprocess.run([sys.executable, "-c", "import os, sys, main; "
                            "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))"],
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert child.stdout.split() == ["False", "10000"]            # set before anything started torch
    for variable in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(variable, raising=False)
    importlib.reload(main)
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")                 # the user's policy: nothing added
    importlib.reload(main)
    assert "GOMP_SPINCOUNT" not in os.environ
