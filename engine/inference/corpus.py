"""Every text the tasks can produce for given modalities and anatomies: the corpus the BPE
tokenizer is trained on, so no instruction, question or answer falls apart into bytes."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from engine import modalities
from engine.inference import instructions


def instruction_corpus(modality_names: Sequence[str] | None = None, anatomies: Iterable[str] = ("",)) -> list[str]:
    """Instructions for every ordered pair × template × anatomy, every question, every answer,
    and the modality names and descriptions; deduplicated, in a fixed order."""
    names = [modalities.canonical(m) for m in (modality_names or list(modalities.MODALITIES))]
    anatomies = list(dict.fromkeys(list(anatomies) + [""]))
    routes = [(a, b) for a in names for b in names if a != b]
    texts: list[str] = []
    for name in names:
        mod = modalities.get(name)
        texts += [name, mod.description, mod.unit]
    for anatomy in anatomies:
        for source, target in routes:
            texts += [instructions.synthesis_instruction(source, target, anatomy, template=k)
                      for k in range(len(instructions.SYNTHESIS_TEMPLATES))]
            texts += [instructions.cts_question(source, target, anatomy, template=k)
                      for k in range(len(instructions.CTS_TEMPLATES))]
        for n in range(1, min(len(names), len(instructions.LETTERS)) + 1):
            texts += [instructions.mi_question(n, names, anatomy, template=k)
                      for k in range(len(instructions.MI_TEMPLATES))]
        for k, (source, target) in enumerate(routes[:len(instructions.TIA_TEMPLATES) * 4]):
            others = [r for r in routes if r != (source, target)][:3]
            options = [instructions.synthesis_instruction(a, b, anatomy, template=k)
                       for a, b in [(source, target)] + others]
            texts.append(instructions.tia_question(options, anatomy, template=k))
    texts += list(instructions.LETTERS)
    for n in range(1, min(len(names), len(instructions.LETTERS)) + 1):
        texts += [instructions.modality_answer(p) for p in itertools.permutations(names, n)]
    return list(dict.fromkeys(t for t in texts if t))
