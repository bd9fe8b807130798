"""The shared-CPU rows of ``bench speed --shared-cpu``: CPU synthesis of the speed benchmark's slices
on the CPU as found (idle when its load average says so) and beside one busy process added (another
program, a fine-tuning job, a second synthesis), with each way torch's OpenMP threads may wait at the
end of a parallel region: OpenMP's default (GNU libgomp: spin 300,000 times, then sleep — one thread
that the busy process keeps off its core stalls the spinning others), a short spin
(``GOMP_SPINCOUNT=10000``, what ``main.py`` sets for every process it starts unless the environment
sets a policy) and passive (``OMP_WAIT_POLICY=PASSIVE``: sleep at once). Each variant runs in a fresh
process (``python -m engine.evaluation.shared_cpu``): OpenMP reads these once, when torch starts."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from engine.openmp import SHORT_SPIN, WAIT_VARIABLES
from engine.paths import ROOT

WAITING: tuple[tuple[str, str, dict[str, str]], ...] = (      # key, how the table says it, the variables set
    ("default", "OpenMP's default (spin, then sleep)", {}),
    ("short spin", "short spin, GOMP_SPINCOUNT=10000 (main.py's)", SHORT_SPIN),
    ("passive", "passive, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
)
LOADS = ("as found", "one busy process added")
BUSY_LOOP = "while True:\n    pass\n"          # one core's worth of work that never blocks


def load_average() -> float | None:
    """The CPU's one-minute load average (None where the system keeps none: Windows): "as found" is
    idle only when it is near 0. Taken before the speed benchmark loads the CPU itself."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _ratio(slow: float, fast: float) -> float | None:
    return round(slow / fast, 3) if fast > 0 else None


def run_shared_cpu(*, model: str | None, preset: str | None, image_size: int | None, slices: int,
                   steps: int | None, repeats: int, load: float | None = None,
                   say: Callable[[str], None] = lambda line: None) -> dict:
    """Time the variants (every way of waiting on every load, one fresh process each) and return the
    shared-CPU part of the speed report; ``load``: :func:`load_average` as the CPU was found."""
    job = {"model": model, "preset": preset, "image_size": image_size, "slices": slices, "steps": steps,
           "repeats": repeats}
    rows = []
    for condition in LOADS:
        busy = None if condition == LOADS[0] else subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            for key, waiting, variables in WAITING:
                say(f"shared CPU: {condition}, {waiting}")
                env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES} | variables
                proc = subprocess.run([sys.executable, "-m", "engine.evaluation.shared_cpu", json.dumps(job)],
                                      cwd=ROOT, env=env, capture_output=True, text=True)
                measured = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode != 0 or not measured:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                    raise RuntimeError(f"the shared-CPU run ({condition}, {waiting}) failed (exit {proc.returncode}): "
                                       f"{tail[0]}")
                times = measured[-1]["times_s"]
                rows.append({"load": condition, "waiting": waiting, "policy": key, "environment": variables,
                             "threads": measured[-1]["threads"], "times_s": times,
                             "median_s": round(statistics.median(times), 4)})
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    median = {(r["load"], r["policy"]): r["median_s"] for r in rows}
    for row in rows:
        row["times_as_found"] = _ratio(row["median_s"], median[(LOADS[0], row["policy"])])
    return {"slices": slices, "repeats": repeats, "load_average": load, "rows": rows,
            "busy_slowdown": {key: _ratio(median[(LOADS[1], key)], median[(LOADS[0], key)]) for key, _, _ in WAITING},
            "as_found_vs_default": {key: _ratio(median[(LOADS[0], key)], median[(LOADS[0], "default")])
                                    for key, _, _ in WAITING[1:]}}


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


def _times(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"×{value:.{digits}f}"


def _load(shared: dict) -> str:
    value = shared["load_average"]
    return "not known" if value is None else f"{value:.2f}"


def to_markdown(shared: dict) -> str:
    lines = ["", f"Sharing the CPU ({shared['slices']} slices as above, median of {shared['repeats']}, a fresh "
                 f"process per row; the CPU's load average as found: {_load(shared)}):", "",
             "| CPU | OpenMP waiting | torch threads | median s | × as found |", "|---|---|---:|---:|---:|"]
    for row in shared["rows"]:
        lines.append(f"| {row['load']} | {row['waiting']} | {row['threads']} | {row['median_s']:.3f} | "
                     f"{'—' if row['times_as_found'] is None else format(row['times_as_found'], '.2f')} |")
    lines += ["", f"- {_summary(shared)}"]
    return "\n".join(lines) + "\n"


def to_text(shared: dict) -> str:
    lines = [f"shared CPU (load average as found {_load(shared)}):"]
    lines += [f"         {row['load']}, {row['waiting']}: {row['median_s']:.3f} s ({row['threads']} threads)"
              for row in shared["rows"]]
    return "\n".join(lines + [f"         {_summary(shared)}"])


def _summary(shared: dict) -> str:
    slow, cost = shared["busy_slowdown"], shared["as_found_vs_default"]
    return (f"One busy process added slows synthesis {_times(slow['default'])} with OpenMP's default waiting, "
            f"{_times(slow['short spin'])} with the short spin, {_times(slow['passive'])} passive; on the CPU as "
            f"found the short spin takes {_times(cost['short spin'], 3)} the default's time, passive "
            f"{_times(cost['passive'], 3)}.")


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))), flush=True)
