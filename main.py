"""SynerMedGen Studio entry point: no subcommand opens the GUI (with any files given);
a subcommand (info, convert, …) runs the headless engine CLI; ``--selftest`` (the installed
bundle's check, no window) is the ``selftest`` subcommand. See `python main.py --help`."""
from __future__ import annotations

import multiprocessing
import os
import sys

# Before torch starts: its OpenMP threads (GNU libgomp) would otherwise spin 300,000 times at the end of
# every parallel region, and beside one busy process (a fine-tuning job, another program) a thread kept off
# its core stalls the spinning others: a short spin keeps an idle CPU's speed and most of a busy one's
# (`python main.py bench speed --shared-cpu`, docs/performance.md). Inherited by every process started
# from here; a wait policy the environment sets wins.
if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "10000"          # engine.evaluation.shared_cpu.SHORT_SPIN measures it


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
