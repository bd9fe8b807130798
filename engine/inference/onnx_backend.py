"""The ONNX Runtime backend (``--backend onnx``): a :class:`Synthesizer` whose VAE, context encoder
and velocity step run as ONNX graphs (exported beside the model on first use, see
:mod:`engine.inference.onnx_export`) on the best execution provider onnxruntime offers; the volume
loop, noise, solvers and guidance are the torch backend's own.

Providers: on ``--device cuda`` (or ``auto`` when onnxruntime-gpu is installed) TensorRT (fp16 with
``--precision fp16``) then CUDA, with the CPU as the last resort; elsewhere the CPU. What actually
runs is ``providers`` (onnxruntime's ``session.get_providers()``); every fallback is in ``notices``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.inference.onnx_export import (
    CONTEXT_LAYOUT_INPUTS,
    context_layout,
    export_is_current,
    export_onnx,
    per_branch_rows,
)
from engine.inference.pipeline import Prompt, Synthesizer, context_branches, unit_slices
from engine.inference.settings import SynthesisSettings
from engine.jobs import CancelToken, ProgressFn, noop
from engine.model.vit import vit_view

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
ONNX_PRECISIONS = ("fp32", "fp16")


def onnxruntime():
    """The onnxruntime module, or a ValueError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("--backend onnx needs onnxruntime: `pip install onnxruntime` (or onnxruntime-gpu "
                         "for CUDA / TensorRT)") from None
    return onnxruntime


def choose_providers(device: str, precision: str, cache_dir: Path) -> tuple[list, list[str]]:
    """(providers with their options for ``InferenceSession``, notices about what was not available).

    ``device`` is "auto", "cpu" or "cuda"; fp16 is TensorRT's (``trt_fp16_enable``): the CUDA and CPU
    providers run the float32 graphs.
    """
    device = str(device).strip().lower()
    precision = str(precision).strip().lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"--backend onnx runs fp32 (or fp16 with TensorRT), not {precision}; "
                         "use --backend torch for bf16")
    available = set(onnxruntime().get_available_providers())
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if device == "cpu" or (device == "auto" and not gpu):
        if precision != "fp32":
            raise ValueError(f"precision {precision} needs a CUDA GPU: the onnx backend on the CPU runs fp32; "
                             "use --precision fp32 (the default)")
        return [CPU_PROVIDER], []
    if not gpu:
        return [CPU_PROVIDER], ["onnxruntime here has no CUDA or TensorRT provider (install onnxruntime-gpu in "
                                "place of onnxruntime): running on the CPU in fp32"]
    notices = []
    chosen: list[Any] = []
    # torch's current GPU (under torchrun each rank's own, set from LOCAL_RANK), not always GPU 0
    device_id = torch.cuda.current_device() if torch.cuda.is_available() else 0
    if "TensorrtExecutionProvider" in gpu:
        chosen.append(("TensorrtExecutionProvider", {"device_id": device_id, "trt_fp16_enable": precision == "fp16",
                                                     "trt_engine_cache_enable": True,
                                                     "trt_engine_cache_path": str(cache_dir / "tensorrt")}))
    elif precision == "fp16":
        notices.append("fp16 needs onnxruntime's TensorRT provider, which is not available: running fp32 on CUDA")
    if "CUDAExecutionProvider" in gpu:
        chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
    return chosen + [CPU_PROVIDER], notices


