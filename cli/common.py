"""What several subcommands share: the model / device / precision and sampling arguments, the model
folder and opening it with a clear error, strict JSON, and the de-identification and patient options
(convert, synthesize). Importing this module does not import torch."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.inference import BACKENDS, DEVICES, PRECISION_NAMES, synthesizer_for
from engine.paths import DEFAULT_MODEL_DIR, ROOT


def add_model_arguments(p: argparse.ArgumentParser, backend: bool = True) -> None:
    p.add_argument("--model", metavar="DIR", help=f"model folder (default: {DEFAULT_MODEL_DIR.relative_to(ROOT)})")
    if backend:
        p.add_argument("--backend", default="torch", choices=BACKENDS,
                       help="inference backend: torch (default) or onnx (ONNX Runtime; exports the graphs "
                            "into MODEL_DIR/onnx on first use)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where to run (default: auto = the GPU when there is one)")
    p.add_argument("--precision", default="fp32", choices=PRECISION_NAMES,
                   help="fp32 (default), or fp16 / bf16 mixed precision on a CUDA GPU")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling options synthesize and evaluate share (each defaults to the model card's)."""
    p.add_argument("--steps", type=int, help="ODE steps (default: the model's, e.g. 24)")
    p.add_argument("--solver", help="ODE solver: euler (one network call a step), heun or midpoint (two) "
                                    "(default: the model's, euler)")
    p.add_argument("--shift", type=float, metavar="S",
                   help="timestep shift s·t / (1 + (s − 1)·t) of the schedule; > 1 spends more steps near "
                        "the noise (default: the model's, 3.0)")
    p.add_argument("--seed", type=int, help="noise seed (default: the model's, 0)")
    p.add_argument("--batch-size", default=None, help="slices per batch, or 'auto' from free memory (default)")
    p.add_argument("--guidance", type=float, nargs=2, metavar=("TEXT", "IMAGE"),
                   help="guidance scales (default: the model's; 1 1 = no guidance)")
    p.add_argument("--start-from-source", type=float, metavar="T",
                   help="start the flow from the source latent noised to time T in (0, 1) instead of pure noise")
    p.add_argument("--noise-correlation", type=float, metavar="RHO",
                   help="correlation in [0, 1) of neighbouring slices' starting noise (default: the model's; "
                        "0 = independent slices)")
    p.add_argument("--guided-filter", type=float, metavar="R",
                   help="re-draw each synthetic slice on the input grid from the source slice in windows of radius "
                        "R model pixels (detail at the input's resolution, less mottling); 0 = off (default: the "
                        "model's)")
    p.add_argument("--guided-filter-depth", type=float, metavar="D",
                   help="how far the filter's windows also reach across slices, in model pixels (with the radius: "
                        "windows of one physical extent in all three directions; no stripes across slices); 0 = each "
                        "slice alone (default: the model's)")
    p.add_argument("--no-hu-calibration", dest="hu_calibration", action="store_false", default=None,
                   help="feed a CT / CBCT source as it is (default: shifted so its soft-tissue peak sits at the "
                        "training CTs', when the model card records it)")
    p.add_argument("--source-floor", type=float, metavar="W",
                   help="on a route whose source and target share a physical scale (CBCT → CT): output the "
                        "calibrated (noise-filtered, see --floor-denoise) source plus W × the model's change to it, W in "
                        "[0, 1] (0 = that source, 1 = the model's output alone; outside the source's field of view the model's output "
                        "whatever W; default: the weight the model card records, "
                        "chosen on validation subjects by `bench floor`)")
    p.add_argument("--floor-denoise", type=float, metavar="S",
                   help="with the source floor: the strength of the adaptive noise filter the calibrated source "
                        "gets first (0 = none; default: the model card's, chosen with the weight by `bench floor`)")


def sampling_settings(args: argparse.Namespace, defaults):
    """``defaults`` (a SynthesisSettings) with the options of :func:`add_sampling_arguments` given."""
    text, image = args.guidance or (None, None)
    return defaults.asked(steps=args.steps, solver=args.solver, shift=args.shift, seed=args.seed,
                          batch_size=args.batch_size, start_from_source=args.start_from_source,
                          noise_correlation=args.noise_correlation, guided_filter=args.guided_filter,
                          guided_filter_depth=args.guided_filter_depth,
                          hu_calibration=args.hu_calibration, source_floor=args.source_floor,
                          floor_denoise=args.floor_denoise, plane=getattr(args, "plane", None), text_guidance=text, image_guidance=image)


