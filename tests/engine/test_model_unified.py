"""The unified model's building blocks: the cached editing context equals recomputation for every CFG
branch, RoPE positions and masks follow BAGEL, the losses are finite and train, and every trainable
tensor belongs to exactly one stage's parameter group."""
import gc
import weakref

import pytest
import torch

from engine.model import (
    BRANCHES,
    CleanLatent,
    NoisyLatent,
    SkipPosition,
    Text,
    VitImage,
    ce_loss,
    edit_segments,
    from_config,
    patchify_latent,
    preset,
    unpatchify_latent,
)
from engine.model.sequence import CAUSAL, FULL, NOISE, GridSpec, attention_mask, pack_rows
from engine.model.vit import patchify_image

PX = 32


TARGETS = ("T1", "T2", "FLAIR")


def tiny_model(aligned: bool = False, seed: int = 0, targeted: bool = False):
    torch.manual_seed(seed)
    model = from_config(preset("tiny").replace(source_token_aligned=aligned,
                                               target_modalities=TARGETS if targeted else ())).eval()
    with torch.no_grad():  # zero-initialised outputs would make every velocity 0
        model.llm2vae.weight.normal_(std=0.05)
        if aligned:
            model.vae2llm_src.weight.normal_(std=0.05)
        if targeted:
            model.target_embedder.weight[1:].normal_(std=0.5)
    return model


def editing_inputs(model, samples: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(samples, 1, PX, PX, generator=g) * 2 - 1
    with torch.no_grad():
        latents = model.vae.encode(images)
    ids = [[5 + i for i in range(3 + 4 * s)] for s in range(samples)]  # different lengths → padding
    return images, latents, ids


@pytest.mark.parametrize("aligned,targeted", [(False, False), (True, False), (True, True)])
def test_cached_context_velocity_equals_recomputation_for_every_branch(aligned, targeted):
    model = tiny_model(aligned, targeted=targeted)
    images, latents, ids = editing_inputs(model)
    targets = [1, 3] if targeted else None
    x_t = torch.randn_like(latents)
    t = torch.tensor([0.8, 0.3])
    with torch.no_grad():
        context = model.encode_context(latents, images, ids, targets=targets)
        cached = model.velocity(x_t, t, context)
        again = model.velocity(x_t, t, context)  # the cache was not written by the first call
        reference = model.velocity_uncached(x_t, t, latents, images, ids, targets=targets)
    assert set(cached) == set(BRANCHES)
    for branch in BRANCHES:
        assert cached[branch].shape == latents.shape
        torch.testing.assert_close(cached[branch], reference[branch], atol=1e-5, rtol=0)
        torch.testing.assert_close(again[branch], cached[branch], atol=0, rtol=0)
    assert not torch.allclose(cached["cond"], cached["no_text"], atol=1e-4)
    assert not torch.allclose(cached["cond"], cached["no_image"], atol=1e-4)


def test_the_target_embedding_steers_the_velocity_where_the_text_is_kept():
    model = tiny_model(aligned=True, targeted=True)
    images, latents, ids = editing_inputs(model)
    x_t = torch.randn_like(latents)
    cfg = model.config
    assert [cfg.target_index(m) for m in ("t2", "FLAIR", "PD", None)] == [2, 3, 0, 0]
    with torch.no_grad():
        by_target = {m: model.velocity(x_t, 0.5, model.encode_context(latents, images, ids,
                                                                      targets=[cfg.target_index(m)] * 2))
                     for m in ("T1", "T2")}
        unset = model.velocity(x_t, 0.5, model.encode_context(latents, images, ids))
    one, two = by_target["T1"], by_target["T2"]
    assert not torch.allclose(one["cond"], two["cond"], atol=1e-3)          # cond and no_image read the text
    assert not torch.allclose(one["no_image"], two["no_image"], atol=1e-3)
    torch.testing.assert_close(one["no_text"], two["no_text"], atol=1e-6, rtol=0)   # the dropped-text branch
    torch.testing.assert_close(one["no_text"], unset["no_text"], atol=1e-6, rtol=0)  # is the "none" row
    with pytest.raises(ValueError, match="1 targets for 2 samples"):
        model.encode_context(latents, images, ids, targets=[1])


@pytest.mark.parametrize("targeted", [False, True])
def test_branch_subsets_and_batch_neighbours_do_not_change_a_velocity(targeted):
    model = tiny_model(aligned=targeted, targeted=targeted)
    images, latents, ids = editing_inputs(model)
    targets = [2, 1] if targeted else None
    x_t = torch.randn_like(latents)
    with torch.no_grad():
        context = model.encode_context(latents, images, ids, targets=targets)
        full = model.velocity(x_t, 0.5, context)
        subset = model.velocity(x_t, 0.5, context, branches=("cond", "no_image"))   # not adjacent: index_select
        alone_ctx = model.encode_context(latents[1:], images[1:], ids[1:], branches=("no_text",),
                                         targets=targets and targets[1:])
        alone = model.velocity(x_t[1:], 0.5, alone_ctx)
    assert context.select(("cond",)).cache.keys[0].data_ptr() == context.cache.keys[0].data_ptr()  # a view
    for branch in ("cond", "no_image"):
        torch.testing.assert_close(subset[branch], full[branch], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone["no_text"], full["no_text"][1:], atol=1e-5, rtol=0)


def test_velocity_layouts_are_built_once_per_branch_set_and_free_no_later_than_their_context():
    model = tiny_model(aligned=True)
    images, latents, ids = editing_inputs(model)
    x_t = torch.randn_like(latents)
    gc.disable()                         # a reference cycle would keep the context (and its K/V) alive
    try:
        with torch.no_grad():
            context = model.encode_context(latents, images, ids)
            for _ in range(2):
                model.velocity(x_t, 0.5, context)
                model.velocity(x_t, 0.5, context, branches=("cond", "no_image"))
        assert len(context.plans) == 2
        alive = weakref.ref(context)
        del context
        assert alive() is None
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="do not match"):
        model.latent_tokens(latents, torch.zeros(2), latents[..., :2], torch.ones(2))


