"""The source-guided filter (engine/inference/guided.py): detail from the guide through window-wise
lines, contrast inversions, what the guide does not show, and the radius on the input grid."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.inference import guided
from engine.inference.guided import fits_at_model_resolution, guided_filter, guided_stack, native_depth, native_radius
from engine.inference.slices import Placement


def tissues(size: int = 64, seed: int = 0) -> np.ndarray:
    """Three tissues with sharp edges: a disc with an off-centre square inside, values 0.2 / 0.5 / 0.9."""
    y, x = np.mgrid[:size, :size]
    image = np.full((size, size), 0.2)
    image[(y - size / 2) ** 2 + (x - size / 2) ** 2 < (0.4 * size) ** 2] = 0.5
    image[size // 3:size // 2, size // 3:size // 2 + 5] = 0.9
    return image + np.random.default_rng(seed).normal(0.0, 0.005, image.shape)


def low_resolution(image: np.ndarray, factor: int = 2) -> np.ndarray:
    """What a model at 1/factor the size gives back on the input grid: shrunk, then linearly enlarged."""
    small = ndimage.zoom(ndimage.uniform_filter(image, factor), 1.0 / factor, order=1)
    return ndimage.zoom(small, np.array(image.shape) / np.array(small.shape), order=1)


@pytest.mark.parametrize("slope", [0.8, -0.8])          # the same contrast order, and inverted (T1 → T2)
def test_detail_the_guide_shows_comes_back_through_the_local_line(slope):
    guide = tissues()
    truth = np.clip(0.5 + slope * (guide - 0.5), 0.0, 1.0)
    blurred = low_resolution(truth) + np.random.default_rng(1).normal(0.0, 0.03, truth.shape)   # mottled too
    refined = guided_filter(guide, np.clip(blurred, 0.0, 1.0), radius=2)
    assert refined.dtype == np.float32 and refined.shape == truth.shape
    error_before = np.abs(blurred - truth).mean()
    error_after = np.abs(refined - truth).mean()
    assert error_after < 0.5 * error_before, (error_before, error_after)
    edge = np.abs(ndimage.sobel(truth)) > 0.1
    assert np.abs(refined - truth)[edge].mean() < np.abs(blurred - truth)[edge].mean()


@pytest.mark.parametrize("slope", [1.0, -0.8])
def test_lines_fitted_from_the_guide_as_the_model_saw_it_keep_the_detail_at_full_strength(slope):
    """A blurred image against the sharp guide gives flat lines (the detail it lacks shrinks the
    slope): thin bright structure comes back weakened. Fitted between two images blurred alike, the
    slope is the contrast's and the detail comes back whole."""
    guide = tissues(seed=2)
    guide[10:54, 40:42] = 0.95                                # a structure 2 pixels thin (a skull, on a CT)
    truth = np.clip(0.5 + slope * (guide - 0.5), 0.0, 1.0)
    image = low_resolution(truth, factor=4)
    sharp_fit = guided_filter(guide, image, radius=3)
    seen_fit = guided_filter(guide, image, radius=3, seen=low_resolution(guide, factor=4))
    thin = (slice(14, 50), slice(40, 42))
    lost = lambda a: float(np.abs(a - truth)[thin].mean())  # noqa: E731 — the thin structure's error
    assert lost(seen_fit) < 0.5 * lost(sharp_fit), (lost(sharp_fit), lost(seen_fit))
    assert np.abs(seen_fit - truth).mean() < np.abs(sharp_fit - truth).mean()
    with pytest.raises(ValueError, match="one shape"):
        guided_filter(guide, image, radius=3, seen=guide[:10])


def test_what_the_guide_does_not_show_keeps_the_synthetic_local_mean():
    guide = np.full((48, 48), 0.4) + np.random.default_rng(0).normal(0.0, 0.002, (48, 48))   # flat: no lesion
    image = np.full((48, 48), 0.3)
    image[18:30, 18:30] = 0.8                                 # a lesion only the target shows
    refined = guided_filter(guide, image, radius=2)
    assert refined[24, 24] == pytest.approx(0.8, abs=0.02)   # its middle stays
    assert refined[5, 5] == pytest.approx(0.3, abs=0.02)
    assert np.abs(refined - ndimage.uniform_filter(ndimage.uniform_filter(image, 5), 5)).max() < 0.02


