"""``python main.py recipe``: train the default model and its comparison runs (see
:mod:`engine.recipe`) from one command; JSON lines on stdout, exit 130 on cancel."""
from __future__ import annotations

import argparse
import json
import sys

from engine.recipe import ORDER, RECIPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipe", help="train the default model (vae → Stage I → Stage II) and the runs "
                                      "`bench quality` compares it with",
                       description="Train every entry of a recipe into OUT/NAME: " + ", ".join(ORDER) + ". "
                                   "Seeded step budgets; the U-Net baseline trains for the recipe's minutes "
                                   "(about Stage II's time on one core). Rerunning resumes and skips finished entries; entries of --only can "
                                   "run in separate processes at the same time where they do not depend on "
                                   "each other (understanding → generation; vae → the rest).")
    p.add_argument("--data", required=True, metavar="DIR", help="paired dataset (e.g. demo_data from make-demo-data)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (one model folder per entry)")
    p.add_argument("--recipe", default="default", choices=tuple(RECIPES),
                   help="default (the shipped model, on CPU cores), gpu (the same entries budgeted in minutes on "
                        "one GPU) or quick (seconds, for tests)")
    p.add_argument("--only", nargs="+", choices=ORDER, metavar="ENTRY", help="train only these entries")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--leave-out", metavar="SOURCE",
                   help="train every entry without the subjects of one dataset source (a source dataset.json names, "
                        "e.g. mni152): `bench quality --run OUT` then scores the run on that source alone "
                        "(leave-one-source-out); such a run is not shipped")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading processes per entry (default 0: batches are built in the training process)")
    p.add_argument("--ship", metavar="DIR", help="then copy OUT/generation to DIR as the app's default model "
                                                 "(e.g. resources/models/default) with its completed model card; "
                                                 "with --only, only those entries are trained first")
    p.add_argument("--quality", metavar="JSON", help="with --ship: a `bench quality --out` report to quote in the card")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal

    from engine.jobs import Cancelled, CancelToken
    from engine.recipe import run_recipe

    cancel = CancelToken()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: cancel.cancel())

    def emit(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    try:
        out = run_recipe(args.data, args.out, args.recipe, only=args.only, threads=args.threads,
                         device=args.device, workers=args.workers, leave_out=args.leave_out, emit=emit,
                         cancel=cancel)
    except Cancelled:
        print(f"cancelled; run the same command to resume ({args.out})", file=sys.stderr)
        return 130
    print(f"recipe {args.recipe} done in {out}; the default model is {out}/generation", file=sys.stderr)
    if args.ship:
        from pathlib import Path

        from engine.evaluation import card_entries
        from engine.recipe import ship

        quality = json.loads(Path(args.quality).read_text(encoding="utf-8")) if args.quality else None
        benchmark = card_entries(quality) if quality is not None else None
        print(f"default model written to {ship(out, args.ship, args.data, benchmark)}", file=sys.stderr)
    return 0
