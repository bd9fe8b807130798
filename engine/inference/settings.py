"""The knobs of one synthesis run (:class:`SynthesisSettings`), the model's own defaults for them,
and where the computation runs: device and precision choice, free memory, out-of-memory errors.

Default sampling (for the small models this engine trains; a model card's ``inference_defaults``
override any of them):

- ``steps=24`` Euler steps (network calls) with BAGEL's timestep shift 3.0. BAGEL uses 49; our
  tiny/small latent models change < 1 SSIM point beyond ~20 steps and CPU time is linear in steps.
- guidance: text 2.0, image 1.0 (off), applied only for t in (0.4, 1]. A route is named by the
  instruction, so mild text guidance sharpens the route; image guidance costs a third branch and
  tends to exaggerate contrast, which costs SSIM in paired synthesis. BAGEL's 4.0 / 1.5 is for
  open-ended editing.
- ``batch_size="auto"``: from free memory (CUDA: ``torch.cuda.mem_get_info``; CPU: available
  RAM) divided by the per-slice need measured (CUDA) or estimated (CPU) on the first slice.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.inference import DEVICES, PRECISION_NAMES, SLICING_PLANES, denoise
from engine.sampling import GuidanceConfig
from engine.sampling.solvers import SOLVERS

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16)))


def default_guidance() -> GuidanceConfig:
    return GuidanceConfig(text_scale=2.0, image_scale=1.0, interval=(0.4, 1.0), renorm="global", renorm_min=0.0)


@dataclass(frozen=True)
class SynthesisSettings:
    """How to sample one volume. ``start_from_source`` = t in (0, 1): start the flow from the source
    latent noised to t instead of pure noise (only for models trained or tuned for it).
    ``noise_correlation`` = ρ in [0, 1): neighbouring slices start from correlated noise (ρ between
    adjacent slices, see :func:`engine.inference.pipeline.slice_noise`), so slices sampled one by
    one agree with their neighbours instead of showing stripes across them; 0 = independent.
    ``guided_filter`` = a window radius in model pixels: each synthetic slice is re-drawn on the
    input grid from the source slice through window-wise lines (:mod:`engine.inference.guided`);
    0 = off. ``guided_filter_depth`` = how far, in model pixels, its windows also reach across
    slices (converted to slices through the slice spacing; with the radius, windows of one physical
    extent in all three directions): the slices' lines agree with their neighbours', no stripes
    across slices; 0 = each slice alone. ``hu_calibration``: a CT-family source is first shifted onto the training CTs'
    soft-tissue peak when the model card records it (:mod:`engine.inference.calibration`).
    ``source_floor`` = w in [0, 1], on a route whose source and target share a physical scale (CBCT →
    CT): the output is the calibrated (and noise-filtered, ``floor_denoise``) source plus w times the
    model's change to it, so w = 0 is that source and 1 the model's output alone; None = the model card's weight for the route
    (:meth:`engine.inference.model_card.ModelCard.source_floor`; none recorded: the model's output).
    ``floor_denoise`` = the strength (≥ 0) of the noise filter the calibrated source gets before the
    floor blends it (:mod:`engine.inference.denoise`; 0 = none); None = the model card's.
    ``plane``: the patient plane the volume is cut in for the 2-D model (:func:`engine.inference.
    pipeline.plane_axis`); ``auto`` = the acquisition plane (:func:`engine.inference.slices.slice_axis`)."""

    steps: int = 24
    solver: str = "euler"
    shift: float = 3.0
    guidance: GuidanceConfig = field(default_factory=default_guidance)
    seed: int = 0
    batch_size: int | str = "auto"
    start_from_source: float | None = None
    noise_correlation: float = 0.0
    guided_filter: float = 0.0
    guided_filter_depth: float = 0.0
    hu_calibration: bool = True
    source_floor: float | None = None
    floor_denoise: float | None = None
    anatomy: str | None = None            # None: from the model card (see ModelCard.anatomy_for)
    plane: str = "auto"

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        solver = str(self.solver).strip().lower()
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; use one of {', '.join(SOLVERS)}")
        object.__setattr__(self, "solver", solver)
        if not float(self.shift) > 0:
            raise ValueError(f"shift must be positive, got {self.shift!r}")
        object.__setattr__(self, "shift", float(self.shift))
        if isinstance(self.guidance, Mapping):
            object.__setattr__(self, "guidance", GuidanceConfig.from_dict(self.guidance))
        elif self.guidance is None:
            object.__setattr__(self, "guidance", GuidanceConfig.off())
        object.__setattr__(self, "seed", int(self.seed))
        batch = self.batch_size
        if isinstance(batch, str) and batch.strip().lower() == "auto":
            object.__setattr__(self, "batch_size", "auto")
        else:
            try:
                batch = int(batch)
            except (TypeError, ValueError):
                raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}") from None
            if batch < 1:
                raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
            object.__setattr__(self, "batch_size", batch)
        if self.start_from_source is not None:
            t = float(self.start_from_source)
            if not 0.0 < t <= 1.0:
                raise ValueError(f"start_from_source must be a time in (0, 1], got {self.start_from_source!r}")
            object.__setattr__(self, "start_from_source", None if t == 1.0 else t)

        rho = float(self.noise_correlation)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"noise_correlation must be in [0, 1), got {self.noise_correlation!r}")
        object.__setattr__(self, "noise_correlation", rho)
        radius = float(self.guided_filter)
        if not 0.0 <= radius <= 16.0:
            raise ValueError(f"guided_filter must be a radius of 0 (off) to 16 model pixels, got {self.guided_filter!r}")
        object.__setattr__(self, "guided_filter", radius)
        depth = float(self.guided_filter_depth)
        if not 0.0 <= depth <= 16.0:
            raise ValueError("guided_filter_depth must be a depth of 0 (each slice alone) to 16 model pixels, "
                             f"got {self.guided_filter_depth!r}")
        object.__setattr__(self, "guided_filter_depth", depth)
        if self.source_floor is not None:
            weight = float(self.source_floor)
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"source_floor must be a weight in [0, 1], got {self.source_floor!r}")
            object.__setattr__(self, "source_floor", weight)
        if self.floor_denoise is not None:
            try:
                object.__setattr__(self, "floor_denoise", denoise.strength(self.floor_denoise))
            except (TypeError, ValueError):
                raise ValueError(f"floor_denoise must be a strength ≥ 0, got {self.floor_denoise!r}") from None
        plane = str(self.plane).strip().lower()
        if plane not in SLICING_PLANES:
            raise ValueError(f"unknown slicing plane {self.plane!r}; use one of {', '.join(SLICING_PLANES)}")
        object.__setattr__(self, "plane", plane)

    @property
    def t_start(self) -> float:
        return 1.0 if self.start_from_source is None else self.start_from_source

    def replace(self, **changes: Any) -> SynthesisSettings:
        return dataclasses.replace(self, **changes)

    def asked(self, *, text_guidance: float | None = None, image_guidance: float | None = None,
              **changes: Any) -> SynthesisSettings:
        """These settings with what a user asked for (the command line's options, the app's request):
        every field given as None keeps its value; ``text_guidance`` / ``image_guidance`` set the
        guidance scales."""
        guidance: dict[str, Any] = {k: v for k, v in (("text_scale", text_guidance), ("image_scale", image_guidance))
                                    if v is not None}
        kept = {k: v for k, v in changes.items() if v is not None}
        if guidance:
            kept["guidance"] = dataclasses.replace(self.guidance, **guidance)
        return self.replace(**kept)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["guidance"] = self.guidance.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: SynthesisSettings | None = None) -> SynthesisSettings:
        """Settings from a dict (unknown keys refused); fields it lacks come from ``base``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown synthesis settings {unknown}; known: {sorted(names)}")
        base = base or cls()
        values = dict(data)
        if isinstance(values.get("guidance"), Mapping):
            merged = {**base.guidance.to_dict(), **values["guidance"]}
            values["guidance"] = GuidanceConfig.from_dict(merged)
        return base.replace(**values)


def settings_from_card(defaults: Mapping[str, Any]) -> tuple[SynthesisSettings, dict[str, Any]]:
    """The model's default settings from a card's ``inference_defaults``, and the keys that are
    not settings (e.g. ``mr_output_range``), returned for the pipeline to use."""
    names = {f.name for f in dataclasses.fields(SynthesisSettings)}
    settings = {k: v for k, v in defaults.items() if k in names}
    extra = {k: v for k, v in defaults.items() if k not in names}
    try:
        return SynthesisSettings.from_dict(settings), extra
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model card: inference_defaults: {exc}") from exc


# -- device and precision ---------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is a ValueError."""
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is available to this program (use --device cpu or auto)")
        return torch.device(device if isinstance(device, torch.device) else name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere; fp16 / bf16 (autocast) on CUDA only — refused on CPU with the reason."""
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if key != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {key} needs a CUDA GPU: on {device.type.upper()} half precision is slower "
                         "and less accurate than fp32; use --precision fp32 (the default)")
    return PRECISIONS[key]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for ``dtype`` on CUDA; for fp32 on CUDA, true fp32 (no TF32)."""
    if dtype == torch.float32:
        return strict_fp32() if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def strict_fp32():
    """Turn TF32 off for matrix products and cuDNN convolutions inside the block (PyTorch lets
    cuDNN use TF32 by default: ~1e-3 relative error, and results that depend on the batch size).
    The flags are process-wide; they are restored on exit."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- memory -----------------------------------------------------------------------------------------
def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors: the GPU's free memory, or the machine's available RAM."""
    from engine.io.catalog import available_memory as available_ram

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    ram = available_ram()
    return ram if ram is not None else 4 << 30          # unknown platform: assume 4 GiB


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA / CPU allocation failures (``torch.OutOfMemoryError`` or "out of memory")."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
