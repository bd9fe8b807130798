"""Where a CT / CBCT source holds no data: the voxels outside its reconstructed field of view, which a
reconstruction fills with one padding value. There the synthesis keeps the model's output (the source
floor's calibrated CBCT holds nothing to keep), so air inside the field of view must never be taken for
padding: a reconstruction that clamps air to the padding's value (−1000 HU) would have the model draw
tissue where the scan shows air.

The padding is the value a DICOM series states (PixelPaddingValue, PixelPaddingRangeLimit), else an
exact value at or below air (−1000 HU) that fills at least 1 % of the volume (noise never repeats one
value that often); of its voxels only those joined to the image's in-plane edges count (air enclosed by
the field of view keeps its data), and in each slice their inner edge must be a circle (a cone beam's
field of view; for a value air can hold, round in most slices), straight lines along the box the data
fill (a crop or pad on any sides), both (a cylinder cut by a box) or one straight line: an edge that
follows the body's outline or the ragged edge of noisy air is air clamped to that value, not a field of
view, and keeps its data. Tissue a synthesis draws outside the field of view is kept only where it
joins the body inside it (:func:`islands_outside`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine import modalities
from engine.io.dicom_read import stated_padding
from engine.io.volume import Volume

PADDING_MAX_HU = -1000.0        # a field-of-view padding value is at or below air
PADDING_MIN_FRACTION = 0.01     # … and fills at least this share of the volume
# a circle's or a line's edge: 90 % of its pixels this close to the fitted one (a body's outline is off a
# circle by centimetres; a field of view resampled from a coarser grid is stair-stepped by its pixels)
EDGE_TOLERANCE_PX = 1.5
EDGE_TOLERANCE_MM = 2.0
EDGE_SHARE = 0.9
# a round edge of a value air can hold is a field of view's where this share of the slices whose edge is no
# box or line are round
ROUND_SHARE = 0.5
STRAIGHT, ROUND = "straight", "round"      # the kinds of a field of view's edge in a slice (_field_edge)
_CROSS = ndimage.generate_binary_structure(2, 1)


def padding_mask(volume: Volume, below_scale: bool = False) -> np.ndarray:
    """The voxels of ``volume`` (a CT or CBCT) outside its reconstructed field of view (the module's
    rule); all False when it has none. ``below_scale``: only a padding the series states or one below
    the CT scale's bottom (−1024 HU, e.g. −2000 or −3024), which neither tissue nor air ever holds — a
    padding of exactly −1000 or −1024 HU around a round head is told from clamped air by its shape
    alone, which a circular vertex slice or a phantom can pass."""
    values = np.asarray(volume.array)
    found = np.zeros(values.shape, dtype=bool)
    if values.ndim != 3:
        return found
    for candidate, air_valued in _candidates(volume, values, below_scale):
        outside = _outside_the_field(candidate, volume.spacing[:2], air_valued)
        if outside.sum() > found.sum():
            found = outside
    return found


def _candidates(volume: Volume, values: np.ndarray, below_scale: bool = False) -> list[tuple[np.ndarray, bool]]:
    """The masks of the padding value(s) to test, each with whether air could hold that value (an
    unstated value at or above the CT scale's bottom, −1024 HU): the stated range when the volume
    holds it, else each exact value at or below air (``below_scale``: below the CT scale) filling at
    least :data:`PADDING_MIN_FRACTION` of the volume."""
    stated = stated_padding(volume)
    if stated:
        lo, hi = stated
        slack = 1e-5 * max(1.0, abs(lo), abs(hi))          # the volume holds float32 of float64 rescaled values
        padded = (values >= lo - slack) & (values <= hi + slack)
        if padded.any():                                     # (a volume made from the series' values may hold none)
            return [(padded, False)]
    bottom = modalities.scale_bottom("CT")
    low = values[values < bottom] if below_scale else values[values <= PADDING_MAX_HU]
    if low.size < PADDING_MIN_FRACTION * values.size:
        return []
    found, counts = np.unique(low, return_counts=True)
    return [(values == v, bool(v >= bottom)) for v in found[counts >= PADDING_MIN_FRACTION * values.size]]


def _outside_the_field(candidate: np.ndarray, spacing_xy, air_valued: bool = True) -> np.ndarray:
    """The voxels of ``candidate`` joined to the in-plane edges of the image, in the slices whose inner
    edge is a field of view's (:func:`_field_edge`). For a value air can hold (``air_valued``) a round
    edge counts only where at least :data:`ROUND_SHARE` of the slices whose edge is no box or line are
    round: a cone beam's field of view is round in every slice (narrowing at its ends, its centre
    moving along a tilted gantry's axis, as it may), while the round outline of a head's vertex, with
    air of exactly −1000 HU around it, is a circle in a slice or two and the other slices' edges follow
    the head."""
    labels, _count = ndimage.label(candidate)
    edges = np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(),
                            labels[:, :, -1].ravel()])
    touching = np.unique(edges[edges > 0])
    outside = np.isin(labels, touching)
    kinds = {k: _field_edge(outside[k], spacing_xy) for k in range(outside.shape[0]) if outside[k].any()}
    rounds = sum(kind == ROUND for kind in kinds.values())
    shaped = sum(kind != STRAIGHT for kind in kinds.values())
    for k, kind in kinds.items():
        if kind is None or (kind == ROUND and air_valued and rounds < ROUND_SHARE * shaped):
            outside[k] = False
    return outside


def _field_edge(outside: np.ndarray, spacing_xy) -> str | None:
    """Whether the inner edge of ``outside`` in one slice is a field of view's, and of which kind:
    :data:`STRAIGHT` — straight lines along the edges of the box the data fill (a crop or a pad, on any
    sides), or one straight line at any angle; a slice holding no data at all is outside it whole —
    :data:`ROUND` — a circle, or a circle and such lines (a cylinder cut by a box) — or None.
    :data:`EDGE_SHARE` of the edge's pixels within the tolerance of those shapes."""
    edge = ~outside & ndimage.binary_dilation(outside, _CROSS)
    if not edge.any():
        return STRAIGHT
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    tolerance = max(EDGE_TOLERANCE_PX * max(sx, sy), EDGE_TOLERANCE_MM)
    y, x = np.nonzero(edge)
    points = np.column_stack([x * sx, y * sy])
    rows, columns = np.nonzero(~outside)
    box = (columns.min() * sx, columns.max() * sx, rows.min() * sy, rows.max() * sy)
    on_box = ((np.abs(points[:, 0] - box[0]) <= tolerance) | (np.abs(points[:, 0] - box[1]) <= tolerance)
              | (np.abs(points[:, 1] - box[2]) <= tolerance) | (np.abs(points[:, 1] - box[3]) <= tolerance))
    if on_box.mean() >= EDGE_SHARE or np.mean(_line_distances(points) <= tolerance) >= EDGE_SHARE:
        return STRAIGHT
    near = on_box.copy()
    near[~on_box] = _circle_distances(points[~on_box]) <= tolerance
    return ROUND if near.mean() >= EDGE_SHARE else None


def _line_distances(points: np.ndarray) -> np.ndarray:
    """The points' distances to their best-fitting line."""
    centred = points - points.mean(axis=0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    return np.abs(centred @ normal)


def _circle_distances(points: np.ndarray) -> np.ndarray:
    """The points' distances to their best-fitting circle (algebraic fit); infinite when too few points
    fit one."""
    if len(points) < 8:
        return np.full(len(points), np.inf)
    x, y = points[:, 0], points[:, 1]
    design = np.column_stack([x, y, np.ones_like(x)])
    (a, b, c), *_ = np.linalg.lstsq(design, x * x + y * y, rcond=None)
    cx, cy = a / 2.0, b / 2.0
    radius = np.sqrt(max(c + cx * cx + cy * cy, 0.0))
    return np.abs(np.hypot(x - cx, y - cy) - radius)


def islands_outside(tissue: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """The voxels of ``tissue`` (an output's body, by threshold) that lie outside the source's field of
    view (``missing``, :func:`padding_mask`) in pieces not joined, in 3-D, to tissue inside it: there the
    source holds no data, so tissue the model draws can only be the body continuing through the
    field of view's edge — a piece floating in the air beside it is the model's invention."""
    labels, _count = ndimage.label(tissue)
    joined = np.unique(labels[tissue & ~missing])
    return tissue & missing & ~np.isin(labels, joined[joined > 0])


def holds_data(volume: Volume, grid: Volume, below_scale: bool = True) -> np.ndarray:
    """The voxels of ``grid``'s grid where ``volume`` holds data: inside its grid and not its padding
    (:func:`padding_mask`, by default only a padding stated or below the CT scale) — where a scan
    compared with another can be compared."""
    from engine.io.resample import inside, resample_onto

    shows = inside(volume, grid)
    padded = padding_mask(volume, below_scale)
    if padded.any():
        shows &= ~padded if volume.same_grid(grid) else \
            resample_onto(volume.with_array(padded.astype(np.float32)), grid).array < 0.5
    return shows
