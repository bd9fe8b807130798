"""``python main.py export-onnx --model DIR [-o DIR]``: the model's inference graphs (VAE encoder and
decoder, context encoder, velocity step over the cached context) as ONNX with a dynamic batch, where
``--backend onnx`` looks for them (``MODEL_DIR/onnx``) unless ``-o`` says otherwise."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli.common import model_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="export a model's inference graphs to ONNX (for --backend onnx)",
        description="Export the VAE encoder and decoder, the context encoder and the velocity step (with the "
                    "cached context) of a SynerMedGen model as float32 ONNX graphs with a dynamic batch, plus "
                    "export.json (opset, versions, fingerprint of the model files). --backend onnx exports "
                    "them itself on first use; this command does it ahead of time or elsewhere.")
    p.add_argument("--model", metavar="DIR", help="model folder (default: the default model)")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default: MODEL_DIR/onnx, where "
                                                         "--backend onnx looks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.inference import GRAPHS, OPSET, Synthesizer, export_onnx, onnxruntime

    onnxruntime()                                  # fail early when the backend could not use the export
    started = time.perf_counter()
    folder = model_dir(args)
    output = Path(args.output) if args.output else folder / "onnx"
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a folder")
    synth = Synthesizer(folder, device="cpu")
    export_onnx(synth.model, synth.image_size, output, folder)
    print(json.dumps({"output": str(output), "model": synth.name, "graphs": [f"{g}.onnx" for g in GRAPHS],
                      "opset": OPSET, "image_size": synth.image_size, "dynamic": "batch",
                      "seconds": round(time.perf_counter() - started, 2)}))
    return 0
