"""``python main.py selftest`` (the bundle's ``SynerMedGen --selftest``): load the default model,
synthesize a few central slices of the demo study (T1 → FLAIR) and report what ran; exit 0 when the
result is finite and not blank, 1 with the reason otherwise. No window, nothing fetched."""
from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback

from cli.common import add_model_arguments, model_dir, open_synthesizer
from engine.paths import ROOT

DEMO_STUDY = ROOT / "resources" / "demo" / "brain"
SOURCE, TARGET = "T1", "FLAIR"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selftest", help="check this installation: synthesize a few slices of the demo study, no window",
        description=f"Load the model (default: the shipped one), synthesize {SOURCE} → {TARGET} on the central "
                    "slices of the demo study and print what ran. Exit status 0 when the result is finite "
                    "and not blank. Research use only, not for diagnosis.")
    add_model_arguments(p)
    p.add_argument("--slices", type=int, default=4, help="how many central slices to synthesize (default 4)")
    p.add_argument("--steps", type=int, help="ODE steps (default: the model's)")
    p.set_defaults(func=run)


def _say(text: str) -> None:
    print(f"selftest: {text}", flush=True)


def _check(args: argparse.Namespace) -> None:
    import numpy as np

    import engine.io as io
    from engine.inference import slices_first

    if args.slices < 1:
        raise ValueError("--slices must be at least 1")
    started = time.perf_counter()
    _say(f"{sys.executable} (frozen: {bool(getattr(sys, 'frozen', False))}), Python {platform.python_version()}, "
         f"{platform.system()} {platform.machine()}")
    folder = model_dir(args)
    synth = open_synthesizer(args, folder)
    _say(f"model {synth.name!r} from {folder} on {synth.device.type} ({synth.precision}, backend {args.backend}) "
         f"loaded in {time.perf_counter() - started:.1f} s")
    volume = io.load(str(DEMO_STUDY / f"{SOURCE}.nii.gz"))
    plan = synth.plan(volume, SOURCE)
    first = max(0, plan.count // 2 - args.slices // 2)
    chosen = list(range(first, min(plan.count, first + args.slices)))
    settings = synth.default_settings()
    if args.steps:
        settings = settings.replace(steps=args.steps)
    began = time.perf_counter()
    result = synth.synthesize_volume(volume, SOURCE, TARGET, settings, slices=chosen)
    took = time.perf_counter() - began
    slab = slices_first(result.array, plan.axis)[chosen]
    _say(f"{SOURCE} → {TARGET}: slab of {len(chosen)} slices ({plan.height}×{plan.width} px, array axis "
         f"{plan.axis}, indices {chosen[0]}–{chosen[-1]} of {plan.count}) of {DEMO_STUDY.relative_to(ROOT)}, "
         f"{settings.steps} steps, {took:.1f} s")
    if not np.isfinite(slab).all():
        raise RuntimeError("the synthetic slab holds NaN or infinite values")
    low, high = float(slab.min()), float(slab.max())
    _say(f"output range {low:.4g} … {high:.4g} {result.unit or '(no unit)'}, mean {float(slab.mean()):.4g}")
    if not high > low:
        raise RuntimeError(f"the synthetic slab is blank (every voxel is {low:g})")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        _check(args)
    except Exception as exc:  # noqa: BLE001 - a broken installation shows up as any exception
        traceback.print_exc()
        _say(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    _say(f"ok in {time.perf_counter() - started:.1f} s")
    return 0
