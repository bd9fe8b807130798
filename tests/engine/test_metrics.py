"""PSNR / SSIM / MAE against hand computations and the properties the protocol relies on."""
import math

import numpy as np
import pytest

from engine.evaluation import metrics
from engine.jobs import Cancelled, CancelToken


def brute_force_ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """SSIM written out window by window: 11×11 gaussian weights (sigma 1.5), mirrored borders."""
    r = 5
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    xp, yp = np.pad(x, r, mode="symmetric"), np.pad(y, r, mode="symmetric")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = np.empty_like(x, dtype=float)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            wx, wy = xp[i:i + 2 * r + 1, j:j + 2 * r + 1], yp[i:i + 2 * r + 1, j:j + 2 * r + 1]
            mx, my = (w * wx).sum(), (w * wy).sum()
            vx, vy = (w * wx * wx).sum() - mx**2, (w * wy * wy).sum() - my**2
            cxy = (w * wx * wy).sum() - mx * my
            out[i, j] = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return out


def test_psnr_by_hand():
    target = np.full((4, 4), 0.5)
    assert metrics.psnr(target + 0.1, target) == pytest.approx(20.0)
    assert metrics.psnr(target + 0.1, target, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))
    assert metrics.psnr(target, target) == math.inf


def test_psnr_and_mae_inside_a_mask_only_count_masked_pixels():
    target = np.zeros((3, 3))
    pred = target.copy()
    pred[0, 0] = 1.0
    mask = np.zeros((3, 3), bool)
    mask[1:, 1:] = True
    assert metrics.psnr(pred, target, mask=mask) == math.inf
    assert metrics.mae(pred, target) == pytest.approx(1 / 9)
    assert metrics.mae(pred, target, mask=~mask) == pytest.approx(1 / 5)


def test_mae_of_a_constant_offset_is_the_offset():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1000, 1500, size=(3, 12, 12))
    assert metrics.mae(ref + 37.5, ref) == pytest.approx(37.5)
    assert metrics.mae(ref - 37.5, ref) == pytest.approx(37.5)


def test_ssim_map_matches_the_window_by_window_definition():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(14, 15))
    y = np.clip(x + rng.normal(0, 0.1, size=x.shape), 0, 1)
    np.testing.assert_allclose(metrics.ssim_map(x, y), brute_force_ssim_map(x, y), rtol=1e-10, atol=1e-12)
    expected = brute_force_ssim_map(x, y)[5:-5, 5:-5].mean()
    assert metrics.ssim(x, y) == pytest.approx(expected, rel=1e-10)


def test_ssim_of_two_constant_images_is_the_luminance_term():
    x, y = np.full((12, 12), 0.2), np.full((12, 12), 0.6)
    c1 = 0.01**2
    assert metrics.ssim(x, y) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))


def test_ssim_properties():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(2, 16, 16))
    y = np.clip(x + rng.normal(0, 0.2, size=x.shape), 0, 1)
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.ssim(x, y) == pytest.approx(metrics.ssim(y, x))
    assert metrics.ssim(x, y) < 1.0
    # a stack is scored slice by slice: no smoothing across slices
    assert metrics.ssim_map(x, y)[1] == pytest.approx(metrics.ssim_map(x[1], y[1]))
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim(np.zeros((12, 12)), np.zeros((12, 13)))


def ct_head(shape=(6, 24, 24)) -> np.ndarray:
    """Air at −1000 HU around a noisy 'head' of soft tissue with a brighter core."""
    rng = np.random.default_rng(3)
    z, y, x = np.indices(shape)
    r = np.hypot(y - shape[1] / 2, x - shape[2] / 2)
    vol = np.where(r < 9, 40.0, -1000.0) + np.where(r < 4, 700.0, 0.0)
    return vol + rng.normal(0, 20, size=shape)


