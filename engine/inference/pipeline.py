"""The volume synthesis pipeline: a :class:`Synthesizer` loads a model folder once and turns a
volume of one modality into the matching volume of another, on the input's exact grid and in the
target's physical units.

Per volume: normalise the source per its modality → slice along the acquisition axis (or the
patient plane the settings name) → skip
empty slices → for each batch of slices: VAE latents + ViT tokens + instruction encoded once into
a cached context (K/V for every guidance branch; with the target's embedding row, for models that
have one) → flow-matching ODE with the guidance branches batched → VAE decode → back onto the
slice grid (optionally re-drawn from the source slice there: :mod:`engine.inference.guided`) →
re-stack → target units.

Intensity of the result (the model works on [0, 1] normalised slices, docs/evaluation.md):

- CT / CBCT: [0, 1] → HU −1024…2000; PET: → SUV 0…20 (the registry's fixed ranges);
- MR (arbitrary units): [0, 1] → 0…1000 a.u. (``mr_output_range`` in the card's
  ``inference_defaults`` overrides), i.e. the target's 0.5–99.5 % in-body range lands on 0…1000.
  MR scales differ between scanners and studies; metrics normalise each volume on their own.
- slices where the source shows (almost) no body: the target's background (−1000 HU, SUV 0, 0 a.u.).
"""
from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import modalities
from engine.inference.calibration import calibration_shift
from engine.inference.denoise import filter_slices
from engine.inference.field_of_view import islands_outside, padding_mask
from engine.inference.guided import fits_at_model_resolution, guided_stack, native_depth, native_radius
from engine.inference.instructions import default_instruction
from engine.inference.model_card import SOURCE_FLOOR_PREFIX, ModelCard, route_name
from engine.inference.settings import (
    SynthesisSettings,
    autocast,
    available_memory,
    is_out_of_memory,
    resolve_device,
    resolve_precision,
    settings_from_card,
)
from engine.inference.slices import (
    Placement,
    from_model_slice,
    in_plane_spacing,
    slice_axis,
    slices_back,
    slices_first,
    to_model_slice,
)
from engine.io.dicom_write import derived_identity
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop
from engine.modalities import Normalisation
from engine.model.vit import vit_view
from engine.sampling import draw_noise, sample

RESEARCH_NOTE = "synthetic — research use only, not for diagnosis"
MR_OUTPUT_RANGE = (0.0, 1000.0)
BACKGROUND = {"CT": -1000.0, "PET": 0.0}          # MR: the bottom of its output range
MAX_AUTO_BATCH = {"cpu": 8, "cuda": 64}           # CPU: bigger batches gain nothing on few cores
MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8}          # share of the free memory a batch may plan to use
MIN_BODY_FRACTION = 0.01                          # a slice with less body than this is left as background
# pixels whose source-guided filtering takes about as long as drawing one slice (2-core CPU: a 512² slice
# about 0.1 s, drawing one 0.05–0.1 s): the filter's share of the progress bar
FILTER_PIXELS_PER_SLICE = 512 * 512

PreviewFn = Callable[[int, np.ndarray], None]


def slice_seed(seed: int, index: int) -> int:
    """The noise seed of slice ``index``: the same slice gets the same noise in any batch."""
    return (int(seed) * 1_000_003 + int(index) * 7_919 + 12_345) % (2 ** 63)


def slice_noise(shape: Sequence[int], seed: int, indices: Sequence[int], correlation: float = 0.0) -> torch.Tensor:
    """(len(indices), *shape): the starting noise of each slice index, standard normal and the same
    in any batch. With ``correlation`` ρ > 0 a slice's noise is a moving average of its own draw
    and its predecessors' (weights ρ^k, k slices back, cut where ρ^k < 1 %, rescaled to unit
    variance: about ρ between adjacent slices, as an AR(1) along the slices), so neighbouring
    slices start alike; draws shared by the slices of one call are made once."""
    if correlation <= 0.0:
        return torch.stack([draw_noise(shape, seed=slice_seed(seed, i)) for i in indices])
    count = max(1, math.ceil(math.log(0.01) / math.log(correlation)))
    weights = correlation ** torch.arange(count, dtype=torch.float64)
    weights = (weights / weights.norm()).tolist()
    draws: dict[int, torch.Tensor] = {}

    def draw(index: int) -> torch.Tensor:
        if index not in draws:
            draws[index] = draw_noise(shape, seed=slice_seed(seed, index))
        return draws[index]

    return torch.stack([sum(w * draw(i - k) for k, w in enumerate(weights)) for i in indices])


