"""The training stages. A stage is three things the generic trainer loop calls: which tensors
train (everything else is frozen: ``requires_grad=False`` and absent from the optimizer), which
sample streams feed a step, and the loss of one batch.

Parameter names are the model's own (BAGEL's ``ema.safetensors`` keys); the autoencoder's carry
the prefix ``ae.`` (its ``ae.safetensors`` keys), since it is held beside the model.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.model import SynerMedGen, Text, VitImage, ce_loss, edit_segments
from engine.model.vae import AutoEncoder
from engine.model.vit import vit_view as model_vit_view
from engine.sampling import sample_training_timesteps
from engine.tasks.augment import Randomization
from engine.tasks.dataset import PairedDataset
from engine.tasks.slice_dataset import SizedDataset
from engine.tasks.synthesis import SynthesisDataset
from engine.tasks.understanding import stage1_tasks
from engine.training.config import STAGE_HELP, StageHelp, TrainConfig
from engine.training.data import SliceImages
from engine.training.losses import gaussian_kl, ssim

AE_PREFIX = "ae."
UNDERSTANDING, GENERATION = "understanding", "generation"


# -- parameters --------------------------------------------------------------------------------
def named_tensors(model: SynerMedGen) -> dict[str, nn.Parameter]:
    """Every parameter of the model and of its autoencoder (``ae.``-prefixed), by name."""
    out = dict(model.named_parameters())
    out.update({AE_PREFIX + k: p for k, p in model.vae.named_parameters()})
    return out


def apply_freeze(model: SynerMedGen, trainable: Sequence[str]) -> None:
    """``requires_grad`` True exactly for ``trainable``; the autoencoder is in train mode only
    when it trains (it has no dropout or running statistics, so this is bookkeeping)."""
    keep = set(trainable)
    for name, p in named_tensors(model).items():
        p.requires_grad_(name in keep)
    model.train()
    model.vae.train(any(n.startswith(AE_PREFIX) for n in keep))


# -- tokens and images ---------------------------------------------------------------------------
class TokenCache:
    """The tokenizer of a run, with the ids of the few hundred distinct texts it sees cached."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = list(self.tokenizer.encode(text))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


def vit_view(image: torch.Tensor, model: SynerMedGen) -> torch.Tensor:
    """A (1, H, W) slice in [0, 1] as the ViT takes it (:func:`engine.model.vit.vit_view`)."""
    return model_vit_view((image * 2.0 - 1.0)[None], model.config)[0]


def vae_input(images: torch.Tensor, vae: AutoEncoder) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] → the autoencoder's input in [−1, 1] with its channel count."""
    x = images * 2.0 - 1.0
    return x.expand(-1, vae.config.in_channels, -1, -1) if x.shape[1] != vae.config.in_channels else x


