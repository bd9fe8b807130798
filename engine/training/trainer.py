"""The generic training loop: set up (data, model, freezing, optimizer, resume, processes), then
step the stage's loss with AdamW, warm-up + cosine, gradient clipping, EMA and optional mixed
precision; report JSON-lines records; checkpoint and export the model folder atomically; stop
cleanly on cancel. ``train(cfg, emit, cancel)`` is the one entry point (the CLI wraps it).

Step ``s`` on rank ``r`` trains on the samples of global indices s·global_batch + r·batch + i, and
everything random about a sample (timestep, noise, condition dropout, posterior draw) comes from
a generator seeded by (seed, global index). So a resumed run continues the loss curve of an
uninterrupted one bit for bit (same device, threads and world size), and K processes with batch
b see and draw exactly what one process with batch K·b would.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.atomic import remove_leftovers
from engine.files import read_json
from engine.inference.corpus import instruction_corpus
from engine.inference.instructions import ANATOMY_PHRASES
from engine.inference.ood import merged_profiles, training_profile
from engine.inference.settings import resolve_device
from engine.jobs import Cancelled, CancelToken
from engine.model import LoadedModel, SynerMedGenConfig, from_config, load_model_dir, preset, train_tokenizer
from engine.model.checkpoint import detect_layout
from engine.tasks.augment import Randomization
from engine.tasks.dataset import PairedDataset
from engine.tasks.holdout import check_holdout_unused
from engine.tasks.slice_dataset import derived_rng
from engine.tasks.validation import DatasetError, Finding
from engine.training import evaluate
from engine.training.config import PATH_OPTIONS, TrainConfig
from engine.training.data import (
    SampleStream,
    SliceImages,
    StepBatches,
    prefetched_batches,
    preload_budget,
    sample_indices,
)
from engine.training.distributed import Distributed, clip_gradients, full_tensor, like, replica_checksums, shard_model
from engine.training.export import WeightsSnapshot, model_card, stage_record, write_model_folder
from engine.training.optim import EMA, LRSchedule, make_optimizer
from engine.training.protocol import PROGRESS_FILE, STATE_DIR, STOP_FILE
from engine.training.stages import AE_PREFIX, Stage, StepInputs, TokenCache, apply_freeze, get_stage, named_tensors
from engine.training.state import TrainingState, load_state, recover_state, save_state, trim_records

Emit = Callable[[dict], None]
PREVIEW_DIR = "previews"


class TrainingSetupError(ValueError):
    """The run cannot start: bad data, a bad ``--init``, an incompatible option. The message
    says what to change; nothing has been trained or written."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_generator(seed: int, index: int, purpose: str = "train") -> torch.Generator:
    """The CPU generator of one sample of the run, from (seed, purpose, global sample index)."""
    return torch.Generator().manual_seed(derived_rng(seed, purpose, index).getrandbits(63))


