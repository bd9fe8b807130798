"""`python main.py bench speed --quick`: the speed benchmark runs end to end through the CLI in
seconds (tiny random model, a few 32² slices, few steps) and reports variants, medians, ratios,
agreement between variants and the machine, as JSON and as a Markdown table."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "main.py", "bench", "speed", "--quick", "--device", "cpu", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("bench") / "speed.json"
    done = _bench("--json", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), json.loads(out.read_text(encoding="utf-8"))


def test_quick_json_has_variants_medians_ratios_agreement_and_device(quick):
    report, written = quick
    assert written == report
    names = [v["name"] for v in report["variants"]]
    assert names == ["uncached", "cached", "per-slice", "onnx"]    # CPU: no half precision
    for v in report["variants"]:
        assert len(v["times_s"]) == report["settings"]["repeats"] == 2
        assert v["median_s"] > 0 and v["slices_per_second"] > 0 and v["seconds_per_demo_volume"] > 0
        assert v["median_s"] == pytest.approx(sorted(v["times_s"])[0] / 2 + sorted(v["times_s"])[1] / 2, abs=1e-4)
        assert v["peak_memory_mib"] > 0
    by = {v["name"]: v for v in report["variants"]}
    assert not by["uncached"]["context_cache"] and by["cached"]["context_cache"]
    assert by["per-slice"]["batch"] == 1 and by["per-slice"]["batch_size_used"] == 1
    assert by["cached"]["batch"] == "auto"
    ratios = report["ratios"]
    assert ratios["cache_speedup"] == pytest.approx(by["uncached"]["median_s"] / by["cached"]["median_s"], rel=1e-2)
    assert ratios["batching_speedup"] == pytest.approx(by["per-slice"]["median_s"] / by["cached"]["median_s"], rel=1e-2)
    assert by["onnx"]["backend"] == "onnx" and by["onnx"]["providers"] == ["CPUExecutionProvider"]
    assert ratios["onnx_speedup"] == pytest.approx(by["cached"]["median_s"] / by["onnx"]["median_s"], rel=1e-2)
    assert set(report["ratios_sampling"]) == {"cache_speedup", "batching_speedup", "onnx_speedup"}
    for v in report["variants"]:                # the transformer's share: measured, and part of the run
        assert 0 < v["network_median_s"] < v["median_s"]
    network = report["ratios_network"]
    assert set(network) == {"cache_speedup", "batching_speedup", "onnx_speedup"}
    assert network["cache_speedup"] == pytest.approx(
        by["uncached"]["network_median_s"] / by["cached"]["network_median_s"], rel=1e-2)
    assert report["volume"]["overhead_s"] >= 0
    agreement = report["agreement"]
    assert 0 <= agreement["cached_vs_uncached"] <= 1e-4
    assert 0 <= agreement["batched_vs_per_slice"] <= 1e-4
    assert 0 <= agreement["onnx_vs_fp32"] <= 1e-3
    assert not any("ONNX" in n["what"] for n in report["not_measured"])
    assert report["model"]["random_weights"] and report["model"]["label"] == "random weights: speed only"
    assert report["model"]["preset"] == "tiny" and report["model"]["image_size"] == 32
    assert report["volume"]["kind"] in ("demo", "phantom") and report["volume"]["measured_slices"] == 3
    assert report["settings"]["steps"] == 3
    assert report["settings"]["guided_filter"] == report["settings"]["noise_correlation"] == 0.0   # the card's
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["cores"] >= 1 and machine["torch_threads"] >= 1
    assert machine["torch"] and machine["cpu"] in report["device"]
    assert any("half precision is not measured on CPU" in n["why"] for n in report["not_measured"])
    assert report["command"].startswith("python main.py bench speed") and report["date"]


def test_quick_markdown_has_table_ratios_and_machine():
    done = _bench("--markdown", "--repeats", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "Machine: CPU " in text and "torch threads" in text
    assert "`python main.py bench speed --repeats 1 --device cpu --quick --markdown`" in text
    assert "| variant | precision |" in text and "| uncached | fp32 | no |" in text and "| cached | fp32 | yes |" in text
    assert "| onnx | fp32 | yes |" in text and "onnxruntime vs torch ×" in text
    assert "Ratios: context cache ×" in text and "batching ×" in text and "Ratios, sampling only:" in text
    assert "Ratios, transformer only: context cache ×" in text
    assert "random weights: speed only" in text
    assert "half precision is not measured on CPU" in text


def test_bad_requests_exit_2_with_one_line():
    done = _bench("--precisions", "fp16")
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    done = _bench("--preset", "huge")
    assert done.returncode == 2 and "unknown model preset" in done.stderr


def test_a_bf16_run_skips_the_onnx_backend_with_the_reason():
    """The bagel-7b row of bench/gpu_check.sh is bf16: ONNX Runtime cannot run it (it stopped that row)."""
    from engine.evaluation.speed import plan_variants

    variants, skipped = plan_variants(["bf16"], torch.device("cuda"), "bfloat16")
    assert [v.name for v in variants] == ["uncached", "cached", "per-slice"]
    assert any(s["what"] == "ONNX Runtime" and "bf16" in s["why"] for s in skipped)
    variants, _ = plan_variants(["fp32", "fp16"], torch.device("cuda"), "float32")
    assert "onnx" in [v.name for v in variants] or importlib.util.find_spec("onnxruntime") is None