def test_context_rope_positions_follow_bagels_editing_order():
    model = tiny_model()
    images, latents, ids = editing_inputs(model, samples=1)
    with torch.no_grad():
        context = model.encode_context(latents, images, ids)
    n_text = len(ids[0]) + 2  # <|im_start|> … <|im_end|>
    # cond: VAE block at 0, ViT block at 1, text 2 … 2+n_text−1; no_text: 2; no_image: text from 0
    assert context.next_position.tolist() == [2 + n_text, 2, n_text]
    rows = model.edit_rows(latents, images, ids, ("cond",))
    layout = pack_rows(rows, model.config.tokens, model.grid)
    n_lat = n_vit = 16
    pos = layout.position_ids[0].tolist()
    assert pos[:n_lat + 2] == [0] * (n_lat + 2) and pos[n_lat + 2:n_lat + n_vit + 4] == [1] * (n_vit + 2)
    assert pos[n_lat + n_vit + 4:] == list(range(2, 2 + n_text))
    tok = model.config.tokens
    assert layout.ids[0, 0] == tok.vision_start and layout.ids[0, n_lat + 1] == tok.vision_end
    assert layout.gen_mask[0].sum() == n_lat and not layout.gen_mask[0, 0]  # markers use the und expert


def test_attention_mask_hides_noisy_keys_and_keeps_text_causal():
    tok = preset("tiny").tokens
    rows = [[Text([5, 6]), NoisyLatent(torch.zeros(8, 2, 2), 0.5), Text([7], loss=True), SkipPosition(3),
             CleanLatent(torch.zeros(8, 2, 2))]]
    layout = pack_rows(rows, tok, GridSpec(vit_patch=8, latent_patch=2))
    mask = attention_mask(layout)[0, 0]
    kinds = layout.split_kind[0].tolist()
    assert kinds == [CAUSAL] * 4 + [NOISE] * 3 + [CAUSAL] * 3 + [FULL] * 3
    assert layout.position_ids[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 5, 6, 10, 10, 10]
    assert not mask[0, 1] and mask[1, 0]  # causal text
    assert mask[4, 6] and mask[6, 4] and mask[5, 0]  # noisy block: bidirectional, sees earlier text
    assert not mask[7:, 4:7].any()  # later splits never see noisy keys
    assert mask[10, 12] and mask[12, 10] and mask[10, 9]  # clean image bidirectional, sees text
    assert layout.labels[0, 7:10].tolist() == [7, tok.im_end, -100]


def test_patchify_latent_orders_p_q_c_and_inverts():
    z = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    tokens = patchify_latent(z, 2)
    assert tokens.shape == (1, 6, 8)
    assert tokens[0, 1].tolist() == [z[0, c, p, 2 + q].item() for p in range(2) for q in range(2) for c in range(2)]
    torch.testing.assert_close(unpatchify_latent(tokens, 2, 3, 2), z)


