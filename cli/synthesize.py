"""``python main.py synthesize INPUT --target MOD -o OUT``: a synthetic volume on the input's exact
grid in the target's units, written atomically; with ``--reference`` also PSNR / SSIM / MAE as JSON,
beside the same scores of doing nothing."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cli.common import (
    add_anonymise_arguments,
    add_model_arguments,
    add_patient_arguments,
    add_sampling_arguments,
    anonymiser_of,
    check_backend,
    check_patient_arguments,
    json_ready,
    model_dir,
    named_patient_of,
    open_synthesizer,
    sampling_settings,
)
from engine.inference import NO_PROFILE_NOTE, SLICING_PLANES, SOURCE_FLOOR_PREFIX, plane_axis, sliced_plane
from engine.jobs import stderr_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize", help="synthesize the volume of another modality (e.g. T1 → FLAIR, CBCT → CT)",
        description="Synthesize the TARGET modality of INPUT with a SynerMedGen model, on the input's exact "
                    "grid and in the target's physical units (HU for CT). Research use only, not for diagnosis.")
    p.add_argument("input", help="a NIfTI/MHA/NRRD file, a DICOM file or a DICOM folder")
    p.add_argument("--target", required=True, help="modality to synthesize (T1, T1CE, T2, FLAIR, PD, CT, CBCT, PET)")
    p.add_argument("--source", default=None,
                   help="the input's modality, or 'auto' to identify it with the model (default: the modality "
                        "read from the file's header or name, else auto)")
    p.add_argument("-o", "--output", required=True,
                   help="output file (.nii, .nii.gz, .mha, .nrrd) or a folder for a DICOM series (a path with no "
                        "suffix, or .dcm, which the folder's name drops)")
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--plane", choices=SLICING_PLANES, default=None,
                   help="the patient plane the volume is cut in for the 2-D model: auto = the acquisition plane "
                        "(the axis of thick slices, else the stored order; default), or axial, coronal or sagittal")
    p.add_argument("--reference", metavar="REF",
                   help="the real target volume of the same subject: print as JSON the PSNR/SSIM/MAE of the output and "
                        "of doing nothing (the input histogram-matched to REF), where REF covers the output's grid; "
                        "refuses one of another modality family than the target (MR for CT), warns of another "
                        "modality of the family (T1 for T2), an unknown one, another patient or frame of reference "
                        "(docs/evaluation.md); one in another frame of reference is placed in the input's by a "
                        "spatial registration (DICOM REG): --registration, or one in INPUT's or REF's folder or the "
                        "patient folder holding both")
    p.add_argument("--registration", metavar="REG", action="append", default=[],
                   help="with --reference: a spatial registration (DICOM REG file) relating REF's frame of reference "
                        "to INPUT's, where it lies elsewhere than their folders (repeatable)")
    p.add_argument("--series", help="SeriesInstanceUID (or unique prefix) when INPUT holds several")
    p.add_argument("--reference-series", metavar="UID",
                   help="SeriesInstanceUID (or unique prefix) when REF holds several")
    add_anonymise_arguments(p)
    add_patient_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def announce(checks, quiet: bool = False) -> None:
    """What the checks before a synthesis found, on stderr: the note on the source modality, the
    out-of-distribution guard's warnings (its note that a card without a profile cannot check, only
    when not ``quiet``) and the card's benchmark warnings for the route."""
    if checks.source_note:
        print(f"note: {checks.source_note}", file=sys.stderr)
    for line in checks.input_warnings:
        if line != NO_PROFILE_NOTE:
            print(f"warning: {line}", file=sys.stderr)
        elif not quiet:
            print(f"note: {line}", file=sys.stderr)
    for line in checks.benchmark_warnings:
        print(f"warning: {line}", file=sys.stderr)


def reference_warnings(volume, reference, target: str) -> list[str]:
    """Why scoring against ``reference`` may mislead: another modality than ``target`` or an unknown one,
    a synthetic reference, another patient, another frame of reference (said before the work, and in
    the JSON); ValueError for a reference of another modality family than ``target``."""
    from engine.evaluation import SYNTHETIC_REFERENCE, reference_modality_warnings
    from engine.io import identity_warnings

    return [*reference_modality_warnings(reference, target), *([SYNTHETIC_REFERENCE] if reference.synthetic else []),
            *identity_warnings(volume, reference)]


def placed_reference(volume, reference, paths, given=()) -> tuple:
    """``reference`` in ``volume``'s frame of reference when their scanners' frames differ and a spatial
    registration (DICOM REG) ``given`` or stored with either relates them (a planning CT beside a
    linac's CBCT), with the note saying so; else as it is and "" (the identity check warns of another
    frame). ValueError for a given file that is no usable registration."""
    from engine.io import NO_REGISTRATION, frames_differ, in_frame_of, read_registration, registrations_beside

    named = []
    for path in given:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
        registration, problem = read_registration(path)
        if registration is None:
            raise ValueError(f"{path}: {problem or 'not a DICOM spatial registration (REG)'}")
        named.append(registration)
    if not frames_differ(reference, volume):
        return reference, ""
    found, problems = registrations_beside(paths)
    registrations = named + [r for r in found if r.path not in {n.path for n in named}]
    placed, note = in_frame_of(reference, volume, registrations)
    if placed is reference:                         # why not: a REG found but unusable, or none where we looked
        for problem in problems:
            print(f"note: {problem}", file=sys.stderr)
        print("note: " + (note or f"{NO_REGISTRATION} in INPUT's or REF's folders (or the patient folder holding both); "
                                  "name it with --registration REG"), file=sys.stderr)
        return reference, ""
    return placed, note


