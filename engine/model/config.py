"""Architecture configs of the SynerMedGen model: LLM (Qwen2 MoT), ViT (SigLIP), VAE (FLUX) and
the composed model, the named size presets, and reading a BAGEL checkpoint folder's configs.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _checked_keys(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    return dict(data)


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the BAGEL/Qwen control tokens; they come from the tokenizer of the model folder."""

    pad: int = 0  # <|endoftext|>
    im_start: int = 1  # <|im_start|>  (BAGEL's bos)
    im_end: int = 2  # <|im_end|>    (BAGEL's eos)
    vision_start: int = 3  # <|vision_start|>
    vision_end: int = 4  # <|vision_end|>

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecialTokenIds:
        return cls(**_checked_keys(cls, data))


QWEN2_SPECIAL_TOKENS = SpecialTokenIds(pad=151643, im_start=151644, im_end=151645,
                                       vision_start=151652, vision_end=151653)


@dataclass(frozen=True)
class LLMConfig:
    """The Qwen2-style decoder with Mixture-of-Transformers layers (BAGEL's ``llm_config``)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    qk_norm: bool = True
    tie_word_embeddings: bool = False
    layer_module: str = "Qwen2MoTDecoderLayer"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("LLMConfig: hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("LLMConfig: num_attention_heads must be divisible by num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("LLMConfig: head_dim must be even for rotary embeddings")
        if self.hidden_size % 4:
            raise ValueError("LLMConfig: hidden_size must be divisible by 4 (2-D sin-cos embeddings)")
        if self.layer_module != "Qwen2MoTDecoderLayer":
            raise ValueError(f"LLMConfig: only Qwen2MoTDecoderLayer is implemented, not {self.layer_module!r}")
        if self.tie_word_embeddings:
            raise ValueError("LLMConfig: tied word embeddings are not supported (BAGEL unties them)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLMConfig:
        return cls(**_checked_keys(cls, data))

    @classmethod
    def from_qwen2_dict(cls, data: Mapping[str, Any]) -> LLMConfig:
        """Read a Hugging Face ``Qwen2Config`` json (transformers 4 or 5 spelling of rope_theta)."""
        act = data.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"llm_config.json: hidden_act {act!r} is not supported (expected 'silu')")
        rope = data.get("rope_parameters") or {}
        scaling = data.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"llm_config.json: rope_scaling {scaling} is not supported")
        if rope and rope.get("rope_type", "default") != "default":
            raise ValueError(f"llm_config.json: rope_parameters {rope} are not supported")
        heads = int(data["num_attention_heads"])
        return cls(
            hidden_size=int(data["hidden_size"]),
            num_hidden_layers=int(data["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(data.get("num_key_value_heads") or heads),
            intermediate_size=int(data["intermediate_size"]),
            vocab_size=int(data["vocab_size"]),
            rope_theta=float(data.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(data.get("max_position_embeddings", 32768)),
        )


@dataclass(frozen=True)
class ViTConfig:
    """The SigLIP-style vision encoder; ``num_hidden_layers`` counts the layers actually kept."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    image_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("ViTConfig: hidden_size must be divisible by num_attention_heads")
        if self.image_size % self.patch_size:
            raise ValueError("ViTConfig: image_size must be a multiple of patch_size")

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.num_patches_per_side ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ViTConfig:
        return cls(**_checked_keys(cls, data))

    @classmethod
    def from_siglip_dict(cls, data: Mapping[str, Any]) -> ViTConfig:
        """Read a ``SiglipVisionConfig`` json; the last layer is dropped, as BAGEL does."""
        data = data.get("vision_config", data)
        return cls(
            hidden_size=int(data["hidden_size"]),
            intermediate_size=int(data["intermediate_size"]),
            num_hidden_layers=int(data["num_hidden_layers"]) - 1,
            num_attention_heads=int(data["num_attention_heads"]),
            patch_size=int(data["patch_size"]),
            image_size=int(data["image_size"]),
            num_channels=int(data.get("num_channels", 3)),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-6)),
            hidden_act=str(data.get("hidden_act", "gelu_pytorch_tanh")),
        )