def vae_output(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded (B, C, H, W) in [−1, 1] → one channel in [0, 1] (channels averaged)."""
    return (decoded.float().mean(1, keepdim=True) + 1.0) / 2.0


def posterior(vae: AutoEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (unscaled) posterior mean and log-variance of the encoder, log-variance clamped as FLUX."""
    moments = vae.encoder(x.to(vae.encoder.conv_in.weight.dtype))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def per_sample_normal(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal (B, …) with row i drawn from ``generators[i]`` (CPU), then moved."""
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators]).to(device, dtype)


@torch.no_grad()
def encode_latents(vae: AutoEncoder, images: torch.Tensor, mode: str,
                   generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Scaled latents of (B, 1, H, W) slices in [0, 1] through the frozen autoencoder: the
    posterior mean, or (``mode="sample"``, as BAGEL) a draw with one CPU generator per image."""
    mean, logvar = posterior(vae, vae_input(images, vae))
    z = mean
    if mode == "sample":
        if generators is None:
            raise ValueError("sampling the posterior needs one generator per image")
        z = mean + torch.exp(0.5 * logvar) * per_sample_normal(mean.shape, generators, mean.device, mean.dtype)
    cfg = vae.config
    return cfg.scale_factor * (z - cfg.shift_factor)


def understanding_prompt(sample, tokens: TokenCache, model: SynerMedGen) -> list:
    """[label, image, …, question] of a CTS / MI / TIA sample as sequence segments."""
    row: list = []
    for label, image in zip(sample.image_labels, sample.images):
        row += [Text(tokens(f"{label}:")), VitImage(vit_view(image, model))]
    return row + [Text(tokens(sample.question))]


def understanding_rows(samples: Sequence, tokens: TokenCache, model: SynerMedGen) -> list[list]:
    """Prompt + the supervised answer (its tokens and ``<|im_end|>`` are the CE labels)."""
    return [understanding_prompt(s, tokens, model) + [Text(tokens(s.answer), loss=True)] for s in samples]


def stack_images(images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack(list(images)).to(device)


# -- what a step needs besides the batch ---------------------------------------------------------
@dataclass
class StepInputs:
    """Per-step context: device, one CPU generator per sample of the batch (seeded by the run's
    seed and the sample's global index, so a sample's noise, timestep and dropout do not depend
    on the batch it lands in, on the rank, or on a resume), the token cache and the config."""

    device: torch.device
    generators: list[torch.Generator]
    tokens: TokenCache
    config: TrainConfig
    autocast: Callable = field(default=lambda: torch.autocast("cpu", enabled=False))


def _floats(**values: torch.Tensor) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in values.items()}


# -- the stages ------------------------------------------------------------------------------------
class Stage:
    """Base: a name (its ``--help`` text is ``STAGE_HELP[name]``), the trainable tensors, the
    streams, the loss."""

    name = "base"
    needs_trained_vae = False

    def trainable(self, model: SynerMedGen) -> list[str]:
        raise NotImplementedError

    def datasets(self, paired: PairedDataset, cfg: TrainConfig, split: str | None = "train") -> dict[str, SizedDataset]:
        raise NotImplementedError

    def loss(self, model: SynerMedGen, batches: Mapping[str, list], inputs: StepInputs
             ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @property
    def description(self) -> StageHelp:
        return STAGE_HELP[self.name]


def randomization(cfg, split: str | None) -> Randomization | None:
    """The training split's sample randomization (none for validation, or with ``augment`` off)."""
    return Randomization() if cfg.augment and split == "train" else None


class VAEStage(Stage):
    name = "vae"

    def trainable(self, model: SynerMedGen) -> list[str]:
        return [AE_PREFIX + k for k, _ in model.vae.named_parameters()]

    def datasets(self, paired, cfg, split="train"):
        return {"slices": SliceImages(paired, split, image_size=cfg.image_size, augment=randomization(cfg, split),
                                      seed=cfg.seed)}

    def loss(self, model, batches, inputs):
        cfg, vae = inputs.config, model.vae
        x = stack_images(batches["slices"], inputs.device)
        with inputs.autocast():
            mean, logvar = posterior(vae, vae_input(x, vae))
            eps = per_sample_normal(mean.shape, inputs.generators, mean.device, mean.dtype)
            recon = vae_output(vae.decoder(mean + torch.exp(0.5 * logvar) * eps))
        l1 = (recon - x).abs().mean()
        mse = (recon - x).pow(2).mean()
        similarity = ssim(recon, x)
        kl = gaussian_kl(mean, logvar)
        loss = l1 + cfg.vae_mse_weight * mse + cfg.vae_ssim_weight * (1.0 - similarity) + cfg.vae_kl_weight * kl
        return loss, _floats(l1=l1, mse=mse, ssim=similarity, kl=kl)


class UnderstandingStage(Stage):
    name = "understanding"

    def trainable(self, model):
        return [n for n, _ in model.understanding_named_parameters()]

    def datasets(self, paired, cfg, split="train"):
        return {UNDERSTANDING: stage1_tasks(paired, split, image_size=cfg.image_size, seed=cfg.seed,
                                            weights=cfg.task_weights, augment=randomization(cfg, split))}

    def loss(self, model, batches, inputs):
        rows = understanding_rows(batches[UNDERSTANDING], inputs.tokens, model)
        with inputs.autocast():
            out = model.understanding_forward(rows, logits_for="labels")
        loss = ce_loss(out.logits, out.labels)
        return loss, _floats(ce=loss)


def synthesis_loss(model: SynerMedGen, samples: Sequence, inputs: StepInputs, dropout: bool = True
                   ) -> torch.Tensor:
    """Flow-matching MSE of synthesis samples: the frozen VAE encodes source and target, each
    condition (text with the target embedding, ViT source, VAE source) is dropped with its CFG
    probability, t and ε come from :mod:`engine.sampling` with each sample's generator and go into
    ``model.flow_loss``."""
    cfg, gens, device = inputs.config, inputs.generators, inputs.device
    if len(gens) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(gens)} generators")
    source = stack_images([s.source for s in samples], device)
    target = stack_images([s.target for s in samples], device)
    b = len(samples)
    draws = torch.stack([torch.rand(3, generator=g) for g in gens])
    t = torch.cat([sample_training_timesteps(1, shift=model.config.timestep_shift, generator=g) for g in gens])
    src_lat = encode_latents(model.vae, source, cfg.vae_posterior, gens)
    tgt_lat = encode_latents(model.vae, target, cfg.vae_posterior, gens)
    noise = per_sample_normal(tgt_lat.shape, gens, device, tgt_lat.dtype)
    keep = draws >= torch.tensor([cfg.cfg_text_dropout, cfg.cfg_vit_dropout, cfg.cfg_vae_dropout]) if dropout \
        else torch.ones(b, 3, dtype=torch.bool)
    rows, aligned, targets = [], [], []
    for i, s in enumerate(samples):
        use_text, use_vit, use_vae = (bool(v) for v in keep[i])
        rows.append(edit_segments(src_lat[i], vit_view(s.source, model).to(device), inputs.tokens(s.instruction),
                                  use_vae=use_vae, use_vit=use_vit, use_text=use_text, advance_dropped_images=True))
        aligned.append(src_lat[i] if use_vae else None)
        targets.append(model.config.target_index(s.target_modality) if use_text else 0)   # the target is text
    with inputs.autocast():
        return model.flow_loss(rows, tgt_lat, aligned_source=aligned if model.config.source_token_aligned else None,
                               targets=targets, t=t.to(device), noise=noise)


class GenerationStage(Stage):
    name = "generation"
    needs_trained_vae = True

    def trainable(self, model):
        return [n for n, _ in model.generation_named_parameters()]

    def datasets(self, paired, cfg, split="train"):
        return {GENERATION: SynthesisDataset(paired, split, image_size=cfg.image_size, seed=cfg.seed,
                                             routes=cfg.routes, augment=randomization(cfg, split))}

    def loss(self, model, batches, inputs):
        loss = synthesis_loss(model, batches[GENERATION], inputs)
        return loss, _floats(mse=loss)


class JointStage(Stage):
    name = "joint"
    needs_trained_vae = True

    def trainable(self, model):
        return [n for n, _ in model.understanding_named_parameters() + model.generation_named_parameters()]

    def datasets(self, paired, cfg, split="train"):
        return {**UnderstandingStage().datasets(paired, cfg, split), **GenerationStage().datasets(paired, cfg, split)}

    def loss(self, model, batches, inputs):
        ce, _ = UnderstandingStage().loss(model, batches, inputs)
        mse = synthesis_loss(model, batches[GENERATION], inputs)
        return ce + mse, _floats(ce=ce, mse=mse)


STAGES: dict[str, Stage] = {s.name: s for s in (VAEStage(), UnderstandingStage(), GenerationStage(), JointStage())}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}") from None
