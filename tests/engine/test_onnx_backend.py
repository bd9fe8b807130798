"""The ONNX Runtime backend on tiny random models: the exported graphs give what torch gives (within
1e-3 on the [0, 1] output scale, for the tiny and the token-aligned, target-conditioned default preset,
with all three guidance branches), the export beside the model is reused and redone when the weights change,
`--backend onnx` and `export-onnx` work through the CLI, and provider choice falls back with a notice."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import engine.io as io
from engine.inference import SynthesisSettings, Synthesizer
from engine.inference.onnx_backend import OnnxSynthesizer, choose_providers
from engine.inference.onnx_export import GRAPHS, MANIFEST
from engine.inference.random_model import write_random_model
from engine.io.volume import Volume
from engine.sampling import GuidanceConfig
from engine.tasks.phantoms import phantom_labels, phantom_volume
from main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROUTES = (("T1", "T2"), ("T1", "FLAIR"))
GUIDED = SynthesisSettings(steps=3, batch_size="auto", guidance=GuidanceConfig(text_scale=2.0, image_scale=1.5))


def t1_volume() -> Volume:
    labels = phantom_labels((5, 20, 24), seed=2)
    return Volume(phantom_volume(labels, "T1", 2), spacing=(0.9, 1.0, 3.0), modality="T1", unit="a.u.")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"tiny": write_random_model(root / "tiny", preset="tiny", routes=ROUTES, image_size=32),
            "default": write_random_model(root / "default", preset="default", routes=ROUTES, image_size=32,
                                          source_token_aligned=True, target_modalities=("T2", "FLAIR"))}


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_onnxruntime_matches_torch_within_1e3(models, preset):
    volume = t1_volume()
    onnx = OnnxSynthesizer(models[preset], device="cpu")
    assert onnx.exported and onnx.providers == ["CPUExecutionProvider"] and onnx.notices == []
    written = sorted(p.name for p in (models[preset] / "onnx").iterdir())
    assert written == sorted([MANIFEST] + [f"{g}.onnx" for g in GRAPHS])
    torch_result = Synthesizer(models[preset], device="cpu").synthesize_volume(volume, "T1", "T2", GUIDED)
    onnx_result = onnx.synthesize_volume(volume, "T1", "T2", GUIDED)
    scale = onnx.output_normalisation("T2")
    assert onnx_result.same_grid(volume)
    assert np.abs(onnx_result.array - torch_result.array).max() / (scale.hi - scale.lo) < 1e-3
    assert np.ptp(onnx_result.array) > 0
    assert any(n.startswith("backend: ONNX Runtime") and "CPUExecutionProvider" in n for n in onnx_result.notes)
    one_by_one = onnx.synthesize_volume(volume, "T1", "T2", GUIDED.replace(batch_size=1))   # dynamic batch
    assert np.abs(one_by_one.array - onnx_result.array).max() / (scale.hi - scale.lo) < 1e-4
    assert onnx.execution_device == "cpu" and any(" s on cpu (fp32)" in n for n in onnx_result.notes)
    other = onnx.synthesize_volume(volume, "T1", "FLAIR", GUIDED)              # another target row (default)
    reference = Synthesizer(models[preset], device="cpu").synthesize_volume(volume, "T1", "FLAIR", GUIDED)
    assert np.abs(other.array - reference.array).max() / (scale.hi - scale.lo) < 1e-3
    onnx.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]     # what onnxruntime-gpu would report
    assert onnx.execution_device == "cuda"          # the results say where ONNX Runtime ran, not torch


def test_export_is_reused_and_redone_when_the_weights_change(models):
    folder = models["tiny"]
    OnnxSynthesizer(folder, device="cpu")                        # exported here or by an earlier test
    assert not OnnxSynthesizer(folder, device="cpu").exported
    weights = folder / "model.safetensors"
    later = weights.stat().st_mtime_ns + 5_000_000_000
    os.utime(weights, ns=(later, later))
    redone = OnnxSynthesizer(folder, device="cpu")
    assert redone.exported
    manifest = json.loads((folder / "onnx" / MANIFEST).read_text())
    assert manifest["model_files"]["model.safetensors"][1] == later and manifest["opset"] >= 17


def test_an_export_from_older_graph_code_is_redone(models):
    import engine.inference.onnx_export as onnx_export

    folder = models["tiny"]
    OnnxSynthesizer(folder, device="cpu")
    manifest_file = folder / "onnx" / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    manifest["graph_version"] = onnx_export.GRAPH_VERSION - 1
    manifest_file.write_text(json.dumps(manifest))
    assert not onnx_export.export_is_current(folder / "onnx", folder, manifest["image_size"])
    assert OnnxSynthesizer(folder, device="cpu").exported
    assert json.loads(manifest_file.read_text())["graph_version"] == onnx_export.GRAPH_VERSION


def test_llm_graphs_build_the_attention_bias_once(models):
    import onnx

    folder = models["tiny"]
    OnnxSynthesizer(folder, device="cpu")
    for name in ("context", "velocity"):
        ops = [n.op_type for n in onnx.load(str(folder / "onnx" / f"{name}.onnx"), load_external_data=False).graph.node]
        # a boolean mask would be turned into a bias, and the softmax guarded (IsNaN), in every layer
        assert "Softmax" in ops and "IsNaN" not in ops, name


def test_large_graphs_keep_their_weights_in_external_data(models, tmp_path, monkeypatch):
    import engine.inference.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 64 * 1024)   # the tiny model's LLM graphs count as large
    onnx = OnnxSynthesizer(models["tiny"], device="cpu", export_dir=tmp_path / "onnx")
    files = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert "context.onnx.data" in files and "velocity.onnx.data" in files and not any(f.startswith(".") for f in files)
    assert (tmp_path / "onnx" / "velocity.onnx").stat().st_size < (tmp_path / "onnx" / "velocity.onnx.data").stat().st_size
    volume = t1_volume()
    inline = OnnxSynthesizer(models["tiny"], device="cpu").synthesize_volume(volume, "T1", "T2", GUIDED)
    external = onnx.synthesize_volume(volume, "T1", "T2", GUIDED)
    assert np.array_equal(inline.array, external.array)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_synthesize_cli_with_backend_onnx(capsys, models, tmp_path):
    source = io.save(t1_volume(), tmp_path / "t1.nii.gz")
    common = ["--target", "T2", "--model", models["tiny"], "--device", "cpu", "--steps", "2", "--quiet"]
    code, out, err = run(capsys, "synthesize", source, "-o", tmp_path / "onnx.nii.gz", "--backend", "onnx", *common)
    assert code == 0, err
    report = json.loads(out)
    assert report["backend"] == "onnx" and report["providers"] == ["CPUExecutionProvider"]
    code, out, err = run(capsys, "synthesize", source, "-o", tmp_path / "torch.nii.gz", *common)
    assert code == 0, err
    difference = np.abs(io.load(tmp_path / "onnx.nii.gz").array - io.load(tmp_path / "torch.nii.gz").array)
    assert difference.max() < 1.0                                 # a.u. on a 0…1000 scale

    code, out, err = run(capsys, "synthesize", source, "-o", tmp_path / "never.nii.gz", "--backend", "onnx",
                         "--precision", "bf16", *common)
    assert code == 2 and err.startswith("error:") and "--backend torch for bf16" in err
    assert not (tmp_path / "never.nii.gz").exists()


def test_export_onnx_cli_writes_every_graph(capsys, models, tmp_path):
    code, out, err = run(capsys, "export-onnx", "--model", models["default"], "-o", tmp_path / "graphs")
    assert code == 0, err
    report = json.loads(out)
    assert report["graphs"] == [f"{g}.onnx" for g in GRAPHS]
    assert all((tmp_path / "graphs" / g).stat().st_size > 0 for g in report["graphs"])
    manifest = json.loads((tmp_path / "graphs" / MANIFEST).read_text())
    assert manifest["source_token_aligned"] is True and manifest["target_modalities"] == ["T2", "FLAIR"]
    code, out, err = run(capsys, "export-onnx", "--model", tmp_path / "missing")
    assert code == 2 and "no model at" in err


def test_providers_fall_back_with_a_notice(monkeypatch, tmp_path):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    providers, notices = choose_providers("cuda", "fp32", tmp_path)
    assert providers == ["CPUExecutionProvider"] and "onnxruntime-gpu" in notices[0]
    assert choose_providers("auto", "fp32", tmp_path) == (["CPUExecutionProvider"], [])
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        choose_providers("cpu", "fp16", tmp_path)

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu)
    providers, notices = choose_providers("auto", "fp16", tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in providers] == gpu and notices == []
    assert providers[0][1]["trt_fp16_enable"] is True
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu[1:])
    providers, notices = choose_providers("cuda", "fp16", tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in providers] == gpu[1:] and "running fp32 on CUDA" in notices[0]


def test_gpu_providers_run_on_torchs_current_gpu(monkeypatch, tmp_path):
    import onnxruntime
    import torch

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)      # torchrun's rank with LOCAL_RANK 3
    providers, _notices = choose_providers("cuda", "fp32", tmp_path)
    assert [options["device_id"] for _name, options in providers[:2]] == [3, 3]
    assert providers[2] == "CPUExecutionProvider"