def context_branches(guidance) -> tuple[str, ...]:
    """The guidance branches a batch needs a context for: ``cond``, and ``no_text`` / ``no_image``
    when their scale is above 1."""
    return ("cond",) + (("no_text",) if guidance.text_scale > 1 else ()) \
        + (("no_image",) if guidance.image_scale > 1 else ())


def unit_slices(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output (n, C, S, S) nominally in [−1, 1] → slices (n, 1, S, S) in [0, 1] on the CPU."""
    if decoded.shape[1] != 1:
        decoded = decoded.mean(dim=1, keepdim=True)
    return ((decoded + 1.0) * 0.5).clamp_(0.0, 1.0).cpu()


@dataclass(frozen=True)
class Prompt:
    """What every batch of a SynerMedGen route needs: the instruction's token ids and the target's
    ``target_embedder`` row (``SynerMedGenConfig.target_index``; 0 for models without one)."""

    ids: tuple[int, ...]
    target: int = 0


@dataclass(frozen=True)
class SlicePlan:
    """How a volume is cut: ``axis`` of the (z, y, x) array, ``count`` slices of ``height`` × ``width``,
    the ones to synthesize (``active``, body visible) and the rest (``empty``); ``body`` is the
    source's body mask, slices first (count, height, width)."""

    axis: int
    count: int
    height: int
    width: int
    active: tuple[int, ...]
    empty: tuple[int, ...]
    placement: Placement
    body: np.ndarray = field(repr=False, compare=False)


PLANE_NORMAL_LETTERS = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}


def plane_axis(volume: Volume, plane: str = "auto") -> int:
    """The array axis (0 = z, 1 = y, 2 = x) whose slices lie in ``plane``. ``auto``: the
    acquisition plane (:func:`engine.inference.slices.slice_axis`: the axis of thick slices, else the
    order the slices are stored in). A named plane: the index axis that points (most nearly) along
    its normal."""
    if plane == "auto":
        return slice_axis(volume.spacing)
    letters = PLANE_NORMAL_LETTERS[plane]
    orientation = volume.orientation()
    along = [i for i, letter in enumerate(orientation) if letter in letters]
    if len(along) != 1:
        raise ValueError(f"the volume's axes point {orientation}: too oblique to cut {plane} slices; choose "
                         "another plane or auto")
    return 2 - along[0]


def sliced_plane(volume: Volume, plane: str = "auto") -> str:
    """The patient plane (axial, coronal or sagittal — the nearest, for an oblique volume) of the
    slices :func:`plane_axis` cuts ``volume`` into for ``plane``."""
    letter = volume.orientation()[2 - plane_axis(volume, plane)]
    return next(name for name, letters in PLANE_NORMAL_LETTERS.items() if letter in letters)


def _outside_fov_note(entry: Mapping[str, Any] | None) -> str:
    """What ``bench floor`` measured of the model's output outside a source's field of view (the
    card's ``source_floor`` ``entry``'s ``outside_fov``), to follow the note that the output is the
    model's there; "" when the card has no such measurement."""
    measured: Any = (entry or {}).get("outside_fov")
    try:
        mae, share, where = float(measured["mae_hu"]), float(measured["share"]), str(measured["set"])
    except (KeyError, TypeError, ValueError):
        return ""
    return (f", which does not restore anatomy the field of view cut off: where it cut {100 * share:.1f} % "
            f"of the head ({where}), bench floor measured the output {mae:.0f} HU off there")


