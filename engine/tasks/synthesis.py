"""The synthesis sample (Stage II and evaluation): an instruction, the source slice and the
target slice of the same subject and index, and the route between them."""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from engine import modalities
from engine.inference import instructions
from engine.tasks.augment import Look, Randomization
from engine.tasks.dataset import PairedDataset
from engine.tasks.slice_dataset import SliceTaskDataset

SYNTHESIS = "synthesis"


@dataclass(frozen=True, eq=False)
class SynthesisSample:
    """``source`` and ``target`` are (1, H, W) float32 in [0, 1] (per-volume normalised)."""

    instruction: str
    source: torch.Tensor
    target: torch.Tensor
    source_modality: str
    target_modality: str
    subject: str
    index: int
    anatomy: str = ""

    @property
    def route(self) -> tuple[str, str]:
        return (self.source_modality, self.target_modality)


class SynthesisDataset(SliceTaskDataset):
    """For each usable (subject, slice): a route drawn among the subject's routes (or among
    ``routes`` only) and an instruction drawn among the templates (or template 0 with
    ``fixed_instruction``, as inference uses)."""

    task = SYNTHESIS

    def __init__(self, paired: PairedDataset, split: str | None = "train", *, image_size: int = 256, seed: int = 0,
                 length: int | None = None, routes: Iterable[tuple[str, str]] | None = None,
                 fixed_instruction: bool = False, augment: Randomization | None = None) -> None:
        self.allowed = None if routes is None else {(modalities.canonical(a), modalities.canonical(b))
                                                    for a, b in routes}
        self.fixed_instruction = fixed_instruction
        super().__init__(paired, split, image_size=image_size, seed=seed, length=length, augment=augment)

    def routes_of(self, subject: str) -> list[tuple[str, str]]:
        routes = self.paired.subject(subject).routes
        return routes if self.allowed is None else [r for r in routes if r in self.allowed]

    def accepts(self, subject: str) -> bool:
        return bool(self.routes_of(subject))

    def requirement(self) -> str:
        wanted = "any route" if self.allowed is None else ", ".join(f"{a}→{b}" for a, b in sorted(self.allowed))
        return f"needs subjects with {wanted}"

    def build(self, subject: str, index: int, rng: random.Random, look: Look) -> SynthesisSample:
        source, target = rng.choice(self.routes_of(subject))
        anatomy = self.paired.anatomy(subject)
        text = (instructions.default_instruction(source, target, anatomy) if self.fixed_instruction
                else instructions.synthesis_instruction(source, target, anatomy, rng=rng))
        return SynthesisSample(text, self.image(subject, source, index, look),
                               self.image(subject, target, index, look, degraded=False),
                               source, target, subject, index, anatomy)
