"""Evaluation: image-quality metrics (metrics.py), scoring synthetic volumes and whole models on a
paired dataset (synthesis_eval.py, ``python main.py evaluate``), and the benchmarks of
``python main.py bench`` (cli_bench.py; speed.py: the speed benchmark)."""