def test_with_the_body_mask_the_background_is_kept_and_the_lines_fit_the_body_only():
    y, x = np.mgrid[:64, :64]
    r2 = (y - 32) ** 2 + (x - 32) ** 2
    body = r2 < 20 ** 2
    guide = np.where(body, 0.3, 0.0)                          # T1-like: dark CSF rim, bright tissue inside
    guide[r2 < 17 ** 2] = 0.9
    truth = np.where(body, 0.9, 0.0)                          # T2-like: bright CSF rim, darker tissue
    truth[r2 < 17 ** 2] = 0.4
    image = low_resolution(truth)
    free = guided_filter(guide, image, radius=3)
    masked = guided_filter(guide, image, radius=3, inside=body)
    np.testing.assert_array_equal(masked[~body], image[~body].astype(np.float32))
    ring = ~body & (r2 < 26 ** 2)                             # the background just outside the body
    assert free[ring].mean() > image[ring].mean() + 0.02      # unmasked, the fitted lines spill outwards

    def error(a: np.ndarray) -> float:                        # in the band just inside the body's edge
        return float(np.abs(a - truth)[body & (r2 >= 14 ** 2)].mean())

    # the model's own output there is blurred with the background; unmasked lines make it worse, masked ones better
    assert error(free) > error(image) > error(masked) and error(masked) < 0.7 * error(free), \
        (error(image), error(free), error(masked))
    with pytest.raises(ValueError, match="mask's shape"):
        guided_filter(guide, image, radius=3, inside=body[:10])


def test_stacks_are_filtered_slice_by_slice():
    guide = np.stack([tissues(seed=0), tissues(seed=1)[::-1]])
    image = np.stack([low_resolution(g) for g in guide])
    stacked = guided_filter(guide, image, radius=3)
    np.testing.assert_allclose(stacked[1], guided_filter(guide[1], image[1], radius=3), atol=1e-6)
    assert 0.0 <= stacked.min() and stacked.max() <= 1.0