class Trainer:
    """One stage of training into ``cfg.out``. :meth:`setup` does every check and raises
    :class:`TrainingSetupError` before anything trains; :meth:`run` trains and returns the
    model folder."""

    def __init__(self, cfg: TrainConfig, emit: Emit | None = None, cancel: CancelToken | None = None) -> None:
        self.cfg = _absolute_paths(cfg)
        self._emit_fn = emit or (lambda record: None)
        self.cancel = cancel or CancelToken()
        self.stage: Stage = get_stage(self.cfg.stage)
        self.out = Path(self.cfg.out)
        self.dist = Distributed()
        self.warnings: list[str] = []
        self._new_profile: dict | None = None        # the training split's input profile (trained from a model)
        self._ready = False

    # ================================================================= reporting
    def emit(self, record: dict) -> None:
        """Rank 0 only: append to ``out/progress.jsonl`` and hand to the caller's ``emit``."""
        if not self.dist.is_main:
            return
        record = {"event": record.pop("event"), "stage": self.cfg.stage, **record, "time": round(time.time(), 3)}
        with open(self.out / PROGRESS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._emit_fn(record)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.dist.is_main:
            _stderr(f"warning: {message}")

    # ================================================================= set-up
    def setup(self) -> Trainer:
        cfg = self.cfg
        try:
            self.device = resolve_device(cfg.device)
        except ValueError as exc:
            raise TrainingSetupError(str(exc)) from None
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise TrainingSetupError("--precision fp16 needs a CUDA GPU (use fp32, or bf16 on CPU)")
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        if cfg.init is not None and Path(cfg.init).resolve() == self.out.resolve():
            raise TrainingSetupError("--init and --out are the same folder; write the new stage to another --out")
        if self.out.exists() and not self.out.is_dir():
            raise TrainingSetupError(f"--out {self.out}: exists and is not a folder")
        self.dist = Distributed.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.fsdp and not self.dist.enabled:
            raise TrainingSetupError("--fsdp shards the model over processes: start the command with torchrun "
                                     "--nproc_per_node=K (K ≥ 2)")
        self.resume = self._find_resume()
        self._check_not_another_model()
        self.paired = self._open_data()
        self.streams = self._build_streams()
        loaded = self._build_model()
        self.model, self.tokenizer, self.base_card = loaded.model, loaded.tokenizer, dict(loaded.metadata)
        self._check_shapes(self.model.config)
        self.tokens = TokenCache(self.tokenizer)
        self._build_optimisation()
        if self.dist.is_main and self.state.extra.get("start_folder") and \
                self.state.extra.get("base_card", {}).get("input_profile"):
            self._new_profile = training_profile(self.paired, "train")    # measured once, before training
        if cfg.fresh_start:
            self._clear_previous_run()
        else:
            self._make_out()
        self._ready = True
        return self

    def _clear_previous_run(self) -> None:
        """``--fresh``: remove the previous run's resume state, records and previews (only once
        every check has passed, so a refused command leaves them alone)."""
        if self.dist.is_main:
            for name in (STATE_DIR, PROGRESS_FILE, PREVIEW_DIR, STOP_FILE):
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                remove_leftovers(path)
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()

    def _make_out(self) -> None:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / STOP_FILE).unlink(missing_ok=True)      # a request meant for an earlier session
            if self.resume is not None:
                trim_records(self.out / PROGRESS_FILE, self.resume.state.step)
        self.dist.barrier()

    def _find_resume(self):
        cfg = self.cfg
        if cfg.fresh_start:
            return None
        if self.dist.is_main:
            recover_state(self.out)
        self.dist.barrier()
        loaded = load_state(self.out)
        if loaded is None:
            return None
        if loaded.state.stage != cfg.stage:
            raise TrainingSetupError(f"--out {self.out} holds a {loaded.state.stage!r} run; resume it with --stage "
                                     f"{loaded.state.stage}, start over with --fresh, or choose another --out")
        saved = TrainConfig.from_dict(loaded.state.extra.get("train_config", cfg.to_dict()))
        changed = [k for k, v in cfg.to_dict().items()
                   if k not in TrainConfig.RESUMABLE_CHANGES and saved.to_dict().get(k) != v]
        if changed:
            detail = ", ".join(f"{k}: {saved.to_dict().get(k)!r} → {cfg.to_dict()[k]!r}" for k in changed)
            raise TrainingSetupError(f"--out {self.out} holds a run with other settings ({detail}); repeat the "
                                     "original command to resume it, or add --fresh to start over")
        saved_world = loaded.data_position.get("world_size", 1)
        if saved_world != self.dist.world_size:
            self.warn(f"resuming a {saved_world}-process run on {self.dist.world_size} processes: the data order "
                      "from here on differs from the original run")
        return loaded

    def _check_not_another_model(self) -> None:
        """A model folder no run of ``train`` wrote (no resume state, no progress records: a library's,
        a colleague's, the default model) is never replaced by a new run unless ``--fresh`` says so: its
        weights would be lost. A run's own folder whose first checkpoint failed (a full disk) is rerun."""
        if self.resume is not None or self.cfg.fresh_start or not self.out.is_dir() or \
                (self.out / PROGRESS_FILE).exists():
            return
        try:
            detect_layout(self.out)
        except ValueError:
            return                                       # no model there: a new (or an empty) folder
        try:
            card = read_json(self.out / "metadata.json", "model card")
        except ValueError:
            card = {}
        name = card.get("name") if isinstance(card, dict) and isinstance(card.get("name"), str) else ""
        raise TrainingSetupError(f"--out {self.out} holds a model{f' ({name})' if name else ''} that no run of "
                                 "this command is writing; training would replace it: choose another --out, or "
                                 "add --fresh to replace it")

    def _open_data(self) -> PairedDataset:
        """Validate the dataset (stopping on problems unless --skip-invalid) and keep its slices
        in memory as far as a quarter of the available RAM allows."""
        cfg = self.cfg
        try:
            check_holdout_unused(cfg.data)
        except ValueError as exc:
            raise TrainingSetupError(str(exc)) from None
        try:
            paired = PairedDataset.open(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                        test_fraction=cfg.test_fraction, pixel_mm=cfg.pixel_mm or None)
            if cfg.leave_out:
                paired = paired.leave_out(cfg.leave_out)
        except DatasetError as exc:
            raise TrainingSetupError(str(exc)) from None
        self._refuse_problems(paired.report.problems)
        for note in paired.report.notes:                 # what the wizard shows: a resampled pair, its coverage
            self.warn(f"dataset: {note}")
        unloadable: list[Finding] = []                   # voxel data damaged past the header validation read
        paired.preload(cfg.image_size, budget_bytes=preload_budget(), unloadable=unloadable)
        if unloadable:
            self._refuse_problems(unloadable)
            try:
                paired = paired.without(unloadable)
            except DatasetError as exc:
                raise TrainingSetupError(str(exc)) from None
        if cfg.routes is not None:
            from engine import modalities

            try:
                wanted = [(modalities.canonical(a), modalities.canonical(b)) for a, b in cfg.routes]
            except ValueError as exc:
                raise TrainingSetupError(f"--routes: {exc}") from None
            missing = [f"{a}→{b}" for a, b in wanted if (a, b) not in paired.report.routes]
            if missing:
                have = ", ".join(f"{a}→{b}" for a, b in paired.report.routes)
                raise TrainingSetupError(f"--routes: {', '.join(missing)} not in {cfg.data} (it has {have})")
        return paired

    def _refuse_problems(self, problems: list[Finding]) -> None:
        """Stop on the dataset's problems unless --skip-invalid, which warns of each instead."""
        cfg = self.cfg
        if problems and not cfg.skip_invalid:
            lines = [f"{cfg.data}: {len(problems)} problem(s) in the dataset; fix them, or add --skip-invalid to "
                     "train on the usable part:"] + [f"  - {p}" for p in problems[:20]]
            if len(problems) > 20:
                lines.append(f"  … and {len(problems) - 20} more")
            raise TrainingSetupError("\n".join(lines))
        for p in problems:
            self.warn(f"skipped: {p}")

    def _build_streams(self) -> dict[str, SampleStream]:
        try:
            parts = self.stage.datasets(self.paired, self.cfg, "train")
        except DatasetError as exc:
            raise TrainingSetupError(f"{self.cfg.data}: {exc}") from None
        return {name: SampleStream(ds, self.cfg.seed, name) for name, ds in parts.items()}

    def _build_model(self) -> LoadedModel:
        cfg = self.cfg
        try:
            if self.resume is not None:
                try:
                    detect_layout(self.out)
                except ValueError:
                    raise TrainingSetupError(f"--out {self.out} has a checkpoint but no model folder beside it; "
                                             "start over with --fresh") from None
                loaded = load_model_dir(self.out, device="cpu")
            elif cfg.init is not None:
                try:
                    detect_layout(cfg.init)
                except ValueError as exc:
                    raise TrainingSetupError(f"--init: {exc}") from None
                loaded = load_model_dir(cfg.init, device="cpu")
                if loaded.tokenizer is None:
                    raise TrainingSetupError(f"--init {cfg.init}: the model folder has no tokenizer files")
                loaded = self._with_overrides(loaded)
            else:
                loaded = self._fresh_model()
        except TrainingSetupError:
            raise
        except (ValueError, OSError) as exc:
            raise TrainingSetupError(f"{'--init ' + str(cfg.init) if cfg.init and not self.resume else 'model'}: "
                                     f"{exc}") from None
        if self.resume is None and self.stage.needs_trained_vae and not _has_trained_vae(loaded):
            start = "a fresh model" if cfg.init is None else f"--init {cfg.init}"
            self.warn(f"--stage {cfg.stage} starts from {start}, whose VAE was never trained: its latents carry "
                      "little of the image, so synthesis learnt on them is pointless. Train --stage vae first and "
                      "pass its output (or a later stage's) as --init")
        return loaded

    def _fresh_model(self) -> LoadedModel:
        cfg = self.cfg
        try:
            base = preset(cfg.size) if cfg.model_config is None else _read_model_config(cfg.model_config)
            model_cfg = base.replace(**cfg.model_overrides)
        except (TypeError, ValueError, KeyError) as exc:
            source = f"--model-config {cfg.model_config}" if cfg.model_config else "model settings"
            raise TrainingSetupError(f"{source}: {exc}") from None
        self._check_shapes(model_cfg)
        anatomies = set(ANATOMY_PHRASES) | {s.anatomy for s in self.paired.report.subjects if s.anatomy}
        tokenizer = train_tokenizer(instruction_corpus(None, sorted(anatomies)), vocab_size=model_cfg.llm.vocab_size)
        model_cfg = model_cfg.replace(tokens=tokenizer.special_ids)
        torch.manual_seed(cfg.seed)
        model = from_config(model_cfg, device="cpu")
        size = cfg.size if cfg.model_config is None else Path(cfg.model_config).name
        card = {"name": f"SynerMedGen {size}", "licence": "Apache-2.0 (weights trained by the user)",
                "start": f"fresh {size} model (seed {cfg.seed})"}
        return LoadedModel(model, model_cfg, tokenizer, card)

    def _with_overrides(self, loaded: LoadedModel) -> LoadedModel:
        """Apply ``model_overrides`` to a loaded start model (e.g. add the source-token-aligned
        lever or the target embedding to a Stage I model): tensors the new config adds are freshly
        initialised."""
        overrides = self.cfg.model_overrides
        if not overrides:
            return loaded
        new_cfg = loaded.config.replace(**overrides)
        if new_cfg == loaded.config:
            return loaded
        torch.manual_seed(self.cfg.seed)
        model = from_config(new_cfg, device="cpu")
        try:
            missing, unexpected = model.load_state_dict(loaded.model.state_dict(), strict=False)
        except RuntimeError as exc:            # a tensor of another shape, e.g. other target modalities
            raise TrainingSetupError(f"model settings {overrides} do not fit the --init model: "
                                     f"{str(exc).splitlines()[-1].strip()}") from None
        if unexpected or any(not k.startswith(("vae2llm_src.", "target_embedder.")) for k in missing):
            raise TrainingSetupError(f"model settings {overrides} change tensors of the --init model "
                                     f"(missing {missing[:5]}, unexpected {unexpected[:5]}); only adding the "
                                     "source-token-aligned projection or the target embedding is supported")
        model.vae.load_state_dict(loaded.model.vae.state_dict())
        return LoadedModel(model, new_cfg, loaded.tokenizer, loaded.metadata, loaded.layout)

    def _check_shapes(self, mc) -> None:
        cfg = self.cfg
        step = mc.latent_downsample
        if cfg.image_size % step:
            raise TrainingSetupError(f"--image-size {cfg.image_size} must be a multiple of {step} for this model "
                                     f"(VAE downsampling {mc.vae.downsample} × latent patch {mc.latent_patch_size})")
        side = cfg.image_size // step
        if side > mc.max_latent_size:
            raise TrainingSetupError(f"--image-size {cfg.image_size} gives {side}×{side} latent tokens; this model's "
                                     f"latent position table holds {mc.max_latent_size} per side (at most "
                                     f"{mc.max_latent_size * step} px)")

    def _build_optimisation(self) -> None:
        cfg = self.cfg
        model = self.model
        if self.resume is not None:
            self._load_tensors(self.resume.model_tensors)
        self.trainable_names = self.stage.trainable(model)
        apply_freeze(model, self.trainable_names)
        model.to(self.device)
        if self.resume is None and self.dist.enabled:
            self.dist.broadcast_(t for t in list(model.state_dict().values()) + list(model.vae.state_dict().values()))
        self.fsdp_blocks = shard_model(model, self.dist, self.device.type) if cfg.fsdp else 0
        tensors = named_tensors(model)
        self.params = {n: tensors[n] for n in self.trainable_names}
        self.optimizer = make_optimizer(list(self.params.values()), cfg.learning_rate, cfg.weight_decay)
        self.schedule = LRSchedule(self.optimizer, cfg.learning_rate, cfg.warmup, cfg.step_budget,
                                   cfg.budget_seconds, cfg.min_lr_ratio)
        self.ema = EMA(self.params, cfg.ema_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        if self.resume is not None:
            self._load_optimizer(self.resume.optimizer)
            if self.resume.ema_tensors is not None:
                for k, v in self.resume.ema_tensors.items():
                    if k in self.ema.shadow:
                        self.ema.shadow[k] = like(v.float(), self.ema.shadow[k])
            scaler_state = self.resume.state.extra.get("grad_scaler")
            if self.scaler is not None and scaler_state:
                self.scaler.load_state_dict(scaler_state)
        self.state = self.resume.state if self.resume is not None else TrainingState(stage=cfg.stage)
        if self.resume is None:
            self.state.extra = {"run_id": uuid.uuid4().hex[:12], "train_config": cfg.to_dict(),
                                "prior_stages": list(self.base_card.get("recipe", {}).get("stages", [])),
                                "base_card": {k: v for k, v in self.base_card.items() if k != "recipe"},
                                "start_folder": cfg.init,      # a resume may leave --init out
                                "metrics": {}}
        else:
            self.state.extra["train_config"] = cfg.to_dict()

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        model_part = {k: v for k, v in tensors.items() if not k.startswith(AE_PREFIX)}
        vae_part = {k[len(AE_PREFIX):]: v for k, v in tensors.items() if k.startswith(AE_PREFIX)}
        self.model.load_state_dict(model_part, strict=True)
        self.model.vae.load_state_dict(vae_part, strict=True)

    def _load_optimizer(self, state: dict) -> None:
        # Saved by name (stable across FSDP and plain runs); map back to this optimizer's indices.
        index = {name: i for i, name in enumerate(self._optimizer_order())}
        by_index = {index[k]: v for k, v in state["state"].items() if k in index}
        groups = state["param_groups"]
        self.optimizer.load_state_dict({"state": by_index, "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in groups]})
        for name in self._optimizer_order():
            p = self.params[name]
            for key, value in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    self.optimizer.state[p][key] = like(value, p)

    def _optimizer_order(self) -> list[str]:
        """Parameter names in the optimizer's own index order (groups concatenated)."""
        ids = {id(p): n for n, p in self.params.items()}
        return [ids[id(p)] for g in self.optimizer.param_groups for p in g["params"]]

    def _optimizer_state_by_name(self) -> dict:
        """The optimizer state with names for indices and whole tensors (collective under FSDP)."""
        order = self._optimizer_order()
        sd = self.optimizer.state_dict()
        state = {order[i]: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in slots.items()}
                 for i, slots in sd["state"].items()}
        groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

    # ================================================================= the loop
    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step_inputs(self, indices: list[int], purpose: str = "train") -> StepInputs:
        return StepInputs(self.device, [sample_generator(self.cfg.seed, k, purpose) for k in indices], self.tokens,
                          self.cfg, self.autocast)

    def step_batches(self) -> StepBatches:
        return StepBatches(self.streams, self.dist.rank, self.dist.world_size, self.cfg.batch_size)

    def train_step(self, step: int, batches: dict[str, list] | None = None) -> tuple[float, dict[str, float], float]:
        """One optimisation step on step ``step``'s batches (built here unless given); returns
        (loss averaged over ranks, this rank's metrics, grad norm)."""
        cfg = self.cfg
        indices = sample_indices(step, self.dist.rank, self.dist.world_size, cfg.batch_size)
        if batches is None:
            batches = self.step_batches()[step]
        lr = self.schedule.apply(step, self.state.elapsed_s)
        loss, metrics = self.stage.loss(self.model, batches, self.step_inputs(indices))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {float(loss.detach())} at step {step + 1}; lower --lr or "
                                     "use fp32")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        params = list(self.params.values())
        self.dist.average_gradients(params)
        grad_norm = clip_gradients(params, cfg.grad_clip, self.dist)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.params, step)
        metrics["lr"] = lr
        return self.dist.mean(float(loss.detach())), metrics, grad_norm

    def run(self) -> Path:
        if not self._ready:
            self.setup()
        cfg, state = self.cfg, self.state
        total = cfg.step_budget
        budget_s = cfg.budget_seconds
        self.emit({"event": "resumed" if self.resume else "start", "step": state.step, "steps": total,
                   "minutes": cfg.minutes, "world_size": self.dist.world_size, "device": str(self.device),
                   "precision": cfg.precision, "trainable_parameters": sum(p.numel() for p in self.params.values()),
                   "frozen_parameters": sum(p.numel() for n, p in named_tensors(self.model).items()
                                            if n not in self.params),
                   "fsdp_blocks": self.fsdp_blocks, "train_subjects": len(self.paired.subject_names("train")),
                   "left_out": cfg.leave_out, "out": str(self.out), "warnings": list(self.warnings)})
        last_checkpoint = time.monotonic()
        step_time = None
        last_loss = state.history[-1]["loss"] if state.history else None
        prefetch = prefetched_batches(self.step_batches(), state.step, cfg.workers) if cfg.workers else None
        try:
            while True:
                iteration_started = time.perf_counter()
                done_budget = (total is not None and state.step >= total) or \
                              (budget_s is not None and state.elapsed_s >= budget_s)
                due = cfg.checkpoint_seconds > 0 and time.monotonic() - last_checkpoint >= cfg.checkpoint_seconds
                stop, due, done_budget = self.dist.any(self.cancel.cancelled or self._stop_file_found(), due,
                                                       done_budget)
                if done_budget:
                    break
                if stop:
                    path = self.checkpoint("cancel", last_loss)
                    self.emit({"event": "cancelled", "step": state.step, "checkpoint": str(path),
                               "model_dir": str(self.out)})
                    raise Cancelled()
                if due:
                    self.checkpoint("interval", last_loss)
                    last_checkpoint = time.monotonic()
                started = time.perf_counter()
                loss, metrics, grad_norm = self.train_step(state.step, next(prefetch) if prefetch is not None else None)
                elapsed = time.perf_counter() - started
                state.step += 1
                state.samples_seen += cfg.batch_size * self.dist.world_size
                last_loss = loss
                state.best_loss = loss if state.best_loss is None else min(state.best_loss, loss)
                step_time = elapsed if step_time is None else 0.9 * step_time + 0.1 * elapsed
                if state.step % max(1, cfg.log_every) == 0 or state.step == total:
                    so_far = state.elapsed_s + time.perf_counter() - iteration_started
                    record = {"event": "step", "step": state.step, "steps": total, "loss": loss,
                              "lr": metrics.pop("lr"), "eta_s": self._eta(step_time, budget_s, so_far),
                              "samples_per_s": round(cfg.batch_size * self.dist.world_size
                                                     * len(self.streams) / max(elapsed, 1e-9), 3),
                              "elapsed_s": round(so_far, 3),
                              "grad_norm": grad_norm, **metrics}
                    state.history.append({k: record[k] for k in ("step", "loss", "lr")})
                    self.emit(record)
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step != total:
                    self.checkpoint("interval", loss)
                    last_checkpoint = time.monotonic()
                if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step != total:
                    self.evaluate()
                if self._previews and cfg.preview_every and state.step % cfg.preview_every == 0:
                    self.preview()
                state.elapsed_s += time.perf_counter() - iteration_started
            prefetch = None                                  # stops the data-loading workers
            self.evaluate()
            if self._previews and cfg.preview_every and state.step % cfg.preview_every:
                self.preview()
            self.checkpoint("final", last_loss, status="finished")
            record = {"event": "done", "step": state.step, "steps": total, "model_dir": str(self.out),
                      "final_loss": last_loss, "elapsed_s": round(state.elapsed_s, 3),
                      "metrics": self.state.extra.get("metrics", {})}
            if self.dist.enabled:
                checks = replica_checksums(self.params, self.dist)
                record.update({"replica_checksums": checks, "replicas_agree": len(set(checks)) == 1})
            self.emit(record)
            return self.out
        except Cancelled:
            raise
        except Exception as exc:
            self.emit({"event": "error", "step": state.step, "message": f"{type(exc).__name__}: {exc}"})
            raise

    def _stop_file_found(self) -> bool:
        stop = self.out / STOP_FILE
        if self.dist.is_main and stop.exists():
            stop.unlink(missing_ok=True)
            return True
        return False

    def _eta(self, step_time: float | None, budget_s: float | None, elapsed_s: float) -> float | None:
        if budget_s is not None:
            return round(max(0.0, budget_s - elapsed_s), 1)
        if step_time is None:
            return None
        assert self.cfg.step_budget is not None, "a run without a time budget has a step budget"
        return round(max(0, self.cfg.step_budget - self.state.step) * step_time, 1)

    @property
    def _previews(self) -> bool:
        return self.cfg.stage in ("generation", "joint")

    # ================================================================= evaluation, previews
    def evaluate(self) -> dict:
        """The stage's validation measurement with the EMA weights; recorded in the model card."""
        cfg, model = self.cfg, self.model
        model.eval()
        results: dict[str, Any] = {}
        with self.ema.applied(self.params), torch.no_grad():
            if cfg.stage in ("understanding", "joint"):
                accuracy = evaluate.understanding_accuracy(
                    model, self.paired, self.tokens, image_size=cfg.image_size, samples=cfg.eval_samples,
                    seed=cfg.seed, end_id=self.model.config.tokens.im_end, cancel=self.cancel)
                results["accuracy"] = accuracy
            if cfg.stage in ("generation", "joint"):
                samples = evaluate.synthesis_validation_samples(self.paired, cfg.image_size, cfg.seed,
                                                                cfg.eval_samples, cfg.routes)
                if samples:
                    inputs = self.step_inputs(list(range(len(samples))), "validation")
                    results["val_loss"] = evaluate.flow_validation_loss(model, samples, inputs)
            if cfg.stage == "vae":
                images = self._vae_eval_images()
                if images:
                    results["reconstruction"] = evaluate.reconstruction_quality(model, images, self.device)
        apply_freeze(model, self.trainable_names)
        if not results:
            results["skipped"] = "no validation subjects in the dataset's split"
        self.state.extra["metrics"] = {k: v for k, v in results.items() if k != "skipped"}
        self.emit({"event": "eval", "step": self.state.step, **results})
        return results

    def _vae_eval_images(self) -> list[torch.Tensor]:
        try:
            slices = SliceImages(self.paired, evaluate.EVAL_SPLIT, image_size=self.cfg.image_size)
        except DatasetError:
            return []
        return [slices[i] for i in evaluate.spread(len(slices), self.cfg.eval_samples)]

    def preview(self) -> Path | None:
        """Source | synthesized | target of a fixed validation slice, as a PNG (EMA weights)."""
        cfg = self.cfg
        sample = evaluate.preview_sample(self.paired, cfg.image_size, cfg.seed, cfg.routes)
        if sample is None:
            return None
        self.model.eval()
        with self.ema.applied(self.params):
            synthesized = evaluate.synthesize_slice(self.model, sample, self.tokens, self.device, cfg.preview_steps,
                                                    seed=cfg.seed)
        apply_freeze(self.model, self.trainable_names)
        if not self.dist.is_main:
            return None
        path = self.out / PREVIEW_DIR / f"step-{self.state.step:08d}.png"
        evaluate.write_png(path, [sample.source, synthesized, sample.target])
        self.emit({"event": "preview", "step": self.state.step, "path": str(path), "route": list(sample.route),
                   "subject": sample.subject, "slice": sample.index, "instruction": sample.instruction,
                   "panels": ["source", "synthesized", "target"]})
        return path

    # ================================================================= checkpoints and export
    def checkpoint(self, reason: str, last_loss: float | None, status: str = "in progress") -> Path:
        """Export the model folder (EMA weights) and then ``checkpoint-last`` (resume state)."""
        self.export(status if reason != "cancel" else "cancelled", last_loss)
        model_tensors = {k: full_tensor(v) for k, v in self.model.state_dict().items()}
        model_tensors.update({AE_PREFIX + k: v for k, v in self.model.vae.state_dict().items()})
        ema_tensors = {k: full_tensor(v) for k, v in self.ema.state_dict().items()}
        optimizer_state = self._optimizer_state_by_name()
        if self.scaler is not None:
            self.state.extra["grad_scaler"] = self.scaler.state_dict()
        path = self.out / STATE_DIR
        if self.dist.is_main:
            position = {"next_step": self.state.step, "world_size": self.dist.world_size,
                        "batch_size": self.cfg.batch_size, "streams": list(self.streams)}
            save_state(self.out, self.state, model_tensors, ema_tensors, _StateDict(optimizer_state), self.schedule,
                       position)
        self.dist.barrier()
        self.emit({"event": "checkpoint", "step": self.state.step, "reason": reason, "path": str(path),
                   "model_dir": str(self.out)})
        return path

    def export(self, status: str, last_loss: float | None) -> Path:
        """Write the model folder files into ``out`` from the EMA weights."""
        cfg, model = self.cfg, self.model
        model_cfg = model.config
        card_extra = {}
        with self.ema.applied(self.params):
            if cfg.stage == "vae":
                images = [self.streams["slices"][k] for k in range(min(64, len(self.streams["slices"])))]
                shift, std = evaluate.latent_statistics(model, images, self.device)
                vae_cfg = model_cfg.vae.__class__(**{**model_cfg.vae.to_dict(), "scale_factor": 1.0 / std,
                                                     "shift_factor": shift})
                model_cfg = model_cfg.replace(vae=vae_cfg)
                card_extra["vae_latent_statistics"] = {"mean": shift, "std": std, "slices": len(images)}
            # copies: the parameters go back to the live weights when the block ends
            state = {k: full_tensor(v).detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            vae_state = {k: full_tensor(v).detach().to("cpu", copy=True) for k, v in model.vae.state_dict().items()}
        if self.dist.is_main:
            route_list = self._routes_seen()
            record = stage_record(cfg, run_id=self.state.extra["run_id"], status=status, step=self.state.step,
                                  steps=cfg.step_budget, elapsed_s=self.state.elapsed_s, final_loss=last_loss,
                                  world_size=self.dist.world_size, device=str(self.device), routes=route_list,
                                  metrics=self.state.extra.get("metrics", {}))
            card = model_card(self.state.extra.get("base_card", {}), self.paired,
                              self.state.extra.get("prior_stages", []), record, cfg.image_size, cfg.ema_decay,
                              sum(p.numel() for p in self.params.values()), card_extra, pixel_mm=cfg.pixel_mm or None,
                              randomization=Randomization().to_dict() if cfg.augment else None,
                              start_folder=self.state.extra.get("start_folder", cfg.init), name=self.out.name)
            if self._new_profile is not None and card.get("input_profile"):
                card["input_profile"] = merged_profiles(card["input_profile"], self._new_profile)
            write_model_folder(self.out, WeightsSnapshot(model_cfg, state, vae_state), self.tokenizer, card)
        self.dist.barrier()
        return self.out

    def _routes_seen(self) -> list[tuple[str, str]]:
        routes = self.paired.routes("train")
        if self.cfg.routes is not None:
            from engine import modalities

            wanted = {(modalities.canonical(a), modalities.canonical(b)) for a, b in self.cfg.routes}
            routes = [r for r in routes if r in wanted]
        return routes


def _read_model_config(path: str) -> SynerMedGenConfig:
    """A model architecture from JSON (``SynerMedGenConfig.to_dict()``, optionally with the
    ``model_type`` / ``format_version`` keys of a model folder's ``config.json``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("the top level must be an object")
    data.pop("model_type", None)
    data.pop("format_version", None)
    return SynerMedGenConfig.from_dict(data)


def _has_trained_vae(loaded: LoadedModel) -> bool:
    """A BAGEL folder ships FLUX's VAE; one of ours has a ``vae`` stage in its recipe."""
    if loaded.layout == "bagel":
        return True
    stages = loaded.metadata.get("recipe", {}).get("stages", [])
    return any(s.get("stage") == "vae" for s in stages) or bool(loaded.metadata.get("pretrained_vae"))


class _StateDict:
    """Hands an already-built optimizer state to :func:`save_state` (which calls ``state_dict()``)."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    return cfg.replace(**{k: None if getattr(cfg, k) is None else str(Path(getattr(cfg, k)).expanduser().resolve())
                          for k in PATH_OPTIONS})


def train(cfg: TrainConfig, emit: Emit | None = None, cancel: CancelToken | None = None) -> Path:
    """Run one training stage into ``cfg.out`` (resuming its ``checkpoint-last`` unless
    ``cfg.fresh_start``); returns the model folder. Raises :class:`TrainingSetupError` before
    training on bad input, :class:`engine.jobs.Cancelled` after checkpointing on cancel."""
    trainer = Trainer(cfg, emit, cancel)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.dist.close()
