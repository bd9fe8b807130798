"""How torch's OpenMP threads wait at the end of each parallel region, which OpenMP reads once, when
torch starts. GNU libgomp's default (Linux wheels) spins 300,000 times before it sleeps: beside one busy
process a thread kept off its core stalls the spinning others. A short spin keeps an idle CPU's speed
and most of a busy one's (``python main.py bench speed --shared-cpu``, docs/performance.md)."""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")     # what says how the threads wait
SHORT_SPIN = {"GOMP_SPINCOUNT": "10000"}


def spin_briefly(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the short spin in ``environ`` (before torch starts; inherited by the processes started
    after), unless it already says how the threads wait."""
    if not set(WAIT_VARIABLES) & set(environ):
        environ.update(SHORT_SPIN)


def waiting(environ: Mapping[str, str] = os.environ) -> str:
    """How ``environ`` has the threads wait, for a benchmark's machine line ("default" when it does not say)."""
    return ", ".join(f"{k}={environ[k]}" for k in WAIT_VARIABLES if environ.get(k)) or "default"
