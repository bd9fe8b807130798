"""Where a CT / CBCT holds no data (engine/inference/field_of_view.py): the padding outside a circular
field of view or a straight crop is found, by its stated value or by one exact value; noisy air is no
padding; air clamped to a value — even the padding's own — keeps its data, as does air enclosed by the
field of view."""
from __future__ import annotations

import numpy as np
import pytest

from engine.inference.field_of_view import padding_mask
from engine.io.volume import Volume


def cbct(padding: float = -3024.0, clamp: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An elliptical head (40 HU) in noisy air inside a circular field of view (radius 46 px) padded with
    ``padding``; air below ``clamp`` clamped to it. Returns (HU, the outside of the field of view)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:6, 0:96, 0:96]
    outside = np.hypot(y - 47.5, x - 47.5) > 46
    head = ((y - 47.5) / 30) ** 2 + ((x - 47.5) / 22) ** 2 < 1
    hu = np.where(head, 40.0, -1010.0) + rng.normal(0.0, 15.0, z.shape)
    if clamp is not None:
        hu = np.maximum(hu, clamp)
    return np.where(outside, padding, hu).astype(np.float32), outside


def air(shape, seed: int = 1) -> np.ndarray:
    return (-1010.0 + np.random.default_rng(seed).normal(0.0, 15.0, shape)).astype(np.float32)


def mask(hu, spacing=(0.5, 0.5, 1.0), **dicom) -> np.ndarray:
    return padding_mask(Volume(hu, spacing=spacing, modality="CBCT", unit="HU", dicom=dicom))


def test_noisy_air_is_no_padding_and_a_circular_field_of_view_s_is():
    hu, outside = cbct()
    assert np.array_equal(mask(hu), outside)
    noisy = np.where(outside, air(hu.shape), hu)
    assert not mask(noisy).any()


def test_air_clamped_to_a_value_more_frequent_than_the_padding_keeps_its_data():
    """Air clamped to −1000 HU had been taken for the padding (the most frequent value), and the model's
    output put where the scan shows air; the −3024 HU padding was then scored as data."""
    hu, outside = cbct(padding=-3024.0, clamp=-1000.0)
    assert (hu == -1000.0).sum() > (hu == -3024.0).sum()
    assert np.array_equal(mask(hu), outside)


def test_air_clamped_to_the_padding_s_own_value_hugs_the_body_and_keeps_its_data():
    hu, outside = cbct(padding=-1000.0, clamp=-1000.0)
    assert not mask(hu).any()            # the edge is the head's outline: no field of view, the source's air kept


def test_a_straight_crop_is_a_field_of_view_and_air_it_encloses_is_not():
    hu, _ = cbct()
    hu = np.where(np.hypot(*np.mgrid[0:96, 0:96] - 47.5) > 46, air(hu.shape), hu)                 # no circle
    hu[:, :, 80:] = -1024.0                                       # a crop at column 80
    hu[:, 40:44, 40:44] = -1024.0                                 # a sinus at that very value, inside the head
    found = mask(hu)
    assert found[:, :, 80:].all() and found.sum() == hu[:, :, 80:].size


def test_a_stated_padding_value_is_used_even_where_it_fills_under_one_percent():
    hu, outside = cbct(padding=-2000.0)
    corners = np.zeros(hu.shape, dtype=bool)
    corners[:, :3, :3] = True                                     # 0.1 % of the volume
    small = np.where(corners, np.float32(-2000.0), np.where(outside, air(hu.shape), hu))
    assert not mask(small).any()
    assert np.array_equal(mask(small, StudioPaddingRange="-2000.0\\-2000.0"), corners)


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 1.0), (2.0, 2.0, 2.0)])
def test_a_field_of_view_resampled_from_a_coarser_grid_is_still_one(spacing):
    hu, outside = cbct()
    coarse = np.repeat(np.repeat(outside[:, ::3, ::3], 3, axis=1), 3, axis=2)[:, :96, :96]   # stair-stepped by 3 px
    stepped = np.where(coarse, np.float32(-3024.0), np.where(outside, air(hu.shape), hu))
    assert np.array_equal(mask(stepped, spacing=spacing), coarse)


@pytest.mark.parametrize("sides", ["left and right", "right and bottom", "circle and right"])
def test_a_pad_or_crop_on_several_sides_and_a_cylinder_cut_by_a_box_are_fields_of_view(sides):
    """A NIfTI padded to a square on two sides, or cropped on two: one line fitted no two edges."""
    hu, circle = cbct()
    hu = np.where(circle, air(hu.shape), hu)
    cut = np.zeros(hu.shape, dtype=bool)
    if sides == "left and right":
        cut[:, :, :10] = cut[:, :, 86:] = True
    elif sides == "right and bottom":
        cut[:, :, 84:] = cut[:, 84:, :] = True
    else:
        cut = circle.copy()
        cut[:, :, 80:] = True
    hu[cut] = -1024.0
    assert np.array_equal(mask(hu), cut)