@dataclass(frozen=True)
class VAEConfig:
    """The FLUX-style convolutional autoencoder (``ae.safetensors``)."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159
    mid_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not self.ch_mult:
            raise ValueError("VAEConfig: ch_mult must not be empty")
        if self.scale_factor == 0:
            raise ValueError("VAEConfig: scale_factor must not be 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ch_mult"] = list(self.ch_mult)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAEConfig:
        return cls(**_checked_keys(cls, data))


@dataclass(frozen=True)
class SynerMedGenConfig:
    """The unified model: LLM + ViT + VAE and the glue between them (BAGEL's ``BagelConfig``).

    ``timestep_shift`` is the shift of the *training* timestep distribution (BAGEL default 1.0;
    above 1 trains more on the noisy end); the sampler chooses its own inference shift (3.0 in the
    reference recipe).
    ``source_token_aligned`` adds the clean source latent, token by token, into the noisy target
    tokens through the zero-initialised ``vae2llm_src`` (False for BAGEL-7B).
    ``target_modalities`` names the modalities a learned ``target_embedder`` row stands for (row
    i + 1; row 0 = none); the row of the requested target is added to every noisy target token, as
    the timestep is, so the generation expert sees the target directly and not only through the
    instruction's text tokens (empty, no embedder, for BAGEL-7B).
    """

    llm: LLMConfig
    vit: ViTConfig
    vae: VAEConfig
    latent_patch_size: int = 2
    max_latent_size: int = 32
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    timestep_shift: float = 1.0
    source_token_aligned: bool = False
    target_modalities: tuple[str, ...] = ()
    tokens: SpecialTokenIds = field(default_factory=SpecialTokenIds)

    def __post_init__(self) -> None:
        if not (isinstance(self.timestep_shift, (int, float)) and math.isfinite(self.timestep_shift)
                and self.timestep_shift > 0):
            raise ValueError(f"SynerMedGenConfig: timestep_shift must be a number > 0, got {self.timestep_shift!r}")
        if isinstance(self.target_modalities, str):
            raise ValueError(f"SynerMedGenConfig: target_modalities must be a list of names, not the string "
                             f"{self.target_modalities!r}")
        names = tuple(str(n).strip().upper() for n in self.target_modalities)
        if len(set(names)) != len(names) or not all(names):
            raise ValueError("SynerMedGenConfig: target_modalities must be distinct names, got "
                             f"{self.target_modalities}")
        object.__setattr__(self, "target_modalities", names)
        if self.vit_max_num_patch_per_side > self.vit.num_patches_per_side:
            raise ValueError("SynerMedGenConfig: vit_max_num_patch_per_side exceeds the ViT's "
                             f"position table ({self.vit.num_patches_per_side} per side)")
        ids = self.tokens.to_dict().values()
        if max(ids) >= self.llm.vocab_size:
            raise ValueError("SynerMedGenConfig: a special token id is outside the LLM vocabulary")

    @property
    def patch_latent_dim(self) -> int:
        """Features of one generation token: p·p·z_channels (64 for BAGEL)."""
        return self.latent_patch_size ** 2 * self.vae.z_channels

    def target_index(self, modality: str | None) -> int:
        """The ``target_embedder`` row of ``modality``: 0 (none) without target conditioning, for
        no modality, or for one the model was not trained to condition on."""
        key = "" if modality is None else str(modality).strip().upper()
        return self.target_modalities.index(key) + 1 if key in self.target_modalities else 0

    @property
    def latent_downsample(self) -> int:
        """Pixels per generation token along one side (16 for BAGEL)."""
        return self.vae.downsample * self.latent_patch_size

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("llm", "vit", "vae", "tokens"):
            data[name] = data[name].to_dict()
        data["target_modalities"] = list(self.target_modalities)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynerMedGenConfig:
        data = _checked_keys(cls, data)
        data["llm"] = LLMConfig.from_dict(data["llm"])
        data["vit"] = ViTConfig.from_dict(data["vit"])
        data["vae"] = VAEConfig.from_dict(data["vae"])
        if "tokens" in data:
            data["tokens"] = SpecialTokenIds.from_dict(data["tokens"])
        return cls(**data)

    def replace(self, **changes: Any) -> SynerMedGenConfig:
        return dataclasses.replace(self, **changes)


def _tiny() -> SynerMedGenConfig:
    return SynerMedGenConfig(
        llm=LLMConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=384, vocab_size=1024, rope_theta=10000.0),
        vit=ViTConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                      patch_size=8, image_size=128, num_channels=1),
        vae=VAEConfig(in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1,
                      z_channels=8, scale_factor=1.0, shift_factor=0.0),
        latent_patch_size=2, max_latent_size=32, vit_max_num_patch_per_side=16,
    )


def _default() -> SynerMedGenConfig:
    """The shipped default model (``resources/models/default``): the tiny transformer over a
    lightly compressing autoencoder (2× down-sampling, 4 channels: one latent value per pixel,
    so its reconstruction ceiling is high after CPU minutes) with 4×4 latent patches, so a
    generation token still covers 8×8 pixels; the source latent is also fed token-aligned."""
    tiny = _tiny()
    return tiny.replace(
        vae=VAEConfig(in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                      z_channels=4, scale_factor=1.0, shift_factor=0.0, mid_attention=False),
        latent_patch_size=4, source_token_aligned=True)


def _small() -> SynerMedGenConfig:
    return SynerMedGenConfig(
        llm=LLMConfig(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                      intermediate_size=1024, vocab_size=4096, rope_theta=10000.0),
        vit=ViTConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                      patch_size=8, image_size=256, num_channels=1),
        vae=VAEConfig(in_channels=1, out_channels=1, ch=64, ch_mult=(1, 2, 4), num_res_blocks=2,
                      z_channels=16, scale_factor=1.0, shift_factor=0.0),
        latent_patch_size=2, max_latent_size=64, vit_max_num_patch_per_side=32,
    )


def _bagel_7b() -> SynerMedGenConfig:
    return SynerMedGenConfig(
        llm=LLMConfig(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      intermediate_size=18944, vocab_size=152064, rope_theta=1_000_000.0,
                      rms_norm_eps=1e-6, max_position_embeddings=32768),
        vit=ViTConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                      patch_size=14, image_size=980, num_channels=3),
        vae=VAEConfig(),
        latent_patch_size=2, max_latent_size=64, vit_max_num_patch_per_side=70,
        connector_act="gelu_pytorch_tanh", timestep_shift=1.0, tokens=QWEN2_SPECIAL_TOKENS,
    )


PRESETS: dict[str, SynerMedGenConfig] = {"tiny": _tiny(), "default": _default(), "small": _small(),
                                         "bagel-7b": _bagel_7b()}


def preset(name: str) -> SynerMedGenConfig:
    """A named size: ``tiny`` (trains on 2 CPU cores), ``default`` (the shipped default model),
    ``small``, ``bagel-7b`` (real BAGEL shapes)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from engine.files import open_safetensors

    with open_safetensors(path) as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def _vae_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], **factors: float) -> VAEConfig:
    ch, in_channels = shapes["encoder.conv_in.weight"][:2]
    levels = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down."))
    ch_mult = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] // ch for i in range(levels))
    blocks = 1 + max(int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down.0.block."))
    return VAEConfig(in_channels=in_channels, out_channels=shapes["decoder.conv_out.weight"][0], ch=ch,
                     ch_mult=ch_mult, num_res_blocks=blocks, z_channels=shapes["decoder.conv_in.weight"][1],
                     mid_attention="encoder.mid.attn_1.q.weight" in shapes, **factors)


def from_bagel_dir(path: str | Path, **overrides: Any) -> SynerMedGenConfig:
    """Config of a BAGEL checkpoint folder (``llm_config.json``, ``vit_config.json``, weights).

    The LLM and ViT come from the json files. The VAE structure, latent patch size, grid sizes and
    the ``vae2llm_src`` lever are read from the safetensors headers when present (BAGEL-7B values
    otherwise). The VAE scale/shift factors are not stored in the weights: FLUX's are used unless
    ``vae_scale_factor`` / ``vae_shift_factor`` are given. Other ``overrides`` replace config fields.
    """
    path = Path(path)
    base = _bagel_7b()
    factors: dict[str, Any] = {"scale_factor": float(overrides.pop("vae_scale_factor", base.vae.scale_factor)),
                               "shift_factor": float(overrides.pop("vae_shift_factor", base.vae.shift_factor))}
    from engine.files import read_json

    llm = LLMConfig.from_qwen2_dict(read_json(path / "llm_config.json", "Qwen2 config"))
    vit = ViTConfig.from_siglip_dict(read_json(path / "vit_config.json", "SigLIP config"))
    values: dict[str, Any] = {"llm": llm, "vit": vit, "vae": dataclasses.replace(base.vae, **factors),
                              "tokens": QWEN2_SPECIAL_TOKENS}
    if (path / "ae.safetensors").exists():
        values["vae"] = _vae_config_from_shapes(_safetensors_shapes(path / "ae.safetensors"), **factors)
    if (path / "ema.safetensors").exists():
        shapes = _safetensors_shapes(path / "ema.safetensors")
        if "vae2llm.weight" in shapes:
            p2 = shapes["vae2llm.weight"][1] // values["vae"].z_channels
            values["latent_patch_size"] = math.isqrt(p2)
        if "latent_pos_embed.pos_embed" in shapes:
            values["max_latent_size"] = math.isqrt(shapes["latent_pos_embed.pos_embed"][0])
        if "vit_pos_embed.pos_embed" in shapes:
            values["vit_max_num_patch_per_side"] = math.isqrt(shapes["vit_pos_embed.pos_embed"][0])
        values["source_token_aligned"] = "vae2llm_src.weight" in shapes
    values.setdefault("vit_max_num_patch_per_side", min(base.vit_max_num_patch_per_side,
                                                        vit.num_patches_per_side))
    if max(values["tokens"].to_dict().values()) >= llm.vocab_size:
        values["tokens"] = SpecialTokenIds()  # a small test vocabulary; the tokenizer sets the real ids
    values.update(overrides)
    return dataclasses.replace(base, **values)
