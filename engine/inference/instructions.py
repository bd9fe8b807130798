"""The words of every task: synthesis instructions (varied templates naming source, target and
anatomy), the CTS / MI / TIA questions, their answer formats, and parsers for model answers.

Templates are plain ``str.format`` strings; ``render`` fills modality names, registry descriptions
and anatomy phrases, so adding a template is adding a line here (and it reaches the tokenizer
corpus through :mod:`engine.inference.corpus`).
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

from engine import modalities

LETTERS = "ABCD"

SYNTHESIS_TEMPLATES: tuple[str, ...] = (
    "Translate this {anat}{src_long} slice into the corresponding {tgt} image.",
    "Synthesize {a_tgt} from this {src_long}{of_anat}.",
    "Convert the {src} image{of_anat} into {a_tgt_long} image.",
    "Given this {anat}{src} slice, generate the matching {tgt_long} slice.",
    "Produce the {tgt_long} counterpart of this {anat}{src} image.",
    "Map this {src} scan{of_anat} to {tgt}, keeping the anatomy unchanged.",
    "{src} to {tgt}: synthesize the {tgt_long} image of this {anat}slice.",
    "What would this {anat}slice look like as {a_tgt_long} image? Generate it from the {src} input.",
    "Generate a synthetic {tgt} image from the given {src_long} slice{of_anat}.",
    "Transform this {src_long} image{of_anat} into the same slice acquired as {tgt_long}.",
)

CTS_TEMPLATES: tuple[str, ...] = (
    "The first image is the reference, {a_src} slice{of_anat}. Which of the candidates A, B, C and D shows "
    "exactly the same slice in {tgt}? Answer with one letter.",
    "Reference: {a_src_long} image{of_anat}. Among images A, B, C and D, which one is its one-to-one "
    "{tgt_long} counterpart?",
    "Which candidate (A–D) is the {tgt} image of the same {anat}slice as the {src} reference?",
    "Select the {tgt} slice that corresponds to the given {src} reference image. Options: A, B, C, D.",
)

MI_TEMPLATES: tuple[str, ...] = (
    "Identify the imaging modality of each panel ({letters}). Choose from: {choices}.",
    "What modality is shown in each of the panels {letters}{of_anat}? Possible modalities: {choices}.",
    "For every image {letters}, name its modality ({choices}).",
    "Each panel is a slice{of_anat} in a different modality. Give the modality of panels {letters}, "
    "using the names {choices}.",
)

TIA_TEMPLATES: tuple[str, ...] = (
    "Image 1 was transformed into image 2. Which instruction best describes this transformation?\n{options}\n"
    "Answer with one letter.",
    "Which of the following instructions turns the first image into the second?\n{options}",
    "Look at the {anat}image pair (input, then output). Select the instruction that was followed:\n{options}",
    "Choose the instruction that matches the change from image 1 to image 2.\n{options}\nReply with A, B, C or D.",
)

# anatomy as written in dataset.json → (adjective, noun phrase)
ANATOMY_PHRASES: dict[str, tuple[str, str]] = {
    "brain": ("brain", "the brain"),
    "head": ("head", "the head"),
    "head and neck": ("head-and-neck", "the head and neck"),
    "pelvis": ("pelvic", "the pelvis"),
    "abdomen": ("abdominal", "the abdomen"),
    "thorax": ("thoracic", "the thorax"),
    "chest": ("chest", "the chest"),
    "spine": ("spine", "the spine"),
    "whole body": ("whole-body", "the whole body"),
}
_AN_WORDS = {"FDG", "MR", "MRI", "HU", "SUV"}


def anatomy_phrases(anatomy: str) -> tuple[str, str]:
    """(adjective, noun phrase) for an anatomy name; ("", "") when unknown/empty."""
    key = re.sub(r"[_\-\s]+", " ", str(anatomy or "").strip().lower())
    if not key:
        return "", ""
    return ANATOMY_PHRASES.get(key, (key, f"the {key}"))


def with_article(phrase: str) -> str:
    """'a CT', 'an FDG PET', 'a T1-weighted MR'."""
    first = phrase.split()[0] if phrase.split() else ""
    an = first.upper() in _AN_WORDS or (first[:1].lower() in "aeiou" and not first.isupper())
    return f"{'an' if an else 'a'} {phrase}"


def _fields(source: str | None, target: str | None, anatomy: str) -> dict[str, str]:
    adjective, noun = anatomy_phrases(anatomy)
    out = {"anat": f"{adjective} " if adjective else "", "of_anat": f" of {noun}" if noun else ""}
    for key, name in (("src", source), ("tgt", target)):
        if name is None:
            continue
        mod = modalities.get(name)
        out[key], out[f"{key}_long"] = mod.name, mod.description
        out[f"a_{key}"], out[f"a_{key}_long"] = with_article(mod.name), with_article(mod.description)
    return out


def render(template: str, source: str | None = None, target: str | None = None, anatomy: str = "",
           **extra: str) -> str:
    text = template.format(**_fields(source, target, anatomy), **extra)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r" ([.,?:])", r"\1", text).strip()


def _pick(templates: Sequence[str], rng: random.Random | None, template: int | None) -> str:
    if template is not None:
        return templates[template % len(templates)]
    return (rng or random.Random(0)).choice(templates)


# -- synthesis ---------------------------------------------------------------------------------
def synthesis_instruction(source: str, target: str, anatomy: str = "", *, rng: random.Random | None = None,
                          template: int | None = None) -> str:
    """One instruction for source → target (a random template from ``rng``, or template #i)."""
    return render(_pick(SYNTHESIS_TEMPLATES, rng, template), source, target, anatomy)


def default_instruction(source: str, target: str, anatomy: str = "") -> str:
    """The instruction inference uses: template 0, e.g. 'Translate this brain T1-weighted MR
    slice into the corresponding FLAIR image.'"""
    return synthesis_instruction(source, target, anatomy, template=0)


# -- understanding questions -----------------------------------------------------------------
def cts_question(source: str, target: str, anatomy: str = "", *, rng: random.Random | None = None,
                 template: int | None = None) -> str:
    return render(_pick(CTS_TEMPLATES, rng, template), source, target, anatomy)


def letters_phrase(n: int) -> str:
    letters = list(LETTERS[:n])
    return letters[0] if n == 1 else ", ".join(letters[:-1]) + " and " + letters[-1]


def mi_question(n_panels: int, choices: Sequence[str], anatomy: str = "", *, rng: random.Random | None = None,
                template: int | None = None) -> str:
    """Ask for the modality of ``n_panels`` panels (1–4), naming the allowed ``choices``."""
    if not 1 <= n_panels <= len(LETTERS):
        raise ValueError(f"MI needs 1 to {len(LETTERS)} panels, got {n_panels}")
    names = ", ".join(modalities.canonical(c) for c in choices)
    return render(_pick(MI_TEMPLATES, rng, template), anatomy=anatomy, letters=letters_phrase(n_panels),
                  choices=names)


def options_block(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def tia_question(options: Sequence[str], anatomy: str = "", *, rng: random.Random | None = None,
                 template: int | None = None) -> str:
    """Ask which of the (up to four) instruction ``options`` describes image 1 → image 2."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"TIA needs 2 to {len(LETTERS)} options, got {len(options)}")
    template_text = _pick(TIA_TEMPLATES, rng, template)
    return render(template_text, anatomy=anatomy, options="{options}").replace("{options}", options_block(options))


# -- answers ---------------------------------------------------------------------------------
def choice_answer(index: int) -> str:
    """The answer to CTS and TIA: one letter."""
    return LETTERS[index]


def modality_answer(names: Sequence[str]) -> str:
    """The answer to MI, e.g. 'A: T1, B: FLAIR, C: T2'."""
    return ", ".join(f"{LETTERS[i]}: {modalities.canonical(n)}" for i, n in enumerate(names))


def parse_choice(text: str) -> int | None:
    """The option index a model answer names ('B', 'Answer: C.', …), or None."""
    match = re.search(r"\b([A-D])\b", str(text))
    return LETTERS.index(match.group(1)) if match else None


def parse_modality_answer(text: str, n_panels: int) -> list[str | None]:
    """Modalities named per panel in an MI answer ('A: T1, B: FLAIR'); None where missing/unknown."""
    found: list[str | None] = [None] * n_panels
    for letter, name in re.findall(r"\b([A-D])\s*[:=\-]\s*([A-Za-z0-9]+)", str(text)):
        index = LETTERS.index(letter)
        if index < n_panels:
            try:
                found[index] = modalities.canonical(name)
            except ValueError:
                found[index] = None
    return found
