"""The specialized baseline: MONAI's ``BasicUNet`` (2-D), one network for every route, told the
route by one-hot planes of the source and target modality stacked onto the source slice, trained
with L1 on the same training split and slices that Stage II sees. A folder holds
``unet.safetensors`` and ``baseline.json`` (architecture, modalities, routes, slice size, how it
was trained)."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.atomic import atomic_folder
from engine.inference.calibration import dataset_calibration
from engine.inference.model_card import ModelCard
from engine.inference.pipeline import SliceSynthesizer
from engine.inference.settings import SynthesisSettings, resolve_device
from engine.jobs import CancelToken, ProgressFn, check_cancel, noop
from engine.model.checkpoint import save_safetensors
from engine.tasks.augment import Randomization
from engine.tasks.dataset import PairedDataset
from engine.tasks.holdout import check_holdout_unused
from engine.tasks.synthesis import SynthesisDataset
from engine.training.config import DEFAULT_PIXEL_MM

WEIGHTS, CARD = "unet.safetensors", "baseline.json"
FEATURES = (16, 32, 64, 128, 128, 16)


class RouteUNet(nn.Module):
    """``BasicUNet`` over [source, one-hot source modality planes, one-hot target planes]."""

    def __init__(self, modality_names: Sequence[str], features: Sequence[int] = FEATURES) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.names = list(modality_names)
        self.net = BasicUNet(spatial_dims=2, in_channels=1 + 2 * len(self.names), out_channels=1,
                             features=tuple(int(f) for f in features))

    def forward(self, images: torch.Tensor, source: str, target: str) -> torch.Tensor:
        n, _, h, w = images.shape
        planes = images.new_zeros(n, 2 * len(self.names), h, w)
        planes[:, self.names.index(source)] = 1.0
        planes[:, len(self.names) + self.names.index(target)] = 1.0
        return self.net(torch.cat([images, planes], dim=1))

    def loss(self, samples: Sequence, device: torch.device) -> torch.Tensor:
        """Mean L1 over a batch of synthesis samples (grouped by route, one pass per route)."""
        total = torch.zeros((), device=device)
        for route in dict.fromkeys(s.route for s in samples):
            group = [s for s in samples if s.route == route]
            x = torch.stack([s.source for s in group]).to(device)
            y = torch.stack([s.target for s in group]).to(device)
            total = total + (self(x, *route) - y).abs().mean() * len(group)
        return total / len(samples)


def train_unet(data: str | Path, out: str | Path, *, steps: int | None = None, minutes: float | None = None,
               batch_size: int = 16, lr: float = 1e-3, image_size: int = 64, pixel_mm: float = DEFAULT_PIXEL_MM,
               augment: bool = True, seed: int = 0, workers: int = 0, leave_out: str | None = None,
               device: str = "auto", features: Sequence[int] = FEATURES, log: Callable[[dict], None] = lambda r: None,
               cancel: CancelToken | None = None) -> Path:
    """Train the baseline on ``data``'s training split for ``steps`` or ``minutes`` (warm-up +
    cosine, AdamW, gradient clip 1) and write its folder atomically; ``log`` gets JSON records.
    ``workers`` data-loading processes build the batches ahead (the same batches; 0: in this process);
    ``leave_out`` keeps one dataset source out of training (:meth:`PairedDataset.leave_out`)."""
    from engine.training.data import SampleStream, StepBatches, prefetched_batches, preload_budget, sample_indices
    from engine.training.optim import LRSchedule, make_optimizer

    if (steps is None) == (minutes is None):
        raise ValueError("give the U-Net baseline a budget: steps or minutes (one of them)")
    if (steps is not None and steps < 1) or (minutes is not None and not minutes > 0):
        raise ValueError(f"the U-Net baseline's budget must be positive, got steps={steps}, minutes={minutes}")
    torch.manual_seed(seed)
    dev = resolve_device(device)
    check_holdout_unused(data)
    paired = PairedDataset.open(data, seed=seed, pixel_mm=pixel_mm or None)
    if leave_out:
        paired = paired.leave_out(leave_out)
    paired.preload(image_size, split="train", budget_bytes=preload_budget())
    samples = SynthesisDataset(paired, "train", image_size=image_size, seed=seed,
                               augment=Randomization() if augment else None)
    stream = SampleStream(samples, seed, "unet")
    routes = paired.routes("train")
    net = RouteUNet(paired.modalities, features).to(dev)
    optimizer = make_optimizer(list(net.parameters()), lr, weight_decay=1e-4)
    warmup = min(200, max(1, (steps or 1000) // 20))
    schedule = LRSchedule(optimizer, lr, warmup, steps, None if minutes is None else minutes * 60.0)
    log({"event": "start", "stage": "unet-baseline", "steps": steps, "minutes": minutes, "device": str(dev),
         "train_subjects": len(paired.subject_names("train")), "left_out": leave_out,
         "parameters": sum(p.numel() for p in net.parameters())})
    prefetch = prefetched_batches(StepBatches({"unet": stream}, 0, 1, batch_size), 0, workers) if workers else None
    started, step, loss = time.perf_counter(), 0, math.nan
    while True:
        elapsed = time.perf_counter() - started
        if (steps is not None and step >= steps) or (minutes is not None and elapsed >= minutes * 60.0):
            break
        check_cancel(cancel)
        rate = schedule.apply(step, elapsed)
        batch = next(prefetch)["unet"] if prefetch is not None else stream.batch(sample_indices(step, 0, 1, batch_size))
        optimizer.zero_grad(set_to_none=True)
        value = net.loss(batch, dev)
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        step, loss = step + 1, float(value.detach())
        if step % 20 == 0 or step == 1:
            log({"event": "step", "stage": "unet-baseline", "step": step, "loss": loss, "lr": rate,
                 "elapsed_s": round(time.perf_counter() - started, 1)})
    prefetch = None                                          # stops the data-loading workers
    card = {"name": "MONAI BasicUNet (route-conditioned, L1)", "features": list(features),
            "modalities": list(paired.modalities), "routes": [list(r) for r in routes], "image_size": image_size,
            "pixel_mm": pixel_mm or None, "augment": augment, "calibration": dataset_calibration(paired),
            "training": {"data": str(data), "split": "train", "steps_done": step, "batch_size": batch_size,
                         "lr": lr, "seed": seed, "elapsed_s": round(time.perf_counter() - started, 1),
                         "final_loss": loss, "device": str(dev), "steps": steps, "minutes": minutes,
                         "train_subjects": len(paired.subject_names("train")), "leave_out": leave_out}}
    with atomic_folder(out) as tmp:
        save_safetensors(net.state_dict(), tmp / WEIGHTS)
        (tmp / CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
    log({"event": "done", "stage": "unet-baseline", "step": step, "final_loss": loss, "out": str(out)})
    return Path(out)


def trained_seconds(model_dir: str | Path) -> float:
    """Wall-clock seconds the last stage of a SynerMedGen model folder trained (its card's recipe):
    the budget that makes a baseline's compute equal to that stage's."""
    path = Path(model_dir) / "metadata.json"
    try:
        stages = json.loads(path.read_text(encoding="utf-8"))["recipe"]["stages"]
        return float(stages[-1]["elapsed_s"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: no training time recorded in the model card ({exc})") from None


class UNetSynthesizer(SliceSynthesizer):
    """A trained baseline folder, run slice by slice through the shared volume loop."""

    def __init__(self, folder: str | Path, device: str | torch.device = "auto") -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            card = json.loads((folder / CARD).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{folder}: not a U-Net baseline folder ({exc})") from None
        dev = resolve_device(device)
        self.features = [int(f) for f in card["features"]]
        self.net = RouteUNet(card["modalities"], self.features)
        self.net.load_state_dict(load_file(str(folder / WEIGHTS)))
        self.net.to(dev).eval()
        self.training = card.get("training", {})
        super().__init__(ModelCard.from_metadata({"name": card["name"], "routes": card["routes"],
                                                  "pixel_mm": card.get("pixel_mm"),
                                                  "calibration": card.get("calibration")}),
                         int(card["image_size"]), dev)

    def _prepare(self, source: str, target: str, settings: SynthesisSettings) -> tuple[Any, list[str]]:
        return (source, target), [f"method: {self.name}"]

    @torch.no_grad()
    def _run_batch(self, images: torch.Tensor, indices: Sequence[int], prepared: Any, settings: SynthesisSettings,
                   cancel: CancelToken | None, on_step: ProgressFn = noop) -> torch.Tensor:
        return self.net(images.to(self.device), *prepared).clamp_(0.0, 1.0).cpu()

    def slice_memory_estimate(self, prepared: Any) -> int:
        return 4 * 16 * max(self.features) * self.image_size ** 2     # fp32, ~16 feature maps of the widest
