"""Parity with independent reference implementations from transformers: the understanding expert equals a
Qwen3-style decoder (Qwen2 + per-head q/k RMSNorm before RoPE, as BAGEL's qk_norm) and the ViT equals
SigLIP's penultimate layer followed by its post-layernorm."""
import dataclasses

import torch

from engine.model import Text, from_config, preset
from engine.model.vit import SiglipVisionModel


def test_understanding_expert_matches_a_transformers_qwen3_decoder():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = preset("tiny")
    torch.manual_seed(0)
    ref_cfg = Qwen3Config(hidden_size=cfg.llm.hidden_size, num_hidden_layers=cfg.llm.num_hidden_layers,
                          num_attention_heads=cfg.llm.num_attention_heads, head_dim=cfg.llm.head_dim,
                          num_key_value_heads=cfg.llm.num_key_value_heads, intermediate_size=cfg.llm.intermediate_size,
                          vocab_size=cfg.llm.vocab_size, rope_theta=cfg.llm.rope_theta, rms_norm_eps=1e-6,
                          attention_bias=True, tie_word_embeddings=False, use_sliding_window=False)
    ref = Qwen3ForCausalLM(ref_cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)  # non-trivial norm weights
            elif name.endswith("o_proj.bias"):
                p.zero_()  # BAGEL's o_proj has no bias
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model = from_config(cfg).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("o_proj.bias")}
    result = model.language_model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert all("_moe_gen" in k for k in result.missing_keys)
    ids = torch.randint(5, cfg.llm.vocab_size, (1, 12))
    with torch.no_grad():
        expected = ref(input_ids=torch.cat([torch.tensor([[cfg.tokens.im_start]]), ids,
                                            torch.tensor([[cfg.tokens.im_end]])], dim=1)).logits
        ours = model.understanding_forward([[Text(ids[0])]]).logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_vit_matches_siglip_penultimate_layer():
    from transformers import SiglipVisionConfig
    from transformers import SiglipVisionModel as RefSiglip

    ours_cfg = dataclasses.replace(preset("tiny").vit, num_channels=3, image_size=32, num_hidden_layers=2)
    ref_cfg = SiglipVisionConfig(hidden_size=ours_cfg.hidden_size, intermediate_size=ours_cfg.intermediate_size,
                                 num_hidden_layers=ours_cfg.num_hidden_layers + 1,
                                 num_attention_heads=ours_cfg.num_attention_heads, patch_size=ours_cfg.patch_size,
                                 image_size=ours_cfg.image_size, num_channels=3, vision_use_head=False)
    torch.manual_seed(0)
    ref = RefSiglip(ref_cfg).eval()
    ours = SiglipVisionModel(ours_cfg).eval()
    state = {}
    for key, value in ref.state_dict().items():
        key = key if key.startswith("vision_model.") else "vision_model." + key  # prefix varies by version
        if key.startswith(f"vision_model.encoder.layers.{ours_cfg.num_hidden_layers}."):
            continue  # BAGEL drops the last layer
        if key == "vision_model.embeddings.patch_embedding.weight":
            value = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1)  # Conv2d → Linear, as BAGEL
        state[key] = value
    ours.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = ref(pixel_values=images, output_hidden_states=True)
        expected = getattr(ref, "vision_model", ref).post_layernorm(out.hidden_states[-2])
        torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=1e-5)
