"""Modality identification with the model's understanding branch: the MI task's question about
one panel (a central slice), listing the model's modalities as training did; each answer ("A: T1",
"A: FLAIR", …) of the family the values show (HU: CT, CBCT; SUV: PET; else MR) scored by its
log-likelihood under the language model, softmax over them, averaged over a few slices. When the
model knows only one modality of that family, the values alone name it.

The prompt mirrors an MI training sample laid out by ``UnderstandingSample.interleaved()``:
``[Text("A:"), VitImage(slice), Text(question)]`` followed by the answer text. The slice is
normalised by the rule of the intensity family the values show (HU → CT's fixed range, SUV → PET,
otherwise MR percentiles), since the modality is what we are asking for.

A model whose card does not say Stage I (understanding) was trained, or records a measured MI
accuracy below :data:`MIN_MI_ACCURACY`, still answers, but the result is marked unreliable with
confidence 0: its answer is a guess.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine import modalities
from engine.inference.instructions import mi_question, modality_answer
from engine.inference.slices import in_plane_spacing, slice_axis, slices_first, to_model_slice
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop
from engine.model.vit import vit_view

if TYPE_CHECKING:
    from engine.inference.pipeline import Synthesizer

DEFAULT_SLICES = 3
MIN_MI_ACCURACY = 0.5          # a card recording a lower Stage I MI accuracy gets no trusted answers


@dataclass(frozen=True)
class Identification:
    """The most likely modality, its probability (0 when unreliable), every candidate's
    probability (summing to 1), and whether the model was trained to answer at all."""

    modality: str
    confidence: float
    probabilities: dict[str, float]
    reliable: bool
    note: str = ""
    slices: tuple[int, ...] = field(default_factory=tuple)
    axis: int = 0

    def to_dict(self) -> dict:
        return {"modality": self.modality, "confidence": self.confidence, "probabilities": self.probabilities,
                "reliable": self.reliable, "note": self.note, "slices": list(self.slices), "axis": self.axis}


def intensity_family(volume: Volume) -> str:
    """"CT", "PET" or "MR" by the values' unit or range (air below −500 means HU)."""
    unit = (volume.unit or "").upper()
    if unit == "HU":
        return "CT"
    if unit.startswith("SUV"):
        return "PET"
    finite = np.asarray(volume.array, dtype=np.float32)
    finite = finite[np.isfinite(finite)]
    if finite.size and float(np.percentile(finite, 1.0)) < -500.0:
        return "CT"
    return "MR"


_FAMILY_RULE = {"CT": "CT", "PET": "PET", "MR": "T1"}   # a modality whose normalisation each family uses


def central_slices(volume: Volume, family: str, count: int = DEFAULT_SLICES) -> tuple[int, tuple[int, ...]]:
    """(axis, indices) of ``count`` slices spread over the middle half of the slices showing body."""
    axis = slice_axis(volume.spacing)
    mask = slices_first(modalities.body_mask(np.nan_to_num(volume.array.astype(np.float32)), _FAMILY_RULE[family]),
                        axis)
    body = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if body.size == 0:
        body = np.arange(mask.shape[0])
    lo, hi = body[0], body[-1]
    quantiles = np.linspace(0.25, 0.75, count) if count > 1 else np.array([0.5])
    picks = sorted({int(round(lo + q * (hi - lo))) for q in quantiles})
    return axis, tuple(picks)


def mi_prompt(tokenizer, image: torch.Tensor, choices: Sequence[str], anatomy: str = "",
              answer: str | None = None) -> list:
    """The one-panel MI prompt ``[Text("A:"), VitImage(image), Text(question)]`` for an image
    (C, H, W) in [−1, 1], the question listing ``choices``, followed by
    ``Text("A: <answer>", loss=True)`` when an answer is given."""
    from engine.model import Text, VitImage

    row = [Text(tokenizer.encode("A:")), VitImage(image),
           Text(tokenizer.encode(mi_question(1, choices, anatomy, template=0)))]
    if answer is not None:
        row.append(Text(tokenizer.encode(modality_answer([answer])), loss=True))
    return row


def answer_log_likelihoods(model, rows: list) -> torch.Tensor:
    """log P(answer | prompt) of each row (summed over its answer tokens and the closing
    ``<|im_end|>``), as a float32 CPU tensor (rows,)."""
    out = model.understanding_forward(rows, logits_for="labels")
    logp = torch.log_softmax(out.logits.float(), dim=-1).gather(1, out.labels[:, None])[:, 0].cpu()
    row_of_label = (out.layout.labels != -100).nonzero()[:, 0].cpu()
    return torch.zeros(len(rows)).index_add_(0, row_of_label, logp)


def _only_one_of_family(volume: Volume, name: str, family: str, model: str) -> Identification:
    """``name`` is the model's only modality of the volume's family: the values name it, unless the
    file's header names another modality of that family (which the model does not know)."""
    try:
        header = modalities.canonical(volume.modality) if volume.modality else None
    except ValueError:          # a header name the registry does not know says nothing here
        header = None
    if header and header != name and modalities.get(header).family == family:
        return Identification(name, 0.0, {name: 1.0}, False,
                              f"the file says {header}, which model {model!r} does not know; {name} is its only "
                              f"{family} modality")
    return Identification(name, 1.0, {name: 1.0}, True,
                          f"the values are {family} and {name} is the only {family} modality of model {model!r}")


