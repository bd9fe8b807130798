"""The headless command line (`python main.py SUBCOMMAND …`): argument parsing and printing.
Each subcommand is a thin shell over an engine function; errors print one clear line, exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from engine.io.errors import VolumeIOError
from engine.jobs import stderr_progress
from engine.version import version

RESEARCH_ONLY = "research use only, not for diagnosis"


# -- info ---------------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list the volumes / DICOM series in a file or folder",
                       description="List every volume or DICOM series found in INPUT: shape, spacing, "
                                   "orientation, guessed modality, whether its header marks it synthetic "
                                   "(made by a model), and files that were skipped.")
    p.add_argument("input", help="a NIfTI/MHA/NRRD file, a DICOM file, a folder or a DICOMDIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import engine.io as io

    catalog = io.scan(args.input)
    rows = [e.describe() for e in catalog.entries]
    skipped = [{"path": s.path, "reason": s.reason} for s in catalog.skipped]
    if args.json:
        print(json.dumps({"input": args.input, "series": rows, "skipped": skipped}, indent=2))
        return 0
    print(f"{len(rows)} volume(s) in {args.input}")
    for r in rows:
        shape = "×".join(str(s) for s in reversed(r["shape_zyx"]))
        spacing = "×".join(f"{s:g}" for s in r["spacing_xyz_mm"])
        synthetic = "  SYNTHETIC (research use only)" if r["synthetic"] else ""
        print(f"- {r['description']}  [{r['modality'] or '?'}]{synthetic}  {shape} voxels  {spacing} mm  "
              f"{r['orientation']}  key={r['key']}")
        for note in r["notes"]:
            print(f"    note: {note}")
    for s in skipped:
        print(f"skipped {s['path']}: {s['reason']}")
    return 0


# -- convert ------------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert any supported input to NIfTI / MHA / NRRD / a DICOM series",
                       description="Convert INPUT to OUTPUT keeping geometry and physical units. OUTPUT's "
                                   "suffix picks the format (.nii, .nii.gz, .mha, .nrrd); a path without "
                                   "one is a folder for a DICOM derived series.")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--series", help="SeriesInstanceUID (or unique prefix) when INPUT holds several; "
                                    "FILE#INDEX picks a volume of a 4-D file")
    p.add_argument("--modality", help="set the modality when it cannot be guessed (T1, T2, CT, …)")
    add_anonymise_arguments(p)
    p.set_defaults(func=_cmd_convert)


def add_anonymise_arguments(p: argparse.ArgumentParser) -> None:
    """``--anonymise`` and ``--accept-burned-in`` (convert, synthesize)."""
    p.add_argument("--anonymise", "--anonymize", action="store_true",
                   help="de-identify the output to the DICOM Basic Application Level Confidentiality Profile "
                        "(PS3.15 Annex E): identity, dates and source text removed, UIDs replaced; a file's "
                        "header keeps only our own description")
    p.add_argument("--accept-burned-in", action="store_true",
                   help="with --anonymise: export a series whose source says its pixels carry burned-in "
                        "annotation (BurnedInAnnotation YES; the pixels are not cleaned) instead of refusing it")


def anonymiser_of(args: argparse.Namespace):
    """The export session's Anonymiser for ``--anonymise`` (None without it)."""
    if args.accept_burned_in and not args.anonymise:
        raise ValueError("--accept-burned-in goes with --anonymise")
    if not args.anonymise:
        return None
    from engine.io.deidentify import Anonymiser

    return Anonymiser(accept_burned_in=args.accept_burned_in)


def _cmd_convert(args: argparse.Namespace) -> int:
    import engine.io as io
    from engine import modalities

    volume = io.load(args.input, series=args.series, progress=stderr_progress(sys.stderr.isatty()))
    if args.modality:
        mod = modalities.get(args.modality)
        volume = volume.replace(modality=mod.name, unit=volume.unit or mod.unit)
    anonymiser = anonymiser_of(args)
    desc = volume.dicom.get("SeriesDescription", "") or volume.name
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


def _lazy(module: str) -> Callable[[argparse._SubParsersAction], None]:
    """The ``add_parser`` of an engine module's ``cli`` (parsers are cheap; the work imports
    torch and friends only when the subcommand runs)."""
    def add(sub: argparse._SubParsersAction) -> None:
        import importlib

        importlib.import_module(module).add_parser(sub)
    return add


SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "info": _add_info,
    "convert": _add_convert,
    "synthesize": _lazy("engine.inference.cli_synthesize"),
    "identify": _lazy("engine.inference.cli_identify"),
    "export-onnx": _lazy("engine.inference.cli_export_onnx"),
    "evaluate": _lazy("engine.evaluation.cli"),
    "train": _lazy("engine.training.cli"),
    "recipe": _lazy("engine.training.cli_recipe"),
    "make-demo-data": _lazy("engine.demo_data.cli"),
    "bench": _lazy("engine.evaluation.cli_bench"),
    "selftest": _lazy("engine.inference.cli_selftest"),
    "cohort": _lazy("cli.cohort"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="SynerMedGen Studio — cross-modality medical image synthesis "
                    f"({RESEARCH_ONLY}). Without a subcommand the desktop app opens "
                    "(with any FILES given).",
    )
    parser.add_argument("--version", action="version", version=f"SynerMedGen Studio {version()}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def _one_line(exc: Exception) -> str:
    """The message of an error, naming its file (an OSError's own text can leave it out)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (VolumeIOError, ValueError, OSError) as exc:           # bad input, a full disk, a read-only folder
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
