"""``python main.py train …``: one training stage from the command line (and from the GUI's Train
panel, which runs this command as a subprocess). JSON lines on stdout, human messages on stderr;
exit 0 done, 2 bad input (nothing trained), 130 cancelled by a signal (after a checkpoint), 1 error."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap

from engine.split import TEST_FRACTION, VAL_FRACTION
from engine.training import (
    DEFAULT_PIXEL_MM,
    DEFAULT_STEPS,
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_OK,
    PRECISIONS,
    STAGE_HELP,
    STAGES,
)

PRESET_NAMES = ("tiny", "default", "small", "bagel-7b")   # engine.model.config.PRESETS, without importing torch

EPILOG = """\
output: OUT becomes a model folder (config.json, model.safetensors and ae.safetensors holding the EMA
weights, tokenizer.json, metadata.json = the model card with the recipe of every stage so far) that is
rewritten at every checkpoint, beside OUT/checkpoint-last/ (resume state), OUT/progress.jsonl (every
record below) and OUT/previews/ (generation stages).

resume: run the same command again to continue from OUT/checkpoint-last (model, EMA, optimizer,
schedule, step, RNG, data position); --fresh starts over. An OUT holding a model no run is writing
(no checkpoint-last: a library's or a colleague's) is refused unless --fresh says to replace it.
SIGINT/SIGTERM (SIGBREAK on Windows) or creating the file OUT/STOP write a checkpoint, print
{"event": "cancelled"} and exit 130.

records (one JSON object per stdout line, all with "event", "stage", "time"):
  start / resumed  {step, steps, minutes, world_size, device, precision, trainable_parameters, …}
  step             {step, steps, loss, lr, eta_s, samples_per_s, elapsed_s, grad_norm, + stage terms}
  checkpoint       {step, reason, path, model_dir}
  eval             {step, accuracy: {CTS, MI, TIA}} | {val_loss} | {reconstruction: {psnr, ssim, l1}}
  preview          {step, path (PNG: source | synthesized | target), route, subject, slice}
  cancelled        {step, checkpoint, model_dir}
  done             {step, model_dir, final_loss, metrics[, replica_checksums, replicas_agree]}
  error            {message}

recipe of a model from scratch:
  python main.py train --data D --stage vae --out M1 --size tiny
  python main.py train --data D --stage understanding --init M1 --out M2
  python main.py train --data D --stage generation --init M2 --out M3
