"""``python main.py cohort INPUT --target MOD -o OUT``: synthesize every subject of a folder tree, a BIDS
dataset or a CSV manifest in one resumable run (engine.cohort); a progress bar or JSON lines; runs
unchanged under ``torchrun``, the items shared out by rank."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from cli.common import (
    add_model_arguments,
    add_sampling_arguments,
    json_ready,
    model_dir,
    open_synthesizer,
    sampling_settings,
)
from engine.inference import SLICING_PLANES

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
JSON_PROGRESS_EVERY_S = 1.0


def print_line(record: dict) -> None:
    """One JSON line in one write: the lines of several torchrun ranks sharing stdout never interleave."""
    sys.stdout.write(json.dumps(json_ready(record)) + "\n")
    sys.stdout.flush()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cohort", help="synthesize a whole study: a folder tree, a BIDS dataset or a CSV manifest, resumable",
        description="Synthesize the TARGET modality of every volume in INPUT with one loaded model. INPUT is a "
                    "folder tree (every volume or DICOM series the `info` scanner finds; outputs mirror the tree "
                    "as NAME_synthetic-TARGET.nii.gz), a BIDS dataset (sub-*/[ses-*/]anat/*_T1w.nii.gz …; OUT "
                    "becomes a BIDS derivatives dataset, e.g. -o BIDS/derivatives/synermedgen) or a CSV manifest "
                    "with the columns input,target[,source,output,series]. Each output has a JSON sidecar with its "
                    "provenance; OUT/cohort-manifest.jsonl records every item's status, output, time and error. "
                    "Rerunning the command skips finished items whose input and settings are unchanged and redoes "
                    "interrupted ones; one bad input is recorded and the rest go on. Under torchrun the items are "
                    "shared out by rank. A BIDS session without a usable source image is recorded as not-applicable. "
                    "Exit status: 0 when every item succeeded, was skipped or was not applicable; 3 when the run "
                    "ended with some items failed (the manifest gives each one's reason); 2 on bad usage (or when "
                    "another run holds OUT); 1 on an unexpected error. Research use only, not for diagnosis.")
    p.add_argument("input", help="a folder tree, a BIDS dataset folder or a .csv manifest")
    p.add_argument("--target", help="modality to synthesize (T1, T1CE, T2, FLAIR, PD, CT, CBCT, PET); "
                                    "a CSV manifest may name it per row instead")
    p.add_argument("--source", default=None,
                   help="the inputs' modality (only volumes of it are used), or 'auto' to identify each with the "
                        "model (default: the BIDS suffix, the file's header or name; else auto)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--plane", choices=SLICING_PLANES, default=None,
                   help="the patient plane volumes are cut in (default: auto, the acquisition plane)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="bound every CPU thread pool (torch, ONNX Runtime, SimpleITK, BLAS) to N threads per process")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory the batch planner may count on, e.g. 8G or 512M (default: the free memory)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (progress, each item, the summary)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_size(text: str | None) -> int | None:
    """``8G``, ``512M``, ``1.5G``, ``1000000`` (bytes) → bytes; ValueError naming the option otherwise."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--max-memory {text!r}: give a size such as 8G, 512M or 1.5G")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


class _Display:
    """Progress for people (a tqdm bar on rank 0: items, slices per second, time left) or for scripts
    (``--json``: every event as a JSON line, progress at most once a second)."""

    def __init__(self, as_json: bool, quiet: bool, rank: int) -> None:
        self.as_json, self.quiet, self.rank = as_json, quiet, rank
        self.bar = None
        self.slices, self.started, self.last = 0, time.perf_counter(), 0.0

    def __call__(self, event: dict) -> None:
        if self.as_json:
            now = time.perf_counter()
            if event["event"] != "progress" or now - self.last >= JSON_PROGRESS_EVERY_S:
                self.last = now if event["event"] == "progress" else self.last
                print_line({**event, "rank": event.get("rank", self.rank)})
            return
        if self.quiet or self.rank != 0:
            return
        if event["event"] == "start":
            from tqdm import tqdm

            self.started = time.perf_counter()
            self.bar = tqdm(total=event["mine"], unit="vol", file=sys.stderr, dynamic_ncols=True,
                            desc=f"cohort ({event['world_size']} process{'es' if event['world_size'] > 1 else ''})")
        elif event["event"] == "item" and self.bar is not None and event["status"] != "started":
            self.slices += int(event.get("slices") or 0)
            rate = self.slices / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix(slices_s=f"{rate:.1f}", refresh=False)
            if event["status"] == "failed":
                self.bar.write(f"failed {event['item']}: {event['error']}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from engine import modalities
    from engine.cohort import discover, limit_threads, model_fingerprint, run_cohort
    from engine.inference import ModelCard, resolve_device
    from engine.training import Distributed

    target = modalities.canonical(args.target) if args.target else None
    memory = parse_size(args.max_memory)
    folder = model_dir(args)
    card = ModelCard.read(folder)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the output must be a folder")
    cohort = discover(args.input, target, args.source, card.routes, exclude=out)
    ctx = Distributed.from_env(resolve_device(args.device).type)
    display = _Display(args.json, args.quiet, ctx.rank)
    try:
        with limit_threads(args.threads):          # before the model: ONNX Runtime sizes its pools on opening
            with ctx.main_first():                  # rank 0 makes a missing ONNX export, the others then reuse it
                synth = open_synthesizer(args, folder)
            synth.memory_limit = memory
            settings = sampling_settings(args, synth.default_settings())
            identity = {"model": model_fingerprint(folder), "backend": args.backend, "precision": args.precision}
            summary = run_cohort(cohort, synth, out, settings, identity=identity, on_event=display, ctx=ctx)
    finally:
        display.close()
        ctx.close()
    if ctx.is_main:
        report = {"event": "summary", "input": str(args.input), "output": str(out), "convention": cohort.convention,
                  **summary.to_dict()}
        if args.json:
            print_line(report)
        else:
            print(f"{summary.succeeded} succeeded, {summary.skipped} skipped, {summary.failed} failed, "
                  f"{summary.not_applicable} not applicable of {summary.items} item(s) in {summary.seconds:.1f} s; manifest: {summary.manifest}", file=sys.stderr)
            print(json.dumps(json_ready(report)))
    return summary.exit_code
