"""SynerMedGen's generation-aligned understanding tasks, built only from paired slices:
Conditional Target Selection (CTS), Modality Identification (MI) and Transformation Instruction
Alignment (TIA); each sample is images in [0, 1] + a question + its answer text."""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine import modalities
from engine.inference import instructions
from engine.tasks.augment import Look, Randomization
from engine.tasks.dataset import PairedDataset
from engine.tasks.slice_dataset import SliceTaskDataset, TaskMix

CTS, MI, TIA = "CTS", "MI", "TIA"
UNDERSTANDING_TASKS = (CTS, MI, TIA)


@dataclass(frozen=True)
class SliceRef:
    """Where an image came from."""

    subject: str
    modality: str
    index: int


@dataclass(frozen=True, eq=False)
class UnderstandingSample:
    """Images (each (1, H, W) float32 in [0, 1]) in prompt order, labelled as the question refers
    to them, then the question; ``answer`` is the supervised text, ``correct`` the option index
    (CTS, TIA) or the modality of each panel (MI); ``options`` are TIA's instruction texts."""

    task: str
    images: tuple[torch.Tensor, ...]
    image_labels: tuple[str, ...]
    question: str
    answer: str
    refs: tuple[SliceRef, ...]
    correct: int | tuple[str, ...]
    options: tuple[str, ...] = ()
    anatomy: str = ""

    def chance(self, choices: Sequence[str]) -> tuple[float, float]:
        """(whole answer, per panel): the expected accuracy of a guesser that does not look at the
        images. CTS / TIA: uniform among the options (one "panel"). MI: it knows each panel's
        intensity family (HU, SUV or MR signal) and that the panels show distinct modalities, and
        names them at random among the ``choices`` of that family."""
        if self.task != MI:
            n = len(self.options) if self.options else len(self.images) - 1
            return 1.0 / n, 1.0 / n
        assert isinstance(self.correct, tuple), "an MI sample's answer is each panel's modality"
        families = [modalities.get(m).family for m in self.correct]
        pool = {f: sum(modalities.get(c).family == f for c in choices) for f in families}
        whole = 1.0
        for family in set(families):
            for k in range(families.count(family)):
                whole /= pool[family] - k
        return whole, sum(1.0 / pool[f] for f in families) / len(families)

    def interleaved(self) -> list:
        """[label, image, label, image, …, question]: one way to lay the prompt out."""
        out: list = []
        for label, image in zip(self.image_labels, self.images):
            out += [f"{label}:", image]
        return out + [self.question]