several GPUs / nodes: torchrun --nproc_per_node=K main.py train … (add --fsdp for large presets).
"""


def _stage_help() -> str:
    return "\n\n".join(textwrap.fill(STAGE_HELP[name].text(name), width=100, subsequent_indent="    ",
                                         break_on_hyphens=False)
                       for name in STAGES)


def _route(text: str) -> tuple[str, str]:
    for sep in (":", "->", ">"):
        if sep in text:
            a, b = text.split(sep, 1)
            return a.strip(), b.strip()
    raise argparse.ArgumentTypeError(f"a route is SOURCE:TARGET (e.g. T1:FLAIR), not {text!r}")


def _task_weights(text: str) -> dict[str, float]:
    try:
        return {k.strip().upper(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"task weights are CTS=1,MI=1,TIA=1, not {text!r}") from None


def _three_floats(option: str, names: str):
    def parse(text: str) -> tuple[float, float, float]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"{option} is {names} (three numbers with commas), not {text!r}")
        return values
    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train one stage (vae, understanding, generation, joint); JSON-lines progress",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Train one SynerMedGen stage on a paired dataset folder (one folder per "
                                  "subject with a volume per modality, e.g. SUBJECT/T1.nii.gz, or a BIDS dataset "
                                  "whose sessions are the subjects) and write the result as a model folder. Runs "
                                  "unchanged under torchrun.", width=100)
        + "\n\nstages:\n\n" + _stage_help(),
        epilog=EPILOG)
    p.add_argument("--data", required=True, metavar="DIR", help="paired dataset folder (one subfolder per subject, or a BIDS dataset)")
    p.add_argument("--stage", required=True, choices=STAGES, help="which stage to train (see above)")
    p.add_argument("--out", required=True, metavar="DIR", help="output model folder (and resume state)")
    p.add_argument("--size", default="tiny", choices=PRESET_NAMES,
                   help="model preset of a fresh model (ignored with --init)")
    p.add_argument("--init", metavar="DIR", help="start from this model folder (an earlier stage's --out, or a "
                                                 "BAGEL checkpoint folder); default: a fresh model")
    p.add_argument("--model-config", metavar="JSON", help="architecture of a fresh model instead of --size (a "
                                                          "model folder's config.json works; ignored with --init)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"optimisation steps (default {DEFAULT_STEPS})")
    budget.add_argument("--minutes", type=float, help="wall-clock training budget instead of --steps")
    p.add_argument("--batch-size", type=int, default=4, help="samples per step and process (default 4)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 5%% of --steps, at most 500)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient L2 norm (0: off)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--image-size", type=int, default=64, help="square slice size in pixels (default 64)")
    p.add_argument("--pixel-mm", type=float,
                   help=f"the model's pixel size in mm: slices are resampled to it, padded or tiled (default: the "
                        f"--init model's, else {DEFAULT_PIXEL_MM:g}; 0: each slice fitted to --image-size as models "
                        "before it did)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the slices as they are (default: field of view, resolution, bias, noise, contrast "
                        "and calibration randomized per sample)")
    p.add_argument("--seed", type=int, default=0,
                   help="training order and, unless dataset.json lists a split, which subjects are held out")
    add_split_fractions(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default); bf16 autocast; fp16 autocast with loss scaling (CUDA)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading processes that prepare the next batches (default 0: none)")
    p.add_argument("--fresh", action="store_true", help="ignore OUT's checkpoint and start over (and replace a model OUT holds)")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS", help="(default 500; 0: off)")
    p.add_argument("--checkpoint-seconds", type=float, default=600.0, metavar="S",
                   help="also checkpoint after this much wall time (default 600; 0: off)")
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS", help="(default 0: at the end only)")
    p.add_argument("--eval-samples", type=int, default=16, help="validation samples per task / metric")
    p.add_argument("--preview-every", type=int, default=100, metavar="STEPS",
                   help="preview PNG every N steps in generation stages (default 100; 0: off)")
    p.add_argument("--preview-steps", type=int, default=12, help="Euler steps of a preview (default 12)")
    p.add_argument("--log-every", type=int, default=1, metavar="STEPS", help="step records every N steps")
    p.add_argument("--routes", type=_route, nargs="+", metavar="SRC:TGT",
                   help="train synthesis on these routes only (generation, joint); without it every route between "
                        "a subject's modalities trains, both ways (a CBCT / CT dataset also trains CT:CBCT)")
    p.add_argument("--leave-out", metavar="SOURCE",
                   help="keep every subject of this dataset source (its dataset.json's subjects → source: a site, "
                        "scanner or anatomy template) out of training and validation (leave-one-source-out)")
    p.add_argument("--task-weights", type=_task_weights, metavar="CTS=1,MI=1,TIA=1",
                   help="Stage I task mixture (default equal)")
    p.add_argument("--cfg-dropout", type=_three_floats("--cfg-dropout", "TEXT,VIT,VAE"), default=(0.1, 0.3, 0.3),
                   metavar="TEXT,VIT,VAE",
                   help="condition dropout probabilities for guidance (default 0.1,0.3,0.3 as BAGEL)")
    p.add_argument("--vae-weights", type=_three_floats("--vae-weights", "MSE,SSIM,KL"), default=(0.1, 0.2, 1e-6),
                   metavar="MSE,SSIM,KL", help="vae stage: weights of MSE, 1 − SSIM and KL beside L1 "
                                               "(default 0.1,0.2,1e-6)")
    p.add_argument("--vae-posterior", choices=("mean", "sample"), default="mean",
                   help="latents of the frozen VAE in generation stages: posterior mean (default) or a draw")
    p.add_argument("--source-token-aligned", action="store_true",
                   help="fresh model or --init: add the source latent token-aligned into the noisy target tokens "
                        "(zero-initialised vae2llm_src)")
    p.add_argument("--target-embedding", action="store_true",
                   help="fresh model or --init: add a learned embedding of the requested target modality to the "
                        "noisy target tokens (target_embedder, one row per known modality)")
    p.add_argument("--timestep-shift", type=float, default=None, metavar="S",
                   help="fresh model or --init: shift S of the training timesteps, S·t / (1 + (S − 1)·t) of a "
                        "logit-normal t (the config's timestep_shift; BAGEL: 1); above 1 trains more on the noisy "
                        "end, where sampling with shift 3 takes most of its steps")
    p.add_argument("--fsdp", action="store_true", help="shard decoder and ViT layers with FSDP (under torchrun)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="train on the usable part of a dataset with problems (found by validation, or voxel data "
                        "found damaged when training first reads every volume): each left out is named on stderr "
                        "and in the model card")
    p.set_defaults(func=run_train)


def add_split_fractions(p: argparse.ArgumentParser) -> None:
    """The held-out shares of a split drawn from the seed (train and evaluate must agree on them)."""
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                   help=f"share of subjects held out for validation when dataset.json lists no split "
                        f"(default {VAL_FRACTION:g})")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION, metavar="F",
                   help=f"share of subjects held out for testing when dataset.json lists no split "
                        f"(default {TEST_FRACTION:g})")


def _pixel_mm(args: argparse.Namespace) -> float:
    """--pixel-mm, else the start model's (0 for a model that fits its slices), else the default."""
    if args.pixel_mm is not None:
        return args.pixel_mm
    if args.init:
        from engine.inference import ModelCard

        try:
            return ModelCard.read(args.init).pixel_mm or 0.0
        except ValueError:
            return DEFAULT_PIXEL_MM                   # an unreadable card is reported when the model loads
    return DEFAULT_PIXEL_MM


