"""Inference: the volume synthesis pipeline (:class:`Synthesizer`; :class:`OnnxSynthesizer` runs it
with ONNX Runtime), its settings, modality identification and the model card as inference reads it.

Names load lazily so that building the CLI parser does not import torch.
"""
from __future__ import annotations

from engine.exports import lazy_exports

# the patient planes synthesis may cut a volume in (auto: the acquisition plane), here so that the
# CLI parser and the GUI read them without importing torch
SLICING_PLANES = ("auto", "axial", "coronal", "sagittal")
BACKENDS = ("torch", "onnx")                # engine.inference.backends.synthesizer_for
DEVICES = ("auto", "cpu", "cuda")
PRECISION_NAMES = ("fp32", "fp16", "bf16")   # engine.inference.settings.PRECISIONS

__getattr__, __all__ = lazy_exports(__name__, {
    "Synthesizer": "pipeline", "SlicePlan": "pipeline", "RESEARCH_NOTE": "pipeline", "sliced_plane": "pipeline",
    "plane_axis": "pipeline",
    "synthesizer_for": "backends",
    "OnnxSynthesizer": "onnx_backend", "onnxruntime": "onnx_backend",
    "GRAPHS": "onnx_export", "OPSET": "onnx_export", "export_onnx": "onnx_export",
    "SynthesisSettings": "settings", "resolve_device": "settings", "resolve_precision": "settings",
    "Identification": "identify", "identify_modality": "identify", "source_modality": "identify",
    "ModelCard": "model_card", "parse_route": "model_card", "BENCHMARK_PREFIX": "model_card",
    "SOURCE_FLOOR_PREFIX": "model_card",
    "NO_PROFILE_NOTE": "ood", "WARNING_PREFIX": "ood", "OOD_MARK": "ood", "marked_description": "ood",
    "with_warnings": "ood",
    "slice_axis": "slices", "slices_first": "slices",
    "Checks": "checked", "synthesize_checked": "checked", "synthetic_input_note": "checked",
    "provenance": "sidecar", "folders_cut": "sidecar", "check_sidecar": "sidecar",
    "write_sidecar": "sidecar", "sidecar_path": "sidecar", "save_described": "sidecar",
})
