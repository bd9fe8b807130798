"""`python main.py make-demo-data`: build the demo dataset (and optionally the demo study) from
real anatomy inside packages; progress on stderr, a JSON summary on stdout."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-demo-data", help="build the demo dataset (simulated contrasts from real anatomy)",
        description="Derive the paired demo dataset (docs/evaluation.md's layout) from real anatomy shipped in "
                    "packages: the MNI152 and Colin27 brains → T1, T1CE, T2, FLAIR, PD with synthetic tumours; "
                    "a real head CT → CT and simulated CBCT. Deterministic for a seed; written atomically. "
                    "Needs the pip package nilearn and the Debian packages invesalius-examples and mricron-data "
                    "(fetched with apt-get download into the cache when not installed).")
    p.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    p.add_argument("--subjects", type=int, default=None, help="brain subjects (default 40)")
    p.add_argument("--ct-subjects", type=int, default=None, help="head CT/CBCT subjects (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=None,
                   help="in-plane pixels (default 128: brain 1.625 mm, head 2.0 mm voxels)")
    p.add_argument("--brain-templates", default=None,
                   help="comma-separated brain anatomies, from mni152, colin27 (default both)")
    p.add_argument("--demo-study", metavar="DIR", help="also write the demo study (one test brain, one test head) "
                                                       "here, e.g. resources/demo")
    p.add_argument("--cache", metavar="DIR", help="where downloaded .deb packages are kept "
                                                  "(default $SYNERMEDGEN_CACHE or ~/.cache/synermedgen)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2 CPU cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from engine.demo_data import DemoRecipe, SourceMissing, build_demo_dataset, build_demo_study, default_workers
    from engine.jobs import Progress

    def report(p: Progress) -> None:
        print(f"[{100 * p.fraction:5.1f}%] {p.message}", file=sys.stderr, flush=True)

    recipe = DemoRecipe()
    changes = {"seed": args.seed}
    if args.subjects is not None:
        changes["n_brain_subjects"] = args.subjects
    if args.ct_subjects is not None:
        changes["n_head_ct_subjects"] = args.ct_subjects
    if args.image_size is not None:
        changes["image_size"] = args.image_size
    if args.brain_templates:
        changes["brain_templates"] = tuple(t.strip().lower() for t in args.brain_templates.split(",") if t.strip())
    recipe = replace(recipe, **changes)
    workers = args.workers if args.workers is not None else default_workers()
    try:
        summary = build_demo_dataset(args.out, recipe=recipe, cache_dir=args.cache, workers=workers, progress=report)
        result = {"dataset": summary.to_dict()}
        if args.demo_study:
            study = build_demo_study(args.demo_study, recipe=recipe, cache_dir=args.cache, progress=report)
            result["demo_study"] = study.to_dict()
    except SourceMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
