"""SynerMedGen Studio entry point: no subcommand opens the GUI (with any files given);
a subcommand (info, convert, …) runs the headless engine CLI; ``--selftest`` (the installed
bundle's check, no window) is the ``selftest`` subcommand. See `python main.py --help`."""
from __future__ import annotations

import multiprocessing
import sys

from engine.openmp import spin_briefly

spin_briefly()      # before anything starts torch, for every process started from here (engine/openmp.py)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from cli import SUBCOMMANDS, run_cli

    if argv and argv[0] == "--selftest":
        argv[0] = "selftest"
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help", "--version")):
        return run_cli(argv)
    from app.application import run

    return run(argv)


if __name__ == "__main__":
    multiprocessing.freeze_support()     # a frozen bundle's synthesis process starts here (spawn)
    sys.exit(main())
