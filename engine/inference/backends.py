"""Opening a model folder for synthesis with one of the backends (:data:`engine.inference.BACKENDS`)."""
from __future__ import annotations

from pathlib import Path

from engine.inference import BACKENDS


def synthesizer_for(folder: str | Path, backend: str = "torch", device: str = "auto", precision: str = "fp32"):
    """The Synthesizer of ``backend`` ("torch", or "onnx": ONNX Runtime, exporting the ONNX graphs
    beside the model on first use) for a model folder."""
    if backend == "onnx":
        from engine.inference.onnx_backend import OnnxSynthesizer

        return OnnxSynthesizer(folder, device=device, precision=precision)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    from engine.inference.pipeline import Synthesizer

    return Synthesizer(folder, device=device, precision=precision)
