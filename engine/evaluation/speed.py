"""The speed benchmark behind ``python main.py bench speed``: one run, one volume, one set of
sampling settings, and the medians of several timed repeats of each variant of the torch pipeline:

- ``uncached``   — the context recomputed at every flow step and guidance branch (the reference the
  context cache is tested against; ``Synthesizer.context_cache = False``), batch ``auto``;
- ``cached``     — context K/V encoded once per slice and reused (the default), batch ``auto``;
- ``per-slice``  — cached, batch size 1;
- ``fp16`` / ``bf16`` — cached, batch ``auto``, autocast on a CUDA GPU (never on a CPU);
- ``onnx``       — the ONNX Runtime backend (``--backend onnx``: the same pipeline with its network
  pieces exported to ONNX, in a temporary folder, before the timed runs), fp32, batch ``auto``.

It reports slices per second, seconds per demo volume, peak memory, the ratios between variants
(context-cache, batching and half-precision speed-ups: end to end, without the per-volume part, and
in the transformer alone) and how far their outputs are apart, and
names the machine. The variants run round-robin (repeat 1 of every variant, then repeat 2, …) after
one untimed warm-up per precision, so slow drifts of the machine hit all variants alike.

A random-weight model (no trained model given or found) measures speed only: real shapes and
FLOPs, meaningless images.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import openmp
from engine.paths import DEFAULT_MODEL_DIR, ROOT

DEMO_VOLUME = ROOT / "resources" / "demo" / "brain" / "T1.nii.gz"
DEMO_SOURCE = "T1"
PREFERRED_TARGETS = ("T2", "FLAIR", "PD", "T1CE")
HALF = ("fp16", "bf16")
RANDOM_LABEL = "random weights: speed only"
QUICK = {"preset": "tiny", "slices": 3, "image_size": 32, "steps": 3, "repeats": 2}


# -- the machine ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe_machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on; ``line`` is the one-line summary tables print."""
    waiting = openmp.waiting()                                   # main.py's short spin (engine/openmp.py)
    info: dict[str, Any] = {"device": device.type, "cpu": cpu_model(), "cores": usable_cores(),
                            "torch_threads": torch.get_num_threads(), "omp_wait_policy": waiting,
                            "torch": torch.__version__,
                            "python": platform.python_version(), "platform": platform.platform(terse=True)}
    cpu = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads (OpenMP waiting: {waiting})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, compute_capability=f"{props.major}.{props.minor}")
        info["name"] = props.name
        info["line"] = (f"GPU {props.name} ({info['gpu_memory_gib']:g} GiB, CUDA {torch.version.cuda}); host CPU {cpu}; "
                        f"torch {torch.__version__}")
    else:
        info["name"] = info["cpu"]
        info["line"] = f"CPU {cpu}; torch {torch.__version__}"
    return info


