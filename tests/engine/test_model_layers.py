"""Building blocks: RMSNorm, RoPE, BAGEL's sin-cos table, the timestep embedding, ViT patches, and the
FLUX autoencoder's resolutions and scale/shift."""
import dataclasses
import math

import pytest
import torch

from engine.model import AutoEncoder, VAEConfig, preset
from engine.model.layers import (
    PositionEmbedding,
    RMSNorm,
    RotaryEmbedding,
    TimestepEmbedder,
    apply_rotary,
    timestep_embedding,
)
from engine.model.vit import SiglipVisionModel, patchify_image


def test_rmsnorm_computes_in_float32_then_scales():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8) * 100
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert norm.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]), torch.float32)
        ck, sk = rope(torch.tensor([[pk]]), torch.float32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))
    assert not torch.allclose(score(7, 3), score(7, 4))
    assert "inv_freq" not in rope.state_dict()  # non-persistent, never in a checkpoint
    assert rope.to(torch.bfloat16).inv_freq.dtype == torch.float32


def test_sincos_table_has_bagels_layout():
    side, dim = 5, 16
    table = PositionEmbedding(side, dim).pos_embed
    assert not table.requires_grad
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = 3, 1
    row = table[r * side + c].double()
    torch.testing.assert_close(row[:quarter], torch.sin(c * omega), atol=1e-6, rtol=0)  # column first
    torch.testing.assert_close(row[quarter:2 * quarter], torch.cos(c * omega), atol=1e-6, rtol=0)
    torch.testing.assert_close(row[2 * quarter:3 * quarter], torch.sin(r * omega), atol=1e-6, rtol=0)
    torch.testing.assert_close(row[3 * quarter:], torch.cos(r * omega), atol=1e-6, rtol=0)


def test_timestep_embedding_is_unscaled_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 0.5]), 256)
    assert torch.all(emb[0, :128] == 1) and torch.all(emb[0, 128:] == 0)
    assert emb[1, 0].item() == pytest.approx(math.cos(0.5)) and emb[1, 128].item() == pytest.approx(math.sin(0.5))
    embedder = TimestepEmbedder(32)
    assert set(embedder.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}


def test_linear_patch_embedding_equals_the_converted_conv2d():
    """BAGEL converts SigLIP's Conv2d to a Linear over (patch-row, patch-col, channel) features."""
    cfg = dataclasses.replace(preset("tiny").vit, num_channels=3)
    conv = torch.nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
    vit = SiglipVisionModel(cfg)
    linear = vit.vision_model.embeddings.patch_embedding
    with torch.no_grad():
        linear.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(cfg.hidden_size, -1))
        linear.bias.copy_(conv.bias)
    images = torch.randn(2, 3, 16, 24)
    expected = conv(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(linear(patchify_image(images, cfg.patch_size)), expected, atol=1e-5, rtol=1e-5)


def test_vit_repeats_grayscale_to_rgb_and_counts_tokens():
    cfg = dataclasses.replace(preset("tiny").vit, num_channels=3)
    vit = SiglipVisionModel(cfg, max_num_patch_per_side=16).eval()
    grey = torch.rand(2, 1, 32, 48) * 2 - 1
    out = vit(grey)
    assert out.shape == (2, 4 * 6, cfg.hidden_size)
    torch.testing.assert_close(out, vit(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="multiple"):
        vit(torch.zeros(1, 1, 30, 32))


@pytest.mark.parametrize("ch_mult,factor", [((1, 2), 2), ((1, 2, 4), 4)])
def test_vae_downsamples_per_ch_mult_and_decodes_to_the_input_shape(ch_mult, factor):
    cfg = VAEConfig(in_channels=1, out_channels=1, ch=32, ch_mult=ch_mult, num_res_blocks=1, z_channels=8)
    vae = AutoEncoder(cfg).eval()
    x = torch.rand(2, 1, 32, 24) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 8, 32 // factor, 24 // factor)
        assert vae.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="multiple"):
        vae.encode(torch.zeros(1, 1, 33, 32))


def test_vae_applies_scale_and_shift_and_can_sample():
    base = VAEConfig(in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                     scale_factor=1.0, shift_factor=0.0, mid_attention=False)
    plain = AutoEncoder(base).eval()
    scaled = AutoEncoder(dataclasses.replace(base, scale_factor=0.3611, shift_factor=0.1159)).eval()
    scaled.load_state_dict(plain.state_dict())
    assert not any("attn_1" in k for k in plain.state_dict())
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = plain.encode(x)
        torch.testing.assert_close(scaled.encode(x), 0.3611 * (raw - 0.1159))
        torch.testing.assert_close(scaled.decode(scaled.encode(x)), plain.decode(raw), atol=1e-5, rtol=1e-5)
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        a, b = plain.encode(x, sample=True, generator=g1), plain.encode(x, sample=True, generator=g2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, raw)
