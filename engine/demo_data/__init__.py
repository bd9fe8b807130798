"""The demo-data builder: real anatomy from installable packages (MNI152 and Colin27 brains, a
real head CT) → a paired dataset of simulated subjects (T1, T1CE, T2, FLAIR, PD; CT, CBCT) and
the small demo study shipped in resources/demo. Build-time only; the app never runs it.

    from engine.demo_data import build_demo_dataset, build_demo_study, derivation_text

Names are imported on first use, so ``make-demo-data --help`` stays cheap.
"""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "BuildSummary": "builder", "DemoRecipe": "builder", "SubjectPlan": "builder", "build_demo_dataset": "builder",
    "build_demo_study": "builder", "default_workers": "builder", "plan_subjects": "builder",
    "simulate_subject": "builder", "SOURCES": "sources", "derivation_text": "derivation",
    "SourceMissing": "sources", "find_mni152": "sources", "find_or_fetch_colin27": "sources",
    "find_or_fetch_head_ct": "sources",
})