def test_identical_volumes_score_perfectly():
    ref = ct_head()
    ev = metrics.evaluate(ref, ref, "CT")
    assert ev.whole.ssim == pytest.approx(100.0)
    assert ev.whole.psnr == math.inf
    assert ev.whole.mae == 0.0
    assert ev.body is not None and ev.body.ssim == pytest.approx(100.0)
    assert ev.unit == "HU" and 0 < ev.mask_fraction < 1
    assert set(ev.per_slice) == {"psnr", "ssim", "mae"}
    assert all(len(v) == ref.shape[0] for v in ev.per_slice.values())


def test_ct_offset_gives_hand_computed_psnr_and_mae():
    ref = np.clip(ct_head(), -1000, 1600)
    offset = 302.4                      # a tenth of the CT normalisation range (−1024…2000 HU)
    ev = metrics.evaluate(ref + offset, ref, "CT")
    assert ev.whole.mae == pytest.approx(offset)
    assert ev.body.mae == pytest.approx(offset)
    assert ev.whole.psnr == pytest.approx(20.0)
    assert ev.body.psnr == pytest.approx(20.0)
    np.testing.assert_allclose(ev.per_slice["psnr"], 20.0)
    np.testing.assert_allclose(ev.per_slice["mae"], offset)


def test_evaluation_matches_the_single_metrics_on_normalised_intensities():
    ref = ct_head()
    rng = np.random.default_rng(4)
    syn = ref + rng.normal(0, 60, size=ref.shape)
    mask = ref > -500
    ev = metrics.evaluate(syn, ref, "CT", mask=mask)
    sn, rn = (np.clip((a + 1024) / 3024, 0, 1) for a in (syn, ref))
    assert ev.whole.psnr == pytest.approx(metrics.psnr(sn, rn))
    assert ev.whole.ssim == pytest.approx(100 * metrics.ssim(sn, rn))
    assert ev.body.psnr == pytest.approx(metrics.psnr(sn, rn, mask=mask))
    assert ev.body.ssim == pytest.approx(100 * metrics.ssim(sn, rn, mask=mask))
    assert ev.body.mae == pytest.approx(metrics.mae(syn, ref, mask=mask))
    assert ev.per_slice["ssim"][2] == pytest.approx(100 * metrics.ssim(sn[2], rn[2]))


def test_mr_is_normalised_per_volume_so_a_rescaled_copy_scores_perfectly_mae_included():
    # MR units are arbitrary (a model's scale, another scanner's): a copy on twice the scale is the same image
    rng = np.random.default_rng(5)
    ref = np.abs(ct_head() + 1000) + rng.uniform(0, 1, size=(6, 24, 24))   # arbitrary MR-like units
    ev = metrics.evaluate(2.0 * ref, ref, "T2")
    assert ev.whole.ssim == pytest.approx(100.0)
    assert ev.whole.psnr == math.inf
    assert ev.whole.mae == pytest.approx(0.0, abs=1e-9) and ev.unit == metrics.RELATIVE_MAE_UNIT
    assert ev.normalisations[0].hi == pytest.approx(2 * ev.normalisations[1].hi)


def test_mr_mae_is_percent_of_the_normalised_range_by_hand():
    ref = np.zeros((2, 24, 24))
    ref[:, 4:20, 4:20] = np.linspace(100.0, 300.0, 16)          # a ramp of 16 values inside the head
    syn = 5.0 * ref                                             # another scale …
    syn[:, 4:12, 4:20] *= 1.5                                   # … and another contrast in half the head
    ev = metrics.evaluate(syn, ref, "T1")
    sn = metrics.modalities.normalise(syn, ev.normalisations[0]).astype(np.float64)
    rn = metrics.modalities.normalise(ref, ev.normalisations[1]).astype(np.float64)
    assert ev.whole.mae == pytest.approx(100 * np.abs(sn - rn).mean())
    assert ev.whole.mae > 1.0                                   # the contrast is seen, the scale is not
    assert metrics.evaluate(5.0 * ref, ref, "T1").whole.mae == pytest.approx(0.0, abs=1e-4)
    assert metrics.mae_unit("CT") == "HU" and metrics.mae_unit("PET") == "SUVbw"


