"""Source-guided filtering of synthesized slices on the input's grid (He, Sun & Tang's guided
filter with the source slice as the guide).

A slice-wise model's output, resized back onto the input grid, carries no detail finer than the
model's pixels. Within a small window one contrast is close to a linear function of another, so the
filter fits that window-wise line from the source to the synthetic slice and re-draws the slice from
the source through it: edges where the source has them, at its resolution, with the synthetic
slice's local mean and contrast. Where the source is flat (a lesion seen only in the target) the
line is flat and the synthetic local mean is kept.

- Same physical scale (CBCT → CT, :func:`fits_at_model_resolution`): the lines are fitted against
  the source *as the model saw it* (``seen``, resampled to the model's size and back), so their
  slope is the contrast's rather than one shrunk by detail the synthetic slice lacks; applied to the
  sharp source they bring that detail back (guided upsampling). Between MR contrasts the shrunk
  slope is kept: it copies less of the source's noise and misfit.
- Window means are taken inside the body mask only and the background keeps the synthetic slice:
  lines fitted across the body's edge would spill a halo outwards and a band of wrong contrast in.
- Intensities are the normalised [0, 1] of docs/evaluation.md, so :data:`EPS` is coarse on the CT scale
  (√EPS ≈ 30 HU): inside soft tissue the filter mostly smooths.

- Across slices (``depth``): slices are synthesized one by one, so each carries its own local mean
  and contrast, seen as stripes in the other two planes. Windows that also span neighbouring slices
  fit each line from them too: the output still changes from slice to slice where the source does,
  and no longer where only the model's slices disagree.

Off unless a setting (``SynthesisSettings.guided_filter``, ``guided_filter_depth``) or a model card asks
for it; what it changes is measured in docs/model.md ("The source-guided filter", "Through-plane variation").
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from engine import modalities

# Regularisation of the window-wise slope, in squared [0, 1] intensity: windows whose source
# varies (standard deviation) much less than √EPS = 0.01 keep the synthetic mean instead of copying
# source noise. In one-off comparisons on the validation subjects (the scripts were not kept) 1e-4, 3e-4
# and 1e-3 scored within half a point of SSIM of each other with the filter's first form (window means
# across the body's edge, lines fitted from the sharp source), and 1e-5 to 1e-3 within 0.1 of mean
# SSIM (docs/model.md's four validation routes) with the present one (1e-3 cost 3 HU on CBCT -> CT); the
# radius matters more (docs/model.md, "The source-guided filter", whose sweep the repo's evaluate command prints).
EPS = 1e-4


def fits_at_model_resolution(source: str, target: str) -> bool:
    """Whether the filter fits its lines from the source as the model saw it (``seen``): when
    source and target are on one physical scale (one intensity family: CT and CBCT in HU, PET in
    SUV; MR's arbitrary units are no common scale)."""
    return modalities.get(source).family == modalities.get(target).family != "MR"


def native_radius(radius: float, placement) -> int:
    """The window radius in input pixels for ``radius`` in model pixels, for slices placed by
    ``placement`` (:class:`engine.inference.slices.Placement`: input pixels per model pixel, the larger
    of the two axes); at least one pixel."""
    scale = max(placement.height / placement.content_height, placement.width / placement.content_width)
    return max(1, int(round(float(radius) * scale)))


def native_depth(depth: float, placement, spacing: tuple[float, float], slice_mm: float) -> int:
    """The windows' half-depth in slices for ``depth`` in model pixels: slices of (row, column)
    ``spacing`` mm placed by ``placement``, ``slice_mm`` apart; 0 when ``depth`` is 0, else at least one slice."""
    if not depth:
        return 0
    model_mm = max(placement.height / placement.content_height * float(spacing[0]),
                   placement.width / placement.content_width * float(spacing[1]))
    return max(1, int(round(float(depth) * model_mm / float(slice_mm))))


def guided_filter(guide: np.ndarray, image: np.ndarray, radius: int, eps: float = EPS,
                  inside: np.ndarray | None = None, seen: np.ndarray | None = None, depth: int = 0) -> np.ndarray:
    """``image`` re-drawn from ``guide`` window by window: both (h, w) or (n, h, w) on one grid,
    in [0, 1]; square windows of side 2 ``radius`` + 1 inside each slice, spanning 2 ``depth`` + 1
    slices of a stack (``depth`` 0: each slice alone; at the stack's ends the slices are mirrored). The window-wise lines
    are fitted from ``seen`` (the guide at the image's resolution, same shape; without it, the
    guide itself: He et al.'s filter) to ``image`` and applied to ``guide``. With the boolean mask
    ``inside`` (same shape), windows count only their pixels inside it, and where it is False the
    result is ``image`` as it is. Returns float32 in [0, 1]."""
    # float32: half of float64's memory on a stack; the box sums run in double inside scipy, and the
    # result differs from float64's by under 1e-6 of the [0, 1] range
    guide = np.asarray(guide, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)
    fit = guide if seen is None else np.asarray(seen, dtype=np.float32)
    if guide.shape != image.shape or fit.shape != image.shape or guide.ndim not in (2, 3):
        raise ValueError(f"guide, image (and seen) must be (h, w) or (n, h, w) of one shape, got {guide.shape}, "
                         f"{image.shape} and {fit.shape}")
    if radius < 1:
        raise ValueError(f"the window radius must be at least 1 pixel, got {radius}")
    if inside is not None and np.shape(inside) != image.shape:
        raise ValueError(f"the mask's shape {np.shape(inside)} is not the image's {image.shape}")
    if depth < 0 or (depth and guide.ndim != 3):
        raise ValueError(f"windows across slices need a stack (n, h, w) and a depth ≥ 0, got {depth} for {guide.shape}")
    size: tuple[int, ...] = (2 * int(radius) + 1,) * 2
    if guide.ndim == 3:
        size = (2 * int(depth) + 1,) + size

    def box(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=size, mode="reflect")

    if inside is None:
        mean = box
    else:
        weight = np.asarray(inside, dtype=np.float32)
        share = box(weight)                         # the share of each window inside the body
        counted = share > 1e-9

        def mean(a: np.ndarray) -> np.ndarray:
            return np.divide(box(a * weight), share, out=np.zeros_like(a), where=counted)

    mean_g, mean_i = mean(fit), mean(image)
    variance = np.maximum(mean(fit * fit) - mean_g * mean_g, 0.0)
    covariance = mean(fit * image) - mean_g * mean_i
    slope = covariance / (variance + eps)
    del variance, covariance                    # a stack's slab is large: free what is done with
    offset = mean_i - slope * mean_g
    del mean_g, mean_i
    out = mean(slope) * guide + mean(offset)
    if inside is not None:
        out = np.where(inside, out, image)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


SLAB_VOXELS = 4_000_000     # voxels a slab of guided_stack filters at once, beside its margins


def guided_stack(guide: np.ndarray, image: np.ndarray, radius: int, depth: int, inside: np.ndarray,
                 rows, seen: np.ndarray | None = None,
                 before_slab: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`guided_filter` of the (n, h, w) stacks for the slice indices ``rows`` only, slab by slab
    so that memory stays bounded for any number of slices: each slab is filtered with a margin of
    2 ``depth`` slices either side (the filter's two window passes), so the result equals filtering the
    whole stack at once. A slab holds :data:`SLAB_VOXELS` voxels with its margins, or twice its margins'
    slices where they alone are more (thin slices, a deep window): no slice is filtered more than
    twice over. ``inside`` is False on every slice with no synthetic image (outside ``rows``'s
    neighbours too); ``seen`` is :func:`guided_filter`'s, a stack of the same shape (read only where
    ``inside`` is True). ``before_slab(first, last)`` is called with each slab's first and last index
    (progress, cancel). Returns ``(len(rows), h, w)`` float32 in row order."""
    rows = [int(i) for i in rows]
    out = np.empty((len(rows),) + image.shape[1:], np.float32)
    if not rows:
        return out
    count, margin = image.shape[0], 2 * int(depth)
    per_slab = max(1, 2 * margin, SLAB_VOXELS // max(1, image.shape[1] * image.shape[2]) - 2 * margin)
    where = {i: k for k, i in enumerate(rows)}
    slabs: list[list[int]] = []
    for i in sorted(where):                 # slabs of at most per_slab consecutive slices
        if not slabs or i - slabs[-1][0] >= per_slab:
            slabs.append([])
        slabs[-1].append(i)
    for wanted in slabs:
        if before_slab is not None:
            before_slab(wanted[0], wanted[-1])
        lo, hi = max(0, wanted[0] - margin), min(count, wanted[-1] + margin + 1)
        part = slice(lo, hi)
        filtered = guided_filter(guide[part], image[part], radius, inside=inside[part], depth=depth,
                                 seen=None if seen is None else seen[part])
        for i in wanted:
            out[where[i]] = filtered[i - lo]
    return out