def striped(count: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A guide whose anatomy changes once across the stack (the square ends at slice 6), the truth
    through its line, and the truth as a slice-by-slice model draws it: each slice brighter or darker
    by its own offset (stripes across slices)."""
    guide = np.stack([tissues(seed=k) for k in range(count)])
    guide[count // 2:, 21:32, 21:37] = 0.5
    truth = np.clip(0.1 + 0.8 * guide, 0.0, 1.0)
    offsets = np.random.default_rng(3).normal(0.0, 0.05, count)[:, None, None]
    return guide, truth, np.clip(truth + offsets, 0.0, 1.0)


def test_windows_across_slices_take_out_the_stripes_and_keep_what_the_guide_changes():
    guide, truth, drawn = striped()
    alone, across = (guided_filter(guide, drawn, radius=3, depth=d) for d in (0, 2))
    step = lambda a: float(np.abs(np.diff(a, axis=0)).mean())      # noqa: E731 — change from slice to slice
    assert step(across) < 0.5 * step(alone), (step(alone), step(across))
    assert np.abs(across - truth).mean() < 0.6 * np.abs(alone - truth).mean()
    square = (slice(None), slice(23, 30), slice(23, 35))             # the square is gone from slice 6 on
    before, after = across[4][square[1:]].mean(), across[7][square[1:]].mean()
    assert before - after > 0.25, (before, after)                   # an edge across slices the guide shows
    np.testing.assert_allclose(guided_filter(guide, drawn, radius=3, depth=0),
                               np.stack([guided_filter(g, d, radius=3) for g, d in zip(guide, drawn, strict=True)]),
                               atol=1e-6)


def test_the_stack_is_filtered_slab_by_slab_as_it_would_be_at_once(monkeypatch):
    guide, _, drawn = striped(count=20)
    inside = np.ones(drawn.shape, bool)
    inside[:3] = inside[17:] = False                 # slices the model drew none of
    inside[:, :6] = False                            # and background
    whole = guided_filter(guide, drawn, radius=2, depth=1, inside=inside, seen=guide * 0.9)
    rows = [12, 3, 4, 5, 9, 16]
    slice_voxels = guide.shape[1] * guide.shape[2]
    # slabs spanning 7 slices (11 with margins 2 + 2); 1 slice's worth of voxels: still 4 slices, twice the
    # margins, so that no slice is filtered more than twice over; all of them at once
    for voxels, spans in ((11 * slice_voxels, [(3, 9), (12, 16)]), (slice_voxels, [(3, 5), (9, 12), (16, 16)]),
                          (10 ** 9, [(3, 16)])):
        monkeypatch.setattr(guided, "SLAB_VOXELS", voxels)
        slabs = []
        part = guided_stack(guide, drawn, radius=2, depth=1, inside=inside, rows=rows, seen=guide * 0.9,
                            before_slab=lambda first, last: slabs.append((first, last)))
        np.testing.assert_allclose(part, whole[rows], atol=1e-6)
        assert slabs == spans
    assert guided_stack(guide, drawn, 2, 1, inside, []).shape == (0,) + drawn.shape[1:]


def test_the_depth_is_given_in_model_pixels_and_scaled_to_the_slice_spacing():
    placement = Placement.for_shape(128, 128, 64, (1.875, 1.875), 4.0)          # 4 mm model pixels
    assert native_depth(2.0, placement, (1.875, 1.875), 1.875) == 4             # 8 mm: 4 slices either side
    assert native_depth(2.0, placement, (1.875, 1.875), 5.0) == 2               # thick slices: 2
    assert native_depth(2.0, placement, (1.875, 1.875), 20.0) == 1              # never below one slice
    assert native_depth(0.0, placement, (1.875, 1.875), 1.0) == 0               # 0: each slice alone
    fitted = Placement.for_shape(256, 200, 64)                                  # no pixel_mm: the longer side
    assert native_depth(1.0, fitted, (0.5, 0.5), 1.0) == 2                      # 4 input px of 0.5 mm = 2 mm


def test_bad_shapes_and_radii_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        guided_filter(np.zeros((8, 8)), np.zeros((8, 9)), radius=1)
    with pytest.raises(ValueError, match="one shape"):
        guided_filter(np.zeros(8), np.zeros(8), radius=1)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        guided_filter(np.zeros((8, 8)), np.zeros((8, 8)), radius=0)
    with pytest.raises(ValueError, match="across slices need a stack"):
        guided_filter(np.zeros((8, 8)), np.zeros((8, 8)), radius=1, depth=1)
    with pytest.raises(ValueError, match="across slices need a stack"):
        guided_filter(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), radius=1, depth=-1)


def test_the_radius_is_given_in_model_pixels_and_scaled_to_the_input_grid():
    fitted = lambda h, w: Placement.for_shape(h, w, 64)                      # noqa: E731 — a model without pixel_mm
    assert native_radius(2.0, fitted(128, 128)) == 4          # 128² slices, a 64² model
    assert native_radius(2.0, fitted(512, 400)) == 16         # a CT slice: the longer side sets the scale
    assert native_radius(1.5, fitted(128, 96)) == 3
    assert native_radius(0.2, fitted(32, 32)) == 1            # never below one input pixel
    # physical scale: 4 mm model pixels over 1.875 mm input pixels, whatever the field of view
    for shape in ((128, 128), (60, 70), (300, 300)):
        assert native_radius(2.0, Placement.for_shape(*shape, 64, (1.875, 1.875), 4.0)) == 4


def test_lines_are_fitted_at_the_model_s_resolution_only_between_modalities_of_one_physical_scale():
    assert fits_at_model_resolution("CBCT", "CT") and fits_at_model_resolution("ct", "CBCT")
    assert not fits_at_model_resolution("T1", "T2") and not fits_at_model_resolution("FLAIR", "T1")
    assert not fits_at_model_resolution("T1", "CT") and not fits_at_model_resolution("CT", "T1")
