"""The headless command line (`python main.py SUBCOMMAND …`), the face beside the app: argument
parsing and printing only. Each subcommand is a module here with ``add_parser(sub)``, a thin shell
over engine functions; bad input prints one clear line and exits 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from engine.version import version

RESEARCH_ONLY = "research use only, not for diagnosis"


def _lazy(module: str) -> Callable[[argparse._SubParsersAction], None]:
    """The ``add_parser`` of a subcommand's module (imported when the parser is built; the work
    imports torch and friends only when the subcommand runs)."""
    def add(sub: argparse._SubParsersAction) -> None:
        import importlib

        importlib.import_module(module).add_parser(sub)
    return add


SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "info": _lazy("cli.info"),
    "convert": _lazy("cli.convert"),
    "synthesize": _lazy("cli.synthesize"),
    "identify": _lazy("cli.identify"),
    "export-onnx": _lazy("cli.export_onnx"),
    "evaluate": _lazy("cli.evaluate"),
    "prepare": _lazy("cli.prepare"),
    "train": _lazy("cli.train"),
    "recipe": _lazy("cli.recipe"),
    "make-demo-data": _lazy("cli.make_demo_data"),
    "bench": _lazy("cli.bench"),
    "selftest": _lazy("cli.selftest"),
    "cohort": _lazy("cli.cohort"),
    "pacs": _lazy("cli.pacs"),
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
    except (ValueError, OSError) as exc:       # bad input (VolumeIOError is one), a full disk, a read-only folder
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
