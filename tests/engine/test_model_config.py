"""Model configs and presets: every size builds on the meta device, bagel-7b has BAGEL's real shapes,
configs round-trip through JSON, and a BAGEL folder's Qwen2/SigLIP json files are read correctly."""
import json

import pytest
import torch

from engine.model import PRESETS, LLMConfig, SynerMedGenConfig, from_bagel_dir, from_config, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta_without_allocating(name):
    model = from_config(preset(name), device="meta")
    tensors = list(model.parameters()) + list(model.vae.parameters())
    assert tensors and all(t.is_meta for t in tensors)


def test_bagel_7b_parameter_shapes_match_the_bagel_checkpoint():
    model = from_config(preset("bagel-7b"), device="meta")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    layer = "language_model.model.layers.27."
    expected = {
        "language_model.model.embed_tokens.weight": [152064, 3584],
        "language_model.lm_head.weight": [152064, 3584],
        layer + "self_attn.q_proj.weight": [3584, 3584],
        layer + "self_attn.q_proj_moe_gen.bias": [3584],
        layer + "self_attn.k_proj.weight": [512, 3584],
        layer + "self_attn.v_proj_moe_gen.weight": [512, 3584],
        layer + "self_attn.o_proj.weight": [3584, 3584],
        layer + "self_attn.q_norm.weight": [128],
        layer + "self_attn.k_norm_moe_gen.weight": [128],
        layer + "mlp.gate_proj.weight": [18944, 3584],
        layer + "mlp_moe_gen.down_proj.weight": [3584, 18944],
        layer + "input_layernorm_moe_gen.weight": [3584],
        "language_model.model.norm_moe_gen.weight": [3584],
        "vit_model.vision_model.embeddings.patch_embedding.weight": [1152, 588],
        "vit_model.vision_model.embeddings.position_embedding.weight": [4900, 1152],
        "vit_model.vision_model.encoder.layers.25.mlp.fc1.weight": [4304, 1152],
        "vit_model.vision_model.post_layernorm.weight": [1152],
        "connector.fc1.weight": [3584, 1152],
        "connector.fc2.weight": [3584, 3584],
        "vit_pos_embed.pos_embed": [4900, 3584],
        "latent_pos_embed.pos_embed": [4096, 3584],
        "time_embedder.mlp.0.weight": [3584, 256],
        "time_embedder.mlp.2.weight": [3584, 3584],
        "vae2llm.weight": [3584, 64],
        "llm2vae.weight": [64, 3584],
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "language_model.model.layers.28.mlp.up_proj.weight" not in shapes
    assert "vit_model.vision_model.encoder.layers.26.mlp.fc1.weight" not in shapes  # last SigLIP layer dropped
    llm_keys = [k for k in shapes if k.startswith("language_model.")]
    assert not any(k.endswith(".bias") and ("o_proj" in k or ".mlp" in k) for k in llm_keys)  # no bias there
    assert not any("inv_freq" in k for k in shapes)  # RoPE frequencies are not checkpoint tensors
    assert not any(k.startswith(("encoder.", "decoder.", "vae.")) for k in shapes)  # the VAE lives apart
    ae = {k: list(v.shape) for k, v in model.vae.state_dict().items()}
    assert ae["encoder.conv_out.weight"] == [32, 512, 3, 3]
    assert ae["decoder.conv_in.weight"] == [512, 16, 3, 3]
    assert sorted(k for k in ae if "nin_shortcut.weight" in k) == [
        "decoder.up.0.block.0.nin_shortcut.weight", "decoder.up.1.block.0.nin_shortcut.weight",
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.2.block.0.nin_shortcut.weight"]
    assert "decoder.up.3.block.2.conv2.weight" in ae and "decoder.up.0.upsample.conv.weight" not in ae
    assert "encoder.down.3.downsample.conv.weight" not in ae
    assert model.vae.encoder.norm_out.num_groups == 32


def test_bagel_7b_language_model_has_about_14b_parameters():
    model = from_config(preset("bagel-7b"), device="meta")
    n_llm = sum(p.numel() for p in model.language_model.parameters())
    n_vit = sum(p.numel() for p in model.vit_model.parameters())
    n_vae = sum(p.numel() for p in model.vae.parameters())
    print(f"bagel-7b: LLM (MoT) {n_llm / 1e9:.2f} B, ViT {n_vit / 1e6:.0f} M, VAE {n_vae / 1e6:.1f} M")
    assert 13.5e9 < n_llm < 14.5e9  # two 7B experts sharing embeddings and lm_head
    assert 390e6 < n_vit < 420e6  # SigLIP so400m minus its last layer and head
    assert 80e6 < n_vae < 90e6  # the FLUX autoencoder


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_json(name):
    cfg = preset(name)
    again = SynerMedGenConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.vae.ch_mult, tuple)


def test_tiny_preset_is_cpu_sized_and_grayscale():
    cfg = preset("tiny")
    assert cfg.vae.in_channels == cfg.vae.out_channels == 1
    assert cfg.latent_downsample == 8 and cfg.patch_latent_dim == 32
    n = sum(p.numel() for p in from_config(cfg, device="meta").parameters())
    assert n < 5e6


def test_bad_configs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="divisible"):
        LLMConfig(hidden_size=130, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=8, vocab_size=16)
    with pytest.raises(ValueError, match="unknown keys"):
        SynerMedGenConfig.from_dict({**preset("tiny").to_dict(), "surprise": 1})
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(ValueError, match="distinct names"):
        preset("tiny").replace(target_modalities=("T1", "t1"))
    with pytest.raises(ValueError, match="a list of names"):
        preset("tiny").replace(target_modalities="T2")


