"""Flow-matching schedule, solvers, three-branch guidance and the top-level sampler."""
from __future__ import annotations

import math

import pytest
import torch

from engine.jobs import Cancelled, CancelToken
from engine.sampling import (
    COND,
    NO_IMAGE,
    NO_TEXT,
    GuidanceConfig,
    combine_guidance,
    draw_noise,
    guided_velocity,
    inference_timesteps,
    interpolate,
    network_calls,
    predict_x0,
    sample,
    sample_training_timesteps,
    shift_timesteps,
    unshift_timesteps,
    velocity_target,
)


# -- schedule ------------------------------------------------------------------------------
def test_shift_formula_values():
    assert shift_timesteps(0.5, 3.0) == pytest.approx(0.75)
    assert shift_timesteps(0.25, 3.0) == pytest.approx(0.5)
    assert shift_timesteps(0.0, 3.0) == 0.0 and shift_timesteps(1.0, 3.0) == 1.0
    assert shift_timesteps(0.3, 1.0) == pytest.approx(0.3)
    assert unshift_timesteps(shift_timesteps(0.37, 3.0), 3.0) == pytest.approx(0.37)
    with pytest.raises(ValueError):
        shift_timesteps(0.5, 0.0)


def test_inference_timesteps_match_bagel_grid():
    assert inference_timesteps(2, shift=3.0).tolist() == pytest.approx([1.0, 0.75, 0.0])
    # BAGEL: shift(linspace(1, 0, 50)), 49 network calls == our steps=49.
    bagel = [3 * u / (1 + 2 * u) for u in torch.linspace(1, 0, 50, dtype=torch.float64).tolist()]
    assert inference_timesteps(49, shift=3.0).tolist() == pytest.approx(bagel)
    partial = inference_timesteps(4, shift=3.0, t_start=0.5)
    assert partial[0] == 0.5 and partial[-1] == 0.0 and len(partial) == 5
    assert bool((partial[1:] < partial[:-1]).all())


def test_training_timesteps_are_seeded_and_shifted():
    a = sample_training_timesteps(4096, shift=3.0, generator=torch.Generator().manual_seed(1))
    b = sample_training_timesteps(4096, shift=3.0, generator=torch.Generator().manual_seed(1))
    plain = sample_training_timesteps(4096, shift=1.0, generator=torch.Generator().manual_seed(1))
    uniform = sample_training_timesteps(4096, distribution="uniform", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4096,)
    assert float(a.min()) > 0 and float(a.max()) < 1
    assert abs(float(plain.mean()) - 0.5) < 0.02 and float(a.mean()) > 0.65
    assert abs(float(uniform.mean()) - 0.5) < 0.02 and float(uniform.std()) > float(plain.std())
    with pytest.raises(ValueError):
        sample_training_timesteps(2, distribution="beta")


def test_interpolation_and_velocity_target_convention():
    x0, noise = torch.zeros(2, 3), torch.ones(2, 3)
    t = torch.tensor([0.25, 1.0])
    x_t = interpolate(x0, noise, t)
    assert torch.allclose(x_t, torch.tensor([[0.25] * 3, [1.0] * 3]))
    v = velocity_target(x0, noise)
    assert torch.equal(v, noise - x0)
    assert torch.allclose(predict_x0(x_t, v, t), x0)


# -- solvers -------------------------------------------------------------------------------
def point_mass_velocity(x0):
    """All data at x0: the exact velocity is (x − x0)/t and the paths are straight lines."""
    return lambda x, t: (x - x0) / t.reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_velocity(mu, sigma):
    """Data ~ N(mu, sigma²) per element: E[ε − x0 | x_t] in closed form; the flow maps ε to mu + sigma·ε."""
    def velocity(x, t):
        t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        a, b = 1 - t, t
        var = a * a * sigma ** 2 + b * b
        return (b - a * sigma ** 2) / var * (x - a * mu) - mu
    return velocity


