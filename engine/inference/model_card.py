"""What inference reads from a model folder's ``metadata.json`` (the model card): routes and
modalities, the slice size the model was trained at, anatomy, whether Stage I (understanding)
was trained, and the model's own inference defaults. Reading it never loads any weights.

Keys read (all optional; a missing key has the documented fallback)::

    name                 str     shown in notes and descriptions (default: the folder name)
    routes               [["T1", "FLAIR"], …] or ["T1->FLAIR", …]   (default: every ordered pair
                                 of ``modalities``; neither given → any route is attempted)
    modalities           ["T1", "T2", …]         (default: those named by ``routes``)
    image_size           int     the square slice size of training (default: the largest the
                                 model's position tables allow, at most 256)
    anatomy              str, or {"T1->FLAIR": "brain", "CT": "head", "*": "brain"}; else the single
                                 entry of ``data.anatomies`` (the trainer's card); else a heuristic
    metrics.understanding.accuracy.MI   float   Stage I's measured MI accuracy (the trainer's card);
                                 below 0.5, identification is reported as unreliable
    recipe.stages        [{"stage": "understanding", "steps_done": 4000, …}, …] (the trainer's card),
                                 or ``stages``: ["vae", "understanding", "generation"] — an
                                 "understanding" or "joint" stage with steps done (or a truthy
                                 ``understanding`` key) means Stage I was trained, so ``identify``
                                 can be trusted
    inference_defaults   {"steps", "solver", "shift", "guidance": {GuidanceConfig fields}, "seed",
                          "batch_size", "start_from_source", "noise_correlation", "guided_filter",
                          "guided_filter_depth", "mr_output_range": [lo, hi]}
    input_profile        {…}     the training data's statistics the out-of-distribution guard compares
                                 an input with (engine.inference.ood.training_profile; default: none,
                                 the guard only notes that it cannot check)
    limitations          ["…", …]  what the model is known not to do, shown to the user
    benchmark_warnings   [{"routes": [[source, target], …], "warning": "…"}]  routes on which the card's
                                 `bench quality` run scored this model worse than the histogram-matched
                                 source ("do nothing"): every synthesis of such a route carries the
                                 warning in its notes (default: none; a model trained further drops it)
    pixel_mm             float   the model's pixel size: slices are resampled to it (default: none,
                                 each slice fitted to image_size)
    source_floor         [{"route": ["CBCT", "CT"], "weight": w, …}]  per route whose source and target
                                 share a physical scale, the weight of the model's change to the
                                 calibrated (noise-filtered) source (0 = that source), chosen on validation
                                 subjects by ``bench floor`` (default: none, the model's output as is);
                                 its ``denoise``: the strength of the noise filter the calibrated source
                                 gets first (engine.inference.denoise; 0 or absent = none), chosen with it;
                                 its ``outside_fov`` ({"mae_hu", "share", "subjects", "set"}): the output's
                                 error where a measured set's field of view cut the head off, which a
                                 synthesis of a source with such a region quotes in its notes
    calibration          {"soft_tissue_hu": …}  where the training CTs' soft-tissue peak sits: CT-family
                                 sources are shifted onto it (engine.inference.calibration; default: none)
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import modalities
from engine.files import read_json
from engine.inference import denoise

METADATA_FILE = "metadata.json"
BENCHMARK_PREFIX = "benchmark: "        # the notes a card's benchmark_warnings add to a synthetic volume
SOURCE_FLOOR_PREFIX = "source floor "   # the note saying how much of the model's change to the source was kept
MAX_DEFAULT_IMAGE_SIZE = 256


def parse_route(value: Any) -> tuple[str, str]:
    """("T1", "FLAIR") from ["t1", "flair"], "T1->FLAIR", "T1→FLAIR" or {"source": …, "target": …}."""
    pair: tuple[Any, ...]
    if isinstance(value, Mapping):
        pair = (value.get("source"), value.get("target"))
    elif isinstance(value, str):
        pair = tuple(p for p in re.split(r"\s*(?:->|→|>|:)\s*", value.strip()) if p)
    else:
        pair = tuple(value)
    if len(pair) != 2 or not all(pair):
        raise ValueError(f"model card: cannot read the route {value!r} (write it as [\"T1\", \"FLAIR\"])")
    return modalities.canonical(pair[0]), modalities.canonical(pair[1])


UNDERSTANDING_STAGES = ("understanding", "joint")


def _trained_understanding(meta: Mapping[str, Any]) -> bool:
    """Whether the card records a Stage I (or joint) run that did at least one step."""
    recipe = meta.get("recipe")
    if not isinstance(recipe, Mapping):
        recipe = {}
    for record in recipe.get("stages") or []:
        if isinstance(record, Mapping) and str(record.get("stage", "")).lower() in UNDERSTANDING_STAGES \
                and (record.get("steps_done") is None or int(record.get("steps_done") or 0) > 0):
            return True
    stages = meta.get("stages") or []
    return any(str(s).lower() in UNDERSTANDING_STAGES for s in stages if isinstance(s, str))


def _mi_accuracy(meta: Mapping[str, Any]) -> float | None:
    """The MI accuracy of the trainer's last understanding evaluation (``metrics.understanding``)."""
    metrics = meta.get("metrics")
    if not isinstance(metrics, Mapping):
        metrics = {}
    accuracy = (metrics.get("understanding") or {}).get("accuracy") if isinstance(metrics.get("understanding"),
                                                                                  Mapping) else None
    value = accuracy.get("MI") if isinstance(accuracy, Mapping) else None
    return float(value) if isinstance(value, (int, float)) else None