class OnnxSynthesizer(Synthesizer):
    """A :class:`Synthesizer` running its network pieces with onnxruntime.

    ``OnnxSynthesizer(model_dir, device="auto", precision="fp32")`` exports the graphs into
    ``export_dir`` (default ``MODEL_DIR/onnx``) when it holds none or a stale export (``exported``
    says whether this happened). ``loaded`` reuses a model already in memory (its weights stay where
    they are; the export is made from a CPU copy when needed).
    """

    probe_measures_memory = False     # ONNX Runtime's allocator is invisible to torch.cuda

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "fp32", *,
                 export_dir: str | Path | None = None, loaded=None) -> None:
        ort = onnxruntime()
        torch_device = next(loaded.model.parameters()).device if loaded is not None else "cpu"
        super().__init__(model_dir, device=torch_device, precision="fp32", loaded=loaded)
        self.export_dir = Path(export_dir) if export_dir is not None else self.model_dir / "onnx"
        providers, self.notices = choose_providers(device, precision, self.export_dir)
        self.exported = not export_is_current(self.export_dir, self.model_dir, self.image_size)
        if self.exported:
            try:
                export_onnx(self.model, self.image_size, self.export_dir, self.model_dir)
            except OSError as exc:
                raise ValueError(f"cannot write the ONNX export to {self.export_dir} ({exc}); copy the model "
                                 "to a writable folder, or export there with `python main.py export-onnx`") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()       # as torch would use
        # no busy-waiting between runs: the sampler's torch ops run on the same cores between velocity calls
        # (2 cores: ×1.07 faster per batch than spinning, measured side by side)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3                               # errors only
        self.sessions = {name: ort.InferenceSession(str(self.export_dir / f"{name}.onnx"), options,
                                                    providers=providers)
                         for name in ("vae_encoder", "vae_decoder", "context", "velocity")}
        self.providers = list(self.sessions["velocity"].get_providers())
        wanted = [p if isinstance(p, str) else p[0] for p in providers]
        if wanted[0] != CPU_PROVIDER and self.providers[0] != wanted[0]:
            self.notices.append(f"onnxruntime could not start {wanted[0]} (see its log); "
                                f"running on {self.providers[0]}")
        fp16 = self.providers[0] == "TensorrtExecutionProvider" and str(precision).strip().lower() == "fp16"
        self.precision = "fp16" if fp16 else "fp32"
        self._layouts: dict[tuple, dict[str, np.ndarray]] = {}

    @property
    def execution_device(self) -> str:
        return "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"

    def _prepare(self, source: str, target: str, settings: SynthesisSettings) -> tuple[Prompt, list[str]]:
        prompt, notes = super()._prepare(source, target, settings)
        notes.append(f"backend: ONNX Runtime {onnxruntime().__version__} "
                     f"({', '.join(self.providers)}, {self.precision})")
        return prompt, notes + [f"note: {n}" for n in self.notices]

    def _run(self, name: str, **inputs: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        feeds = {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else v) for k, v in inputs.items()}
        return [torch.from_numpy(out).to(self.device) for out in self.sessions[name].run(None, feeds)]

    def _layout(self, ids: Sequence[int], branches: tuple[str, ...], latent_shape, vit_shape) -> dict[str, np.ndarray]:
        key = (tuple(ids), branches)
        if key not in self._layouts:
            layout = context_layout(self.model, latent_shape, vit_shape, ids, branches)
            self._layouts[key] = {k: v.cpu().numpy() for k, v in layout.items()}
        return self._layouts[key]

    @torch.no_grad()
    def _run_batch(self, images: torch.Tensor, indices: Sequence[int], prompt: Prompt,
                   settings: SynthesisSettings, cancel: CancelToken | None,
                   on_step: ProgressFn = noop) -> torch.Tensor:
        """Model slices (n, 1, S, S) in [0, 1] → synthetic slices (n, 1, S, S) in [0, 1]."""
        n = images.shape[0]
        pixels = images.to(self.device, torch.float32) * 2.0 - 1.0
        (latent,) = self._run("vae_encoder", pixels=pixels)
        seen = vit_view(pixels, self.config)
        branches = context_branches(settings.guidance)
        layout = self._layout(prompt.ids, branches, latent.shape[1:], seen.shape[1:])
        with self._network_time():   # the context once, then the ODE over the cached keys/values
            keys, values = (t.cpu().numpy() for t in self._run("context", latent=latent, vit_pixels=seen,
                                                                **{k: layout[k] for k in CONTEXT_LAYOUT_INPUTS}))
            per_row = {k: per_branch_rows(torch.from_numpy(layout[k]), n).numpy()
                       for k in ("valid", "next_position", "present")}
            aligned = self.config.source_token_aligned
            targets = self.model.target_rows([prompt.target] * n, branches, n)
            picked: dict[tuple[str, ...], dict[str, np.ndarray]] = {}

            def context_of(wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
                if wanted not in picked:
                    rows = np.concatenate([np.arange(n) + branches.index(b) * n for b in wanted])
                    picked[wanted] = {"keys": keys[:, rows], "values": values[:, rows],
                                      "past_valid": per_row["valid"][rows], "next_position": per_row["next_position"][rows]}
                    if aligned:
                        picked[wanted].update(source=latent.cpu().numpy(), present=per_row["present"][rows])
                    if targets is not None:
                        picked[wanted]["target"] = targets.cpu().numpy()[rows]
                return picked[wanted]

            def velocity(x, t, wanted):
                wanted = tuple(wanted)
                (v,) = self._run("velocity", x=x.float(), t=t.float(), **context_of(wanted))
                return dict(zip(wanted, v.split(n)))

            x0 = self._sample(velocity, latent, indices, settings, cancel, on_step)
        (decoded,) = self._run("vae_decoder", latent=x0)
        return unit_slices(decoded)
