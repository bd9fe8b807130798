"""Physical-scale slicing (a crop, a whole head and a padded field of view look the same scale to
the model; results land on the exact input grid) and the per-sample domain randomization."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine import modalities
from engine.inference.model_card import ModelCard
from engine.inference.pipeline import SliceSynthesizer
from engine.inference.slices import from_model_slice, in_plane_spacing, to_canvas, to_model_slice
from engine.io.volume import Volume
from engine.tasks import PairedDataset, SynthesisDataset
from engine.tasks.augment import Look, Randomization, View, _crop_offset, apply_view, degrade, draw_view
from engine.tasks.phantoms import write_phantom_dataset
from engine.tasks.slice_dataset import derived_rng


def _disc(shape, spacing, radius_mm=40.0, value=0.8):
    """A disc of ``radius_mm`` centred in a (h, w) slice of ``spacing`` (row, column) mm."""
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) * spacing[0]
    x = (np.arange(w) - (w - 1) / 2) * spacing[1]
    return np.where(np.hypot(*np.meshgrid(y, x, indexing="ij")) <= radius_mm, value, 0.0).astype(np.float32)


@pytest.mark.parametrize("shape,spacing", [((60, 60), (1.5, 1.5)),       # a crop: the disc fills it
                                           ((120, 160), (1.5, 1.5)),     # whole field of view
                                           ((300, 220), (1.5, 1.5)),     # padded: tiles
                                           ((40, 150), (4.0, 1.0))])     # anisotropic pixels
def test_physical_scale_round_trip_lands_on_the_exact_grid(shape, spacing):
    x = _disc(shape, spacing)
    images, placement = to_model_slice(x, 32, spacing=spacing, pixel_mm=2.0)
    assert images.shape[-2:] == (32, 32)
    assert images.reshape(-1, 32, 32).shape[0] == placement.tiles
    back = from_model_slice(images if images.ndim == 4 else images[None], placement)
    back = back[0] if back.ndim == 3 else back
    assert back.shape == shape
    inside = x > 0
    assert np.abs(back - x)[inside].mean() < 0.06                  # edges blur, the disc comes back


def test_the_same_anatomy_is_the_same_size_to_the_model_whatever_the_field_of_view():
    """Model pixels across the disc: equal for the crop, the whole view and the padded view."""
    diameters = []
    for shape in ((60, 60), (120, 160), (200, 200)):
        _, placement = to_model_slice(_disc(shape, (1.5, 1.5)), 32, spacing=(1.5, 1.5), pixel_mm=2.0)
        canvas = to_canvas(_disc(shape, (1.5, 1.5)), placement)[0, 0]
        diameters.append(int((canvas.max(dim=0).values > 0.4).sum()))
    assert max(diameters) - min(diameters) <= 1 and abs(diameters[0] - 40) <= 2      # 80 mm / 2 mm
    legacy = [to_model_slice(_disc(s, (1.5, 1.5)), 32)[0] for s in ((60, 60), (200, 200))]
    fitted = [int((im.reshape(-1, 32, 32)[0].max(dim=0).values > 0.4).sum()) for im in legacy]
    assert fitted[0] > 2 * fitted[1]                 # without a pixel size the crop looks twice as big


def test_tiles_overlap_and_blend_without_seams():
    x = np.tile(np.linspace(0.1, 0.9, 250, dtype=np.float32), (180, 1))
    images, placement = to_model_slice(x, 32, spacing=(1.0, 1.0), pixel_mm=1.0)
    assert placement.tiles > 4 and len(placement.rows) > 1 and len(placement.cols) > 1
    assert all(b - a < 32 for a, b in zip(placement.cols, placement.cols[1:]))        # neighbours overlap
    back = from_model_slice(images, placement)[0]
    assert np.abs(back - x).max() < 1e-4


def test_in_plane_spacing_follows_the_slice_axis():
    assert in_plane_spacing((0.5, 0.7, 3.0), 0) == (0.7, 0.5)
    assert in_plane_spacing((0.5, 0.7, 3.0), 1) == (3.0, 0.5)
    assert in_plane_spacing((0.5, 0.7, 3.0), 2) == (3.0, 0.7)


class _Identity(SliceSynthesizer):
    """Hands the model images back unchanged and records them."""

    def __init__(self, pixel_mm):
        super().__init__(ModelCard.from_metadata({"name": "identity", "routes": [["T1", "T2"]],
                                                  "pixel_mm": pixel_mm}), 32, torch.device("cpu"))
        self.seen = []

    def _prepare(self, source, target, settings):
        return None, []

    def _run_batch(self, images, indices, prepared, settings, cancel, on_step=lambda p: None):
        assert len(indices) == images.shape[0]
        self.seen.append(images.clone())
        return images.clone()

    def slice_memory_estimate(self, prepared):
        return 1


@pytest.mark.parametrize("shape,spacing", [((3, 50, 50), (1.6, 1.6, 5.0)), ((3, 180, 140), (1.6, 1.6, 5.0)),
                                           ((5, 64, 30), (2.0, 0.8, 0.8))])
def test_synthesis_returns_the_input_grid_for_crops_pads_and_anisotropic_volumes(shape, spacing):
    rng = np.random.default_rng(0)
    array = (200 + 800 * rng.random(shape)).astype(np.float32)
    volume = Volume(array, spacing=spacing, origin=(1.0, 2.0, 3.0), direction=tuple(np.eye(3).ravel()),
                    modality="T1")
    synth = _Identity(pixel_mm=2.5)
    out = synth.synthesize_volume(volume, "T1", "T2", synth.default_settings().replace(guided_filter=0.0))
    assert out.array.shape == array.shape and out.spacing == volume.spacing and out.origin == volume.origin
    plan = synth.plan(volume, "T1")
    assert sum(im.shape[0] for im in synth.seen) == len(plan.active) * plan.placement.tiles


# -- domain randomization ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), subjects=3, shape=(20, 24, 28))
    return PairedDataset.open(root, pixel_mm=1.0)


def test_randomized_samples_are_deterministic_and_keep_source_and_target_aligned(paired):
    spec = Randomization()
    ds = SynthesisDataset(paired, None, image_size=32, seed=3, augment=spec)
    again = SynthesisDataset(paired, None, image_size=32, seed=3, augment=spec)
    plain = SynthesisDataset(paired, None, image_size=32, seed=3)
    changed = 0
    for i in range(0, len(ds), 3):
        a, b, c = ds[i], again[i], plain[i]
        assert torch.equal(a.source, b.source) and torch.equal(a.target, b.target)
        assert (a.subject, a.index, a.route, a.instruction) == (c.subject, c.index, c.route, c.instruction)
        changed += not torch.equal(a.target, c.target)
        # replayed: one field of view for both, the source degraded after it, the target not at all
        look = Look.draw(spec, derived_rng(3, 0, ds.task, i, "look"), (32, 32), 32)
        source = look.degrade(look.image(paired.canvas(a.subject, a.source_modality, a.index, 32), 32),
                              a.source_modality)
        assert torch.equal(source, a.source)
        assert torch.equal(look.image(paired.canvas(a.subject, a.target_modality, a.index, 32), 32), a.target)
    assert changed > 0
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i].source, again[i].source) for i in range(0, len(ds), 3))


def _only(**on) -> Randomization:
    off = dict(rotation_deg=0.0, zoom=(1.0, 1.0), shift=0.0, cut_p=0.0, blur_p=0.0, bias_p=0.0, noise_p=0.0,
               gamma_p=0.0, hu_offset=0.0, hu_scale=0.0, quantize_p=0.0)
    return Randomization(**{**off, **on})


def _image():
    y, x = np.mgrid[0:32, 0:32]
    return torch.from_numpy(np.where(np.hypot(y - 15.5, x - 15.5) < 12, 0.3 + 0.4 * (x % 4 < 2), 0.0)
                            .astype(np.float32))[None]


def test_each_degradation_does_what_it_says():
    image, rng = _image(), lambda: random.Random(5)
    assert torch.equal(degrade(image, "T1", rng(), _only()), image)
    blurred = degrade(image, "T1", rng(), _only(blur_p=1.0, blur_factor=(2.5, 2.5)))
    assert (blurred.diff(dim=-1).abs().sum() < 0.8 * image.diff(dim=-1).abs().sum())
    biased = degrade(image, "T1", rng(), _only(bias_p=1.0, bias_strength=0.5))
    ratio = (biased / image.clamp_min(1e-6))[image > 0]
    assert ratio.std() > 0.05
    noisy = degrade(image, "T1", rng(), _only(noise_p=1.0, noise_std=(0.03, 0.03)))
    assert 0.01 < float((noisy - image)[image == 0].abs().mean()) < 0.06 and float(noisy.min()) >= 0.0
    gamma = degrade(image, "T1", rng(), _only(gamma_p=1.0, gamma=(0.5, 0.5)))
    assert torch.allclose(gamma, image ** 0.5, atol=1e-6)
    quantised = degrade(image * 0.97, "T1", rng(), _only(quantize_p=1.0))
    assert torch.allclose(quantised * 255.0, torch.round(quantised * 255.0), atol=1e-4)
    ct = degrade(image, "CBCT", rng(), _only(hu_offset=100.0))
    lo, hi = modalities.get("CBCT").fixed_range
    shift_hu = ((ct - image) * (hi - lo))[image > 0]
    assert shift_hu.std() < 1e-2 and 0.0 < abs(float(shift_hu.mean())) <= 100.0
    assert torch.equal(ct[image == 0], image[image == 0])           # the canvas background stays background


def test_the_field_of_view_draws_rotate_shift_and_cut():
    canvas = _image()[0]
    centre = apply_view(canvas, None, 32)
    assert torch.equal(centre, canvas[None])
    identity = View(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))
    assert torch.allclose(apply_view(canvas, identity, 32), canvas[None], atol=1e-5)
    rotated = apply_view(canvas, draw_view(random.Random(1), _only(rotation_deg=40.0), (32, 32), 32), 32)
    assert not torch.allclose(rotated, canvas[None], atol=1e-3)
    view = draw_view(random.Random(2), _only(cut_p=1.0), (32, 32), 32)
    top, left, bottom, right = view.keep
    cut = apply_view(canvas, view, 32)
    assert float(cut[:, :top].abs().sum() + cut[:, bottom:].abs().sum()) == 0.0
    assert (bottom - top) < 32 or (right - left) < 32
    wide = torch.rand(48, 81)
    assert apply_view(wide, draw_view(random.Random(3), Randomization(), (48, 81), 32), 32).shape == (1, 32, 32)
    # the translation draw_view starts from, on a canvas wider by an odd count: exactly the centre crop
    hc, wc = wide.shape
    dx, dy = _crop_offset(wc, 32), _crop_offset(hc, 32)
    assert dx == -0.5 and dy == 0.0
    still = View(((32 / wc, 0.0, 2.0 * dx / wc), (0.0, 32 / hc, 2.0 * dy / hc)))
    assert torch.allclose(apply_view(wide, still, 32), apply_view(wide, None, 32), atol=1e-5)