def route_name(source: str, target: str) -> str:
    return f"{source}→{target}"


def _pixel_mm(value: Any) -> float | None:
    if value in (None, 0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= float(value) <= 50.0:
        raise ValueError(f"model card: pixel_mm must be a pixel size in mm (0.05…50), got {value!r}")
    return float(value)


def _strength(value: Any) -> float:
    """A source-floor noise-filter strength from a card: a number ≥ 0, else 0 (no filter)."""
    try:
        return denoise.strength(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


@dataclass(frozen=True)
class ModelCard:
    """The inference-relevant part of a model folder's ``metadata.json``."""

    name: str
    routes: tuple[tuple[str, str], ...] | None      # None: the card names none; any route is tried
    modalities: tuple[str, ...]
    image_size: int | None                          # None: derive from the config
    pixel_mm: float | None = None                   # physical-scale slicing at this pixel size (None: fit the slice)
    anatomy: str | dict[str, str] = ""
    understanding_trained: bool = False
    mi_accuracy: float | None = None                # Stage I's measured MI accuracy, when the card records it
    inference_defaults: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], folder_name: str = "model") -> ModelCard:
        meta = dict(metadata or {})
        routes = None
        if meta.get("routes"):
            routes = tuple(dict.fromkeys(parse_route(r) for r in meta["routes"]))
        listed = [modalities.canonical(m) for m in meta.get("modalities") or []]
        if routes is not None:
            listed += [m for r in routes for m in r]
        order = list(modalities.MODALITIES)
        names = tuple(sorted(set(listed), key=order.index))        # registry order, as the MI question lists them
        if routes is None and len(names) >= 2:
            routes = tuple((a, b) for a in names for b in names if a != b)
        understanding = bool(meta.get("understanding")) or _trained_understanding(meta)
        size = meta.get("image_size")
        defaults = meta.get("inference_defaults") or {}
        if not isinstance(defaults, Mapping):
            raise ValueError("model card: inference_defaults must be an object")
        anatomy = meta.get("anatomy") or ""
        anatomies = (meta.get("data") or {}).get("anatomies") if isinstance(meta.get("data"), Mapping) else None
        if not anatomy and isinstance(anatomies, list) and len(anatomies) == 1:
            anatomy = str(anatomies[0])
        if not isinstance(anatomy, (str, Mapping)):
            raise ValueError("model card: anatomy must be a string or an object")
        return cls(name=str(meta.get("name") or folder_name), routes=routes, modalities=names,
                   image_size=int(size) if size else None, pixel_mm=_pixel_mm(meta.get("pixel_mm")),
                   anatomy=anatomy if isinstance(anatomy, str) else {str(k): str(v) for k, v in anatomy.items()},
                   understanding_trained=understanding, mi_accuracy=_mi_accuracy(meta),
                   inference_defaults=dict(defaults), raw=meta)

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelCard:
        """The card of a model folder (an empty card when it has no ``metadata.json``)."""
        path = Path(model_dir)
        file = path / METADATA_FILE
        if not file.exists():
            return cls.from_metadata({}, path.name)
        data = read_json(file, "model card")
        if not isinstance(data, dict):
            raise ValueError(f"{file}: not a readable model card (not a JSON object)")
        return cls.from_metadata(data, path.name)

    @property
    def input_profile(self) -> dict[str, Any] | None:
        """The training profile of the out-of-distribution guard, or None when the card has none."""
        profile = self.raw.get("input_profile")
        return dict(profile) if isinstance(profile, Mapping) and profile.get("modalities") else None

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The HU calibration of CT-family sources (engine.inference.calibration), or None."""
        value = self.raw.get("calibration")
        return dict(value) if isinstance(value, Mapping) and value.get("soft_tissue_hu") is not None else None

    @property
    def limitations(self) -> list[str]:
        value = self.raw.get("limitations") or []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    def source_floor(self, source: str, target: str) -> dict[str, Any] | None:
        """The card's ``source_floor`` entry for the route (its ``weight`` a number in [0, 1], its
        ``denoise`` a strength ≥ 0: 0 when absent or not a valid strength, the floor kept), or None."""
        route = (modalities.canonical(source), modalities.canonical(target))
        for item in self.raw.get("source_floor") or ():
            try:
                if parse_route(item.get("route")) == route and 0.0 <= float(item.get("weight")) <= 1.0:
                    return dict(item, weight=float(item["weight"]), denoise=_strength(item.get("denoise")))
            except (AttributeError, TypeError, ValueError):
                continue
        return None

    def benchmark_warnings(self, source: str, target: str) -> list[str]:
        """The card's ``benchmark_warnings`` for the route ``source`` → ``target``, each led by
        :data:`BENCHMARK_PREFIX`."""
        route = (modalities.canonical(source), modalities.canonical(target))
        found = []
        for item in self.raw.get("benchmark_warnings") or ():
            try:
                routes = {parse_route(r) for r in item.get("routes") or ()}
            except (AttributeError, TypeError, ValueError):
                continue
            if route in routes and item.get("warning"):
                found.append(BENCHMARK_PREFIX + str(item["warning"]))
        return found

    # -- routes ------------------------------------------------------------------------------
    def route_names(self) -> list[str]:
        return [route_name(*r) for r in self.routes or ()]

    def check_route(self, source: str, target: str) -> tuple[str, str]:
        """The canonical route; ValueError listing the supported ones when the model lacks it."""
        route = modalities.canonical(source), modalities.canonical(target)
        if route[0] == route[1]:
            raise ValueError(f"source and target are both {route[0]}: nothing to synthesize")
        if self.routes is not None and route not in self.routes:
            listed = ", ".join(self.route_names()) or "none"
            raise ValueError(f"model {self.name!r} does not support {route_name(*route)}; "
                             f"its routes: {listed}")
        return route

    def anatomy_for(self, source: str, target: str) -> str:
        """Anatomy phrase for the instruction: the card's (per route, per modality or ``*``),
        else "head" when either side is CT/CBCT/PET and "brain" for MR → MR."""
        a = self.anatomy
        if isinstance(a, str) and a:
            return a
        if isinstance(a, dict):
            for key in (f"{source}->{target}", route_name(source, target), target, source, "*"):
                if key in a:
                    return a[key]
        families = {modalities.get(source).family, modalities.get(target).family}
        return "brain" if families == {"MR"} else "head"

    # -- sizes ---------------------------------------------------------------------------------
    def slice_size(self, config) -> int:
        """The square slice size fed to the autoencoder (the ViT gets its own view of it, see
        :func:`engine.model.vit.vit_view`), checked against the latent token grid."""
        step = config.latent_downsample
        largest = config.max_latent_size * step
        default = min(largest, MAX_DEFAULT_IMAGE_SIZE, config.vit_max_num_patch_per_side * config.vit.patch_size)
        size = self.image_size or max(step, default // step * step)
        if size % step or size > largest:
            raise ValueError(f"model card: image_size {size} does not fit the model (a multiple of {step}, "
                             f"at most {largest})")
        return int(size)