@pytest.mark.parametrize("solver", ["euler", "midpoint"])   # heun evaluates at t = 0, singular here
def test_solvers_recover_a_point_mass(solver):
    x0 = torch.linspace(-1, 1, 12).reshape(2, 6)
    out = sample(point_mass_velocity(x0), (2, 6), steps=5, shift=3.0, solver=solver, seed=3)
    assert torch.allclose(out, x0, atol=1e-5)


def test_second_order_solvers_beat_euler_on_a_curved_flow():
    mu, sigma, shape = 0.5, 0.2, (4, 64)
    exact = mu + sigma * draw_noise(shape, seed=7)
    errors = {}
    for solver in ("euler", "heun", "midpoint"):
        out = sample(gaussian_velocity(mu, sigma), shape, steps=8, shift=1.0, solver=solver, seed=7)
        errors[solver] = float((out - exact).abs().max())
    fine = sample(gaussian_velocity(mu, sigma), shape, steps=400, shift=1.0, solver="euler", seed=7)
    assert float((fine - exact).abs().max()) < 5e-3          # the closed form is right
    assert errors["heun"] < errors["euler"] / 3
    assert errors["midpoint"] < errors["euler"] / 3
    assert errors["heun"] < 0.02


def test_network_call_counts():
    calls = []
    field = gaussian_velocity(0.0, 0.5)
    for solver in ("euler", "heun", "midpoint"):
        calls.clear()
        sample(lambda x, t: calls.append(1) or field(x, t), (1, 2), steps=6, shift=3.0, solver=solver)
        assert len(calls) == network_calls(solver, 6)
    assert network_calls("euler", 6) == 6 and network_calls("heun", 6) == 12


def test_same_seed_same_result_other_seed_other_result():
    field = gaussian_velocity(0.1, 0.5)
    a = sample(field, (2, 3, 4), steps=4, shift=3.0, seed=11)
    b = sample(field, (2, 3, 4), steps=4, shift=3.0, seed=11)
    c = sample(field, (2, 3, 4), steps=4, shift=3.0, seed=12)
    d = sample(field, (2, 3, 4), steps=4, shift=3.0, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.allclose(a, c)


def test_start_from_a_noised_init():
    init = torch.full((1, 4), 2.0)
    seen = []

    def field(x, t):
        seen.append((x.clone(), float(t[0])))
        return torch.zeros_like(x)

    out = sample(field, (1, 4), steps=3, shift=3.0, init=init, t_start=0.3, seed=5)
    expected_start = 0.7 * init + 0.3 * draw_noise((1, 4), seed=5)
    assert torch.allclose(seen[0][0], expected_start) and seen[0][1] == pytest.approx(0.3)
    assert torch.allclose(out, expected_start)          # zero velocity: nothing moves
    with pytest.raises(ValueError, match="init"):
        sample(field, (1, 4), steps=3, shift=3.0, t_start=0.5)


def test_given_noise_is_where_the_flow_starts():
    field = gaussian_velocity(0.1, 0.5)
    noise = draw_noise((2, 3), seed=7)
    assert torch.equal(sample(field, (2, 3), steps=4, shift=3.0, noise=noise),
                       sample(field, (2, 3), steps=4, shift=3.0, seed=7))
    init, seen = torch.full((2, 3), 2.0), []
    sample(lambda x, t: seen.append(x.clone()) or torch.zeros_like(x), (2, 3), steps=2, shift=1.0, init=init,
           t_start=0.4, noise=noise)
    assert torch.allclose(seen[0], 0.6 * init + 0.4 * noise)
    with pytest.raises(ValueError, match="noise has shape"):
        sample(field, (2, 3), steps=2, shift=1.0, noise=torch.zeros(3, 2))


def test_model_sees_requested_dtype_state_stays_float32():
    dtypes = []
    field = point_mass_velocity(torch.zeros(1, 4))

    def recording(x, t):
        dtypes.append(x.dtype)
        return field(x.float(), t).to(x.dtype)

    out = sample(recording, (1, 4), steps=3, shift=3.0, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and set(dtypes) == {torch.bfloat16}


def test_cancel_stops_midway_and_progress_is_reported_per_step():
    token, calls, reports = CancelToken(), [], []

    def field(x, t):
        calls.append(float(t[0]))
        if len(calls) == 3:
            token.cancel()
        return torch.zeros_like(x)

    with pytest.raises(Cancelled):
        sample(field, (1, 2), steps=10, shift=3.0, cancel=token, progress=reports.append)
    assert len(calls) == 3 and [p.done for p in reports] == [1, 2, 3]

    reports.clear()
    sample(lambda x, t: torch.zeros_like(x), (1, 2), steps=7, shift=3.0, solver="heun", progress=reports.append)
    assert [p.done for p in reports] == list(range(1, 8)) and {p.total for p in reports} == {7}


# -- guidance ------------------------------------------------------------------------------
V = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])          # (batch 1, 2 tokens, 2 channels)
V_NO_TEXT = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
V_NO_IMAGE = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
BRANCH_OUT = {COND: V, NO_TEXT: V_NO_TEXT, NO_IMAGE: V_NO_IMAGE}
# by hand, s_t = 2, s_i = 1.5: v_t' = [[2, 0], [0, 3]]; v' = v_ni + 1.5 (v_t' − v_ni) = [[2.5, −0.5], [0, 4.5]]
GUIDED = torch.tensor([[[2.5, -0.5], [0.0, 4.5]]])


