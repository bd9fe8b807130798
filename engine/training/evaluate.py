"""What a run measures on the validation split while it trains: multiple-choice accuracy of CTS /
MI / TIA (Stage I), reconstruction PSNR / SSIM of the autoencoder, the flow loss on fixed
synthesis samples, and the preview PNG of one synthesized validation slice (Stage II)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from engine.atomic import atomic_file
from engine.inference import instructions
from engine.jobs import CancelToken, check_cancel
from engine.model import SynerMedGen, Text
from engine.sampling import sample
from engine.tasks.dataset import PairedDataset
from engine.tasks.slice_dataset import SliceTaskDataset
from engine.tasks.synthesis import SynthesisDataset
from engine.tasks.understanding import CTS, MI, TIA, CTSDataset, MIDataset, TIADataset
from engine.tasks.validation import DatasetError
from engine.training.losses import psnr, ssim
from engine.training.stages import (
    StepInputs,
    TokenCache,
    encode_latents,
    posterior,
    synthesis_loss,
    understanding_prompt,
    vae_input,
    vae_output,
    vit_view,
)

EVAL_SPLIT = "val"


def spread(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them when fewer)."""
    if count <= 0 or length <= 0:
        return []
    if count >= length:
        return list(range(length))
    return sorted({round(i * (length - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


# -- Stage I: multiple-choice accuracy ------------------------------------------------------------
@torch.no_grad()
def _next_token_logits(model: SynerMedGen, prompts: Sequence[list], answers: Sequence[list[int]]) -> torch.Tensor:
    """(B, V) logits of the token after each prompt + ``<|im_start|>`` + the answer so far."""
    rows = [list(p) + [Text(a, close=False)] for p, a in zip(prompts, answers)]
    return model.understanding_forward(rows, logits_for="last").logits.float()


def letter_ids(tokens: TokenCache) -> list[int]:
    """The first token id of each option letter A–D."""
    ids = [tokens(letter)[0] for letter in instructions.LETTERS]
    if len(set(ids)) != len(ids):
        raise ValueError("the tokenizer does not give the option letters distinct first tokens")
    return ids


@torch.no_grad()
def choice_accuracy(model: SynerMedGen, samples: Sequence, tokens: TokenCache, batch_size: int = 8) -> float:
    """CTS / TIA: the option whose letter gets the highest first-token logit; share correct."""
    letters = torch.tensor(letter_ids(tokens))
    right = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        logits = _next_token_logits(model, [understanding_prompt(s, tokens, model) for s in chunk], [[]] * len(chunk))
        picks = logits[:, letters.to(logits.device)].argmax(1).tolist()
        right += sum(int(p == s.correct) for p, s in zip(picks, chunk))
    return right / max(1, len(samples))


@torch.no_grad()
def greedy_answers(model: SynerMedGen, samples: Sequence, tokens: TokenCache, end_id: int,
                   max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
    """Greedy decoding of each sample's answer (whole-sequence recomputation per token: the
    answers are a few tokens long)."""
    texts: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        prompts = [understanding_prompt(s, tokens, model) for s in chunk]
        answers: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(max_new_tokens):
            logits = _next_token_logits(model, prompts, answers)
            for i, token in enumerate(logits.argmax(1).tolist()):
                if done[i]:
                    continue
                if token == end_id:
                    done[i] = True
                else:
                    answers[i].append(token)
            if all(done):
                break
        texts += [tokens.decode(a) for a in answers]
    return texts


def stage1_eval_sets(paired: PairedDataset, split: str, *, image_size: int, seed: int) -> dict[str, SliceTaskDataset]:
    """CTS, MI and TIA on ``split`` (a task the split cannot pose is left out)."""
    sets: dict[str, SliceTaskDataset] = {}
    for task, cls in ((CTS, CTSDataset), (MI, MIDataset), (TIA, TIADataset)):
        try:
            sets[task] = cls(paired, split, image_size=image_size, seed=seed)
        except DatasetError:
            continue
    return sets


@torch.no_grad()
def understanding_scores(model: SynerMedGen, datasets: Mapping[str, SliceTaskDataset], tokens: TokenCache, *,
                         samples: int, end_id: int, choices: Sequence[str],
                         cancel: CancelToken | None = None) -> dict[str, dict[str, float]]:
    """For each named dataset, on ``samples`` items spread over it: ``accuracy`` (CTS / TIA: the
    option picked; MI: every panel named right), ``chance`` (what a guesser blind to the images
    scores on the same items, :meth:`UnderstandingSample.chance` with the dataset's modality
    ``choices``) and ``items``; MI also ``panel_accuracy`` and ``panel_chance``, panel by panel."""
    scores: dict[str, dict[str, float]] = {}
    for name, dataset in datasets.items():
        check_cancel(cancel)
        items = [dataset[i] for i in spread(len(dataset), samples)]
        if not items:
            continue
        chances = [s.chance(choices) for s in items]
        score = {"items": len(items), "chance": float(np.mean([whole for whole, _ in chances]))}
        if dataset.task == MI:
            longest = max(len(tokens(s.answer)) for s in items)
            answers = greedy_answers(model, items, tokens, end_id, max_new_tokens=longest + 4)
            named = [instructions.parse_modality_answer(a, len(s.images)) for a, s in zip(answers, items)]
            panels = sum(len(s.correct) for s in items)
            score.update(
                accuracy=sum(n == list(s.correct) for n, s in zip(named, items)) / len(items),
                panel_accuracy=sum(x == y for n, s in zip(named, items) for x, y in zip(n, s.correct)) / panels,
                panel_chance=sum(per_panel * len(s.correct) for (_, per_panel), s in zip(chances, items)) / panels)
        else:
            score["accuracy"] = choice_accuracy(model, items, tokens)
        scores[name] = score
    return scores


def understanding_accuracy(model: SynerMedGen, paired: PairedDataset, tokens: TokenCache, *, image_size: int,
                           samples: int, seed: int, end_id: int, cancel: CancelToken | None = None,
                           split: str = EVAL_SPLIT) -> dict[str, float]:
    """Accuracy of CTS, MI (all panels right) and TIA on ``samples`` items of each task spread over
    the ``split`` (validation by default; fixed for a seed, so curves across checkpoints compare
    like with like)."""
    sets = stage1_eval_sets(paired, split, image_size=image_size, seed=seed)
    scores = understanding_scores(model, sets, tokens, samples=samples, end_id=end_id, choices=paired.modalities,
                                  cancel=cancel)
    return {task: score["accuracy"] for task, score in scores.items()}


# -- autoencoder -----------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_quality(model: SynerMedGen, images: Sequence[torch.Tensor], device: torch.device,
                           batch_size: int = 8) -> dict[str, float]:
    """PSNR (dB) and SSIM (×100) of posterior-mean reconstructions of [0, 1] slices."""
    vae = model.vae
    originals, recons = [], []
    for start in range(0, len(images), batch_size):
        x = torch.stack(list(images[start:start + batch_size])).to(device)
        mean, _ = posterior(vae, vae_input(x, vae))
        recons.append(vae_output(vae.decoder(mean)).clamp(0, 1).cpu())
        originals.append(x.cpu())
    x, r = torch.cat(originals), torch.cat(recons)
    return {"psnr": round(psnr(r, x), 3), "ssim": round(100 * float(ssim(r, x)), 3),
            "l1": round(float((r - x).abs().mean()), 5)}


@torch.no_grad()
def latent_statistics(model: SynerMedGen, images: Sequence[torch.Tensor], device: torch.device,
                      batch_size: int = 8) -> tuple[float, float]:
    """(mean, std) of the raw posterior means of ``images``: the shift and 1/scale that give the
    flow model unit-variance latents (how FLUX's and SD's factors were chosen)."""
    values = []
    for start in range(0, len(images), batch_size):
        x = torch.stack(list(images[start:start + batch_size])).to(device)
        values.append(posterior(model.vae, vae_input(x, model.vae))[0].double().flatten().cpu())
    flat = torch.cat(values)
    return float(flat.mean()), max(float(flat.std()), 1e-6)


# -- Stage II --------------------------------------------------------------------------------------
@torch.no_grad()
def flow_validation_loss(model: SynerMedGen, samples: Sequence, inputs: StepInputs) -> float:
    """The flow loss of fixed validation samples with fixed t and ε (the callers' per-sample
    generators) and no CFG dropout: comparable across checkpoints."""
    return float(synthesis_loss(model, samples, inputs, dropout=False))


@torch.no_grad()
def synthesize_slice(model: SynerMedGen, sample_, tokens: TokenCache, device: torch.device, steps: int,
                     seed: int = 0) -> torch.Tensor:
    """(1, H, W) in [0, 1]: a short Euler integration over the cached context, unguided (one
    branch per step keeps previews cheap; inference adds the guidance)."""
    src = sample_.source[None].to(device)
    latent = encode_latents(model.vae, src, "mean")
    context = model.encode_context(latent, vit_view(sample_.source, model)[None].to(device),
                                   [tokens(sample_.instruction)], branches=("cond",),
                                   targets=[model.config.target_index(sample_.target_modality)])

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.velocity(x, t, context)["cond"]

    z = sample(velocity, tuple(latent.shape), steps=steps, shift=3.0, seed=seed, device=device,
               dtype=latent.dtype, guidance=None)
    return vae_output(model.vae.decode(z)).clamp(0, 1)[0].cpu()


def write_png(path: str | Path, panels: Sequence[torch.Tensor], min_height: int = 128) -> Path:
    """Panels (1, H, W) in [0, 1] side by side (2-pixel gaps), upscaled by an integer factor to
    at least ``min_height`` pixels, written atomically as an 8-bit grey PNG."""
    from PIL import Image

    arrays = [np.clip(p.detach().float().cpu().numpy()[0], 0, 1) for p in panels]
    h = max(a.shape[0] for a in arrays)
    gap = np.ones((h, 2), np.float32)
    row = np.concatenate([x for a in arrays for x in (a, gap)][:-1], axis=1)
    factor = max(1, -(-min_height // h))
    row = np.kron(row, np.ones((factor, factor), np.float32))
    with atomic_file(path) as tmp:
        Image.fromarray((row * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)


def preview_sample(paired: PairedDataset, image_size: int, seed: int, routes=None):
    """The fixed validation sample of the previews (the first val item, default instruction);
    falls back to the training split when there is no validation subject."""
    for split in (EVAL_SPLIT, "train"):
        try:
            return SynthesisDataset(paired, split, image_size=image_size, seed=seed, routes=routes,
                                    fixed_instruction=True)[0]
        except DatasetError:
            continue
    return None


def synthesis_validation_samples(paired: PairedDataset, image_size: int, seed: int, count: int, routes=None) -> list:
    try:
        dataset = SynthesisDataset(paired, EVAL_SPLIT, image_size=image_size, seed=seed, routes=routes,
                                   fixed_instruction=True)
    except DatasetError:
        return []
    return [dataset[i] for i in spread(len(dataset), count)]
