"""The cohort row of ``bench speed --cohort N``: volumes per minute of ``python main.py cohort`` over N
copies of the speed benchmark's volume, in one process and in K ranks under ``torchrun`` on this
machine, the CPU cores split between the ranks. Each run is a fresh command, so its wall time counts
process start, model loading and writing; the loop time (the run's summary) leaves them out."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from engine.paths import ROOT


def _model_folder(model: str | None, preset: str | None, image_size: int | None, scratch: Path) -> Path:
    """``model``, or a random-weight ``preset`` written to ``scratch`` (the command loads a folder)."""
    from engine.inference.random_model import write_random_model
    from engine.evaluation.speed import DEMO_SOURCE

    if model is not None:
        return Path(model)
    return write_random_model(scratch / f"random-{preset or 'tiny'}", preset=preset or "tiny",
                              routes=((DEMO_SOURCE, "T2"),), image_size=image_size, understanding=False)


def run_cohort_speed(copies: int, *, model: str | None = None, preset: str | None = None, device: str = "cpu",
                     image_size: int | None = None, steps: int | None = None, ranks: Sequence[int] | None = None,
                     say: Callable[[str], None] = lambda line: None) -> dict:
    """Run ``cohort`` on ``copies`` copies of the benchmark volume once per entry of ``ranks`` (1 = a
    plain process, K > 1 = ``torchrun --nproc_per_node=K``; default 1 and 2, on CUDA 2 only with two
    GPUs, one a rank) and return the cohort part of the report."""
    import torch

    import engine.io as io
    from engine.evaluation.speed import bench_volume, usable_cores
    from engine.inference.pipeline import Synthesizer

    if copies < 1:
        raise ValueError("--cohort must be at least 1 volume")
    cores = usable_cores()
    if ranks is None:
        ranks = (1, 2) if device != "cuda" or torch.cuda.device_count() >= 2 else (1,)
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as scratch:
        root = Path(scratch)
        folder = _model_folder(model, preset, image_size, root)
        volume, source, target, info = bench_volume(Synthesizer(folder, device=device))
        for i in range(copies):
            io.save(volume, root / "study" / f"subject-{i:03d}" / f"{source}.nii.gz")
        rows = []
        for k in ranks:
            threads = max(1, cores // k)
            launcher = [] if k == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}"]
            cmd = [sys.executable, *launcher, str(ROOT / "main.py"), "cohort", str(root / "study"), "--source", source,
                   "--target", target, "-o", str(root / f"out-{k}"), "--model", str(folder), "--device", device,
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
            rows.append({"processes": k, "threads_per_process": threads, "volumes": copies,
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