def scored_report(result, reference, volume, target: str, axis: int, reference_path: str, written,
                  warned: list[str]) -> dict:
    """The JSON's scores: the synthetic's and the do-nothing baseline's (the input histogram-matched to the
    reference), only where the reference covers the output's grid, with warnings on stderr; ``warned``:
    the reference's warnings said before the work (:func:`reference_warnings`)."""
    from engine.evaluation import score_against, worse_than_baseline

    try:
        scored = score_against(result, reference, volume, target, axis)
    except ValueError as exc:
        raise ValueError(f"{written} is written, but it could not be scored against {reference_path}: {exc}") from None
    assert scored.baseline is not None, "the input is given"
    if scored.coverage < 0.999:
        print(f"warning: {reference_path} covers {100 * scored.coverage:.0f} % of the output's grid with data (not "
              "beyond its grid or its field of view): only that part is scored", file=sys.stderr)
    scope, worse = worse_than_baseline(scored.evaluation, scored.baseline)
    if worse:
        print(f"warning: the input histogram-matched to the reference (doing nothing) scores better on "
              f"{', '.join(worse)} {'inside the body' if scope == 'body' else 'over the whole image'} than the "
              "synthetic: the model did not help on this scan", file=sys.stderr)
    return {"metrics": scored.evaluation.to_dict(), "do_nothing": scored.baseline.to_dict(),
            "worse_than_doing_nothing": worse, "reference_synthetic": reference.synthetic,
            "reference_coverage": round(scored.coverage, 4),
            "reference_warnings": warned}


def run(args: argparse.Namespace) -> int:
    import engine.io as io
    from engine import modalities
    from engine.inference import (
        ModelCard,
        check_sidecar,
        folders_cut,
        provenance,
        save_described,
        synthesize_checked,
        synthetic_input_note,
    )

    started = time.perf_counter()
    target = modalities.canonical(args.target)
    folder = model_dir(args)
    check_backend(args)
    card = ModelCard.read(folder)
    if args.source and args.source.strip().lower() != "auto":
        card.check_route(args.source, target)          # fail before loading anything heavy
    if (args.reference_series or args.registration) and not args.reference:
        raise ValueError("--reference-series and --registration go with --reference")
    output = Path(args.output)
    io.check_output(output, inputs=(args.input, *([args.reference] if args.reference else [])))
    check_patient_arguments(args, output)
    check_sidecar(output)
    anonymiser = anonymiser_of(args)
    progress = stderr_progress(not args.quiet)
    volume = named_patient_of(args, io.load(args.input, series=args.series))
    reference, warned, placed = None, [], ""        # a bad reference fails before the work
    if args.reference:
        reference = io.load(args.reference, series=args.reference_series, pick_with="--reference-series")
        named = f"{args.reference} [{reference.name}]" if args.reference_series else args.reference   # which series
        reference, placed = placed_reference(volume, reference, (args.input, args.reference), args.registration)
        if placed:
            print(f"note: {named}: {placed}", file=sys.stderr)
        try:
            warned = reference_warnings(volume, reference, target)
        except ValueError as exc:
            raise ValueError(f"{named}: {exc}") from None
        for line in warned:
            print(f"warning: {named}: {line}", file=sys.stderr)
    if volume.synthetic:                            # the app asks; a command says so before the work
        print(f"warning: {args.input}: {synthetic_input_note(volume)}", file=sys.stderr)
    if not args.quiet:
        for line in volume.notes:                   # what loading assumed or changed (also input_notes in the JSON)
            print(f"note: input: {line}", file=sys.stderr)
    if anonymiser:
        anonymiser.prepare(volume, output)          # a burned-in source is refused before the model runs
    synth = open_synthesizer(args, folder)
    settings = sampling_settings(args, synth.default_settings())
    result, description, checks = synthesize_checked(synth, volume, args.source, target, settings, progress=progress,
                                                     announce=lambda found: announce(found, args.quiet))
    source, identified = checks.source, checks.identified
    warnings, known = checks.input_warnings, checks.benchmark_warnings      # the known ones also in the notes
    record = provenance(synth, checks, settings, volume, result, Path(args.input).name, description=description,
                        local=folders_cut(args.input, Path(args.input).absolute().parent))
    written, sidecar = save_described(output, lambda: io.save(result, output, description=description,
                                                              anonymise=anonymiser or False),
                                      record, anonymised=bool(anonymiser))
    report = {
        "output": str(written), "provenance": str(sidecar), "route": f"{source}→{target}", "model": synth.name, "backend": args.backend,
        "device": synth.execution_device, "precision": synth.precision, "steps": settings.steps, "solver": settings.solver,
        "shift": settings.shift, "seed": settings.seed,
        "guidance": [settings.guidance.text_scale, settings.guidance.image_scale],
        "start_from_source": settings.start_from_source, "noise_correlation": settings.noise_correlation,
        "guided_filter": settings.guided_filter, "guided_filter_depth": settings.guided_filter_depth,
        "plane": settings.plane,
        "sliced": sliced_plane(volume, settings.plane),
        "batch_size": synth.last_batch_size, "seconds": round(time.perf_counter() - started, 3),
        "shape_zyx": list(result.shape), "unit": result.unit, "input_notes": list(volume.notes),
        "input_warnings": warnings,
        "benchmark_warnings": known,
        "source_floor": next((n for n in result.notes if n.startswith(SOURCE_FLOOR_PREFIX)), None),
    }
    if args.backend == "onnx":
        report["providers"] = synth.providers
    if identified is not None:
        report["identified"] = identified
    if reference is not None:
        report.update(scored_report(result, reference, volume, target, plane_axis(result, settings.plane),
                                    args.reference, written, warned))
        if placed:
            report["reference_placed"] = placed
    print(json.dumps(json_ready(report), indent=2 if args.reference else None))
    return 0
