"""The shared-CPU rows of ``bench speed --shared-cpu``: CPU synthesis of the speed benchmark's slices
on the CPU as found (idle when its load average says so) and beside one busy process added (another program, a fine-tuning job, a second
synthesis), with OpenMP's default waiting — each torch thread spins at every parallel region's end
before it sleeps, so one thread that the busy process keeps off its core stalls all the others —
and with ``OMP_WAIT_POLICY=PASSIVE``, which ``main.py`` sets for every process it starts (unless the
environment sets it). Each variant runs in a fresh process (``python -m engine.evaluation.shared_cpu``):
OpenMP reads its wait policy once, when torch starts."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from engine.paths import ROOT

POLICY_VARIABLE = "OMP_WAIT_POLICY"
WAITING = (("OpenMP's default (spin, then sleep)", None), ("passive (main.py's default)", "PASSIVE"))
LOADS = ("as found", "one busy process added")
BUSY_LOOP = "while True:\n    pass\n"          # one core's worth of work that never blocks


def run_shared_cpu(*, model: str | None, preset: str | None, image_size: int | None, slices: int,
                   steps: int | None, repeats: int, say: Callable[[str], None] = lambda line: None) -> dict:
    """Time the variants (every wait policy on every load, one fresh process each) and return the
    shared-CPU part of the speed report."""
    load_average = round(os.getloadavg()[0], 2)      # "as found" is idle only when this is near 0
    job = {"model": model, "preset": preset, "image_size": image_size, "slices": slices, "steps": steps,
           "repeats": repeats}
    rows = []
    for load in LOADS:
        busy = None if load == LOADS[0] else subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            for waiting, policy in WAITING:
                say(f"shared CPU: {load}, {waiting}")
                env = {k: v for k, v in os.environ.items() if k != POLICY_VARIABLE}
                if policy is not None:
                    env[POLICY_VARIABLE] = policy
                proc = subprocess.run([sys.executable, "-m", "engine.evaluation.shared_cpu", json.dumps(job)],
                                      cwd=ROOT, env=env, capture_output=True, text=True)
                measured = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode != 0 or not measured:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                    raise RuntimeError(f"the shared-CPU run ({load}, {waiting}) failed (exit {proc.returncode}): "
                                       f"{tail[0]}")
                times = measured[-1]["times_s"]
                rows.append({"load": load, "waiting": waiting, "policy": policy or "", "threads":
                             measured[-1]["threads"], "times_s": times,
                             "median_s": round(statistics.median(times), 4)})
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    median = {(r["load"], r["policy"]): r["median_s"] for r in rows}
    ratio = {policy or "default": round(median[(LOADS[1], policy or "")] / median[(LOADS[0], policy or "")], 2)
             for _, policy in WAITING}
    passive_cost = round(median[(LOADS[0], "PASSIVE")] / median[(LOADS[0], "")], 3)
    return {"slices": slices, "repeats": repeats, "load_average": load_average, "rows": rows,
            "busy_slowdown": ratio, "passive_as_found": passive_cost}


def _measure(job: dict) -> dict:
    """In the child process: the speed benchmark's volume and central slices, one untimed warm-up,
    then ``repeats`` timed syntheses of those slices."""
    import torch

    from engine.evaluation.speed import bench_volume, central, open_model

    opened = open_model(job["model"], job["preset"], torch.device("cpu"), "fp32", job["image_size"])
    synth = opened.synth
    volume, source, target, _ = bench_volume(synth)
    chosen = central(synth.plan(volume, source).active, job["slices"])
    settings = synth.default_settings()
    if job["steps"]:
        settings = settings.replace(steps=job["steps"])
    synth.synthesize_volume(volume, source, target, settings.replace(steps=min(2, settings.steps)), slices=chosen)
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        synth.synthesize_volume(volume, source, target, settings, slices=chosen)
        times.append(round(time.perf_counter() - start, 4))
    return {"times_s": times, "threads": torch.get_num_threads()}


def to_markdown(shared: dict) -> str:
    lines = ["", f"Sharing the CPU ({shared['slices']} slices as above, median of {shared['repeats']}, a fresh "
                 f"process per row; the CPU's load average as found: {shared['load_average']:.2f}):", "",
             "| CPU | OpenMP waiting | torch threads | median s | × as found |", "|---|---|---:|---:|---:|"]
    idle = {r["policy"]: r["median_s"] for r in shared["rows"] if r["load"] == LOADS[0]}
    for row in shared["rows"]:
        lines.append(f"| {row['load']} | {row['waiting']} | {row['threads']} | {row['median_s']:.3f} | "
                     f"{row['median_s'] / idle[row['policy']]:.2f} |")
    lines += ["", f"- {_summary(shared)}"]
    return "\n".join(lines) + "\n"


def to_text(shared: dict) -> str:
    lines = [f"shared CPU (load average as found {shared['load_average']:.2f}):"] + [f"         {row['load']}, {row['waiting']}: {row['median_s']:.3f} s "
                                f"({row['threads']} threads)" for row in shared["rows"]]
    return "\n".join(lines + [f"         {_summary(shared)}"])


def _summary(shared: dict) -> str:
    slow = shared["busy_slowdown"]
    return (f"One busy process added slows synthesis ×{slow['default']:.2f} with OpenMP's default waiting, "
            f"×{slow['PASSIVE']:.2f} with passive waiting; on the CPU as found passive waiting takes "
            f"×{shared['passive_as_found']:.3f} the default's time.")


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))), flush=True)
