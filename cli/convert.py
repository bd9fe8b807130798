"""``convert``: any supported input to NIfTI / MHA / NRRD / a DICOM derived series, geometry and
units kept, optionally de-identified."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.common import (
    add_anonymise_arguments,
    add_patient_arguments,
    anonymiser_of,
    check_patient_arguments,
    named_patient_of,
)
from engine.jobs import stderr_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert any supported input to NIfTI / MHA / NRRD / a DICOM series",
                       description="Convert INPUT to OUTPUT keeping geometry and physical units. OUTPUT's "
                                   "suffix picks the format (.nii, .nii.gz, .mha, .nrrd); a path without "
                                   "one (or ending .dcm, which the folder's name drops) is a folder for a DICOM "
                                   "derived series.")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--series", help="SeriesInstanceUID (or unique prefix) when INPUT holds several; "
                                    "FILE#INDEX picks a volume of a 4-D file")
    p.add_argument("--modality", help="set the modality when it cannot be guessed (T1, T2, CT, …)")
    add_anonymise_arguments(p)
    add_patient_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import engine.io as io
    from engine import modalities

    io.check_output(args.output, inputs=(args.input,))    # before reading a large input
    check_patient_arguments(args, args.output)
    volume = io.load(args.input, series=args.series, progress=stderr_progress(sys.stderr.isatty()))
    if args.modality:
        mod = modalities.get(args.modality)
        volume = volume.replace(modality=mod.name, unit=volume.unit or mod.unit)
    volume = named_patient_of(args, volume)
    anonymiser = anonymiser_of(args)
    desc = volume.name or volume.dicom.get("SeriesDescription", "")    # a split series' name says which part
    out = io.save(volume, args.output, description=f"converted from {desc}"[:64], anonymise=anonymiser or False)
    described = volume.describe()
    if anonymiser:                                   # what is printed holds no source text either
        described["name"] = ""
        described["notes"] = [_without_paths(n, args.input) for n in described["notes"]]
    print(json.dumps({"output": str(out), **described}))
    return 0


def _without_paths(text: str, path: str) -> str:
    """``text`` with ``path`` (as given and resolved; a folder's name may be a patient's) shown as <input>."""
    for form in sorted({str(Path(path).resolve()), str(Path(path))}, key=len, reverse=True):
        text = text.replace(form, "<input>")
    return text
