"""The source floor's noise filter (engine/inference/denoise.py): its noise estimate, smoothing where
the image is flat, edges kept, the field of view's outside left alone."""
from __future__ import annotations

import numpy as np
import pytest

from engine.inference.denoise import adaptive_filter, filter_slices, noise_hu


def phantom(noise: float, seed: int = 0) -> np.ndarray:
    """Soft tissue (40 HU) beside bone (1000 HU) on a 64² slice, white noise of ``noise`` HU."""
    image = np.full((64, 64), 40.0, np.float32)
    image[:, 40:] = 1000.0
    return image + np.random.default_rng(seed).normal(0.0, noise, image.shape).astype(np.float32)


@pytest.mark.parametrize("noise", [5.0, 20.0, 40.0])
def test_the_noise_is_estimated_in_the_soft_tissue(noise):
    estimate = noise_hu(phantom(noise))
    assert estimate is not None and 0.5 * noise < estimate < 1.2 * noise     # the median's residual: a known shrink
    assert noise_hu(np.full((64, 64), 1000.0, np.float32)) is None           # no soft tissue: not estimated


def test_flat_tissue_is_smoothed_edges_kept_and_the_strength_sets_how_much():
    image = phantom(30.0)
    clean = phantom(0.0)
    errors = [np.abs(adaptive_filter(image, k) - clean)[:, :38].mean() for k in (0.0, 1.0, 3.0)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.5 * errors[0]
    out = adaptive_filter(image, 3.0)
    assert np.array_equal(adaptive_filter(image, 0.0), image)
    assert out[:, 42:].mean() == pytest.approx(1000.0, abs=5.0)                 # the bone stays bone
    assert out[:, 36].mean() < 100.0 and out[:, 44].mean() > 940.0              # … and the edge stays sharp


def test_outside_the_field_of_view_nothing_is_changed_or_taken_in():
    image = phantom(30.0)
    missing = np.zeros(image.shape, bool)
    missing[:, 40:] = True
    image_with_padding = np.where(missing, np.float32(-3024.0), image)
    out = adaptive_filter(image_with_padding, 3.0, missing)
    assert np.array_equal(out[missing], image_with_padding[missing])
    assert out[:, 30:38].mean() > -100.0           # beside the padding the tissue is not dragged down to −3024
    other = np.where(missing, np.float32(500.0), image_with_padding)      # what the padding holds: no matter
    np.testing.assert_array_equal(adaptive_filter(other, 3.0, missing)[~missing], out[~missing])
    stack = np.stack([image_with_padding, phantom(30.0, seed=1)])
    filtered = filter_slices(stack, 3.0, np.stack([missing, np.zeros_like(missing)]))
    np.testing.assert_array_equal(filtered[0], out)
    np.testing.assert_array_equal(filtered[1], adaptive_filter(stack[1], 3.0))


def test_low_contrast_detail_is_smoothed_with_the_noise_as_the_module_says():
    # the price of the filter (docs/model.md): a 30 HU soft-tissue step under 10 HU noise is spread out
    image = np.full((64, 64), 40.0, np.float32)
    image[:, 32:] = 70.0
    noisy = image + np.random.default_rng(2).normal(0.0, 10.0, image.shape).astype(np.float32)
    out = adaptive_filter(noisy, 6.0)
    assert out[:, 30].mean() > 48.0 and out[:, 33].mean() < 62.0     # no longer 40 | 70 at the edge
