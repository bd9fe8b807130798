"""Evaluation: image-quality metrics (metrics.py), scoring synthetic volumes and whole models on a
paired dataset (synthesis_eval.py, ``python main.py evaluate``), and what ``python main.py bench``
measures (speed, quality, understanding, generalization, source_floor)."""
