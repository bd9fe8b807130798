"""The cohort rows of ``bench speed --cohort N``: volumes per minute of ``python main.py cohort`` over N
copies of the speed benchmark's volume on this machine: one process with every core, one process
with half of them, and two ranks under ``torchrun`` with half each (the second row tells sharding
apart from fewer threads). Each run is a fresh command, so its wall time counts process start, model
loading and writing; the loop time (the run's summary) leaves them out."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.paths import ROOT


def _model_folder(model: str | None, preset: str | None, image_size: int | None, scratch: Path) -> Path:
    """``model``, or a random-weight ``preset`` written to ``scratch`` (the command loads a folder)."""
    from engine.evaluation.speed import DEMO_SOURCE
    from engine.inference.random_model import write_random_model

    if model is not None:
        return Path(model)
    return write_random_model(scratch / f"random-{preset or 'tiny'}", preset=preset or "tiny",
                              routes=((DEMO_SOURCE, "T2"),), image_size=image_size, understanding=False)


def run_cohort_speed(copies: int, *, model: str | None = None, preset: str | None = None, device: str = "cpu",
                     image_size: int | None = None, steps: int | None = None,
                     runs: Sequence[tuple[int, int]] | None = None, say: Callable[[str], None] = lambda line: None) -> dict:
    """Run ``cohort`` on ``copies`` copies of the benchmark volume once per (processes, threads each)
    of ``runs`` (1 process = a plain command, K > 1 = ``torchrun --nproc_per_node=K``; default: see the
    module docstring; on CUDA two ranks only with two GPUs, one a rank) and return the cohort part of
    the report."""
    import torch

    import engine.io as io
    from engine.evaluation.speed import bench_volume, usable_cores
    from engine.inference.pipeline import Synthesizer

    if copies < 1:
        raise ValueError("--cohort must be at least 1 volume")
    cores = usable_cores()
    if runs is None:
        half = max(1, cores // 2)
        runs = [(1, cores)] + ([(1, half)] if half != cores else [])
        runs += [(2, half)] if device != "cuda" or torch.cuda.device_count() >= 2 else []
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as scratch:
        root = Path(scratch)
        folder = _model_folder(model, preset, image_size, root)
        volume, source, target, info = bench_volume(Synthesizer(folder, device=device))
        for i in range(copies):
            io.save(volume, root / "study" / f"subject-{i:03d}" / f"{source}.nii.gz")
        rows = []
        for index, (k, threads) in enumerate(runs):
            launcher = [] if k == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}"]
            cmd = [sys.executable, *launcher, str(ROOT / "main.py"), "cohort", str(root / "study"), "--source", source,
                   "--target", target, "-o", str(root / f"out-{index}"), "--model", str(folder), "--device", device,
                   "--threads", str(threads), "--json", *(["--steps", str(steps)] if steps else [])]
            say(f"cohort: {copies} volumes, {k} process{'es' if k > 1 else ''} × {threads} threads")
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
            summaries = [json.loads(line) for line in proc.stdout.splitlines()
                         if line.startswith("{") and '"event": "summary"' in line]
            if proc.returncode != 0 or not summaries or summaries[0]["succeeded"] != copies:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"the cohort run with {k} process(es) failed (exit {proc.returncode}): {tail[0]}")
            loop = float(summaries[0]["seconds"])
            rows.append({"processes": k, "threads_per_process": threads, "threads_used": summaries[0]["threads"],
                         "volumes": copies,
                         "wall_s": round(wall, 3), "loop_s": round(loop, 3),
                         "volumes_per_minute": round(60.0 * copies / wall, 2),
                         "volumes_per_minute_loop": round(60.0 * copies / loop, 2) if loop > 0 else None})
    return {"route": f"{source}→{target}", "volume": info["note"], "device": device, "cores": cores, "rows": rows}


def to_markdown(cohort: dict) -> str:
    lines = ["", f"Cohort ({cohort['route']}, {cohort['device']}, {cohort['cores']} cores; {cohort['volume']}):", "",
             "| cohort | processes × threads | volumes | wall s | volumes/min | volumes/min, loop only |",
             "|---|---|---:|---:|---:|---:|"]
    for row in cohort["rows"]:
        lines.append(f"| {'one process' if row['processes'] == 1 else 'torchrun'} | {row['processes']} × "
                     f"{row['threads_per_process']} | {row['volumes']} | {row['wall_s']:.1f} | "
                     f"{row['volumes_per_minute']:.2f} | {row['volumes_per_minute_loop'] or 0:.2f} |")
    lines += ["", "- Cohort wall time: the whole command (process start, model loading, writing); loop only: "
                  "the run's own summary."]
    return "\n".join(lines) + "\n"


def to_text(cohort: dict) -> str:
    lines = [f"cohort:  {cohort['route']} on {cohort['device']}, {cohort['cores']} cores"]
    for row in cohort["rows"]:
        lines.append(f"         {row['processes']} process(es) × {row['threads_per_process']} threads: "
                     f"{row['volumes']} volumes in {row['wall_s']:.1f} s = {row['volumes_per_minute']:.2f} volumes/min "
                     f"({row['volumes_per_minute_loop'] or 0:.2f} in the loop alone)")
    return "\n".join(lines)
