"""Evaluation: image-quality metrics (metrics.py), scoring synthetic volumes and whole models on a
paired dataset (synthesis_eval.py, ``python main.py evaluate``), one synthetic volume against a
reference the user names beside doing nothing (reference.py), and what ``python main.py bench``
measures. The benchmarks' modules (speed, cohort_speed, shared_cpu, quality, understanding, source_floor) are public too: each
is one benchmark's run / to_text / to_markdown, which ``bench`` reads as its namespace."""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "Evaluation": "metrics",
    "score_volume": "synthesis_eval", "evaluate_model": "synthesis_eval", "SYNTHETIC_REFERENCE": "synthesis_eval",
    "histogram_matched": "reference", "do_nothing": "reference", "worse_than_baseline": "metrics", "RELATIVE_MAE_UNIT": "metrics",
    "score_against": "reference", "ReferenceScores": "reference", "reference_modality_warnings": "reference",
    "COLUMNS": "comparison", "compare": "comparison", "read_result": "comparison", "record_in_card": "comparison",
    "describe_machine": "speed", "card_entries": "quality", "target_agreement": "quality",
})
