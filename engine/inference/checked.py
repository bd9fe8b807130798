"""One synthesis with the checks every command makes around it, in one place (``synthesize`` and
``cohort`` and the app all call :func:`synthesize_checked`): the source modality (named, the header's, or
identified by the model), the model's route, the out-of-distribution guard's warnings (carried in the
result's notes and marking its description) and the card's benchmark warnings for the route."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import modalities
from engine.io.dicom_read import NAMED_ONLY
from engine.jobs import CancelToken, ProgressFn, noop

if TYPE_CHECKING:
    from engine.inference.pipeline import PreviewFn
    from engine.io.volume import Volume


@dataclass(frozen=True)
class Checks:
    """What was decided and found before synthesizing: the route, how the source was known
    (``identified``: the model's identification, ``source_note``: why the header was used instead)
    and the warnings a user must see."""

    source: str
    target: str
    identified: dict | None
    source_note: str
    input_warnings: list[str]
    benchmark_warnings: list[str]


def no_announce(checks: Checks) -> None:
    """The default ``announce``: says nothing."""


def synthesize_checked(synth, volume: Volume, source: str | None, target: str, settings, *,
                       progress: ProgressFn = noop, cancel: CancelToken | None = None,
                       announce: Callable[[Checks], None] = no_announce,
                       preview: PreviewFn | None = None) -> tuple[Volume, str, Checks]:
    """(the synthetic volume, its description, the :class:`Checks`) of ``volume`` into ``target``
    with ``synth``; ``source`` as ``--source`` takes it (a modality, "auto" or None). ``announce``
    gets the checks before the synthesis starts (the CLI prints the warnings then); ``preview`` each
    finished slice (the app's live view). ValueError when the source cannot be told or the model has
    no such route."""
    from engine.inference.identify import source_modality
    from engine.inference.ood import marked_description, with_warnings

    asked = source
    source, identified, note = source_modality(synth, volume, source, progress)
    if asked is None and modalities.canonical(source) == modalities.canonical(target):
        raise ValueError(f"the input reads as a {source} by its header or name, the target's own modality: nothing "
                         f"to synthesize. If it is another modality (a CBCT whose header says only CT), name it with "
                         f"--source (e.g. --source CBCT)")
    source, target = synth.card.check_route(source, target)
    warnings = synth.input_warnings(volume, source, settings)
    if volume.not_anatomy:                  # forced on a series its header says is none (a DWI named T1)
        said = volume.not_anatomy.split(NAMED_ONLY)[0].rstrip(":; ")
        warnings.insert(0, f"synthesized as a {source} because that source was named, though {said}")
    checks = Checks(source=source, target=target, identified=identified, source_note=note,
                    input_warnings=list(warnings), benchmark_warnings=list(synth.card.benchmark_warnings(source, target)))
    announce(checks)
    result = with_warnings(synth.synthesize_volume(volume, source, target, settings, progress=progress, cancel=cancel,
                                                   preview=preview), warnings)
    if volume.synthetic:
        result = result.replace(notes=(*result.notes, synthetic_input_note(volume)))
    return result, marked_description(synth.describe(source, target, settings), warnings), checks


def synthetic_input_note(volume: Volume) -> str:
    """What a synthesis from a synthetic volume says in its result's notes (and the CLI before the work)."""
    from engine.io.synthetic_mark import label

    return (f"the input is itself synthetic ({label(volume)}): this volume was made from a model's output, "
            "not from an acquisition")
