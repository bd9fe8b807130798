"""The shared machinery of the task datasets: one item per usable (subject, slice) of a split,
a deterministic RNG per (seed, epoch, task, index), the sample's randomized look
(:mod:`engine.tasks.augment`), and ``TaskMix`` for Stage I's task mixture."""
from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from engine.tasks.augment import Look, Randomization
from engine.tasks.dataset import DatasetError, PairedDataset


class SizedDataset(Protocol):
    """A map-style dataset that knows its length (torch's ``Dataset`` declares no ``__len__``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


def derived_rng(*parts) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (stable across runs and processes)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class SliceTaskDataset(Dataset):
    """Base of the per-task datasets. Index ``i`` picks item ``i mod n`` of the (subject, slice)
    list, and everything random about the sample comes from ``derived_rng(seed, epoch, task, i)``:
    the same index gives the same sample; :meth:`set_epoch` draws fresh combinations.
    ``length`` (default: the number of items) sets how many samples an epoch has. With ``augment``
    each sample also gets a randomized :class:`~engine.tasks.augment.Look` (from its own generator,
    so the sample's content is the same with or without it)."""

    task = "base"

    def __init__(self, paired: PairedDataset, split: str | None = "train", *, image_size: int = 256, seed: int = 0,
                 length: int | None = None, augment: Randomization | None = None) -> None:
        self.paired = paired
        self.augment = augment
        self.split = split
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.epoch = 0
        self.items = [(subject, index) for subject in paired.subject_names(split) if self.accepts(subject)
                      for index in paired.usable_slices(subject)]
        self.items = [item for item in self.items if self.accepts_item(*item)]
        if not self.items:
            where = f"the {split!r} split" if split else "the dataset"
            raise DatasetError(f"{self.task}: {where} has no usable slices ({self.requirement()})")
        self.length = int(length) if length is not None else len(self.items)

    # -- what a subclass may refine --------------------------------------------------------------
    def accepts(self, subject: str) -> bool:
        return len(self.paired.subject_modalities(subject)) >= 2

    def accepts_item(self, subject: str, index: int) -> bool:
        return True

    def requirement(self) -> str:
        return "needs subjects with two modalities and slices showing the body"

    def build(self, subject: str, index: int, rng: random.Random, look: Look):
        raise NotImplementedError

    # -- the dataset protocol ------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} samples")
        i %= self.length
        subject, index = self.items[i % len(self.items)]
        canvas_hw = self.paired.placement(subject, self.image_size)
        look = Look.draw(self.augment, derived_rng(self.seed, self.epoch, self.task, i, "look"),
                         (canvas_hw.canvas_height, canvas_hw.canvas_width), self.image_size)
        return self.build(subject, index, derived_rng(self.seed, self.epoch, self.task, i), look)

    def image(self, subject: str, modality: str, index: int, look: Look, degraded: bool = True) -> torch.Tensor:
        """(1, S, S) in [0, 1]: the slice seen through the sample's look, degraded as a model input
        (``degraded=False`` for a synthesis target)."""
        image = look.image(self.paired.canvas(subject, modality, index, self.image_size), self.image_size)
        return look.degrade(image, modality) if degraded else image


class TaskMix(Dataset):
    """Samples from several task datasets by weight (Stage I: CTS + MI + TIA); deterministic per
    (seed, epoch, index). ``length`` defaults to the sum of the parts' lengths."""

    def __init__(self, datasets: Mapping[str, SizedDataset], weights: Mapping[str, float] | None = None, *,
                 length: int | None = None, seed: int = 0) -> None:
        if not datasets:
            raise ValueError("TaskMix needs at least one dataset")
        self.datasets = dict(datasets)
        self.names = list(self.datasets)
        weights = dict(weights or {name: 1.0 for name in self.names})
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ValueError(f"weights name unknown tasks {sorted(unknown)}; tasks: {self.names}")
        self.weights = [float(weights.get(name, 0.0)) for name in self.names]
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(f"task weights must be ≥ 0 with a positive sum, got {weights}")
        self.seed, self.epoch = int(seed), 0
        self.length = int(length) if length is not None else sum(len(d) for d in self.datasets.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for dataset in self.datasets.values():
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} samples")
        rng = derived_rng(self.seed, self.epoch, "mix", i % self.length)
        name = rng.choices(self.names, weights=self.weights)[0]
        dataset = self.datasets[name]
        return dataset[rng.randrange(len(dataset))]
