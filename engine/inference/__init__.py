"""Inference: the volume synthesis pipeline (:class:`Synthesizer`; :class:`OnnxSynthesizer` runs it
with ONNX Runtime), its settings, modality identification and the model card as inference reads it.

Names load lazily so that building the CLI parser does not import torch.
"""
from __future__ import annotations

import importlib

# the patient planes synthesis may cut a volume in (auto: the acquisition plane), here so that the
# CLI parser and the GUI read them without importing torch
SLICING_PLANES = ("auto", "axial", "coronal", "sagittal")
BACKENDS = ("torch", "onnx")                # engine.inference.backends.synthesizer_for
DEVICES = ("auto", "cpu", "cuda")
PRECISION_NAMES = ("fp32", "fp16", "bf16")   # engine.inference.settings.PRECISIONS

_EXPORTS = {
    "Synthesizer": "engine.inference.pipeline",
    "synthesizer_for": "engine.inference.backends",
    "source_modality": "engine.inference.identify",
    "OnnxSynthesizer": "engine.inference.onnx_backend",
    "SlicePlan": "engine.inference.pipeline",
    "RESEARCH_NOTE": "engine.inference.pipeline",
    "SynthesisSettings": "engine.inference.settings",
    "resolve_device": "engine.inference.settings",
    "resolve_precision": "engine.inference.settings",
    "Identification": "engine.inference.identify",
    "identify_modality": "engine.inference.identify",
    "ModelCard": "engine.inference.model_card",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine.inference' has no attribute {name!r}")