def config_from_args(args: argparse.Namespace):
    from engine.training import TARGET_EMBEDDING, TrainConfig

    overrides = {"source_token_aligned": True} if args.source_token_aligned else {}
    if args.target_embedding:
        overrides["target_modalities"] = TARGET_EMBEDDING
    if args.timestep_shift is not None:
        overrides["timestep_shift"] = args.timestep_shift
    text, vit, vae = args.cfg_dropout
    w_mse, w_ssim, w_kl = args.vae_weights
    return TrainConfig(
        data=args.data, stage=args.stage, out=args.out, size=args.size, init=args.init, steps=args.steps,
        minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        image_size=args.image_size, pixel_mm=_pixel_mm(args), augment=args.augment, seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, device=args.device, precision=args.precision,
        threads=args.threads, workers=args.workers, fresh_start=args.fresh, checkpoint_every=args.checkpoint_every,
        checkpoint_seconds=args.checkpoint_seconds, eval_every=args.eval_every, eval_samples=args.eval_samples,
        preview_every=args.preview_every, preview_steps=args.preview_steps, log_every=args.log_every,
        routes=tuple(args.routes) if args.routes else None, leave_out=args.leave_out, task_weights=args.task_weights,
        cfg_text_dropout=text, cfg_vit_dropout=vit, cfg_vae_dropout=vae, vae_posterior=args.vae_posterior,
        vae_mse_weight=w_mse, vae_ssim_weight=w_ssim, vae_kl_weight=w_kl, model_config=args.model_config,
        model_overrides=overrides, fsdp=args.fsdp, skip_invalid=args.skip_invalid)


def print_record(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    print_record({"event": "error", "message": message, "phase": "setup"})
    return EXIT_BAD_INPUT


def run_train(args: argparse.Namespace) -> int:
    """Parse → set up (every check; exit 2 on bad input) → train with SIGINT/SIGTERM cancelling."""
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        return _bad_input(str(exc))
    from engine.jobs import Cancelled, CancelToken
    from engine.training import Trainer

    cancel = CancelToken()
    trainer = Trainer(cfg, print_record, cancel)
    try:
        try:
            trainer.setup()
        except ValueError as exc:  # TrainingSetupError, DatasetError and config errors
            return _bad_input(str(exc))
        previous = _install_signal_handlers(cancel)
        try:
            out = trainer.run()
        except Cancelled:
            if trainer.dist.is_main:
                print(f"cancelled at step {trainer.state.step}; checkpoint in {cfg.out}; run the same command to "
                      "resume", file=sys.stderr, flush=True)
            return EXIT_CANCELLED
        except Exception as exc:  # noqa: BLE001 — reported as a record and a traceback, exit 1
            import traceback

            traceback.print_exc()
            print(f"error: training failed at step {trainer.state.step}: {exc}", file=sys.stderr, flush=True)
            return EXIT_ERROR
        finally:
            _restore_signal_handlers(previous)
        if trainer.dist.is_main:
            print(f"model written to {out}", file=sys.stderr, flush=True)
        return EXIT_OK
    finally:
        trainer.dist.close()


def _install_signal_handlers(cancel) -> dict:
    """First SIGINT/SIGTERM: cancel (checkpoint, exit 130); a second one: the default action."""
    previous = {}

    def handler(signum, frame):
        print(f"received {signal.Signals(signum).name}: writing a checkpoint, then stopping (send it again to "
              "stop at once)", file=sys.stderr, flush=True)
        cancel.cancel()
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM) + ((signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ()):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
