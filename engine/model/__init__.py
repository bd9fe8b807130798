"""The SynerMedGen model: configs and presets, ViT, MoT language model, VAE, the unified model with
its tensor building blocks (context cache, velocity, losses), model folders and the tokenizer.
Never imports Qt, ``engine.sampling``, ``engine.io`` or ``engine.training``.
"""
from engine.model.checkpoint import LoadedModel, detect_layout, load_model_dir, save_model_dir
from engine.model.config import (
                                 PRESETS,
                                 LLMConfig,
                                 SpecialTokenIds,
                                 SynerMedGenConfig,
                                 VAEConfig,
                                 ViTConfig,
                                 from_bagel_dir,
                                 preset,
)
from engine.model.mot import KVCache
from engine.model.sequence import CleanLatent, NoisyLatent, SkipPosition, Text, VitImage, edit_segments
from engine.model.tokenizer import TextTokenizer, load_tokenizer, train_tokenizer
from engine.model.unified import (
                                 BRANCHES,
                                 Context,
                                 SynerMedGen,
                                 UnderstandingOutput,
                                 ce_loss,
                                 from_config,
                                 patchify_latent,
                                 unpatchify_latent,
)
from engine.model.vae import AutoEncoder

__all__ = [
    "AutoEncoder", "BRANCHES", "CleanLatent", "Context", "KVCache", "LLMConfig", "LoadedModel", "NoisyLatent",
    "PRESETS", "SkipPosition", "SpecialTokenIds", "SynerMedGen", "SynerMedGenConfig", "Text", "TextTokenizer",
    "UnderstandingOutput", "VAEConfig", "ViTConfig", "VitImage", "ce_loss", "detect_layout", "edit_segments",
    "from_bagel_dir", "from_config", "load_model_dir", "load_tokenizer", "patchify_latent", "preset",
    "save_model_dir", "train_tokenizer", "unpatchify_latent",
]
