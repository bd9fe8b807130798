"""What the synthesis panel asks of the inference engine (``engine.inference``): whether it is
installed, the models and their routes (from the model card, no weights read), the request, and
``run_synthesis`` — which runs inside the synthesis process (app.engine_process), never in the GUI."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.jobs import CancelToken, Progress, ProgressFn
from engine.paths import DEFAULT_MODEL_DIR

if TYPE_CHECKING:
    from engine.io import Volume


@dataclass(frozen=True)
class ModelChoice:
    label: str
    path: Path


@dataclass(frozen=True)
class SynthesisRequest:
    """One run. ``None`` for the source means: identify it with the model; ``None`` for steps,
    guidance, seed, noise correlation or the guided filter's radius and depth means: the model's default
    (its card's ``inference_defaults``)."""

    volume: Volume
    source: str | None
    target: str
    model_dir: Path
    backend: str                # "torch" | "onnx"
    device: str                 # "auto" | "cpu" | "cuda"
    precision: str              # "fp32" | "fp16" | "bf16"
    steps: int | None = None
    text_guidance: float | None = None
    image_guidance: float | None = None
    seed: int | None = None
    noise_correlation: float | None = None
    guided_filter: float | None = None
    guided_filter_depth: float | None = None
    plane: str = "auto"         # the patient plane slices are cut in (engine.inference.SLICING_PLANES)


@dataclass(frozen=True)
class SynthesisProgress(Progress):
    """A progress report with the latest finished slice (target units), for the panel's preview."""

    preview: np.ndarray | None = None


def inference_unavailable_reason() -> str | None:
    """Why synthesis cannot run in this installation, or None (looks for the packages only)."""
    for module, what in (("torch", "PyTorch"), ("engine.inference.pipeline", "the inference engine")):
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed ({module})"
    return None


def is_model_dir(path: Path) -> bool:
    """A SynerMedGen model directory or a BAGEL-layout checkpoint directory."""
    return (path / "config.json").is_file() or (path / "llm_config.json").is_file()


def available_models(extra_dirs: list[str]) -> list[ModelChoice]:
    """The default model (when installed) and the imported or fine-tuned model directories."""
    choices = []
    if is_model_dir(DEFAULT_MODEL_DIR):
        choices.append(ModelChoice("Default model", DEFAULT_MODEL_DIR))
    for text in extra_dirs:
        path = Path(text)
        if is_model_dir(path):
            choices.append(ModelChoice(path.name, path))
    return choices


def model_limitations(model_dir: Path) -> list[str]:
    """What the model card says the model cannot do (``limitations``); empty when it says nothing."""
    from engine.inference import ModelCard

    return ModelCard.read(model_dir).limitations


def guard_notes_of(volume: Volume) -> tuple[list[str], list[str]]:
    """(warnings, notes) of the out-of-distribution guard in a synthetic volume's notes: what it
    found unlike the training data, and its note that it could not check (no profile)."""
    from engine.inference import NO_PROFILE_NOTE, WARNING_PREFIX

    found = [n for n in volume.notes if n.startswith(WARNING_PREFIX)]
    return [n for n in found if n != NO_PROFILE_NOTE], [n for n in found if n == NO_PROFILE_NOTE]


def benchmark_notes_of(volume: Volume) -> list[str]:
    """The notes a synthetic volume carries from its model card's benchmark: routes on which the
    model scored worse than the source itself (:meth:`ModelCard.benchmark_warnings`), and how much of
    the model's change to the source was kept on a same-scale route (the card's source floor)."""
    from engine.inference import BENCHMARK_PREFIX, SOURCE_FLOOR_PREFIX

    return [n.removeprefix(BENCHMARK_PREFIX) if n.startswith(BENCHMARK_PREFIX) else n[0].upper() + n[1:]
            for n in volume.notes if n.startswith((BENCHMARK_PREFIX, SOURCE_FLOOR_PREFIX))]


def model_routes(model_dir: Path) -> tuple[tuple[str, str], ...] | None:
    """The (source, target) routes of the model card; None when any route may be tried."""
    from engine.inference import ModelCard

    return ModelCard.read(model_dir).routes


_loaded: dict[tuple[str, str, str, str], object] = {}       # the last model loaded, kept for the next run


def _synthesizer(request: SynthesisRequest):
    from engine.inference import synthesizer_for

    key = (str(request.model_dir), request.backend, request.device, request.precision)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = synthesizer_for(request.model_dir, request.backend, request.device, request.precision)
    return _loaded[key]


def run_synthesis(request: SynthesisRequest, progress: ProgressFn, cancel: CancelToken) -> Volume:
    """Synthesize the target volume on the source's grid (marked synthetic by the engine) with the
    checks every face makes (:func:`engine.inference.synthesize_checked`), its notes ending with the
    out-of-distribution guard's warnings and how the source modality was known; the progress reports
    carry the latest finished slice as ``preview``; its ``provenance`` is the sidecar an export writes
    beside it. Imports torch."""
    from engine.inference import folders_cut, provenance, synthesize_checked

    synth = _synthesizer(request)
    settings = synth.default_settings().asked(
        steps=request.steps, seed=request.seed, noise_correlation=request.noise_correlation,
        guided_filter=request.guided_filter, guided_filter_depth=request.guided_filter_depth, plane=request.plane,
        text_guidance=request.text_guidance, image_guidance=request.image_guidance)
    latest: list[np.ndarray | None] = [None]

    def report(p: Progress) -> None:
        progress(SynthesisProgress(p.done, p.total, p.message, preview=latest[0]))

    def preview(_index: int, image: np.ndarray) -> None:
        latest[0] = image

    result, description, checks = synthesize_checked(synth, request.volume, request.source or "auto",
                                                      request.target, settings, progress=report, cancel=cancel,
                                                      preview=preview)
    given = Path(request.volume.source) if request.volume.source else None
    record = provenance(synth, checks, settings, request.volume, result, given.name if given else None,
                        description=description, local=folders_cut(given, given.absolute().parent) if given else list)
    return result.replace(notes=(*result.notes, *filter(None, [checks.source_note])), provenance=record)
