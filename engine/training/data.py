"""Deterministic data order for training: sample ``k`` of a run is a pure function of (seed, k),
so a resumed or a distributed run sees exactly the samples an uninterrupted single-process run
would. Also the slice dataset of the ``vae`` stage (every modality of every usable slice)."""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.tasks.augment import Look, Randomization
from engine.tasks.dataset import PairedDataset
from engine.tasks.slice_dataset import SizedDataset, derived_rng
from engine.tasks.validation import DatasetError


def preload_budget() -> int:
    """Bytes of slices a run keeps in memory: a quarter of the memory available now (the slices
    of a demo-sized dataset take ~1 GB)."""
    from engine.io.catalog import available_memory

    ram = available_memory()
    return int(0.25 * ram) if ram is not None else 2 * 2**30


def sample_indices(step: int, rank: int, world_size: int, batch_size: int) -> list[int]:
    """Global sample indices of one rank's batch: step·global_batch + rank·batch + i."""
    base = step * world_size * batch_size + rank * batch_size
    return [base + i for i in range(batch_size)]


class SampleStream:
    """An endless, reshuffled-every-epoch view of a finite dataset, addressed by a global index.

    Index ``k`` lies in epoch ``k // len(dataset)``; within an epoch the order is a permutation
    drawn from (seed, epoch), and datasets with ``set_epoch`` (the task datasets) get the epoch so
    that routes, instructions and distractors are drawn afresh each epoch.
    """

    def __init__(self, dataset: SizedDataset, seed: int, name: str = "stream") -> None:
        if len(dataset) == 0:
            raise DatasetError(f"{name}: no samples")
        self.dataset = dataset
        self.seed = int(seed)
        self.name = name
        self._epoch: int | None = None
        self._order: list[int] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def _set_epoch(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        order = list(range(len(self.dataset)))
        derived_rng(self.seed, self.name, "order", epoch).shuffle(order)
        self._order, self._epoch = order, epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, k: int):
        epoch, position = divmod(int(k), len(self.dataset))
        self._set_epoch(epoch)
        return self.dataset[self._order[position]]

    def batch(self, indices: Sequence[int]) -> list:
        return [self[k] for k in indices]


class SliceImages(Dataset):
    """Every usable slice of every modality of a split, as (1, S, S) float32 images in [0, 1]:
    what the autoencoder of the ``vae`` stage learns to reconstruct; with ``augment``, each seen
    through a randomized look (:mod:`engine.tasks.augment`), drawn afresh every epoch."""

    def __init__(self, paired: PairedDataset, split: str | None = "train", *, image_size: int = 64,
                 augment: Randomization | None = None, seed: int = 0) -> None:
        self.paired = paired
        self.image_size = int(image_size)
        self.augment, self.seed, self.epoch = augment, int(seed), 0
        self.items = [(subject, modality, index) for subject in paired.subject_names(split)
                      for modality in paired.subject_modalities(subject)
                      for index in paired.usable_slices(subject)]
        if not self.items:
            where = f"the {split!r} split" if split else "the dataset"
            raise DatasetError(f"vae: {where} has no usable slices")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> torch.Tensor:
        subject, modality, index = self.items[i]
        if self.augment is None:
            return self.paired.model_slice(subject, modality, index, self.image_size)
        canvas = self.paired.canvas(subject, modality, index, self.image_size)
        height, width = canvas.shape
        look = Look.draw(self.augment, derived_rng(self.seed, self.epoch, "vae", i), (height, width), self.image_size)
        return look.degrade(look.image(canvas, self.image_size), modality)

    def describe(self, i: int) -> tuple[str, str, int]:
        return self.items[i]


class StepBatches(Dataset):
    """Step ``s`` → this rank's batch of every stream: what DataLoader workers prepare ahead of
    the training loop (volume loading and resampling happen there, not between steps)."""

    def __init__(self, streams: Mapping[str, SampleStream], rank: int, world_size: int, batch_size: int) -> None:
        self.streams = dict(streams)
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def __getitem__(self, step: int) -> dict[str, list]:
        indices = sample_indices(step, self.rank, self.world_size, self.batch_size)
        return {name: stream.batch(indices) for name, stream in self.streams.items()}


class _StepsFrom(Sampler):
    def __init__(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _as_is(batch):
    return batch


def prefetched_batches(batches: StepBatches, start_step: int, workers: int) -> Iterator[dict[str, list]]:
    """The batches of steps ``start_step, start_step + 1, …`` built by ``workers`` processes
    (in step order: the same batches the loop would build itself)."""
    loader = DataLoader(batches, batch_size=None, sampler=_StepsFrom(start_step), num_workers=workers,
                        collate_fn=_as_is, prefetch_factor=2)
    return iter(loader)
