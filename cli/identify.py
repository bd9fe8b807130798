"""``python main.py identify INPUT``: the input's modality by the model's understanding branch,
with its confidence and every candidate's probability."""
from __future__ import annotations

import argparse
import json

from cli.common import add_model_arguments, json_ready, open_synthesizer
from engine.jobs import stderr_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("identify", help="identify the modality of a volume with the model",
                       description="Ask the model's understanding branch (the MI task) which modality INPUT is, "
                                   "on a few central slices; prints the modality and its confidence.")
    p.add_argument("input", help="a NIfTI/MHA/NRRD file, a DICOM file or a DICOM folder")
    add_model_arguments(p, backend=False)
    p.add_argument("--series", help="SeriesInstanceUID (or unique prefix) when INPUT holds several")
    p.add_argument("--slices", type=int, default=3, help="central slices to ask about (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import engine.io as io

    if args.slices < 1:
        raise ValueError("--slices must be at least 1")
    volume = io.load(args.input, series=args.series)
    synth = open_synthesizer(args)
    found = synth.identify(volume, slices=args.slices, progress=stderr_progress(not args.json))
    if args.json:
        print(json.dumps(json_ready({"input": args.input, "model": synth.name, "header_modality": volume.modality,
                                     **found.to_dict()})))
        return 0
    status = "" if found.reliable else "  (unreliable)"
    print(f"{found.modality}  confidence {found.confidence:.2f}{status}")
    for name, p in sorted(found.probabilities.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<6} {p:.3f}")
    if found.note and not found.reliable:
        print(f"note: {found.note}")
    if volume.modality and volume.modality != found.modality:
        print(f"note: the file's header or name says {volume.modality}")
    return 0