def test_target_modalities_are_canonical_and_survive_json():
    cfg = preset("tiny").replace(target_modalities=["t1", " FLAIR "])
    assert cfg.target_modalities == ("T1", "FLAIR")
    assert SynerMedGenConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert [cfg.target_index(m) for m in ("T1", "flair", "CT")] == [1, 2, 0]
    assert preset("bagel-7b").target_modalities == () and preset("tiny").target_index("T1") == 0


def test_from_bagel_dir_reads_qwen2_and_siglip_json(tmp_path):
    from transformers import Qwen2Config, SiglipVisionConfig

    Qwen2Config(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064, rope_theta=1e6, rms_norm_eps=1e-6,
                max_position_embeddings=32768).to_json_file(tmp_path / "llm_config.json")
    SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       patch_size=14, image_size=980).to_json_file(tmp_path / "vit_config.json")
    cfg = from_bagel_dir(tmp_path)
    assert cfg == preset("bagel-7b")  # rope_theta read from transformers-5 "rope_parameters", 27 → 26 layers


def test_from_bagel_dir_reads_transformers_4_spelling(tmp_path):
    llm = {"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 128,
           "intermediate_size": 384, "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 2,
           "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "vocab_size": 1024, "tie_word_embeddings": False,
           "rope_scaling": None, "model_type": "qwen2"}
    vit = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4,
           "patch_size": 8, "image_size": 128, "num_channels": 1, "model_type": "siglip_vision_model"}
    (tmp_path / "llm_config.json").write_text(json.dumps(llm))
    (tmp_path / "vit_config.json").write_text(json.dumps(vit))
    cfg = from_bagel_dir(tmp_path, vae=preset("tiny").vae)
    assert cfg.llm.rope_theta == 500000.0 and cfg.llm.rms_norm_eps == 1e-5
    assert cfg.vit.num_hidden_layers == 2 and cfg.vit.num_channels == 1
    assert cfg.vit_max_num_patch_per_side == 16 and cfg.vae == preset("tiny").vae
    llm["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    (tmp_path / "llm_config.json").write_text(json.dumps(llm))
    with pytest.raises(ValueError, match="rope_scaling"):
        from_bagel_dir(tmp_path)


def test_meta_model_can_be_materialised_for_the_tiny_preset():
    model = from_config(preset("tiny"), device="meta")
    model.to_empty(device="cpu")
    rotary = model.language_model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32 and rotary.inv_freq[0].item() == 1.0