def test_guidance_global_renorm_by_hand():
    out = combine_guidance(BRANCH_OUT, 2.0, 1.5, "global", 0.0)
    assert torch.allclose(out, GUIDED * math.sqrt(5.0 / 26.75), atol=1e-6)
    assert torch.allclose(combine_guidance(BRANCH_OUT, 2.0, 1.5, "global", 1.0), GUIDED)   # r = 1: no renorm
    assert torch.allclose(combine_guidance(BRANCH_OUT, 2.0, 1.5, "global", 0.9), GUIDED * 0.9)


def test_guidance_channel_renorm_by_hand():
    out = combine_guidance(BRANCH_OUT, 2.0, 1.5, "channel", 0.0)
    expected = torch.tensor([[[2.5 / math.sqrt(6.5), -0.5 / math.sqrt(6.5)], [0.0, 2.0]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_guidance_text_channel_renorm_by_hand():
    # v_t' per token renormed against v: token 0 ×1/2 → [1, 0]; token 1 ×2/3 → [0, 2];
    # then v_ni + 1.5 (· − v_ni) with no renorm after.
    out = combine_guidance(BRANCH_OUT, 2.0, 1.5, "text_channel", 0.0)
    assert torch.allclose(out, torch.tensor([[[1.0, -0.5], [0.0, 3.0]]]), atol=1e-6)


def test_guidance_channel_dim_for_image_shaped_latents():
    as_image = {k: v.permute(0, 2, 1).reshape(1, 2, 2, 1) for k, v in BRANCH_OUT.items()}   # (b, c, h, w)
    out = combine_guidance(as_image, 2.0, 1.5, "channel", 0.0, channel_dim=1)
    tokens_last = combine_guidance(BRANCH_OUT, 2.0, 1.5, "channel", 0.0)
    assert torch.allclose(out.reshape(1, 2, 2).permute(0, 2, 1), tokens_last)


def test_token_patch_renorm_matches_bagel_patch_tokens():
    gen = torch.Generator().manual_seed(0)
    image = {b: torch.randn(2, 3, 4, 6, generator=gen) for b in (COND, NO_TEXT, NO_IMAGE)}   # (b, c, h, w)

    def tokens(x):                        # 2×2 patches → (b, h/2·w/2, c·4), as BAGEL packs latents
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, 4 * c)

    for mode in ("channel", "text_channel"):
        out = combine_guidance(image, 3.0, 1.5, mode, 0.0, channel_dim=1, token_patch=2)
        packed = combine_guidance({k: tokens(v) for k, v in image.items()}, 3.0, 1.5, mode, 0.0)
        assert torch.allclose(tokens(out), packed, atol=1e-6)
    with pytest.raises(ValueError, match="token_patch"):
        combine_guidance(image, 3.0, 1.5, "channel", 0.0, channel_dim=1, token_patch=4)


def test_global_renorm_is_per_batch_element():
    big = {k: torch.cat([v, 10 * v]) for k, v in BRANCH_OUT.items()}
    out = combine_guidance(big, 2.0, 1.5, "global", 0.0)
    per_sample = combine_guidance(BRANCH_OUT, 2.0, 1.5, "global", 0.0)
    assert torch.allclose(out[0:1], per_sample, atol=1e-6)
    assert torch.allclose(out[1:2], 10 * per_sample, atol=1e-5)


def test_guidance_scales_of_one_need_no_extra_branches():
    only_cond = {COND: V}
    assert torch.equal(combine_guidance(only_cond, 1.0, 1.0), V)
    out = combine_guidance({COND: V, NO_IMAGE: V_NO_IMAGE}, 1.0, 1.5, "global", 1.0)
    assert torch.allclose(out, V_NO_IMAGE + 1.5 * (V - V_NO_IMAGE))
    with pytest.raises(ValueError, match="no_text"):
        combine_guidance(only_cond, 2.0, 1.0)


def test_branches_only_inside_interval_and_when_scale_above_one():
    requested = []

    def branch_fn(x, t, branches):
        requested.append((float(t[0]), branches))
        return {b: torch.zeros_like(x) for b in branches}

    cfg = GuidanceConfig(text_scale=4.0, image_scale=1.5, interval=(0.4, 1.0))
    sample(branch_fn, (1, 3, 2), steps=10, shift=1.0, guidance=cfg)
    assert len(requested) == 10
    for t, branches in requested:
        if t > 0.4 + 1e-9:
            assert branches == (COND, NO_TEXT, NO_IMAGE)
        else:
            assert branches == (COND,)
    assert any(b == (COND,) for _, b in requested) and any(len(b) == 3 for _, b in requested)

    requested.clear()
    sample(branch_fn, (1, 3, 2), steps=4, shift=1.0, guidance=GuidanceConfig(text_scale=3.0, image_scale=1.0,
                                                                              interval=(0.0, 1.0)))
    assert {b for _, b in requested} == {(COND, NO_TEXT)}
    requested.clear()
    sample(branch_fn, (1, 3, 2), steps=4, shift=1.0, guidance=GuidanceConfig.off())
    assert {b for _, b in requested} == {(COND,)}


def test_guided_velocity_adapter_uses_the_combination():
    cfg = GuidanceConfig(text_scale=2.0, image_scale=1.5, interval=(0.0, 1.0), renorm="channel")
    v = guided_velocity(lambda x, t, branches: {b: BRANCH_OUT[b] for b in branches}, cfg)(V, torch.tensor([0.5]))
    assert torch.allclose(v, combine_guidance(BRANCH_OUT, 2.0, 1.5, "channel", 0.0))
    outside = GuidanceConfig(interval=(0.6, 1.0))
    v = guided_velocity(lambda x, t, branches: {b: BRANCH_OUT[b] for b in branches}, outside)(V, torch.tensor([0.5]))
    assert torch.equal(v, V)


def test_guidance_config_round_trip_and_validation():
    cfg = GuidanceConfig(text_scale=3.0, image_scale=2.0, interval=(0.0, 1.0), renorm="text_channel")
    assert GuidanceConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["interval"] == [0.0, 1.0]
    assert GuidanceConfig() == GuidanceConfig(4.0, 1.5, (0.4, 1.0), "global", 0.0)
    for bad in ({"renorm": "tokens"}, {"interval": (0.8, 0.2)}, {"text_scale": 0.5}, {"renorm_min": 2.0}):
        with pytest.raises(ValueError):
            GuidanceConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        GuidanceConfig.from_dict({"txt_scale": 2.0})
