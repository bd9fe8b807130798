"""A one-shot measurement of the synthesis pipeline on this machine's device (a GPU when there is
one): time per volume and per slice for precisions, batch sizes and the context cache, the batch
size ``auto`` picks and the peak memory, agreement between precisions, and optionally the
``bagel-7b`` preset with random weights (real shapes and FLOPs). Prints and writes JSON.

    python -m engine.evaluation.device_check [--device cuda] [--quick] [--bagel] [--out DIR]

Random weights: the numbers are speeds and agreements, never quality. The forerunner of
``python main.py bench speed``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _phantom(slices: int, size: int):
    from engine.io.volume import Volume
    from engine.tasks.phantoms import phantom_labels, phantom_volume

    labels = phantom_labels((slices + 2, size, size), seed=0)
    labels[0] = labels[-1] = 0
    return Volume(phantom_volume(labels, "T1", 0), spacing=(1.0, 1.0, 3.0), modality="T1", unit="a.u.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(synth, volume, settings, repeats: int):
    """(median seconds, result of the last run, peak GPU bytes) over ``repeats`` runs."""
    times, result, peak = [], None, 0
    for _ in range(repeats):
        if synth.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(synth.device)
        _sync(synth.device)
        start = time.perf_counter()
        result = synth.synthesize_volume(volume, "T1", "T2", settings)
        _sync(synth.device)
        times.append(time.perf_counter() - start)
        if synth.device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(synth.device))
    return statistics.median(times), result, peak


def _normalised(volume) -> np.ndarray:
    return np.asarray(volume.array, np.float64) / 1000.0      # MR output range 0…1000 a.u.


def check_preset(preset: str, image_size: int, device: torch.device, volume, steps: int, repeats: int,
                 precisions=("fp32", "fp16", "bf16"), folder: Path | None = None) -> dict:
    from engine.inference import Synthesizer, SynthesisSettings
    from engine.inference.random_model import write_random_model

    folder = folder or Path(tempfile.mkdtemp())
    model_dir = write_random_model(folder / preset, preset=preset, image_size=image_size,
                                   routes=(("T1", "T2"),))
    n = len(_phantom_active(volume))
    out: dict = {"preset": preset, "image_size": image_size, "slices": n, "steps": steps, "runs": []}
    base = SynthesisSettings(steps=steps)
    reference = None
    for precision in precisions:
        if precision != "fp32" and device.type != "cuda":
            continue
        synth = Synthesizer(model_dir, device=device, precision=precision)
        synth.synthesize_volume(volume, "T1", "T2", base.replace(batch_size=4, steps=2))     # warm-up
        for label, settings, cache in (("auto", base, True), ("batch1", base.replace(batch_size=1), True),
                                       ("auto-uncached", base, False)):
            if precision != "fp32" and label != "auto":
                continue
            synth.context_cache = cache
            seconds, result, peak = _timed(synth, volume, settings, repeats)
            row = {"precision": precision, "run": label, "seconds_per_volume": round(seconds, 4),
                   "slices_per_second": round(n / seconds, 2), "batch_size": synth.last_batch_size,
                   "peak_gpu_mib": round(peak / 2**20, 1)}
            if label == "auto" and precision == "fp32":
                reference = result
            elif reference is not None:
                row["max_abs_diff_vs_fp32_auto"] = float(np.abs(_normalised(result) - _normalised(reference)).max())
            out["runs"].append(row)
            print(json.dumps({preset: row}), flush=True)
        synth.context_cache = True
    runs = {(r["precision"], r["run"]): r["seconds_per_volume"] for r in out["runs"]}
    if ("fp32", "auto-uncached") in runs:
        out["cache_speedup"] = round(runs[("fp32", "auto-uncached")] / runs[("fp32", "auto")], 2)
        out["batch_speedup"] = round(runs[("fp32", "batch1")] / runs[("fp32", "auto")], 2)
    for p in ("fp16", "bf16"):
        if (p, "auto") in runs:
            out[f"{p}_speedup"] = round(runs[("fp32", "auto")] / runs[(p, "auto")], 2)
    return out


def _phantom_active(volume) -> list:
    from engine import modalities

    mask = modalities.body_mask(volume.array, "T1")
    return [i for i in range(mask.shape[0]) if mask[i].mean() >= 0.01]


def check_bagel(device: torch.device, slices: int, image_size: int, steps: int, preset_name: str = "bagel-7b",
                precision: str = "bf16") -> dict:
    """The ``bagel-7b`` preset with random weights (bf16), BAGEL's guidance (3 branches)."""
    from engine.inference import Synthesizer, SynthesisSettings
    from engine.model import LoadedModel, from_config, preset, train_tokenizer
    from engine.sampling import GuidanceConfig
    from engine.tasks.corpus import instruction_corpus

    tokenizer = train_tokenizer(instruction_corpus(["T1", "T2"], anatomies=("brain",)), vocab_size=1024)
    cfg = preset(preset_name).replace(tokens=tokenizer.special_ids)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    start = time.perf_counter()
    torch.manual_seed(0)
    model = from_config(cfg, device=device, dtype=dtype).eval()
    with torch.no_grad():
        model.llm2vae.weight.normal_(std=0.02)
    built = time.perf_counter() - start
    card = {"name": f"random-{preset_name}", "routes": [["T1", "T2"]], "image_size": image_size}
    synth = Synthesizer(Path(f"random-{preset_name}"), device=device, precision=precision,
                        loaded=LoadedModel(model, cfg, tokenizer, card))
    volume = _phantom(slices, image_size)
    settings = SynthesisSettings(steps=steps, guidance=GuidanceConfig(4.0, 1.5, (0.4, 1.0)))
    synth.synthesize_volume(volume, "T1", "T2", settings.replace(steps=2, batch_size=2))          # warm-up
    out: dict = {"preset": preset_name, "weights": f"random, {precision}", "build_seconds": round(built, 1),
                 "parameters": sum(p.numel() for p in model.parameters()), "image_size": image_size,
                 "slices": slices, "steps": steps, "guidance": "text 4.0 / image 1.5 in (0.4, 1]", "runs": []}
    for label, s in (("batch1", settings.replace(batch_size=1)), ("auto", settings)):
        seconds, _, peak = _timed(synth, volume, s, 1)
        row = {"run": label, "seconds_per_volume": round(seconds, 3), "seconds_per_slice": round(seconds / slices, 3),
               "batch_size": synth.last_batch_size, "peak_gpu_mib": round(peak / 2**20, 1)}
        out["runs"].append(row)
        print(json.dumps({preset_name: row}), flush=True)
    return out