def _other_routes(source: str, target: str, pool: list[str], rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` distractor routes: the reverse first, then routes sharing the source or the target,
    then any other; drawn from ``pool`` and, if that is too small, the whole registry."""
    chosen = [(target, source)]
    for names in (pool, list(modalities.MODALITIES)):
        near = [(a, b) for a in names for b in names if a != b and (a == source) != (b == target)]
        far = [(a, b) for a in names for b in names if a != b and a != source and b != target]
        for group in (near, far):
            group = [r for r in group if r not in chosen and r != (source, target)]
            rng.shuffle(group)
            chosen += group[: max(0, n - len(chosen))]
        if len(chosen) >= n:
            break
    return chosen[:n]


class CTSDataset(SliceTaskDataset):
    """Reference slice in modality A; candidates A–D in modality B: the same slice index (its
    one-to-one counterpart) and three slices of the same subject and modality ≥ ``min_gap`` away."""

    task = CTS

    def __init__(self, paired: PairedDataset, split: str | None = "train", *, image_size: int = 256, seed: int = 0,
                 length: int | None = None, min_gap: int = 3, augment: Randomization | None = None) -> None:
        self.min_gap = int(min_gap)
        super().__init__(paired, split, image_size=image_size, seed=seed, length=length, augment=augment)

    def distractor_pool(self, subject: str, index: int) -> list[int]:
        """Usable slices ≥ min_gap away; when fewer than 3, any slice ≥ min_gap away."""
        usable = [j for j in self.paired.usable_slices(subject) if abs(j - index) >= self.min_gap]
        if len(usable) >= 3:
            return usable
        return [j for j in range(self.paired.num_slices(subject)) if abs(j - index) >= self.min_gap]

    def accepts_item(self, subject: str, index: int) -> bool:
        return len(self.distractor_pool(subject, index)) >= 3

    def requirement(self) -> str:
        return f"needs volumes with at least 3 slices {self.min_gap} or more slices from each usable one"

    def build(self, subject: str, index: int, rng: random.Random, look: Look) -> UnderstandingSample:
        source, target = rng.sample(list(self.paired.subject_modalities(subject)), 2)
        distractors = rng.sample(self.distractor_pool(subject, index), 3)
        position = rng.randrange(4)
        slots = list(distractors)
        slots.insert(position, index)
        anatomy = self.paired.anatomy(subject)
        refs = (SliceRef(subject, source, index),) + tuple(SliceRef(subject, target, j) for j in slots)
        return UnderstandingSample(
            task=CTS, images=tuple(self.image(r.subject, r.modality, r.index, look) for r in refs),
            image_labels=("Reference",) + tuple(instructions.LETTERS), question=instructions.cts_question(
                source, target, anatomy, rng=rng), answer=instructions.choice_answer(position), refs=refs,
            correct=position, anatomy=anatomy)


class MIDataset(SliceTaskDataset):
    """1–``max_panels`` panels of one slice in distinct modalities of the subject, shuffled; the
    answer names each panel's modality ('A: T1, B: FLAIR, C: T2'). One panel is the question
    ``identify`` asks of a volume."""

    task = MI

    def __init__(self, paired: PairedDataset, split: str | None = "train", *, image_size: int = 256, seed: int = 0,
                 length: int | None = None, max_panels: int = 4, augment: Randomization | None = None) -> None:
        self.max_panels = max(1, min(int(max_panels), len(instructions.LETTERS)))
        super().__init__(paired, split, image_size=image_size, seed=seed, length=length, augment=augment)

    def build(self, subject: str, index: int, rng: random.Random, look: Look) -> UnderstandingSample:
        present = list(self.paired.subject_modalities(subject))
        n = rng.randint(1, min(self.max_panels, len(present)))
        chosen = rng.sample(present, n)
        anatomy = self.paired.anatomy(subject)
        refs = tuple(SliceRef(subject, m, index) for m in chosen)
        return UnderstandingSample(
            task=MI, images=tuple(self.image(subject, m, index, look) for m in chosen),
            image_labels=tuple(instructions.LETTERS[:n]),
            question=instructions.mi_question(n, self.paired.modalities, anatomy, rng=rng),
            answer=instructions.modality_answer(chosen), refs=refs, correct=tuple(chosen), anatomy=anatomy)


class TIADataset(SliceTaskDataset):
    """Image 1 (modality A) → image 2 (modality B) of the same slice; four instruction options
    written with one template: A→B and three other routes (always B→A, then routes sharing the
    source or the target); the answer is the letter of A→B."""

    task = TIA

    def build(self, subject: str, index: int, rng: random.Random, look: Look) -> UnderstandingSample:
        source, target = rng.sample(list(self.paired.subject_modalities(subject)), 2)
        anatomy = self.paired.anatomy(subject)
        routes = [(source, target)] + _other_routes(source, target, self.paired.modalities, rng, 3)
        order = list(range(4))
        rng.shuffle(order)
        template = rng.randrange(len(instructions.SYNTHESIS_TEMPLATES))
        options = tuple(instructions.synthesis_instruction(*routes[k], anatomy, template=template) for k in order)
        position = order.index(0)
        refs = (SliceRef(subject, source, index), SliceRef(subject, target, index))
        return UnderstandingSample(
            task=TIA, images=(self.image(subject, source, index, look), self.image(subject, target, index, look)),
            image_labels=("Image 1", "Image 2"), question=instructions.tia_question(options, anatomy, rng=rng),
            answer=instructions.choice_answer(position), refs=refs, correct=position, options=options,
            anatomy=anatomy)


def stage1_tasks(paired: PairedDataset, split: str | None = "train", *, image_size: int = 256, seed: int = 0,
                 weights: Mapping[str, float] | None = None, length: int | None = None,
                 min_gap: int = 3, augment: Randomization | None = None) -> TaskMix:
    """Stage I's training set: CTS, MI and TIA mixed by ``weights`` (equal by default)."""
    common: dict[str, Any] = {"image_size": image_size, "seed": seed, "augment": augment}
    parts = {
        CTS: CTSDataset(paired, split, min_gap=min_gap, **common),
        MI: MIDataset(paired, split, **common),
        TIA: TIADataset(paired, split, **common),
    }
    return TaskMix(parts, weights, length=length, seed=seed)