def model_dir(args: argparse.Namespace) -> Path:
    """The model folder to use; ValueError naming how to get one when there is none."""
    path = Path(args.model) if getattr(args, "model", None) else DEFAULT_MODEL_DIR
    if not path.is_dir():
        hint = ("train one with `python main.py train --data DIR --stage …` (see docs/training.md) "
                "or pass --model DIR")
        raise ValueError(f"no model at {path}; {hint}")
    return path


def check_backend(args: argparse.Namespace) -> None:
    """ValueError when the chosen backend cannot run here (onnx without onnxruntime)."""
    if getattr(args, "backend", "torch") == "onnx":
        from engine.inference import onnxruntime

        onnxruntime()


def open_synthesizer(args: argparse.Namespace, folder: Path | None = None):
    """The Synthesizer of ``--backend`` for the model folder (``--model``'s unless given); the onnx
    backend's notices (a first export, fallbacks) go to stderr."""
    check_backend(args)
    synth = synthesizer_for(folder or model_dir(args), getattr(args, "backend", "torch"), args.device, args.precision)
    if getattr(synth, "exported", False):
        print(f"note: exported the ONNX graphs to {synth.export_dir}", file=sys.stderr)
    for notice in getattr(synth, "notices", ()):
        print(f"note: {notice}", file=sys.stderr)
    return synth


def json_ready(value):
    """``value`` with non-finite floats (inf PSNR of identical images, NaN of empty masks) as None,
    so the printed JSON is strict."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def add_anonymise_arguments(p: argparse.ArgumentParser) -> None:
    """``--anonymise`` and ``--accept-burned-in`` (convert, synthesize)."""
    p.add_argument("--anonymise", "--anonymize", action="store_true",
                   help="de-identify the output to the DICOM Basic Application Level Confidentiality Profile "
                        "(PS3.15 Annex E): identity, dates and source text removed, UIDs replaced; a file's "
                        "header keeps only our own description")
    p.add_argument("--accept-burned-in", action="store_true",
                   help="with --anonymise: export a series whose source says its pixels carry burned-in "
                        "annotation (BurnedInAnnotation YES; the pixels are not cleaned) instead of refusing it")
    p.add_argument("--anonymise-key", metavar="FILE",
                   help="with --anonymise: one anonymisation shared by every command given FILE (the same patient, "
                        "study and frame-of-reference UIDs become the same new ones: a CBCT and its synthetic CT "
                        "still overlay); FILE is made, private, on first use: keep it private")


def anonymiser_of(args: argparse.Namespace):
    """The export session's Anonymiser for ``--anonymise`` (None without it)."""
    if args.accept_burned_in and not args.anonymise:
        raise ValueError("--accept-burned-in goes with --anonymise")
    if args.anonymise_key and not args.anonymise:
        raise ValueError("--anonymise-key goes with --anonymise")
    if not args.anonymise:
        return None
    from engine.io import Anonymiser

    if args.anonymise_key:
        return Anonymiser.keyed(args.anonymise_key, accept_burned_in=args.accept_burned_in)
    return Anonymiser(accept_burned_in=args.accept_burned_in)


def add_patient_arguments(p: argparse.ArgumentParser) -> None:
    """``--patient-id`` and ``--patient-name`` (convert, synthesize): the patient a DICOM output names
    when its input names none."""
    p.add_argument("--patient-id", metavar="ID", default="",
                   help="the PatientID of a DICOM output whose input names no patient (a NIfTI, MHA or NRRD "
                        "file): a planning system or PACS files a series by it; refused for an input that names "
                        "another patient")
    p.add_argument("--patient-name", metavar="NAME", default="",
                   help="the PatientName (Family^Given) of such a DICOM output")


def check_patient_arguments(args: argparse.Namespace, output: str | Path) -> None:
    """Refuse, before the input is read, ``--patient-id`` / ``--patient-name`` for an output that is no
    DICOM series or with --anonymise."""
    from engine.io import file_kind

    if not (args.patient_id.strip() or args.patient_name.strip()):
        return
    if file_kind(Path(output)):
        raise ValueError(f"--patient-id / --patient-name name the patient of a DICOM output; {output} is a "
                         f"{file_kind(Path(output))} file")
    if args.anonymise:
        raise ValueError("--patient-id / --patient-name go without --anonymise (its export names no patient)")


def named_patient_of(args: argparse.Namespace, volume):
    """``volume`` naming the patient ``--patient-id`` / ``--patient-name`` give (checked before by
    :func:`check_patient_arguments`; ValueError for an input that names another patient)."""
    from engine.io import named_patient

    try:
        return named_patient(volume, args.patient_id, args.patient_name)
    except ValueError as exc:
        raise ValueError(f"{args.input}: {exc}") from None