def test_flow_loss_is_the_velocity_error_and_trains():
    model = tiny_model()
    images, latents, ids = editing_inputs(model)
    rows = [edit_segments(latents[i], images[i], ids[i]) for i in range(2)]
    t, noise = torch.tensor([0.25, 0.9]), torch.randn_like(latents)
    with torch.no_grad():
        loss = model.flow_loss(rows, latents, t=t, noise=noise, reduction="none")
        x_t = (1 - t[:, None, None, None]) * latents + t[:, None, None, None] * noise
        v = model.velocity(x_t, t, model.encode_context(latents, images, ids, branches=("cond",)))["cond"]
    torch.testing.assert_close(loss, (v - (noise - latents)).pow(2).flatten(1).mean(1), atol=1e-5, rtol=1e-4)
    model.train()
    dropped = [edit_segments(latents[0], images[0], ids[0], use_vit=False, advance_dropped_images=True), []]
    sampled = model.flow_loss(dropped, latents, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sampled) and sampled.ndim == 0
    sampled.backward()
    assert model.llm2vae.weight.grad.abs().sum() > 0
    assert model.language_model.model.layers[0].mlp_moe_gen.up_proj.weight.grad.abs().sum() > 0


def test_understanding_forward_with_four_images_and_ce_loss_on_answers_only():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    panels = [VitImage(torch.rand(1, PX, PX, generator=g) * 2 - 1) for _ in range(4)]
    rows = [panels + [Text([10, 11, 12]), Text([20, 21], loss=True)], panels[:1] + [Text([13], loss=True)]]
    full = model.understanding_forward(rows)
    assert full.logits.shape[:2] == full.labels.shape and full.logits.shape[-1] == 1024
    assert (full.labels != -100).sum() == 3 + 2
    picked = model.understanding_forward(rows, logits_for="labels")
    loss_all, loss_picked = ce_loss(full.logits, full.labels), ce_loss(picked.logits, picked.labels)
    torch.testing.assert_close(loss_all, loss_picked)
    assert torch.isfinite(loss_picked) and loss_picked > 0
    loss_picked.backward()
    assert model.vit_model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    last = model.understanding_forward([panels[:2] + [Text([10, 11]), Text([], close=False)]], logits_for="last")
    assert last.logits.shape == (1, 1024)


def test_every_trainable_tensor_is_in_exactly_one_stage_group():
    for aligned in (False, True):
        model = from_config(preset("tiny").replace(source_token_aligned=aligned,
                                                   target_modalities=TARGETS if aligned else ()), device="meta")
        und = {id(p) for p in model.understanding_parameters()}
        gen = {id(p) for p in model.generation_parameters()}
        vae = {id(p) for p in model.vae.parameters()}
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert not und & gen and not (und | gen) & vae
        for name, p in trainable:
            assert (id(p) in und) != (id(p) in gen), name
        assert len(und) + len(gen) == len(trainable)
        gen_names = {n for n, _ in model.generation_named_parameters()}
        assert "language_model.model.norm_moe_gen.weight" in gen_names and "time_embedder.mlp.0.weight" in gen_names
        assert ("vae2llm_src.weight" in gen_names) == aligned == ("target_embedder.weight" in gen_names)
        und_names = {n for n, _ in model.understanding_named_parameters()}
        assert {"language_model.lm_head.weight", "language_model.model.embed_tokens.weight",
                "language_model.model.norm.weight", "connector.fc1.weight"} <= und_names
        assert not any("pos_embed" in n for n in und_names | gen_names)  # fixed sin-cos tables


def test_a_fresh_model_s_image_tokens_carry_their_content_at_the_scale_of_their_positions():
    # untrained ViT + connector: the image must not reach the language model drowned by the position
    # tables it is added to (PyTorch's N(0, 1) ViT positions and an N(0, 0.02) connector left it ~23×
    # below the 2-D sin-cos table, and Stage I barely learnt to tell the modalities apart)
    torch.manual_seed(0)
    model = from_config(preset("default"))
    images = torch.rand(4, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        vit = model.vit_model.vision_model
        content = vit.embeddings.patch_embedding(patchify_image(images, model.config.vit.patch_size))
        positions = vit.embeddings.position_embedding.weight
        tokens = model.connector(model.vit_model(images))
    assert content.std() > positions.std()
    assert 0.3 < tokens.std() / model.vit_pos_embed.pos_embed.std() < 3
    width = model.config.vit.hidden_size
    assert abs(positions.std().item() - width ** -0.5) < 0.2 * width ** -0.5     # SigLIP's N(0, 1/width)


def test_model_state_dict_excludes_the_vae_but_moves_it_along():
    model = tiny_model()
    assert not any(k.startswith(("encoder.", "decoder.", "vae.")) for k in model.state_dict())
    assert set(model.vae_state_dict()) == set(model.vae.state_dict())
    model.to(torch.float64)
    assert model.vae.encoder.conv_in.weight.dtype == torch.float64
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    with pytest.raises(ValueError, match="multiple of 8"):
        model.latent_shape(36, 32)
    assert model.latent_shape(64, 32) == (8, 16, 8)