# -- peak memory ------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of one timed run. CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, weights
    included; the allocator's cache is not counted). CPU: the process's resident set size sampled
    every ``interval`` s from /proc/self/statm during the run (the weights, already resident, are in
    ``base``); without /proc, the growth of ``ru_maxrss`` (zero once an earlier run went higher)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated (tensors incl. weights; allocator cache excluded)"
        if self._proc:
            return "process resident set size, sampled every 5 ms from /proc/self/statm (incl. weights and allocator caches)"
        return "growth of getrusage ru_maxrss (a process high-water mark: 0 when an earlier run went higher)"

    def _rss(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * self._page

    @staticmethod
    def _maxrss() -> int:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = self.peak = torch.cuda.memory_allocated(self.device)
        elif self._proc:
            self.base = self.peak = self._rss()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.base = self.peak = self._maxrss()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.peak = max(self.peak, self._rss())
        else:
            self.peak = max(self.peak, self._maxrss())


# -- model and volume --------------------------------------------------------------------------------
@dataclass
class BenchModel:
    synth: Any                              # the base-precision Synthesizer
    info: dict[str, Any]


def open_model(model: str | None, preset: str | None, device: torch.device, precision: str,
               image_size: int | None) -> BenchModel:
    """The model to measure: ``model`` (a folder), else a random-weight ``preset``, else the default
    model folder when it exists, else the ``tiny`` preset with random weights. Random weights are
    created in memory directly on the device, in the base precision's dtype when it is a half one."""
    from engine.inference.pipeline import Synthesizer
    from engine.inference.random_model import random_model
    from engine.inference.settings import PRECISIONS

    if model is None and preset is None and DEFAULT_MODEL_DIR.is_dir():
        model = str(DEFAULT_MODEL_DIR)
    if model is not None:
        if image_size is not None:
            raise ValueError("--image-size applies to random-weight presets; a trained model uses its own slice size")
        synth = Synthesizer(model, device=device, precision=precision)
        info = {"source": "folder", "path": str(model), "random_weights": False, "weights_dtype": "float32"}
    else:
        preset = preset or "tiny"
        dtype = PRECISIONS[precision] if device.type == "cuda" else torch.float32
        loaded = random_model(preset=preset, routes=((DEMO_SOURCE, "T2"),), image_size=image_size,
                              understanding=False, device=device, dtype=dtype)
        synth = Synthesizer(Path(f"random-{preset}"), device=device, precision=precision, loaded=loaded)
        info = {"source": "random", "preset": preset, "random_weights": True, "label": RANDOM_LABEL,
                "weights_dtype": str(dtype).replace("torch.", "")}
    info.update(name=synth.name, image_size=synth.image_size,
                parameters=int(sum(p.numel() for p in synth.model.parameters())))
    return BenchModel(synth, info)


def pick_route(synth) -> tuple[str, str] | None:
    """A route from T1 (the demo's modality), T2 preferred; None when the model has none."""
    targets = [t for s, t in synth.routes if s == DEMO_SOURCE]
    for t in PREFERRED_TARGETS:
        if t in targets:
            return DEMO_SOURCE, t
    return (DEMO_SOURCE, targets[0]) if targets else None


def bench_volume(synth) -> tuple[Any, str, str, dict[str, Any]]:
    """(volume, source, target, description). The demo T1 volume when the model has a route from T1
    and its slice size is at most the demo's in-plane size (no upsampling); else a T1-like phantom
    with the demo's slice count at the model's slice size (on the model's first route when it has
    no T1 route)."""
    import engine.io as io
    from engine import modalities
    from engine.inference.slices import slice_axis, slices_first
    from engine.io.volume import Volume
    from engine.tasks.phantoms import phantom_labels, phantom_volume

    route = pick_route(synth)
    demo = io.load(str(DEMO_VOLUME)) if DEMO_VOLUME.exists() else None
    size = synth.image_size
    if demo is not None:
        axis = slice_axis(demo.spacing)
        count, height, width = slices_first(demo.array, axis).shape
        if route is not None and size <= max(height, width):
            return demo, route[0], route[1], {
                "kind": "demo", "path": str(DEMO_VOLUME.relative_to(ROOT)), "shape_zyx": list(demo.array.shape),
                "note": f"demo volume {DEMO_VOLUME.name}: {count} slices of {height}×{width} → model {size}²"}
        why = (f"the model's slice size {size}² exceeds the demo's {height}×{width}" if route is not None
               else "the model has no route from T1")
    else:
        count, why = 155, f"{DEMO_VOLUME} is missing"
    if route is None:
        if not synth.routes:
            raise ValueError(f"model {synth.name} names no routes")
        route = tuple(synth.routes[0])
    labels = phantom_labels((count, size, size), seed=0)
    volume = Volume(phantom_volume(labels, route[0], 0), spacing=(1.0, 1.0, 3.0), modality=route[0],
                    unit=modalities.get(route[0]).unit)
    return volume, route[0], route[1], {
        "kind": "phantom", "shape_zyx": [count, size, size],
        "note": f"phantom {route[0]} volume, {count} slices of {size}² (the demo's slice count): {why}"}


def central(active: Sequence[int], n: int) -> list[int]:
    """The ``n`` central entries of ``active`` (all when ``n`` is 0 or more than there are)."""
    active = list(active)
    if n <= 0 or n >= len(active):
        return active
    start = (len(active) - n) // 2
    return active[start:start + n]


# -- the benchmark -----------------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    precision: str
    context_cache: bool
    batch: int | str
    backend: str = "torch"
    times: list[float] = field(default_factory=list)
    network: list[float] = field(default_factory=list)     # per run: context + ODE steps alone
    batch_used: int | None = None
    peak: int = 0
    base: int = 0
    output: np.ndarray | None = None


def plan_variants(precisions: Sequence[str], device: torch.device, weights_dtype: str) -> tuple[list[Variant], list[dict]]:
    """The variants to run and what is not measured, and why."""
    base = precisions[0]
    variants = [Variant("uncached", base, False, "auto"), Variant("cached", base, True, "auto"),
                Variant("per-slice", base, True, 1)]
    skipped: list[dict] = []
    for p in precisions[1:]:
        if device.type != "cuda":
            continue
        if weights_dtype != "float32":
            skipped.append({"what": p, "why": f"the random weights are {weights_dtype}; only {base} is measured"})
            continue
        variants.append(Variant(p, p, True, "auto"))
    if device.type != "cuda":
        skipped.append({"what": "fp16, bf16", "why": "half precision is not measured on CPU (CUDA only; "
                                                     "on a CPU it is slower and less accurate than fp32)"})
    if importlib.util.find_spec("onnxruntime") is None:
        skipped.append({"what": "ONNX Runtime", "why": "onnxruntime is not installed (pip install onnxruntime)"})
    elif base == "bf16":
        skipped.append({"what": "ONNX Runtime", "why": "the ONNX backend runs fp32 (or fp16 with TensorRT), "
                                                       "not the bf16 measured here"})
    else:
        variants.append(Variant("onnx", base, True, "auto", backend="onnx"))
    return variants, skipped


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_speed(*, model: str | None = None, preset: str | None = None, device: str = "auto",
              precisions: Sequence[str] | None = None, repeats: int = 3, slices: int = 16,
              image_size: int | None = None, steps: int | None = None, guidance: tuple[float, float] | None = None,
              command: str = "", progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark and return its report (see ``bench speed --help`` and the module docstring)."""
    from engine.inference.settings import resolve_device, resolve_precision

    say = progress or (lambda message: None)
    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if steps is not None and steps < 1:
        raise ValueError("--steps must be at least 1")
    if slices < 0:
        raise ValueError("--slices must be 0 (all) or more")
    dev = resolve_device(device)
    if precisions is None:
        precisions = ("fp32",) + (HALF if dev.type == "cuda" else ())
    precisions = list(dict.fromkeys(str(p).strip().lower() for p in precisions))
    for p in precisions:
        resolve_precision(p, dev)                  # unknown, or half on a CPU: a clear ValueError
    machine = describe_machine(dev)
    say(f"machine: {machine['line']}")
    started = time.perf_counter()
    opened = open_model(model, preset, dev, precisions[0], image_size)
    opened.info["load_seconds"] = round(time.perf_counter() - started, 2)
    synth = opened.synth
    say(f"model: {opened.info['name']} ({opened.info['parameters'] / 1e6:.1f} M parameters, "
        f"{opened.info.get('label', 'trained weights')})")

    volume, source, target, volume_info = bench_volume(synth)
    plan = synth.plan(volume, source)
    chosen = central(plan.active, slices)
    if not chosen:
        raise ValueError("the benchmark volume has no slice with body in it")
    volume_info.update(slice_axis=plan.axis, slices=plan.count, body_slices=len(plan.active),
                       measured_slices=len(chosen), measured_indices=[chosen[0], chosen[-1]])
    settings = synth.default_settings()
    changes: dict[str, Any] = {"batch_size": "auto"}
    if steps is not None:
        changes["steps"] = steps
    if guidance is not None:
        changes["guidance"] = {"text_scale": float(guidance[0]), "image_scale": float(guidance[1])}
    settings = settings.from_dict(changes, base=settings)

    variants, skipped = plan_variants(precisions, dev, opened.info["weights_dtype"])
    synths = {("torch", precisions[0]): synth}
    providers: dict[str, list[str]] = {}
    scratch = tempfile.TemporaryDirectory(prefix="bench-onnx-")      # the onnx variant's export
    for v in variants:
        if (v.backend, v.precision) in synths:
            continue
        if v.backend == "onnx":
            from engine.inference.onnx_backend import OnnxSynthesizer

            say("exporting the ONNX graphs")
            onnx_synth = OnnxSynthesizer(synth.model_dir, device=dev.type, precision=v.precision,
                                         export_dir=Path(scratch.name) / "onnx", loaded=synth.loaded)
            providers[v.name] = onnx_synth.providers
            skipped += [{"what": f"{v.name} on {dev.type}", "why": n} for n in onnx_synth.notices]
            synths[(v.backend, v.precision)] = onnx_synth
        else:
            from engine.inference.pipeline import Synthesizer

            synths[(v.backend, v.precision)] = Synthesizer(synth.model_dir, device=dev, precision=v.precision,
                                                           loaded=synth.loaded)
    norm = synth.output_normalisation(target)

    def run_once(v: Variant) -> tuple[float, float, np.ndarray, PeakMemory]:
        s = synths[(v.backend, v.precision)]
        s.context_cache = v.context_cache
        run_settings = settings.replace(batch_size=v.batch)
        with PeakMemory(dev) as memory:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            out = s.synthesize_volume(volume, source, target, run_settings, slices=chosen)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - start
        s.context_cache = True
        result = slices_of(out.array, plan.axis, chosen)
        return seconds, s.network_seconds, (result - norm.lo) / (norm.hi - norm.lo), memory

    for (b, p), s in synths.items():                          # one untimed warm-up per backend and precision
        say(f"warm-up ({b}, {p})")
        s.synthesize_volume(volume, source, target, settings.replace(steps=min(2, settings.steps)), slices=chosen)
    overhead = []                       # the per-volume part: planning, body masks, normalisation, re-stacking
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        synth.synthesize_volume(volume, source, target, settings, slices=())
        overhead.append(time.perf_counter() - start)
    volume_info["overhead_s"] = round(_median(overhead), 5)
    for r in range(repeats):
        for v in variants:
            seconds, network, output, memory = run_once(v)
            v.times.append(seconds)
            v.network.append(network)
            v.batch_used = synths[(v.backend, v.precision)].last_batch_size
            v.peak, v.base = max(v.peak, memory.peak), memory.base
            if v.output is None:
                v.output = output
            say(f"repeat {r + 1}/{repeats} {v.name}: {seconds:.3f} s")

    report = assemble(variants, machine=machine, model_info=opened.info, volume_info=volume_info,
                      settings=settings, route=(source, target), repeats=repeats, skipped=skipped,
                      memory_method=PeakMemory(dev).method, command=command, providers=providers)
    scratch.cleanup()
    return report


def _ratios(seconds: Mapping[str, float]) -> dict[str, float | None]:
    """Slower / faster of each comparison from one time per variant name (None where the faster is 0)."""
    def ratio(slow: str, fast: str) -> float | None:
        return round(seconds[slow] / seconds[fast], 3) if seconds[fast] > 0 else None

    out = {"cache_speedup": ratio("uncached", "cached"), "batching_speedup": ratio("per-slice", "cached")}
    for p in HALF:
        if p in seconds:
            out[f"{p}_speedup"] = ratio("cached", p)
    if "onnx" in seconds:
        out["onnx_speedup"] = ratio("cached", "onnx")
    return out


def slices_of(array: np.ndarray, axis: int, indices: Sequence[int]) -> np.ndarray:
    from engine.inference.slices import slices_first

    return np.asarray(slices_first(np.asarray(array, np.float64), axis)[list(indices)])


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(np.abs(a - b).max())


def assemble(variants: Sequence[Variant], *, machine: dict, model_info: dict, volume_info: dict, settings,
             route: tuple[str, str], repeats: int, skipped: list[dict], memory_method: str, command: str,
             providers: dict[str, list[str]] | None = None) -> dict:
    """The JSON report from measured variants (``providers``: onnxruntime's, per onnx variant)."""
    by = {v.name: v for v in variants}
    n = volume_info["measured_slices"]
    body = volume_info["body_slices"]
    fixed = volume_info.get("overhead_s", 0.0)
    rows = []
    for v in variants:
        median = _median(v.times)
        rows.append({
            "name": v.name, "backend": v.backend, "precision": v.precision, "context_cache": v.context_cache,
            "batch": v.batch, **({"providers": providers[v.name]} if providers and v.name in providers else {}),
            "batch_size_used": v.batch_used, "times_s": [round(t, 5) for t in v.times],
            "median_s": round(median, 5), "network_median_s": round(_median(v.network), 5),
            "slices_per_second": round(n / median, 4),
            "seconds_per_slice": round(max(median - fixed, 0.0) / n, 5),
            "seconds_per_demo_volume": round(median if n >= body else fixed + max(median - fixed, 0.0) / n * body, 3),
            "peak_memory_mib": round(v.peak / 2**20, 1),
            "peak_above_start_mib": round(max(0, v.peak - v.base) / 2**20, 1),
        })
    ratios = _ratios({v.name: _median(v.times) for v in variants})
    ratios_sampling = _ratios({row["name"]: row["seconds_per_slice"] for row in rows})
    ratios_network = _ratios({row["name"]: row["network_median_s"] for row in rows})
    reference = by["cached"]
    agreement: dict[str, Any] = {
        "cached_vs_uncached": _max_diff(reference.output, by["uncached"].output),
        "batched_vs_per_slice": _max_diff(reference.output, by["per-slice"].output),
    }
    for name in [p for p in HALF if p in by] + (["onnx"] if "onnx" in by else []):
        agreement[f"{name}_vs_{reference.precision}"] = _max_diff(reference.output, by[name].output)
    agreement["scale"] = (f"max |difference| over the measured slices on the model's [0, 1] output scale "
                          f"(the {route[1]} output range mapped to 0…1)")
    g = settings.guidance
    whole = n >= body
    return {
        "benchmark": "speed", "schema": 1, "command": command,
        "date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "machine": machine, "device": machine["line"], "model": model_info, "volume": volume_info,
        "settings": {"route": f"{route[0]}->{route[1]}", "steps": settings.steps, "solver": settings.solver,
                     "shift": settings.shift, "guidance": g.to_dict(), "seed": settings.seed,
                     "noise_correlation": settings.noise_correlation, "guided_filter": settings.guided_filter,
                     "guided_filter_depth": settings.guided_filter_depth,
                     "batch": settings.batch_size, "repeats": repeats,
                     "warm_up": "one untimed run per precision (2 steps) before the timed repeats",
                     "order": "round-robin: repeat k of every variant before repeat k+1"},
        "variants": rows, "ratios": ratios, "ratios_sampling": ratios_sampling, "ratios_network": ratios_network,
        "ratios_note": ("ratios: slower variant's median / faster one's, end to end; ratios_sampling: the same "
                        "from seconds per slice, i.e. without the per-volume part every run pays once; "
                        "ratios_network: from the time in the transformer alone (each batch's context encoding "
                        "and ODE steps, without the autoencoder), i.e. what the context cache changes"),
        "agreement": agreement,
        "memory": {"method": memory_method,
                   "peak_memory_mib": "the highest value during a timed run (max over repeats)",
                   "peak_above_start_mib": "that peak minus the value when the run started (≈ without the weights)"},
        "seconds_per_demo_volume": ("measured on the whole volume" if whole else
                                    f"extrapolated: the per-volume part ({fixed:.2f} s: planning, body masks, "
                                    f"normalisation, measured alone) + seconds per slice × {body} body slices "
                                    f"(measured on {n} central ones; empty slices cost nothing)"),
        "seconds_per_slice": "(median − the per-volume part) / measured slices",
        "not_measured": skipped,
    }


# -- printing ----------------------------------------------------------------------------------------
def _mib(value: float) -> str:
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def _memory(row: dict) -> str:
    return f"{_mib(row['peak_memory_mib'])} (+{_mib(row['peak_above_start_mib'])})"


def _diff(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def _variant_diff(report: dict, name: str) -> float | None:
    agreement, base = report["agreement"], _base_precision(report)
    key = {"uncached": "cached_vs_uncached", "per-slice": "batched_vs_per_slice"}.get(name, f"{name}_vs_{base}")
    return agreement.get(key)


def _base_precision(report: dict) -> str:
    return next(row["precision"] for row in report["variants"] if row["name"] == "cached")


def ratio_line(report: dict, key: str = "ratios") -> str:
    r = report[key]

    def x(value: float | None) -> str:
        return "—" if value is None else f"×{value:.2f}"
    parts = [f"context cache {x(r['cache_speedup'])}", f"batching {x(r['batching_speedup'])}"]
    for p in HALF:
        if f"{p}_speedup" in r:
            parts.append(f"{p} vs {_base_precision(report)} {x(r[f'{p}_speedup'])}")
    if "onnx_speedup" in r:
        parts.append(f"onnxruntime vs torch {x(r['onnx_speedup'])}")
    return " · ".join(parts)


def _title(report: dict) -> str:
    m, v, s = report["model"], report["volume"], report["settings"]
    weights = f", {m['label']}" if m.get("random_weights") else ""
    g = s["guidance"]
    return (f"{m['name']} ({m['parameters'] / 1e6:,.1f} M parameters{weights}); {s['route'].replace('->', '→')}, "
            f"{v['measured_slices']} of {v['body_slices']} body slices of the {v['kind']} volume at {m['image_size']}², "
            f"{s['steps']} {s['solver']} steps, guidance text {g['text_scale']:g} / image {g['image_scale']:g}, "
            + (f"source-guided filter radius {s['guided_filter']:g}"
               + (f" / depth {s['guided_filter_depth']:g}" if s.get("guided_filter_depth") else "")
               + " model px, " if s.get("guided_filter") else "")
            + f"median of {s['repeats']}")


def to_markdown(report: dict) -> str:
    """A table to paste into the README as it is: command, machine and date in its header."""
    lines = [f"**`{report['command']}`** — {report['date'][:10]}", "",
             f"Machine: {report['machine']['line']}", "",
             f"Model: {_title(report)}", "",
             "| variant | precision | context cache | batch | median s | slices/s | s per demo volume | peak memory (+ during run) | max abs diff |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in report["variants"]:
        batch = "auto" if row["batch"] == "auto" else str(row["batch"])
        if row["batch"] == "auto" and row["batch_size_used"]:
            batch += f" ({row['batch_size_used']})"
        lines.append(f"| {row['name']} | {row['precision']} | {'yes' if row['context_cache'] else 'no'} | {batch} | "
                     f"{row['median_s']:.3f} | {row['slices_per_second']:.2f} | {row['seconds_per_demo_volume']:.1f} | "
                     f"{_memory(row)} | {_diff(_variant_diff(report, row['name']))} |")
    lines += ["", f"Ratios: {ratio_line(report)} (end-to-end medians)", "",
              f"Ratios, sampling only: {ratio_line(report, 'ratios_sampling')} (per-volume part removed)", "",
              f"Ratios, transformer only: {ratio_line(report, 'ratios_network')} (each batch's context encoding "
              "and ODE steps, without the autoencoder: what the context cache changes)", "",
              f"- Max abs diff: against `cached`, {report['agreement']['scale']}.",
              f"- Peak memory: {report['memory']['method']}; (+ …) is the rise during the run.",
              f"- Seconds per demo volume: {report['seconds_per_demo_volume']}.",
              f"- Volume: {report['volume']['note']}."]
    for item in report["not_measured"]:
        lines.append(f"- Not measured: {item['what']} — {item['why']}.")
    return "\n".join(lines) + "\n"


def to_text(report: dict) -> str:
    lines = [f"speed benchmark {report['date']}", f"machine: {report['machine']['line']}",
             f"model:   {_title(report)}", f"volume:  {report['volume']['note']}", "",
             f"{'variant':<10} {'precision':<9} {'cache':<5} {'batch':<9} {'median s':>9} {'slices/s':>9} "
             f"{'s/volume':>9} {'peak mem (+run)':>18} {'max diff':>9}"]
    for row in report["variants"]:
        batch = f"{row['batch']}" + (f"({row['batch_size_used']})" if row["batch"] == "auto" else "")
        lines.append(f"{row['name']:<10} {row['precision']:<9} {'yes' if row['context_cache'] else 'no':<5} "
                     f"{batch:<9} {row['median_s']:>9.3f} {row['slices_per_second']:>9.2f} "
                     f"{row['seconds_per_demo_volume']:>9.1f} {_memory(row):>18} "
                     f"{_diff(_variant_diff(report, row['name'])):>9}")
    lines += ["", f"ratios:  {ratio_line(report)} (end-to-end medians)",
              f"         {ratio_line(report, 'ratios_sampling')} (sampling only, per-volume part removed)",
              f"         {ratio_line(report, 'ratios_network')} (transformer only: context + ODE steps)",
              f"memory:  {report['memory']['method']}",
              f"s/volume: {report['seconds_per_demo_volume']}"]
    for item in report["not_measured"]:
        lines.append(f"not measured: {item['what']} — {item['why']}")
    return "\n".join(lines)
