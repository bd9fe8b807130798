"""Cohorts: synthesize a whole study's subjects in one resumable run.

- :mod:`engine.cohort.items`    what one unit of work is, and finding them in a folder tree or a CSV manifest
- :mod:`engine.cohort.bids`     BIDS in (``sub-*/[ses-*/]anat``) and a BIDS derivatives dataset out
- :mod:`engine.cohort.manifest` the run manifest (JSON lines): what is done, skipped, failed, not applicable;
                                resume and merge
- :mod:`engine.cohort.lock`     one run per output folder (``OUT/.cohort.lock``)
- :mod:`engine.cohort.threads`  ``--threads N``: one bound for torch, ONNX Runtime, SimpleITK and BLAS
- :mod:`engine.cohort.runner`   the loop: model loaded once, the next volume read while one is synthesized,
                                items sharded over ``torchrun`` ranks
"""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "discover": "items", "model_fingerprint": "manifest", "read_state": "manifest",
    "run_cohort": "runner", "EXIT_SOME_FAILED": "runner", "limit_threads": "threads",
})