def identify_modality(volume: Volume, model: Synthesizer, *, candidates: Sequence[str] | None = None, slices: int = DEFAULT_SLICES,
                      anatomy: str | None = None, progress: ProgressFn = noop,
                      cancel: CancelToken | None = None) -> Identification:
    """Identify ``volume``'s modality with ``model`` (a loaded :class:`Synthesizer`).

    The question lists ``candidates`` (default: the model card's modalities, all registry
    modalities when it names none; repeats dropped). Given candidates are all answers; by default
    the answers are those of the volume's intensity family (:func:`intensity_family`), and when
    the card lists only one of that family, the values name it without asking (unless the file's
    header names another modality of the family). A volume of a family none of the candidates
    belongs to gets the best of them, marked unreliable.
    """
    from engine.inference.settings import autocast

    synth = model
    if synth.tokenizer is None:
        raise ValueError(f"{synth.model_dir}: the model folder has no tokenizer")
    asked = list(dict.fromkeys(modalities.canonical(c)
                               for c in (candidates or synth.modalities or list(modalities.MODALITIES))))
    if len(asked) < 2:
        raise ValueError(f"identification needs at least two candidate modalities, got {asked}")
    family = intensity_family(volume)
    same = [n for n in asked if modalities.get(n).family == family]
    names, foreign = (asked if candidates else same or asked), not same
    if not candidates and synth.modalities and len(same) == 1:
        return _only_one_of_family(volume, same[0], family, synth.name)
    axis, picks = central_slices(volume, family, slices)
    array = np.nan_to_num(np.asarray(volume.array, dtype=np.float32))
    norm = modalities.normalisation_for(array, _FAMILY_RULE[family])
    stack = slices_first(modalities.normalise(array, norm), axis)
    images, placement = to_model_slice(stack[list(picks)], synth.image_size,
                                       spacing=in_plane_spacing(volume.spacing, axis), pixel_mm=synth.pixel_mm)
    images = images.reshape(len(picks), placement.tiles, *images.shape[1:])[:, placement.tiles // 2]   # a central tile
    pixels = vit_view(images.to(synth.device) * 2.0 - 1.0, synth.config)
    if anatomy is None:
        anatomy = synth.card.anatomy if isinstance(synth.card.anatomy, str) else ""
        anatomy = anatomy or ("brain" if family == "MR" else "head")
    log_likelihood = torch.zeros(len(picks), len(names))
    for s in range(len(picks)):
        check_cancel(cancel)
        rows = [mi_prompt(synth.tokenizer, pixels[s], asked, anatomy, answer=m) for m in names]
        with torch.no_grad(), autocast(synth.device, synth.compute_dtype):
            log_likelihood[s] = answer_log_likelihoods(synth.model, rows)
        progress(Progress(s + 1, len(picks), f"identifying: slice {s + 1} of {len(picks)}"))
    per_slice = torch.softmax(log_likelihood, dim=1)
    mean = per_slice.mean(dim=0)
    mean = mean / mean.sum()
    probabilities = {m: float(p) for m, p in zip(names, mean)}
    best = names[int(mean.argmax())]
    card = synth.card
    if foreign:
        note = (f"the values are {family}, and none of {', '.join(asked)} is: {best} is the closest of them, "
                f"not an identification")
    elif not card.understanding_trained:
        note = (f"model {synth.name!r} has no understanding (Stage I) training according to its card: "
                f"{best} is a guess, not an identification")
    elif card.mi_accuracy is not None and card.mi_accuracy < MIN_MI_ACCURACY:
        note = (f"model {synth.name!r} identified modalities correctly in only {100 * card.mi_accuracy:.0f} % of "
                f"its validation questions (MI accuracy in its card): {best} is a guess, not an identification")
    else:
        return Identification(best, float(mean.max()), probabilities, True,
                              f"MI question on {len(picks)} slices along axis {axis}", picks, axis)
    return Identification(best, 0.0, probabilities, False, note, picks, axis)


MIN_AUTO_CONFIDENCE = 0.5       # below it, ``source_modality`` does not take identification's answer


def source_modality(synth: Synthesizer, volume: Volume, requested: str | None,
                    progress: ProgressFn = noop) -> tuple[str, dict | None, str]:
    """The source modality of a synthesis: ``requested`` when it names one; the header's when
    nothing is requested; identified by the model for "auto" (the header's again when the model is
    unsure). Returns (modality, the identification as a dict or None, a note for the user or "");
    ValueError when neither the model nor the header can say, or the header says the volume is no scan
    of a modality the model knows (a localizer, a diffusion series: ``Volume.not_anatomy``)."""
    if requested and requested.strip().lower() != "auto":
        return modalities.canonical(requested), None, ""
    if requested is None and volume.modality:
        return modalities.canonical(volume.modality), None, ""
    if volume.not_anatomy:              # its header says what it is: no model's guess overrides that
        raise ValueError(volume.not_anatomy)
    found = synth.identify(volume, progress=progress)
    info = found.to_dict()
    if found.reliable and found.confidence >= MIN_AUTO_CONFIDENCE:
        return found.modality, info, ""
    if volume.modality:
        return modalities.canonical(volume.modality), info, (
            f"identification is unsure ({found.modality}, confidence {found.confidence:.2f}); using the header's "
            f"modality {volume.modality}")
    raise ValueError(f"{volume.name or 'the input'}: cannot identify its modality reliably (best guess "
                     f"{found.modality}, confidence {found.confidence:.2f}{'; ' + found.note if found.note else ''}); "
                     "pass --source")
