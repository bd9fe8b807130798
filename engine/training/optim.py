"""Optimisation helpers shared by every stage: AdamW over the trainable tensors, warm-up + cosine
learning-rate schedule, and an exponential moving average of the weights."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with no weight decay on norms, biases and embeddings of one dimension."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


class EMA:
    """Exponential moving average of named parameters (kept in fp32 on the parameters' device)."""

    def __init__(self, named_params: dict[str, nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, nn.Parameter], step: int) -> None:
        # Warm-up of the decay so that short runs are not dominated by the initial weights.
        d = min(self.decay, (1 + step) / (10 + step))
        for k, p in named_params.items():
            self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v in tensors.items():
            if k in self.shadow:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, named_params: dict[str, nn.Parameter]) -> Iterator[None]:
        """Temporarily put the averaged weights into the parameters (evaluation, previews)."""
        backup = {k: p.detach().clone() for k, p in named_params.items()}
        with torch.no_grad():
            for k, p in named_params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in named_params.items():
                    p.copy_(backup[k])


class LRSchedule:
    """Warm-up + cosine over a step budget, or over a wall-clock budget (``budget_s``) when the
    number of steps is not known in advance: then the cosine follows the elapsed fraction of the
    budget (not bit-reproducible, since it depends on speed). Sets each group's ``lr``."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_steps: int,
                 total_steps: int | None = None, budget_s: float | None = None, min_ratio: float = 0.1) -> None:
        if total_steps is None and budget_s is None:
            raise ValueError("LRSchedule needs total_steps or budget_s")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = total_steps
        self.budget_s = budget_s
        self.min_ratio = float(min_ratio)

    def factor(self, step: int, elapsed_s: float = 0.0) -> float:
        if self.total_steps is not None:
            return warmup_cosine(self.warmup_steps, self.total_steps, self.min_ratio)(step)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        assert self.budget_s is not None, "__init__ asks for budget_s when total_steps is None"
        progress = min(1.0, max(0.0, elapsed_s / self.budget_s))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, step: int, elapsed_s: float = 0.0) -> float:
        lr = self.base_lr * self.factor(step, elapsed_s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "budget_s": self.budget_s, "min_ratio": self.min_ratio}
