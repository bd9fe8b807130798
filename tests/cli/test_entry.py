"""``main.py``, the entry point of the app, the command line and every process they start."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import main
from engine.paths import ROOT


def test_torch_threads_wait_passively_in_every_process_unless_the_environment_says_otherwise(monkeypatch):
    """OpenMP's default spinning had made synthesis 23 times slower beside one busy process on 2 cores
    (bench speed --shared-cpu); the policy is read once, when torch starts, so it is set before any import
    of torch, and inherited by the processes started from here."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    child = subprocess.run([sys.executable, "-c", "import os, sys, main; "
                            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"],
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert child.stdout.split() == ["False", "PASSIVE"]          # set before anything started torch
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    importlib.reload(main)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    importlib.reload(main)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
