"""The one frozen configuration of a training run (``TrainConfig``): data, stage, model start,
budget, optimisation, checkpointing, device and CFG dropout. Plain values only, so it round-trips
through JSON into the checkpoint and the model card's recipe."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import modalities
from engine.split import TEST_FRACTION, VAL_FRACTION, check_fractions

DEFAULT_PIXEL_MM = 4.0           # a new model's pixel size: 64 pixels span 256 mm, a whole adult head
# what a run recorded before an option existed did: slices fitted to the image size, no randomization,
# every source trained on
LEGACY_OPTIONS = {"pixel_mm": 0.0, "augment": False, "leave_out": None}

STAGES = ("vae", "understanding", "generation", "joint")
PATH_OPTIONS = ("data", "out", "init", "model_config")     # the options that are paths (made absolute by a run)


@dataclass(frozen=True)
class StageHelp:
    """What a stage does, for ``train --help`` and the model card."""

    summary: str
    trains: str
    frozen: str
    loss: str

    def text(self, name: str) -> str:
        return f"{name}: {self.summary} Trains: {self.trains}. Frozen: {self.frozen}. Loss: {self.loss}."


STAGE_HELP: dict[str, StageHelp] = {
    "vae": StageHelp(
        summary="the autoencoder alone, on 2-D slices of every modality (the base BAGEL's FLUX VAE would give "
                "us; run it first on a fresh model).",
        trains="the VAE encoder and decoder",
        frozen="everything else (not even run)",
        loss="L1 + 0.1·MSE + 0.2·(1 − SSIM) between slice and reconstruction in [0, 1] + 1e-6·KL(posterior ‖ "
             "N(0, 1)) (weights: --vae-weights); the latent shift/scale written with the model are measured on "
             "the data so latents have zero mean and unit variance"),
    "understanding": StageHelp(
        summary="Stage I, generation-grounded understanding: CTS, MI and TIA questions built from the paired "
                "slices (accuracy on the validation subjects is reported at the end).",
        trains="ViT, connector, the understanding expert of every layer, text embeddings, LM head and final norm",
        frozen="the VAE and every generation-side tensor (*_moe_gen, norm_moe_gen, vae2llm, llm2vae, time "
               "embedder, vae2llm_src, target_embedder): requires_grad=False and absent from the optimizer",
        loss="cross-entropy on the answer tokens (and <|im_end|>) of each question"),
    "generation": StageHelp(
        summary="Stage II, understanding-conditioned generation: instruction + source slice (ViT tokens and clean "
                "VAE tokens) → target slice (a preview PNG of a validation slice every --preview-every steps).",
        trains="the generation expert of every layer (*_moe_gen, norm_moe_gen), vae2llm, llm2vae, the time "
               "embedder, vae2llm_src when the model is source-token-aligned, and target_embedder when it has "
               "target modalities",
        frozen="ViT, connector, understanding expert, text embeddings, LM head, and the VAE (it encodes source "
               "and target without gradients)",
        loss="rectified-flow MSE between the predicted and the true velocity ε − x0 on the noisy target tokens, t "
             "logit-normal, shifted by the model's timestep_shift (--timestep-shift); classifier-free-guidance "
             "dropout of the text / ViT / VAE conditions (0.1 / 0.3 / 0.3)"),
    "joint": StageHelp(
        summary="Stage I and Stage II at once, for the ablation against the two-stage recipe.",
        trains="everything the understanding and generation stages train",
        frozen="the VAE",
        loss="CE on a batch of questions + flow MSE on a batch of synthesis samples, each step"),
}
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
POSTERIOR = ("mean", "sample")

# Learning rates that suit each stage when --lr is not given (AdamW, batch of a few slices).
DEFAULT_LR = {"vae": 2e-4, "understanding": 2e-4, "generation": 2e-4, "joint": 2e-4}
DEFAULT_STEPS = 1000
TARGET_EMBEDDING = tuple(modalities.MODALITIES)   # the target rows `--target-embedding` adds: every known modality


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run. ``steps`` and ``minutes`` are exclusive budgets (steps wins
    when both are set by code; the CLI refuses both). ``init=None`` starts a fresh model of
    ``size`` with a BPE tokenizer trained on the instruction corpus; ``model_overrides`` replace
    top-level fields of a fresh model's config (e.g. ``{"source_token_aligned": True}``, or
    ``{"target_modalities": TARGET_EMBEDDING}``); tensors they add to an ``init`` model start fresh."""

    data: str
    stage: str
    out: str
    size: str = "tiny"
    init: str | None = None
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None          # None: 5 % of the step budget (at most 500)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    image_size: int = 64
    pixel_mm: float = DEFAULT_PIXEL_MM                 # the model's pixel size (0: slices fitted to image_size)
    augment: bool = True                               # domain-randomized training samples (engine.tasks.augment)
    seed: int = 0                                      # training order and, without a split in dataset.json,
    val_fraction: float = VAL_FRACTION                 # … the subjects held out for validation
    test_fraction: float = TEST_FRACTION               # … and for testing (engine.split.hash_split)
    routes: tuple[tuple[str, str], ...] | None = None  # restrict synthesis routes (generation, joint)
    leave_out: str | None = None                       # a dataset source kept out of train and val (held out)
    task_weights: Mapping[str, float] | None = None    # CTS / MI / TIA mixture of Stage I
    checkpoint_every: int = 500                        # steps (0: off)
    checkpoint_seconds: float = 600.0                  # wall-clock seconds (0: off)
    eval_every: int = 0                                # steps (0: only at the end)
    eval_samples: int = 16                             # per task / per metric
    preview_every: int = 100                           # steps (0: off); generation and joint
    preview_steps: int = 12                            # Euler steps of a preview
    log_every: int = 1
    device: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    workers: int = 0                                   # data-loading processes (0: in the training process)
    cfg_text_dropout: float = 0.1                      # BAGEL's defaults
    cfg_vit_dropout: float = 0.3
    cfg_vae_dropout: float = 0.3
    vae_posterior: str = "mean"                        # latents of the frozen VAE: posterior mean or a draw
    vae_ssim_weight: float = 0.2
    vae_mse_weight: float = 0.1
    vae_kl_weight: float = 1e-6
    model_config: str | None = None                    # JSON of a SynerMedGenConfig for a fresh model (replaces size)
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    fsdp: bool = False
    skip_invalid: bool = False                         # train on the usable part of a dataset with problems
    fresh_start: bool = False                          # ignore (and delete) out/checkpoint-last

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {', '.join(STAGES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.vae_posterior not in POSTERIOR:
            raise ValueError(f"vae_posterior must be one of {POSTERIOR}, not {self.vae_posterior!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.workers < 0:
            raise ValueError(f"workers must be ≥ 0, got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {self.batch_size}")
        if self.image_size < 8:
            raise ValueError(f"image size must be ≥ 8 pixels, got {self.image_size}")
        if not (self.pixel_mm == 0 or 0.05 <= self.pixel_mm <= 50.0):
            raise ValueError(f"pixel size must be 0 (fit the slice) or 0.05…50 mm, got {self.pixel_mm}")
        for name in ("cfg_text_dropout", "cfg_vit_dropout", "cfg_vae_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_fractions(self.val_fraction, self.test_fraction)
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.routes is not None:
            object.__setattr__(self, "routes", tuple((str(a), str(b)) for a, b in self.routes))
        # as state.json stores them (tuples become lists), so a resumed run compares equal
        object.__setattr__(self, "model_overrides", json.loads(json.dumps(dict(self.model_overrides or {}))))
        if self.task_weights is not None:
            object.__setattr__(self, "task_weights", {str(k): float(v) for k, v in self.task_weights.items()})

    # -- derived values --------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.stage]

    @property
    def step_budget(self) -> int | None:
        """The number of steps, or None under a minutes budget."""
        if self.steps is not None:
            return self.steps
        return None if self.minutes is not None else DEFAULT_STEPS

    @property
    def budget_seconds(self) -> float | None:
        """The wall-clock budget in seconds, or None under a step budget."""
        if self.step_budget is not None:
            return None
        assert self.minutes is not None, "only a minutes budget leaves no step budget"
        return self.minutes * 60.0

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return max(0, self.warmup_steps)
        budget = self.step_budget
        return min(500, max(1, budget // 20)) if budget is not None else 100

    def describe_budget(self) -> str:
        return f"{self.step_budget} steps" if self.step_budget is not None else f"{self.minutes:g} minutes"

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["routes"] = None if self.routes is None else [list(r) for r in self.routes]
        data["model_overrides"] = dict(self.model_overrides)
        data["task_weights"] = None if self.task_weights is None else dict(self.task_weights)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown keys {unknown}")
        values = {**LEGACY_OPTIONS, **data}
        if values.get("routes") is not None:
            values["routes"] = tuple(tuple(r) for r in values["routes"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # Fields that may change when a run is resumed (budget and bookkeeping, not the maths of a step).
    RESUMABLE_CHANGES = ("steps", "minutes", "checkpoint_every", "checkpoint_seconds", "eval_every", "eval_samples",
                         "preview_every", "preview_steps", "log_every", "device", "threads", "workers", "init",
                         "skip_invalid", "fresh_start")
