"""``python main.py evaluate --model DIR --data DIR``: synthesize every route of every subject of a
paired dataset's split and print the per-route PSNR / SSIM / MAE table (or JSON)."""
from __future__ import annotations

import argparse
import json
import sys

from cli.common import add_model_arguments, add_sampling_arguments, json_ready, open_synthesizer, sampling_settings
from cli.train import add_split_fractions
from engine.jobs import stderr_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-route PSNR / SSIM / MAE of a model on a paired dataset",
                       description="Synthesize each subject's volumes of the split for every route the model and "
                                   "the subject have, score them against the real ones (docs/evaluation.md: per "
                                   "subject, averaged per route) and print the table.")
    add_model_arguments(p, backend=True)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="paired dataset folder (the layout of docs/evaluation.md)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"), help="default: test")
    p.add_argument("--split-seed", type=int, default=0, metavar="N",
                   help="draws the split when dataset.json lists none: the train command's --seed (default 0)")
    add_split_fractions(p)
    p.add_argument("--routes", help="only these routes, e.g. T1:T2,CBCT:CT (quote T1->T2: a shell reads > as a "
                                    "redirection)")
    p.add_argument("--max-slices", type=int, help="synthesize and score only this many central slices per volume")
    add_sampling_arguments(p)
    p.add_argument("--target-agreement", action="store_true",
                   help="also measure whether the model converts to the contrast asked for: from one central slice "
                        "per subject, the mean correlation inside the body of its outputs for the subject's "
                        "different MR targets, beside the real scans' (near 1: the target is ignored); without "
                        "--routes on bench quality's routes, as its column")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON result to FILE (atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.evaluation import evaluate_model
    from engine.inference import parse_route
    from engine.tasks import PairedDataset

    if args.max_slices is not None and args.max_slices < 1:
        raise ValueError("--max-slices must be at least 1")
    routes = [parse_route(r) for r in args.routes.split(",")] if args.routes else None
    synth = open_synthesizer(args)
    paired = PairedDataset.open(args.data, seed=args.split_seed, val_fraction=args.val_fraction,
                                test_fraction=args.test_fraction)   # DatasetError is a ValueError: exit 2
    for problem in paired.report.problems:            # scored without them: said, not silent
        print(f"warning: dataset: left out: {problem}", file=sys.stderr)
    settings = sampling_settings(args, synth.default_settings())
    result = evaluate_model(synth, paired, None if args.split == "all" else args.split, routes=routes,
                            max_slices=args.max_slices, settings=settings,
                            progress=stderr_progress(not args.json))
    for line in result.unseen_warnings():
        print(f"warning: {line}", file=sys.stderr)
    agreement = None
    if args.target_agreement:
        from engine.evaluation import target_agreement

        agreement = target_agreement(synth, paired, None if args.split == "all" else args.split, routes, settings)
    text = json.dumps(json_ready({**result.to_dict(), "left_out": [str(p) for p in paired.report.problems],
                                  **({"target_agreement": agreement} if agreement else {})}), indent=2)
    if args.out:
        from engine.atomic import atomic_file

        with atomic_file(args.out) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    else:
        print(f"model {result.model} on {result.dataset} ({result.split} split, {len(result.subjects)} volumes"
              + (f", {args.max_slices} central slices each" if args.max_slices else "") + ")")
        print(result.table())
        if agreement is not None:
            print(_agreement_line(agreement))
    return 0


def _agreement_line(agreement: dict) -> str:
    if agreement["synthetic"] is None:
        return "target agreement: not measured (no subject has two MR targets of one source among the routes)"
    return (f"target agreement: {agreement['synthetic']:.3f} (the real scans: {agreement['real']:.3f}; "
            f"{agreement['subjects']} subject{'s' if agreement['subjects'] != 1 else ''}, one central slice each; near "
            "1: the target asked for is ignored)")
