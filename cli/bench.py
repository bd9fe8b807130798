"""``python main.py bench BENCHMARK …``: measurements of the engine on this machine.

Each benchmark is one entry of :data:`BENCHMARKS` — a function that adds its sub-subcommand parser
(with ``func`` set) to ``bench``'s subparsers; a new benchmark is a new entry. Importing this
module does not import torch.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from cli.common import json_ready
from engine.paths import DEFAULT_MODEL_DIR, ROOT


# -- what every benchmark prints ----------------------------------------------------------------------
def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the JSON report")
    out.add_argument("--markdown", action="store_true", help="print the Markdown table (as the README and docs/ show it)")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE")


def _print_report(args: argparse.Namespace, report: dict, to_markdown: Callable[[dict], str],
                  to_text: Callable[[dict], str]) -> int:
    """Write the report to ``--out`` (atomically) and print it as JSON, Markdown or the text table."""
    from engine.atomic import atomic_file

    report = json_ready(report)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        with atomic_file(args.out) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    elif args.markdown:
        print(to_markdown(report), end="")
    else:
        print(to_text(report))
    return 0


# -- speed ------------------------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_speed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed", help="time the synthesis pipeline: context cache, batching, precision; ratios and agreement",
        description="Time the torch pipeline on one volume with one set of settings, as medians of several "
                    "repeats: without vs with the context cache, one slice a batch vs batched (auto), fp32 vs "
                    "fp16 / bf16 (CUDA only). Prints slices per second, seconds per demo volume, peak memory, "
                    "the speed-up ratios and the largest output difference between variants, and names the "
                    "machine. The volume is the demo T1 (resources/demo/brain) when the model has a T1 route "
                    "and its slice size is at most the demo's, else a phantom with the demo's slice count.")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="DIR",
                       help=f"model folder (default: {DEFAULT_MODEL_DIR.relative_to(ROOT)} when it exists, "
                            "else --preset tiny)")
    model.add_argument("--preset", metavar="NAME",
                       help="tiny | small | bagel-7b with random weights, created in memory on the device "
                            "(speed only: real shapes and FLOPs, meaningless images)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--precisions", metavar="LIST",
                   help="comma-separated, the first is the base the cache and batching variants run in "
                        "(default: fp32,fp16,bf16 on CUDA, fp32 on CPU; a random model in a half base "
                        "precision gets its weights in it)")
    p.add_argument("--repeats", type=_positive, help="timed runs per variant, the median is reported (default 3)")
    p.add_argument("--slices", type=int, metavar="N",
                   help="synthesize the N central body slices (default 16; 0 = the whole volume); seconds per "
                        "volume are extrapolated from them")
    p.add_argument("--image-size", type=_positive, metavar="S", help="slice size of a random-weight model")
    p.add_argument("--steps", type=_positive, metavar="N", help="ODE steps (default: the model's)")
    p.add_argument("--guidance", type=float, nargs=2, metavar=("TEXT", "IMAGE"),
                   help="guidance scales (default: the model's; e.g. 4.0 1.5 = BAGEL's three branches)")
    p.add_argument("--quick", action="store_true",
                   help="a dry run in seconds: --preset tiny --image-size 32 --slices 3 --steps 3 --repeats 2 "
                        "(flags given explicitly win)")
    p.add_argument("--cohort", type=_positive, metavar="N",
                   help="also time `cohort` on N copies of the volume: volumes per minute in one process and in "
                        "two torchrun ranks, the cores split between them")
    p.add_argument("--shared-cpu", action="store_true",
                   help="also time CPU synthesis on the CPU as found and beside one busy process, with OpenMP's "
                        "default spinning, the short spin main.py sets and passive waiting (a fresh process each)")
    _add_output_arguments(p)
    p.set_defaults(func=_run_speed)


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, rebuilt from the parsed flags (the header of every table)."""
    words = ["python", "main.py", "bench", "speed"]
    for flag in ("model", "preset", "precisions", "repeats", "slices", "image_size", "steps", "cohort"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    if args.device != "auto":
        words += ["--device", args.device]
    if args.guidance:
        words += ["--guidance", *(f"{g:g}" for g in args.guidance)]
    words += [f"--{flag.replace('_', '-')}" for flag in ("shared_cpu", "quick", "json", "markdown")
              if getattr(args, flag)]
    if args.out:
        words += ["--out", args.out]
    return shlex.join(words)


def _run_speed(args: argparse.Namespace) -> int:
    from engine.evaluation import speed

    quick = speed.QUICK if args.quick else {}
    random = args.model is None and (args.preset is not None or quick or not DEFAULT_MODEL_DIR.is_dir())
    preset = args.preset or (quick.get("preset") if args.model is None else None)
    repeats, steps = args.repeats or quick.get("repeats", 3), args.steps or quick.get("steps")
    slices = args.slices if args.slices is not None else quick.get("slices", 16)
    load = None
    if args.shared_cpu:
        from engine.evaluation import shared_cpu
        from engine.inference import resolve_device

        if resolve_device(args.device).type != "cpu":
            raise ValueError("--shared-cpu times synthesis on the CPU: add --device cpu")
        load = shared_cpu.load_average()            # before the benchmark loads the CPU itself
    report = speed.run_speed(
        model=args.model, preset=preset, device=args.device,
        precisions=args.precisions.split(",") if args.precisions else None, repeats=repeats, slices=slices,
        image_size=args.image_size or (quick.get("image_size") if random else None),
        steps=steps, guidance=tuple(args.guidance) if args.guidance else None,
        command=_command_line(args), progress=lambda line: print(line, file=sys.stderr, flush=True))
    extras: list = []                   # (report key, module that prints it): the sections after the table
    if args.cohort:
        from engine.evaluation import cohort_speed

        report["cohort"] = cohort_speed.run_cohort_speed(
            args.cohort, model=report["model"].get("path"), preset=report["model"].get("preset"),
            device=report["machine"]["device"], image_size=report["model"]["image_size"] if random else None,
            steps=steps, say=lambda line: print(line, file=sys.stderr, flush=True))
        extras.append(("cohort", cohort_speed))
    if args.shared_cpu:
        report["shared_cpu"] = shared_cpu.run_shared_cpu(
            model=report["model"].get("path"), preset=report["model"].get("preset"),
            image_size=report["model"]["image_size"] if random else None, slices=slices, steps=steps,
            repeats=repeats, load=load, say=lambda line: print(line, file=sys.stderr, flush=True))
        extras.append(("shared_cpu", shared_cpu))
    return _print_report(args, report,
                         lambda r: speed.to_markdown(r) + "".join(m.to_markdown(r[key]) for key, m in extras),
                         lambda r: "\n".join([speed.to_text(r)] + [m.to_text(r[key]) for key, m in extras]))


# -- quality ----------------------------------------------------------------------------------------
def _add_quality(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality", help="the default model vs identity, MONAI BasicUNet and its own ablations on held-out subjects",
        description="Score, in one run on the held-out subjects: the identity baseline (histogram-matched "
                    "source), MONAI BasicUNet, SynerMedGen after vae + Stage I only, Stage II only and Stage I + II, "
                    "each method's target agreement, the VAE round-trip and resampling ceilings, Stage I's CTS / "
                    "MI / TIA accuracy beside chance and identify on every volume. SSIM ×100 / PSNR on "
                    "normalised intensities, MAE in HU for CT, whole slice and inside the body "
                    "(docs/evaluation.md). The models are the folders of a recipe run "
                    "(python main.py recipe --data D --out RUN).")
    p.add_argument("--run", default="runs/default", metavar="DIR", help="recipe run folder (default runs/default)")
    p.add_argument("--data", default="demo_data", metavar="DIR", help="paired dataset (default demo_data)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="subjects to score (default test)")
    p.add_argument("--slices", type=int, default=8, metavar="N",
                   help="central body slices per volume (default 8; 0 = all)")
    p.add_argument("--steps", type=_positive, metavar="N", help="ODE steps (default: each model's own)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    p.add_argument("--seeds", type=_positive, default=1, metavar="N",
                   help="also sample Stage II only and the default model from the next N - 1 seeds and print "
                        "their spread: the sampling noise a comparison of the two has to beat (default 1)")
    p.add_argument("--no-generalization", action="store_true",
                   help="skip the generalization sets (shifted field of view and resolution, CBCT outside the "
                        "training ranges, real images never trained on)")
    p.add_argument("--quick", action="store_true",
                   help="seconds: a phantom dataset and the quick recipe trained in a temporary folder, "
                        "2 slices per volume, 3 ODE steps (checks the pipeline, not the model)")
    _add_output_arguments(p)
    p.set_defaults(func=_run_quality)


def _quick_dataset(root: Path) -> Path:
    """The phantom dataset of ``--quick``: five MR subjects and two CT / CBCT ones, sub05 and ct02 held out."""
    import json

    from engine.tasks import write_phantom_dataset, write_phantom_subject

    data = write_phantom_dataset(root, subjects=5, modality_names=("T1", "T1CE", "T2", "FLAIR", "PD"),
                                 split={"train": ["sub01", "sub02", "sub03", "ct01"], "val": ["sub04"],
                                        "test": ["sub05", "ct02"]})
    write_phantom_subject(data / "ct02", ("CT", "CBCT"), seed=101)
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    meta["anatomy"]["ct02"] = "head"
    (data / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return data


def _run_quality(args: argparse.Namespace) -> int:
    import tempfile

    from engine.evaluation import describe_machine, quality
    from engine.inference import resolve_device

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    words = ["python", "main.py", "bench", "quality"] + (["--quick"] if args.quick else
                                                         ["--run", args.run, "--data", args.data])
    words += [] if args.slices == 8 else ["--slices", str(args.slices)]
    words += ["--steps", str(args.steps)] if args.steps else []
    words += ["--seeds", str(args.seeds)] if args.seeds != 1 else []
    words += ["--no-generalization"] if args.no_generalization else []
    with tempfile.TemporaryDirectory(prefix="synermedgen-quality-") as tmp:
        run, data, slices, steps = Path(args.run), Path(args.data), args.slices or None, args.steps
        if args.quick:
            from engine.recipe import run_recipe

            data = _quick_dataset(Path(tmp) / "data")
            log("training the quick recipe on a phantom dataset …")
            run = run_recipe(data, Path(tmp) / "run", quality.QUICK["recipe"], threads=1, device=args.device)
            slices, steps = quality.QUICK["slices"], steps or quality.QUICK["steps"]
        report = quality.run_quality(run, data, split=args.split, max_slices=slices, steps=steps,
                                     device=args.device, seeds=args.seeds,
                                     generalization=not args.no_generalization, progress=log)
    report["command"] = shlex.join(words)
    report["machine"] = describe_machine(resolve_device(args.device))
    return _print_report(args, report, quality.to_markdown, quality.to_text)


# -- understanding ----------------------------------------------------------------------------------
def _add_understanding(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "understanding", help="a model's CTS / MI / TIA accuracy against chance, and identify on every volume",
        description="On the held-out subjects of a paired dataset: the model's accuracy on Stage I's three "
                    "tasks (and MI asked about one panel, the question identify asks of a slice), each beside "
                    "the chance of a guesser blind to the images on the same questions; then identify on every "
                    "volume, with what it answered instead where it was wrong.")
    p.add_argument("--model", metavar="DIR",
                   help=f"model folder (default {DEFAULT_MODEL_DIR.relative_to(ROOT)})")
    p.add_argument("--data", default="demo_data", metavar="DIR", help="paired dataset (default demo_data)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="subjects to score (default test)")
    p.add_argument("--samples", type=_positive, default=64, metavar="N", help="questions per task (default 64)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    _add_output_arguments(p)
    p.set_defaults(func=_run_understanding)


def _run_understanding(args: argparse.Namespace) -> int:
    from engine.evaluation import understanding

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: no model folder there")
    words = ["python", "main.py", "bench", "understanding", "--data", args.data]
    words += ["--model", args.model] if args.model else []
    words += [] if args.split == "test" else ["--split", args.split]
    words += [] if args.samples == 64 else ["--samples", str(args.samples)]
    report = understanding.run_understanding(
        model, args.data, split=args.split, samples=args.samples, device=args.device,
        command=shlex.join(words), progress=lambda line: print(line, file=sys.stderr, flush=True))
    return _print_report(args, report, understanding.to_markdown, understanding.to_text)


# -- source floor -----------------------------------------------------------------------------------
def _add_floor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "floor", help="choose the CBCT → CT source floor (the noise filter of the calibrated source and the weight "
                      "of the model's change to it) on validation subjects, and measure it on held-out ones",
        description="On a route whose source and target share a physical scale (CBCT → CT) the output is the "
                    "HU-calibrated source, its noise filtered (an adaptive filter of a chosen strength), plus a "
                    "weight times the model's change to it (0 = the source, 1 = the model alone; outside the "
                    "source's field of view the model's output whatever the weight, where it continues the "
                    "body). Chooses the strength and the weight with the lowest mean MAE inside the body on the "
                    "validation subjects, then prints what they give on the test subjects, on CBCTs simulated outside the training ranges and on "
                    "real head CTs never trained on, beside the source as it is, and where a field of view cut "
                    "the head off, how far off the output is there. --write-card records them (and that error) "
                    "in the model card, where synthesis reads them.")
    p.add_argument("--model", metavar="DIR", help=f"model folder (default {DEFAULT_MODEL_DIR.relative_to(ROOT)})")
    p.add_argument("--data", default="demo_data", metavar="DIR", help="paired dataset (default demo_data)")
    p.add_argument("--slices", type=int, default=8, metavar="N",
                   help="central body slices per volume (default 8; 0 = all)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    p.add_argument("--no-generalization", action="store_true",
                   help="measure on the test subjects only (not on the out-of-range and real CBCT sets)")
    p.add_argument("--write-card", action="store_true", help="record the chosen weights in the model's card")
    _add_output_arguments(p)
    p.set_defaults(func=_run_floor)


def _run_floor(args: argparse.Namespace) -> int:
    from engine.evaluation import source_floor

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: no model folder there")
    words = ["python", "main.py", "bench", "floor", "--data", args.data]
    words += ["--model", args.model] if args.model else []
    words += [] if args.slices == 8 else ["--slices", str(args.slices)]
    words += ["--no-generalization"] if args.no_generalization else []
    report = source_floor.run_floor(model, args.data, max_slices=args.slices or None, device=args.device,
                                    generalization=not args.no_generalization,
                                    progress=lambda line: print(line, file=sys.stderr, flush=True))
    report["command"] = shlex.join(words)
    if args.write_card:
        written = source_floor.write_card(model, report, shlex.join(words + ["--write-card"]))
        print(f"written: {written}", file=sys.stderr)
    return _print_report(args, report, source_floor.to_markdown, source_floor.to_text)


# -- fuzz -------------------------------------------------------------------------------------------
def _add_fuzz(sub: argparse._SubParsersAction) -> None:
    from engine.io.fuzz.runner import DEFAULT_MEMORY

    p = sub.add_parser(
        "fuzz", help="open mutated files with every volume reader and count clean errors, loads and failures",
        description="Mutation fuzzing of the readers (NIfTI, MHA, NRRD, DICOM, pictures): seeded mutations (bit "
                    "flips, truncation, huge / negative / NaN / infinite header fields, wrong DICOM VRs, a NIfTI "
                    "promising far more voxels than it holds) of the demo volumes written by the project's writers "
                    "and of small test files shipped with pydicom and nibabel. Each input is scanned and loaded in a "
                    "child process with a time and memory limit. A clean error is one line naming the file; a "
                    "traceback, an error not naming the file, an out-of-memory, NaN geometry, a crash or a hang is "
                    "a failure. Exits 1 when there is any failure.")
    p.add_argument("--inputs", type=_positive, default=1000, metavar="N", help="mutated inputs (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="input i is mutation (S, i): replayable (default 0)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS", help="a hang past this (default 20)")
    p.add_argument("--memory-mib", type=_positive, default=DEFAULT_MEMORY >> 20, metavar="MIB",
                   help=f"what each input may allocate (default {DEFAULT_MEMORY >> 20})")
    p.add_argument("--workers", type=_positive, default=2, metavar="W", help="inputs opened at once (default 2)")
    p.add_argument("--keep", metavar="DIR", help="copy the failing inputs to DIR")
    _add_output_arguments(p)
    p.set_defaults(func=_run_fuzz)


def _run_fuzz(args: argparse.Namespace) -> int:
    from engine.io.fuzz import runner

    memory = args.memory_mib << 20
    report = runner.run_fuzz(args.inputs, seed=args.seed, timeout_s=args.timeout, memory_bytes=memory,
                             workers=args.workers, keep=args.keep,
                             command=runner.command_line(args.inputs, args.seed, args.timeout, memory),
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    _print_report(args, report, runner.to_markdown, runner.to_text)
    return 1 if report["failures"] else 0


# -- bench ------------------------------------------------------------------------------------------
BENCHMARKS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "speed": _add_speed,
    "quality": _add_quality,
    "understanding": _add_understanding,
    "floor": _add_floor,
    "fuzz": _add_fuzz,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks of the engine on this machine (" + ", ".join(BENCHMARKS) + ")",
                       description="Measure the engine on this machine. Each benchmark prints a table, "
                                   "--json or --markdown.")
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for add in BENCHMARKS.values():
        add(benches)

    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 0
    p.set_defaults(func=usage)