def check_real_oom(device: torch.device, image_size: int = 64, slices: int = 16) -> dict:
    """A real CUDA out-of-memory: cap this process's GPU memory a little above what 3 slices
    need, ask for batches of ``slices``; the pipeline must halve and give the same volume."""
    from engine.inference import Synthesizer, SynthesisSettings
    from engine.inference.random_model import write_random_model

    synth = Synthesizer(write_random_model(Path(tempfile.mkdtemp()) / "tiny", image_size=image_size,
                                           routes=(("T1", "T2"),)), device=device)
    volume = _phantom(slices, 128)
    settings = SynthesisSettings(steps=8)
    reference = synth.synthesize_volume(volume, "T1", "T2", settings.replace(batch_size=1))
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    synth.synthesize_volume(volume, "T1", "T2", settings.replace(batch_size=1))
    per_slice = torch.cuda.max_memory_allocated(device) - start
    total = torch.cuda.get_device_properties(device).total_memory
    cap = base + 3 * per_slice + (32 << 20)
    torch.cuda.empty_cache()
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)
    try:
        messages: list[str] = []
        result = synth.synthesize_volume(volume, "T1", "T2", settings.replace(batch_size=slices),
                                         progress=lambda p: messages.append(p.message))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
    halvings = [m for m in messages if "out of memory" in m]
    return {"check": "real CUDA out-of-memory", "per_slice_mib": round(per_slice / 2**20, 1),
            "cap_mib": round(cap / 2**20, 1), "asked_batch": slices, "final_batch": synth.last_batch_size,
            "halvings": halvings, "device_after": synth.device.type,
            "max_abs_diff_vs_batch1": float(np.abs(_normalised(result) - _normalised(reference)).max())}


def _guarded(report: dict, name: str, fn, *args, **kwargs) -> None:
    """Run one check; an error is recorded, not fatal, so one run measures everything it can."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:            # noqa: BLE001 — reported in the JSON
        import traceback

        result = {"check": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    report["checks"].append(result)
    print(json.dumps({name: "done"}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny preset only, few slices (a dry run)")
    parser.add_argument("--bagel", action="store_true", help="also the bagel-7b preset with random weights")
    parser.add_argument("--out", help="folder for device_check.json")
    parser.add_argument("--checks", default="tiny,oom,small,bagel-7b", help="which checks (comma-separated)")
    args = parser.parse_args(argv)
    from engine.inference.settings import resolve_device

    device = resolve_device(args.device)
    report: dict = {"device": _device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "checks": []}
    print(json.dumps({"device": report["device"], "torch": report["torch"]}), flush=True)
    if args.quick:
        _guarded(report, "tiny", check_preset, "tiny", 32, device, _phantom(6, 48), steps=4, repeats=1)
    else:
        volume = _phantom(40, 128)
        wanted = set(args.checks.split(","))
        if "tiny" in wanted:
            _guarded(report, "tiny", check_preset, "tiny", 64, device, volume, steps=24, repeats=2)
        if "oom" in wanted and device.type == "cuda":
            _guarded(report, "oom", check_real_oom, device)
        if "small" in wanted:
            _guarded(report, "small", check_preset, "small", 128, device, volume, steps=24, repeats=1)
        if "bagel-7b" in wanted and args.bagel and device.type == "cuda":
            _guarded(report, "bagel-7b", check_bagel, device, slices=8, image_size=224, steps=25)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "device_check.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