class SliceSynthesizer:
    """The volume loop every slice-wise method shares: plan the slices, normalise the source,
    run batches (halving the batch on out-of-memory), re-stack onto the input grid in the
    target's units, and note what was done.

    A subclass sets ``card`` (routes, name, inference defaults) and ``image_size`` through
    ``__init__`` and implements :meth:`_prepare` (what every batch of a route needs, and the
    lines describing the method in the result's notes), :meth:`_run_batch` and
    :meth:`slice_memory_estimate`. :class:`Synthesizer` is the SynerMedGen model; the quality
    benchmark's baselines are others.
    """

    probe_measures_memory = True      # torch's CUDA allocator sees the network's memory (not so for ONNX Runtime)

    def __init__(self, card: ModelCard, image_size: int, device: torch.device, precision: str = "fp32") -> None:
        self.card = card
        self.image_size = int(image_size)
        self.pixel_mm = card.pixel_mm
        self.device = device
        self.precision = precision
        self._defaults, self._extras = settings_from_card(card.inference_defaults)
        self.last_batch_size: int | None = None        # what the last run settled on (after OOM halving)
        self.network_seconds = 0.0                     # the last run's context + ODE steps (see _network_time)
        self.memory_limit: int | None = None           # bytes the batch planner may count on at most (None: free memory)

    @property
    def execution_device(self) -> str:
        """Where the network runs ("cpu" or "cuda"): the torch device here; a backend with its own
        runtime says where that runs."""
        return self.device.type

    # -- the model card ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @property
    def routes(self) -> list[tuple[str, str]]:
        return list(self.card.routes or ())

    @property
    def modalities(self) -> list[str]:
        return list(self.card.modalities)

    def default_settings(self) -> SynthesisSettings:
        """:class:`SynthesisSettings` defaults with the model card's ``inference_defaults`` applied."""
        return self._defaults

    def output_normalisation(self, target: str) -> Normalisation:
        """How [0, 1] maps to the target's units (see the module docstring)."""
        mod = modalities.get(target)
        if mod.fixed_range is not None:
            return Normalisation(mod.name, *mod.fixed_range)
        lo, hi = (float(v) for v in self._extras.get("mr_output_range", MR_OUTPUT_RANGE))
        return Normalisation(mod.name, lo, hi)

    def background_value(self, target: str) -> float:
        mod = modalities.get(target)
        return BACKGROUND.get(mod.family, self.output_normalisation(target).lo)

    # -- what a method supplies ----------------------------------------------------------------
    def _check_route(self, source: str, target: str) -> tuple[str, str]:
        """The canonical route, or ValueError when the method cannot do it."""
        return self.card.check_route(source, target)

    def _prepare(self, source: str, target: str, settings: SynthesisSettings) -> tuple[Any, list[str]]:
        """(what every batch of this route needs, lines describing the method for the notes)."""
        raise NotImplementedError

    def _run_batch(self, images: torch.Tensor, indices: Sequence[int], prepared: Any, settings: SynthesisSettings,
                   cancel: CancelToken | None, on_step: ProgressFn = noop) -> torch.Tensor:
        """Model slices (n, 1, S, S) in [0, 1] → synthetic slices (n, 1, S, S) in [0, 1] on the CPU."""
        raise NotImplementedError

    def slice_memory_estimate(self, prepared: Any) -> int:
        """Bytes one slice needs while it is synthesized (sizes CPU batches)."""
        raise NotImplementedError

    # -- planning --------------------------------------------------------------------------------
    def plan(self, volume: Volume, source: str, slices: Sequence[int] | None = None, plane: str = "auto") -> SlicePlan:
        """The slice axis (of ``plane``: :func:`plane_axis`), which slices hold body (≥ 1 % of the
        slice inside the source's body mask) and the model placement. ``slices`` restricts synthesis
        to those indices along the axis (others count as empty)."""
        axis = plane_axis(volume, plane)
        mask = slices_first(modalities.body_mask(np.nan_to_num(volume.array.astype(np.float32)), source), axis)
        count, height, width = mask.shape
        has_body = mask.reshape(count, -1).mean(axis=1) >= MIN_BODY_FRACTION
        wanted = set(range(count)) if slices is None else {int(i) for i in slices}
        bad = sorted(i for i in wanted if not 0 <= i < count)
        if bad:
            raise ValueError(f"slices {bad[:5]} are outside 0…{count - 1}")
        active = tuple(i for i in range(count) if has_body[i] and i in wanted)
        empty = tuple(i for i in range(count) if i not in active)
        placement = Placement.for_shape(height, width, self.image_size, in_plane_spacing(volume.spacing, axis),
                                        self.pixel_mm)
        return SlicePlan(axis, count, height, width, active, empty, placement, mask)

    # -- synthesis -------------------------------------------------------------------------------
    def synthesize_volume(self, volume: Volume, source: str | None, target: str,
                          settings: SynthesisSettings | None = None, progress: ProgressFn = noop,
                          cancel: CancelToken | None = None, preview: PreviewFn | None = None,
                          slices: Sequence[int] | None = None) -> Volume:
        """The synthetic ``target`` volume of ``volume`` (modality ``source``, or the volume's own).

        Returns a Volume on the input's grid (shape, spacing, origin, direction) with modality and
        unit of the target and the source's DICOM identity (a DICOM export stays in its study), marked
        ``synthetic`` and ``derived_from`` the source (every writer records both in the file).
        ``progress`` gets slice counts (fractions while a batch samples); ``cancel`` is checked at
        every ODE step and raises :class:`engine.jobs.Cancelled`. ``preview(i, slice)`` receives each
        finished slice ``i`` along the plan's axis, in target units, shaped like
        ``slices_first(volume.array, axis)[i]``. ``slices`` limits the work to some slice indices
        (the others are set to the background), e.g. for quick evaluations.
        """
        started = time.perf_counter()
        self.network_seconds = 0.0
        source = source or volume.modality
        if not source:
            raise ValueError("the input's modality is unknown: name it (e.g. source='T1') or identify it first")
        source, target = self._check_route(source, target)
        settings = settings or self.default_settings()
        check_cancel(cancel)
        prepared, method_notes = self._prepare(source, target, settings)
        plan = self.plan(volume, source, slices, settings.plane)
        if slices is None and not plan.active:
            raise ValueError(f"{volume.name or 'the input'}: no slice shows a body to synthesize from (at least "
                             f"{MIN_BODY_FRACTION:.0%} of a slice above the background): an empty or constant image?")

        array = np.nan_to_num(np.asarray(volume.array, dtype=np.float32))
        shift, calibration_note = 0.0, ""
        if settings.hu_calibration and modalities.get(source).family == "CT":
            shift, calibration_note = calibration_shift(array, slices_back(plan.body, plan.axis),
                                                        self.card.calibration)
            array += shift
            np.maximum(array, modalities.scale_bottom(source) or -np.inf, out=array)   # shifted air: not below it
        norm_in = modalities.normalisation_for(array, source)
        stack = slices_first(modalities.normalise(array, norm_in), plan.axis)
        norm_out = self.output_normalisation(target)
        out = np.full((plan.count, plan.height, plan.width), self.background_value(target), np.float32)
        radius = native_radius(settings.guided_filter, plan.placement) \
            if settings.guided_filter else 0
        spacing = in_plane_spacing(volume.spacing, plan.axis)
        depth = native_depth(settings.guided_filter_depth, plan.placement, spacing,
                             float(volume.spacing[2 - plan.axis])) if radius else 0
        same_scale = fits_at_model_resolution(source, target)
        floor, strength, floor_note, entry = self._source_floor(source, target, settings, same_scale)
        # outside the source's field of view it holds no data: there the model's output is kept
        missing = slices_first(padding_mask(volume), plan.axis) if floor is not None else None
        floored = None
        if missing is not None:                 # the calibrated source, its noise filtered as the card says
            active = list(plan.active)
            floored = slices_first(array, plan.axis).copy()
            floored[active] = filter_slices(floored[active], strength, missing[active])
            if missing[active].any():
                floor_note += (f"; outside the source's field of view ({missing[active].mean():.1%} of the synthesized "
                               f"slices' voxels) the output is the model's{_outside_fov_note(entry)}")

        def place(i: int, synthetic: np.ndarray) -> None:
            """Slice ``i`` of the output from the model's normalised slice on the input grid."""
            physical = modalities.denormalise(synthetic, norm_out)
            if floor is None:
                out[i] = physical
            else:
                assert missing is not None and floored is not None, "made with the floor"
                out[i] = np.where(missing[i], physical, floored[i] + floor * (physical - floored[i]))

        # missing and floored exist exactly when floor does
        queue = [i for i in plan.active if missing is None or floor != 0.0 or missing[i].any()]
        drawn = np.zeros(stack.shape, np.float32) if radius and queue else None   # the model's slices, normalised
        total = plan.count
        # progress in slices drawn, then the filter's share (FILTER_PIXELS_PER_SLICE)
        filtering = len(queue) * plan.height * plan.width / FILTER_PIXELS_PER_SLICE if drawn is not None else 0.0
        done = len(plan.empty)
        shown = [float(done)]                     # never report less than already reported

        def report(value: float, message: str) -> None:
            shown[0] = max(shown[0], value)
            progress(Progress(shown[0], total + filtering, message))

        report(done, f"{done} of {total} slices empty (background)")
        if preview is not None:
            for i in plan.empty:
                preview(i, out[i])

        # the source as the model saw it, where the filter fits its lines from it
        seen = np.zeros(stack.shape, np.float32) if drawn is not None and same_scale else None
        for i in sorted(set(plan.active) - set(queue)):
            assert floored is not None, "only a source floor of 0 skips the model"
            out[i] = floored[i]
            done += 1
            report(done, f"slice {i + 1} of {total}: the calibrated{', noise-filtered' if strength else ''} source "
                         "(source floor 0)")
            if preview is not None:
                preview(i, out[i])
        auto = settings.batch_size == "auto"
        # "auto" where torch's CUDA allocator sees the network's memory: a one-slice probe measures
        # it; elsewhere the size follows from the shapes (slice_memory_estimate) before the first batch
        probe = auto and self.device.type == "cuda" and self.probe_measures_memory
        if not auto:
            size = int(settings.batch_size)     # validated: a positive int unless "auto"
        elif probe:
            size = 1
        else:
            size = self._auto_batch_size(len(queue), prepared, plan.placement.tiles)
        position = 0
        while position < len(queue):
            check_cancel(cancel)
            chunk = queue[position:position + size]
            images, _ = to_model_slice(stack[chunk], self.image_size, pixel_mm=self.pixel_mm,
                                       spacing=spacing)
            tiled = [i for i in chunk for _ in range(plan.placement.tiles)]      # a slice's tiles share its noise

            def on_step(p: Progress, base=done, n=len(chunk), first=chunk[0], last=chunk[-1]) -> None:  # noqa: B008 - binds this batch's values
                # a batch's slices advance together step by step and are counted done at its end
                report(base + n * p.fraction * 0.999,
                       f"slices {first + 1}–{last + 1} of {total}: step {int(p.done)}/{int(p.total)}")

            probing = probe and position == 0
            if probing:
                self._reset_peak_memory()
            try:
                result = self._run_batch(images, tiled, prepared, settings, cancel, on_step)
            except Exception as exc:            # noqa: BLE001 — only out-of-memory is handled here
                if not is_out_of_memory(exc):
                    raise
                if len(chunk) == 1:
                    raise RuntimeError(f"out of memory on {self.device.type} even for one slice "
                                       f"({self.image_size}² px, {self.precision}); free memory, use a "
                                       "lower precision on a GPU, or run on another device") from exc
                result = None                   # leave the except block: its traceback holds the batch
            if result is None:
                self._release_memory()
                size = max(1, len(chunk) // 2)
                report(done, f"out of memory with {len(chunk)} slices a batch: retrying with {size}")
                continue
            if probing:
                size = self._auto_batch_size(len(queue), prepared, plan.placement.tiles)
            synthetic = from_model_slice(result, plan.placement)
            if drawn is not None:               # re-drawn from the source once all slices are drawn
                drawn[chunk] = synthetic
            if seen is not None:
                seen[chunk] = from_model_slice(images, plan.placement)
            for k, i in enumerate(chunk):
                place(i, synthetic[k])
                done += 1
                report(done, f"slice {i + 1} of {total} done")
                if preview is not None:
                    preview(i, out[i])
            position += len(chunk)
        self.last_batch_size = size
        if drawn is not None:
            def next_slab(first: int, last: int) -> None:
                check_cancel(cancel)
                before = bisect.bisect_left(queue, first)           # the slices filtered by the slabs before
                report(done + filtering * before / len(queue),
                       f"source-guided filter: slices {first + 1}–{last + 1} of {total}")

            on_model = np.zeros(plan.count, bool)
            on_model[queue] = True
            filtered = guided_stack(stack, drawn, radius, depth, plan.body & on_model[:, None, None], queue,
                                    seen=seen, before_slab=next_slab)
            for k, i in enumerate(queue):
                place(i, filtered[k])
            report(done + filtering, f"source-guided filter: {len(queue)} slices done")

        if missing is not None and modalities.get(target).family == "CT":
            islands = islands_outside(out > modalities.BODY_HU, missing)
            if islands.any():
                out[islands] = self.background_value(target)
                floor_note += (f"; {int(islands.sum())} voxels of tissue the model drew there, not joined to the body "
                               "inside the field of view, were set to air")
        bottom = modalities.scale_bottom(target)
        if bottom is not None:
            # nothing below the scale's bottom (air −1024 HU, SUV 0): the HU calibration's shift of the
            # source's air and the guided filter's overshoot would put it there
            np.maximum(out, bottom, out=out)
        elapsed = time.perf_counter() - started
        notes = (
            RESEARCH_NOTE,
            f"model: {self.name}",
            f"route: {route_name(source, target)}",
            *method_notes,
            *([calibration_note] if calibration_note else []),
            *([floor_note] if floor_note else []),
            *([f"source-guided filter: windows of {2 * radius + 1}×{2 * radius + 1} input pixels (radius "
               f"{settings.guided_filter:g} in model pixels)"
               + (f" across {2 * depth + 1} slices (depth {settings.guided_filter_depth:g} in model pixels)" if depth
                  else "")
               + f", inside the source's body mask, lines fitted at the {'model' if same_scale else 'input'}'s "
                 "resolution"] if radius else []),
            f"{len(plan.active)} {sliced_plane(volume, settings.plane)} slices synthesized along array axis "
            f"{plan.axis} (plane {settings.plane}), "
            f"{len(plan.empty)} set to "
            f"background; {elapsed:.1f} s on {self.execution_device} ({self.precision})",
            *self.card.benchmark_warnings(source, target),
        )
        return volume.with_array(
            np.ascontiguousarray(slices_back(out, plan.axis)),
            modality=target, unit=modalities.get(target).unit,
            name=f"synthetic {target} from {source}", source="", notes=notes, dicom=derived_identity(volume),
            synthetic=True, derived_from=source, not_anatomy="")

    def _source_floor(self, source: str, target: str, settings: SynthesisSettings, same_scale: bool
                      ) -> tuple[float | None, float, str, Mapping[str, Any] | None]:
        """(weight, noise-filter strength, note, the card's entry) of the source floor on a same-scale
        route: the settings' weight, else the card's, and the settings' filter strength, else the
        card's (0 without a card entry). No floor (the model's output as is): weight None, and a note
        only where the settings asked for a floor or its filter and so learn why they were ignored."""
        entry = self.card.source_floor(source, target) if same_scale else None
        if not same_scale or (settings.source_floor is None and entry is None):
            asked = [what for what, value in (("weight", settings.source_floor), ("noise-filter strength",
                                                                                  settings.floor_denoise))
                     if value is not None]
            why = ("its source and target do not share one physical scale" if not same_scale else
                   "the model card gives it no floor weight and none was asked for")
            return None, 0.0, (f"no source floor on {route_name(source, target)} ({why}): the floor's "
                               f"{' and '.join(asked)} asked for were ignored" if asked else ""), None
        strength = settings.floor_denoise if settings.floor_denoise is not None else \
            entry["denoise"] if entry is not None else 0.0
        whose = "as asked" if settings.floor_denoise is not None else "the model card's"
        if settings.source_floor is not None:
            weight, why = settings.source_floor, "as asked"
        else:
            assert entry is not None
            weight, why = entry["weight"], f"the model card's, {entry.get('chosen_on') or 'chosen by bench floor'}"
        floored = "the source (after the HU calibration)" if not strength else \
            f"the source after the HU calibration and its noise filter (strength {strength:g}, {whose})"
        if weight == 0.0:
            return weight, strength, (f"{SOURCE_FLOOR_PREFIX}0 ({why}): the output is {floored} "
                                      "— on this route the model did not beat it"), entry
        return weight, strength, (f"{SOURCE_FLOOR_PREFIX}{weight:.2f} ({why}): the output is {floored} "
                                  f"plus {weight:.2f} × the model's change to it"), entry

    def describe(self, source: str, target: str, settings: SynthesisSettings | None = None) -> str:
        """The result's description: route, method, "synthetic" (each writer fits it to its field: a
        DICOM SeriesDescription's 64 characters, a NIfTI header's 80 bytes; DerivationDescription and
        ImageComments hold it whole)."""
        return f"synthetic {target} from {source} ({self.name})"

    def input_warnings(self, volume: Volume, source: str, settings: SynthesisSettings | None = None) -> list[str]:
        """The out-of-distribution guard's warnings (:mod:`engine.inference.ood`) for ``volume`` as the
        model will see it: after the HU calibration ``settings`` ask for, cut into the plane they name."""
        from engine.inference.ood import check_input

        settings = settings or self.default_settings()
        return check_input(volume, source, self.card.input_profile, self.pixel_mm,
                           self.card.calibration if settings.hu_calibration else None,
                           axis=plane_axis(volume, settings.plane))

    @contextlib.contextmanager
    def _network_time(self):
        """Add the block's wall time to ``network_seconds``: a batch's context encoding and ODE steps,
        without the autoencoder and the per-volume work (what the context cache changes); on a GPU
        between synchronisations, so queued kernels count where they run."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.network_seconds += time.perf_counter() - start

    # -- batch sizing --------------------------------------------------------------------------
    def _reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._probe_base = torch.cuda.memory_allocated(self.device)

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _auto_batch_size(self, slices: int, prepared: Any, tiles: int = 1) -> int:
        """Batch size (in slices of ``tiles`` model images each) from free memory and what a slice
        needs: measured by the one-slice probe just run on a GPU, estimated from the shapes elsewhere."""
        kind = self.device.type if self.device.type in MAX_AUTO_BATCH else "cpu"
        if kind == "cuda":
            torch.cuda.synchronize(self.device)
            need = max(1, torch.cuda.max_memory_allocated(self.device) - getattr(self, "_probe_base", 0))
        else:
            need = self.slice_memory_estimate(prepared) * tiles
        free = available_memory(self.device)
        budget = MEMORY_SHARE[kind] * (free if self.memory_limit is None else min(free, self.memory_limit))
        return int(max(1, min(MAX_AUTO_BATCH[kind] // tiles, slices, budget // need)))


class Synthesizer(SliceSynthesizer):
    """One loaded SynerMedGen model, ready to synthesize volumes and identify modalities.

    ``Synthesizer(model_dir, device="auto", precision="fp32")``; ``context_cache=False`` recomputes
    the context at every step (the reference the cache is tested and benchmarked against).
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device = "auto", precision: str = "fp32", *,
                 context_cache: bool = True, loaded=None) -> None:
        from engine.model import load_model_dir

        self.model_dir = Path(model_dir)
        device = resolve_device(device)
        precision = str(precision).strip().lower()
        self.compute_dtype = resolve_precision(precision, device)
        self.context_cache = bool(context_cache)
        if loaded is None:
            if not self.model_dir.is_dir():
                raise FileNotFoundError(f"no model at {self.model_dir}")
            loaded = load_model_dir(self.model_dir, device=device, dtype=torch.float32,
                                    memory_budget=available_memory(device))
        else:
            loaded.model.to(device)
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        card = ModelCard.from_metadata(loaded.metadata, self.model_dir.name)
        super().__init__(card, card.slice_size(self.config), device, precision)

    def _prepare(self, source: str, target: str, settings: SynthesisSettings) -> tuple[Prompt, list[str]]:
        """The instruction's token ids and target row, and the instruction and sampling settings as notes."""
        if self.tokenizer is None:
            raise ValueError(f"{self.model_dir}: the model folder has no tokenizer")
        anatomy = settings.anatomy if settings.anatomy is not None else self.card.anatomy_for(source, target)
        instruction = default_instruction(source, target, anatomy)
        g = settings.guidance
        notes = [
            f"instruction: {instruction}",
            f"sampling: {settings.steps} {settings.solver} steps, shift {settings.shift:g}, guidance text "
            f"{g.text_scale:g} / image {g.image_scale:g} in t∈({g.interval[0]:g}, {g.interval[1]:g}], "
            f"seed {settings.seed}" + (f", start from source at t={settings.t_start:g}"
                                       if settings.start_from_source else "")
            + (f", noise correlated across slices (ρ {settings.noise_correlation:g})"
               if settings.noise_correlation else ""),
        ]
        prompt = Prompt(tuple(self.tokenizer.encode(instruction)), self.config.target_index(target))
        if self.config.target_modalities and not prompt.target:
            notes.append(f"note: the model has no target embedding for {target}: the instruction alone names it")
        return prompt, notes

    def describe(self, source: str, target: str, settings: SynthesisSettings | None = None) -> str:
        """The result's description: route, model, steps, "synthetic" (each writer fits it to its field:
        see :meth:`SliceSynthesizer.describe`)."""
        settings = settings or self.default_settings()
        return f"synthetic {target} from {source} ({self.name}, {settings.steps} steps)"

    # -- one batch of slices -------------------------------------------------------------------
    @torch.no_grad()
    def _run_batch(self, images: torch.Tensor, indices: Sequence[int], prompt: Prompt,
                   settings: SynthesisSettings, cancel: CancelToken | None,
                   on_step: ProgressFn = noop) -> torch.Tensor:
        """Model slices (n, 1, S, S) in [0, 1] → synthetic slices (n, 1, S, S) in [0, 1]."""
        model, device = self.model, self.device
        n = images.shape[0]
        pixels = (images.to(device, torch.float32) * 2.0 - 1.0)
        ids, targets = [list(prompt.ids)] * n, [prompt.target] * n
        with autocast(device, self.compute_dtype):
            latent = model.vae.encode(pixels).float()
            seen = vit_view(pixels, self.config)
            with self._network_time():
                if self.context_cache:
                    context = model.encode_context(latent, seen, ids, branches=context_branches(settings.guidance),
                                                   targets=targets)

                    def velocity(x, t, wanted):
                        return model.velocity(x, t, context, wanted)
                else:
                    def velocity(x, t, wanted):
                        return model.velocity_uncached(x, t, latent, seen, ids, branches=wanted, targets=targets)

                x0 = self._sample(velocity, latent, indices, settings, cancel, on_step)
            decoded = model.vae.decode(x0).float()
        return unit_slices(decoded)

    def _sample(self, velocity: Callable, latent: torch.Tensor, indices: Sequence[int], settings: SynthesisSettings,
                cancel: CancelToken | None, on_step: ProgressFn = noop) -> torch.Tensor:
        """The flow ODE's end point x0 from each slice's seeded noise (or the noised source latent),
        over ``velocity(x, t, branches) -> {branch: v}`` with the settings' guidance and solver."""
        noise = slice_noise(tuple(latent.shape[1:]), settings.seed, indices, settings.noise_correlation)
        x0 = sample(velocity, tuple(latent.shape), steps=settings.steps, shift=settings.shift, solver=settings.solver,
                    guidance=settings.guidance, init=None if settings.start_from_source is None else latent,
                    t_start=settings.t_start, noise=noise, progress=on_step, cancel=cancel, device=latent.device,
                    channel_dim=1, token_patch=self.config.latent_patch_size)
        check_cancel(cancel)
        return x0

    # -- batch sizing --------------------------------------------------------------------------
    def slice_memory_estimate(self, prepared: Prompt) -> int:
        """Bytes one slice needs while it is sampled (all guidance branches), from the shapes: the
        cached K/V of its context, the attention and MLP activations of a denoising pass and of the
        context pass, and the VAE decoder's full-resolution activations; ×2 for allocator slack."""
        cfg, s = self.config, self.image_size
        text_tokens = len(prepared.ids)
        llm, vae = cfg.llm, cfg.vae
        branches = 3
        latent_tokens = (s // cfg.latent_downsample) ** 2 + 2
        vit_tokens = (s // cfg.vit.patch_size) ** 2 + 2
        context = latent_tokens + vit_tokens + text_tokens + 2
        f = 4  # bytes of fp32
        kv = llm.num_hidden_layers * 2 * context * llm.num_key_value_heads * llm.head_dim * f * branches
        step = branches * (latent_tokens * (context + latent_tokens) * (llm.num_attention_heads * f + 1)
                           + latent_tokens * llm.intermediate_size * f * 3 + latent_tokens * llm.hidden_size * f * 8)
        encode = branches * (context * context * (llm.num_attention_heads * f + 1)
                             + context * llm.intermediate_size * f * 3 + context * llm.hidden_size * f * 8)
        decoder = vae.ch * vae.ch_mult[0] * s * s * f * 6 + (s // vae.downsample) ** 4 * f
        return int(2 * (kv + max(step, encode, decoder)))

    # -- understanding ---------------------------------------------------------------------------
    def identify(self, volume: Volume, **kwargs):
        """The volume's modality by the model's understanding branch (see :func:`identify_modality`)."""
        from engine.inference.identify import identify_modality  # the module imports this one's types only

        return identify_modality(volume, self, **kwargs)