def test_only_the_region_the_reference_covers_is_scored():
    # a reference resampled onto a larger grid is filled beyond its field of view: that fill is not scored
    ref = ct_head(shape=(4, 32, 32))
    syn = ref + 20.0
    covered = np.zeros(ref.shape, bool)
    covered[:, :, :16] = True
    ref_filled = np.where(covered, ref, -1024.0)                # what resampling leaves outside
    ev = metrics.evaluate(syn, ref_filled, "CT", covered=covered)
    assert ev.whole.mae == pytest.approx(20.0) and ev.body.mae == pytest.approx(20.0)
    np.testing.assert_allclose(ev.per_slice["mae"], 20.0)
    whole_grid = metrics.evaluate(syn, ref_filled, "CT")        # the fill counted: far worse than the truth
    assert whole_grid.whole.mae > 100.0
    assert ev.whole.ssim > whole_grid.whole.ssim
    # a synthetic equal to the reference wherever it covers: perfect, however close the fill lies
    exact = metrics.evaluate(np.where(covered, ref, 500.0), ref_filled, "CT", covered=covered)
    assert exact.whole.ssim == pytest.approx(100.0) and exact.body.ssim == pytest.approx(100.0)
    assert exact.mask_fraction == pytest.approx(float(metrics.modalities.body_mask(ref, "CT")[covered].mean()))
    uncovered_slice = covered.copy()
    uncovered_slice[0] = False                                  # a slice outside the reference: no score
    assert np.isnan(metrics.evaluate(syn, ref_filled, "CT", covered=uncovered_slice).per_slice["mae"][0])
    with pytest.raises(ValueError, match="covers none"):
        metrics.evaluate(syn, ref, "CT", covered=np.zeros(ref.shape, bool))


def test_evaluation_reports_progress_and_can_be_cancelled():
    ref = ct_head(shape=(40, 16, 16))
    seen = []
    metrics.evaluate(ref, ref, "CT", progress=seen.append)
    assert seen[-1].done == seen[-1].total == 40 and len(seen) == 3
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        metrics.evaluate(ref, ref, "CT", cancel=token)


def test_per_slice_scores_skip_slices_without_body():
    ref = np.full((4, 32, 32), -1000.0)
    ref[1:3, 8:24, 8:24] = 40.0                      # head only in slices 1 and 2
    syn = ref + 10.0
    ev = metrics.evaluate(syn, ref, "CT")
    for key in ("psnr", "ssim", "mae"):
        values = ev.per_slice[key]
        assert np.isnan(values[[0, 3]]).all()         # blank slices are not a perfect score
        assert np.isfinite(values[[1, 2]]).all()
    np.testing.assert_allclose(ev.per_slice["mae"][1:3], 10.0)


def test_through_plane_variation_against_the_reference_by_hand_across_chunks():
    ref = ct_head(shape=(40, 16, 16))                # 40 slices: three chunks of the scoring loop
    mask = ref > -500
    stripes = np.where(np.arange(40) % 2, 150.0, -150.0)[:, None, None]
    syn = ref + stripes                              # slices that disagree: stripes across the slices
    pairs = mask[1:] & mask[:-1]
    sn, rn = (np.clip((a + 1024) / 3024, 0, 1) for a in (syn, ref))
    expected = np.abs(np.diff(sn, axis=0))[pairs].sum() / np.abs(np.diff(rn, axis=0))[pairs].sum()
    ev = metrics.evaluate(syn, ref, "CT", mask=mask)
    assert ev.through_plane == pytest.approx(expected) and ev.through_plane > 1.5
    assert metrics.evaluate(ref, ref, "CT", mask=mask).through_plane == pytest.approx(1.0)
    repeated = np.repeat(ref[20:21], 40, axis=0)     # one slice repeated: no change across slices
    assert metrics.evaluate(repeated, ref, "CT", mask=mask).through_plane == pytest.approx(0.0)
    assert metrics.evaluate(ref[:1], ref[:1], "CT").through_plane is None
    assert ev.to_dict()["through_plane"] == ev.through_plane
