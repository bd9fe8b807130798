"""Mixture-of-Transformers routing: which expert each token uses, and which parameters a loss on
understanding tokens or on generation tokens can reach through the shared attention."""
import torch

from engine.model import CleanLatent, NoisyLatent, Text, VitImage, ce_loss, from_config, preset
from engine.model.layers import apply_rotary
from engine.model.mot import TokenRouting, attention_bias

PX = 32  # tiny images: 16 ViT tokens, an 8×8 latent = 16 generation tokens


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = from_config(preset("tiny"))
    with torch.no_grad():  # leave BAGEL's zero init so that gradients reach the generation expert
        model.llm2vae.weight.normal_(std=0.05)
        for name, p in model.named_parameters():
            if "_moe_gen" in name:
                p.add_(torch.randn_like(p) * 0.02)  # twins differ from their copy-initialised originals
    return model


def grads(model):
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in model.named_parameters()
            if p.requires_grad}


def test_identical_twins_make_routing_invisible_and_different_twins_do_not():
    torch.manual_seed(0)
    model = from_config(preset("tiny")).eval()  # copy_init_moe: every *_moe_gen equals its twin
    lm = model.language_model.model
    emb = torch.randn(2, 10, 128)
    pos = torch.arange(10).expand(2, -1)
    mask = torch.ones(10, 10, dtype=torch.bool).tril()[None, None].expand(2, -1, -1, -1)  # causal
    gen = torch.zeros(2, 10, dtype=torch.bool)
    gen[0, [4, 5, 8]] = True
    gen[1, [2, 9]] = True
    with torch.no_grad():
        all_und, _ = lm(emb, torch.zeros_like(gen), pos, mask)
        mixed, _ = lm(emb, gen, pos, mask)
        torch.testing.assert_close(mixed, all_und, atol=1e-5, rtol=1e-5)
        lm.layers[0].mlp_moe_gen.down_proj.weight.mul_(2)
        changed, _ = lm(emb, gen, pos, mask)
    moved = (changed - all_und).abs().amax(-1) > 1e-4
    assert moved[gen].all()  # the gen expert computed the gen tokens
    assert not moved[0, :4].any() and not moved[1, :2].any()  # und tokens before any gen token: untouched
    assert moved[0, 6] and moved[1, 3]  # later und tokens change only through attention to gen tokens


def test_understanding_loss_never_reaches_the_generation_expert():
    """Text after a ViT image and before a noisy latent: noisy keys are hidden from the text."""
    model = tiny_model()
    image, latent = torch.rand(1, PX, PX) * 2 - 1, torch.randn(8, 8, 8)
    rows = [[VitImage(image), Text([5, 6, 7]), Text([8, 9], loss=True), NoisyLatent(latent, 0.5)]]
    out = model.understanding_forward(rows, logits_for="labels")
    ce_loss(out.logits, out.labels).backward()
    g = grads(model)
    gen_names = [n for n in g if model.is_generation_parameter(n)]
    assert gen_names and not any(g[n] for n in gen_names)
    assert g["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert g["vit_model.vision_model.embeddings.patch_embedding.weight"] and g["connector.fc1.weight"]
    assert g["language_model.lm_head.weight"] and g["language_model.model.norm.weight"]


def test_generation_loss_reaches_the_generation_expert_and_the_context_path_of_understanding():
    """The noisy block's velocity uses the gen expert; it attends to context tokens (und expert)
    and its markers are und tokens, so und attention/MLP weights get gradients, but the LM head
    and the final und norm (outputs of und tokens are never read) do not."""
    model = tiny_model()
    image, latent = torch.rand(1, PX, PX) * 2 - 1, torch.randn(8, 8, 8)
    loss = model.flow_loss([[VitImage(image), Text([5, 6, 7])]], latent[None])
    loss.backward()
    g = grads(model)
    for name in ("language_model.model.layers.3.self_attn.q_proj_moe_gen.weight",
                 "language_model.model.layers.0.mlp_moe_gen.up_proj.weight",
                 "language_model.model.norm_moe_gen.weight", "llm2vae.weight", "vae2llm.weight",
                 "time_embedder.mlp.0.weight",
                 "language_model.model.layers.0.self_attn.k_proj.weight",  # context keys
                 "vit_model.vision_model.embeddings.patch_embedding.weight"):
        assert g[name], name
    assert not g["language_model.lm_head.weight"]
    assert not g["language_model.model.norm.weight"]
    # The last layer's und queries/MLP only shape und outputs, which the velocity never reads.
    assert not g["language_model.model.layers.3.self_attn.q_proj.weight"]
    assert not g["language_model.model.layers.3.mlp.up_proj.weight"]


def test_understanding_loss_after_a_clean_latent_reaches_the_gen_experts_keys():
    """What is true when text follows a clean VAE image: text attends to its gen-expert keys/values,
    so earlier gen layers get gradients; the last layer's gen queries/MLP and norm_moe_gen do not."""
    model = tiny_model()
    rows = [[CleanLatent(torch.randn(8, 8, 8)), Text([8, 9], loss=True)]]
    out = model.understanding_forward(rows, logits_for="labels")
    ce_loss(out.logits, out.labels).backward()
    g = grads(model)
    assert g["language_model.model.layers.3.self_attn.k_proj_moe_gen.weight"]
    assert g["language_model.model.layers.0.mlp_moe_gen.up_proj.weight"]
    assert g["vae2llm.weight"] and g["time_embedder.mlp.2.weight"]
    assert not g["language_model.model.layers.3.self_attn.q_proj_moe_gen.weight"]
    assert not g["language_model.model.layers.3.mlp_moe_gen.up_proj.weight"]
    assert not g["language_model.model.norm_moe_gen.weight"] and not g["llm2vae.weight"]


def test_folded_and_plain_attention_bias_give_the_same_attention():
    """Short passes fold grouped queries into the bias; long ones repeat keys/values: same numbers."""
    torch.manual_seed(0)
    model = from_config(preset("tiny")).eval()
    cfg, lm = model.config.llm, model.language_model.model
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    short = 2 * cfg.head_dim * cfg.num_key_value_heads         # the longest pass that is folded
    assert groups > 1
    for length in (7, short, short + 1):
        mask = torch.rand(2, 1, length, length) > 0.5
        mask |= torch.eye(length, dtype=torch.bool)            # no empty row
        bias = attention_bias(mask, torch.float32, cfg)
        assert bias.shape[-2] == (groups * length if length <= short else length)
        x = torch.randn(2 * length, cfg.hidden_size)
        cos, sin = lm.rotary_emb(torch.arange(length).expand(2, -1), torch.float32)
        attn = lm.layers[0].self_attn
        routing = TokenRouting(torch.zeros(2, length, dtype=torch.bool))
        with torch.no_grad():
            out, _ = attn(x, routing, 2, cos, sin, bias, None)
            q, k, v = (t.view(2, length, -1, cfg.head_dim).transpose(1, 2) for t in attn._qkv("")(x))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            scores = (q @ k.transpose(-1, -2)) / cfg.head_dim ** 0.5
            ref = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
            ref = attn.o_proj(ref.transpose(1, 2).reshape(2 * length, -1))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