def test_tissue_drawn_outside_the_field_of_view_is_kept_only_where_it_joins_the_body_inside_it():
    from engine.inference.field_of_view import islands_outside

    missing = np.zeros((3, 20, 20), bool)
    missing[:, :, 12:] = True                                   # a crop: no data right of column 12
    tissue = np.zeros_like(missing)
    tissue[:, 4:10, 6:15] = True                                # the body, continuing through the crop's edge
    tissue[1, 15:18, 15:18] = True                              # a piece floating outside it
    tissue[0:2, 15:17, 3:5] = True                              # a piece inside the field of view: the source's
    tissue[2, 10:13, 13:16] = True                              # touching the body's continuation: joined
    islands = islands_outside(tissue, missing)
    expected = np.zeros_like(missing)
    expected[1, 15:18, 15:18] = True
    np.testing.assert_array_equal(islands, expected)
    assert not islands_outside(tissue, np.zeros_like(missing)).any()      # no field of view cut: nothing to take


def test_a_scan_holds_no_data_in_its_padding_on_its_own_grid_or_resampled_onto_another():
    from engine.inference.field_of_view import holds_data

    hu, outside = cbct(padding=-3024.0)
    scan = Volume(hu, spacing=(0.5, 0.5, 1.0), modality="CT", unit="HU")
    np.testing.assert_array_equal(holds_data(scan, scan), ~outside)
    coarser = Volume(np.zeros((6, 48, 48), np.float32), spacing=(1.0, 1.0, 1.0), origin=(0.25, 0.25, 0.0))
    shows = holds_data(scan, coarser)                             # the same circle on a grid of twice the pixels
    y, x = np.mgrid[0:48, 0:48]
    radius = np.hypot(y - 23.5, x - 23.5)
    assert shows[:, radius < 22].all() and not shows[:, radius > 24].any()
    mr = Volume(np.full((2, 8, 8), 300.0, np.float32), modality="T1")
    assert holds_data(mr, mr).all()                               # no padding: everywhere
    # padded with air's own value, a circle is told from clamped air around a round head by its shape alone:
    # only where asked for (a CBCT's), not by default (a reference scored)
    at_air = scan.with_array(np.where(outside, -1000.0, hu).astype(np.float32))
    assert holds_data(at_air, at_air).all()
    np.testing.assert_array_equal(holds_data(at_air, at_air, below_scale=False), ~outside)


def test_a_round_vertex_in_air_clamped_to_minus_1000_is_no_field_of_view_but_a_round_one_throughout_is():
    """demo head_007's CT had lost its top slice to the rule: air of exactly −1000 HU around the small
    round top of the head is a circle in that one slice. A cone beam's field of view is round in most
    slices whose edge is no box or line — narrowing at its ends, or moving with a tilted gantry."""
    z, y, x = np.mgrid[0:12, 0:96, 0:96]
    semi = np.where(z < 9, 1.0, np.sqrt(np.maximum(1.0 - ((z - 8.0) / 4.0) ** 2, 0.05)))    # shrinks at the top
    head = ((y - 47.5) / (30 * semi)) ** 2 + ((x - 47.5) / (22 * semi)) ** 2 < 1
    head[z >= 9] = np.hypot(y - 47.5, x - 47.5)[z >= 9] < 18 * semi[z >= 9]                    # round near the top
    head[:9, 10:20, 42:54] = True                                                               # a nose below it
    hu = np.where(head, 40.0, -1000.0).astype(np.float32)
    assert not mask(hu, spacing=(1.0, 1.0, 1.0)).any()
    # a field of view of one radius in every slice, even with a round vertex inside it, is found throughout
    outside = np.hypot(y - 47.5, x - 47.5) > 46
    noisy = hu + np.random.default_rng(0).normal(0.0, 15.0, hu.shape)
    found = mask(np.where(outside, -1000.0, noisy), (1.0, 1.0, 1.0))
    assert np.array_equal(found, outside)
    radius = np.where(z >= 8, 46 - 3 * (z - 7), 46)                       # narrowing over the last slices,
    tilted = np.hypot(y - 47.5 - 0.8 * z, x - 47.5) > radius               # its centre moving 0.8 mm a slice
    assert np.array_equal(mask(np.where(tilted, -1000.0, noisy), (1.0, 1.0, 1.0)), tilted)


def test_a_padding_no_air_holds_may_follow_a_field_of_view_that_narrows_at_the_cone_ends():
    # −3024 HU is no air: each slice's circle counts, even where the reconstruction narrows it at the ends
    hu, outside = cbct(padding=-3024.0)
    z, y, x = np.mgrid[0:6, 0:96, 0:96]
    narrower = np.hypot(y - 47.5, x - 47.5) > np.where(z >= 4, 34, 46)
    hu = np.where(narrower, -3024.0, np.where(outside, -1010.0, hu)).astype(np.float32)
    assert np.array_equal(mask(hu), narrower)
