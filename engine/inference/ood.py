"""The out-of-distribution guard: a few statistics of the training volumes, kept in the model card
(``input_profile``), and the check of an input against them — human-readable warnings when the
input's geometry or intensities lie outside what the model was trained on.

Signals (one function, :func:`volume_signals`, measures them for the profile and for an input):

- geometry, per anatomy: in-plane pixel size and slice thickness (mm), the body's physical extent
  in the slice plane (mm), and the share of body slices whose body is cut by the field of view;
- CT family (CT, CBCT) in HU: the 1st / 50th / 99th percentiles inside the body, the air peak of
  the whole volume and the soft-tissue peak inside the body;
- PET (SUV): the same percentiles;
- MR (arbitrary units, body found on a smoothed image at Otsu's level): the shape of the in-body
  histogram normalised by its 0.5–99.5 percentiles (its quantiles), the contrast between the body's
  rim and its inside (its sign flips with an inverted contrast), and the range of a smooth (linear)
  bias field fitted to the log intensities.

Any input, with or without a profile: a label map or mask passed as a scan (only a few distinct
whole-number values).

Each check compares with the range [lo, hi] over the training volumes widened by a margin, so the
calibration, contrast and bias randomisation of the training data itself is never flagged.

Margins (why, in one line each) sit next to the thresholds below; the measured figures are in
tests/engine/test_inference_ood.py.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import modalities

if TYPE_CHECKING:
    from engine.io.volume import Volume
    from engine.tasks.dataset import PairedDataset

PROFILE_VERSION = 1
OOD_MARK = "(OOD input) "          # leads the written description (NIfTI descrip, DICOM series) when the guard fired
WARNING_PREFIX = "input check: "           # the notes the guard adds start with this
NO_PROFILE_NOTE = (WARNING_PREFIX + "this model's card has no training profile (input_profile), so the input "
                   "cannot be checked against its training data")

MR_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)          # quantiles of the normalised in-body histogram
BODY_SLICE_FRACTION = 0.05                          # a slice counts as a body slice above this body share
EDGE_TOUCH = 0.02                                   # … and as cut when its body covers this share of the border
RIM_BANDS_MM = (0.0, 4.0, 12.0, 25.0, 1e9)          # depth bands inside the body (MR rim contrast)
BIAS_CORE_MM = 6.0                                  # the bias field is fitted deeper than this
MAX_VOXELS = 2_500_000                              # larger volumes: every n-th voxel (seconds, not tens)

# Thresholds: a range [lo, hi] over the training volumes is widened by these before an input is flagged.
SPACING_FACTOR = 2.0        # pixels ×/÷ 2: the model resamples to its pixel size; beyond, detail or context is lost
THICKNESS_FACTOR = 2.5      # slices ×/÷ 2.5: partial-volume blur never trained (thinner: only without a pixel size)
EXTENT_LARGE = 1.25         # a body a quarter larger than any trained one is another anatomy (or a wrong spacing)
EXTENT_SMALL = 0.5          # … half the smallest: a crop, a child, or a wrong spacing
EDGE_SLICES_MARGIN = 0.25   # training already cuts some fields of view; most slices cut beyond that is not trained
EDGE_SLICES_FLOOR = 0.5     # … and never flag fewer than half the body slices cut
HU_MARGIN = 100.0           # ±150 HU calibration is in the training ranges themselves; +100 covers sites, not 400 HU
HU_AIR_MARGIN = 200.0       # air is often clipped at −1024, so training's offsets barely move it: ±150 HU more
HU_TAIL_MARGIN = 300.0      # 1st / 99th percentiles move with resolution (bone's partial volume: 230 HU, 2 → 4 mm)
SUV_MARGIN = 0.5            # SUV: a relative margin (× the training range's width, at least 1 SUV)
MR_QUANTILE_MARGIN = 0.12   # normalised units: contrast tweaks (training's gamma 0.7–1.45) stay inside
MR_RIM_MARGIN = 0.15        # normalised units: an inverted T1 / T1CE turns its positive rim contrast negative
MR_BIAS_MARGIN = 0.35       # log units over the body core: ×1.4 beyond the strongest training field (or ×1.5 of it)
MR_BIAS_FLOOR = 0.9         # … and never below ×2.5 across the core, which the loader's random bias fields reach
LABEL_MAP_VALUES = 256      # whole numbers only, this few distinct (an aparc+aseg or TotalSegmentator map: ~110)…
LABEL_MAP_FLAT = 0.7        # … and this share of neighbours off the background equal: flat regions, not a scan's
                            # noise (an 8-bit or low-count scan has as few values, but its neighbours differ)


# -- measuring ---------------------------------------------------------------------------------
def _slice_geometry(volume: Volume, axis: int | None = None) -> tuple[int, tuple[float, float], float]:
    from engine.inference.slices import in_plane_spacing, slice_axis

    axis = slice_axis(volume.spacing) if axis is None else axis
    spacing = in_plane_spacing(volume.spacing, axis)
    thickness = float(volume.spacing[2 - axis])
    return axis, spacing, thickness


def _extent_and_edges(mask: np.ndarray, axis: int, spacing: tuple[float, float]) -> tuple[float, float]:
    """(the 98th percentile over body slices of the body's larger in-plane extent in mm, the share of
    body slices whose body covers at least EDGE_TOUCH of the slice's border)."""
    from engine.inference.slices import slices_first

    stack = slices_first(mask, axis)
    n, h, w = stack.shape
    fraction = stack.reshape(n, -1).mean(axis=1)
    body = np.flatnonzero(fraction >= BODY_SLICE_FRACTION)
    if body.size == 0:
        return 0.0, 0.0
    extents, cut = [], 0
    for i in body:
        s = stack[i]
        rows, cols = np.flatnonzero(s.any(axis=1)), np.flatnonzero(s.any(axis=0))
        extents.append(max((rows[-1] - rows[0] + 1) * spacing[0], (cols[-1] - cols[0] + 1) * spacing[1]))
        border = np.concatenate([s[0], s[-1], s[1:-1, 0], s[1:-1, -1]])
        cut += bool(border.mean() >= EDGE_TOUCH)
    return float(np.percentile(extents, 98)), cut / body.size


def _peak(values: np.ndarray, lo: float, hi: float, bin_width: float = 10.0) -> float | None:
    """The centre of the most populated ``bin_width`` bin of ``values`` within [lo, hi] (smoothed)."""
    inside = values[(values >= lo) & (values <= hi)]
    if inside.size < 100:
        return None
    counts, edges = np.histogram(inside, bins=np.arange(lo, hi + bin_width, bin_width))
    smooth = np.convolve(counts, np.ones(5) / 5, mode="same")
    k = int(np.argmax(smooth))
    return float((edges[k] + edges[k + 1]) / 2)


def _mr_shape(array: np.ndarray, mask: np.ndarray, spacing_xyz: Sequence[float], lo: float, hi: float
              ) -> tuple[float, float]:
    """(rim contrast, bias range) of an MR volume.

    Rim contrast: the median normalised intensity of the deepest of three bands inside the body
    (4–12, 12–25, > 25 mm from its edge) minus that of the outer 4 mm — its sign flips when the
    contrast is inverted. Bias range: max − min over the body's core (> 6 mm deep) of the linear
    field fitted to the log intensities, in log units.
    """
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask, sampling=tuple(spacing_xyz)[::-1])
    normed = (array - lo) / max(hi - lo, 1e-6)
    bands = []
    for near, far in zip(RIM_BANDS_MM[:-1], RIM_BANDS_MM[1:]):
        sel = mask & (depth > near) & (depth <= far)
        bands.append(float(np.median(normed[sel])) if sel.sum() >= 100 else None)
    deeper = [b for b in bands[1:] if b is not None]
    rim = float(max(deeper) - bands[0]) if deeper and bands[0] is not None else 0.0
    core = np.flatnonzero(((depth > BIAS_CORE_MM) & (normed > 0.01)).ravel())
    if core.size < 1000:
        return rim, 0.0
    core = core[:: max(1, core.size // 200_000)]
    z, y, x = np.unravel_index(core, array.shape)
    coords = np.stack([x * spacing_xyz[0], y * spacing_xyz[1], z * spacing_xyz[2]], axis=1)
    coords -= coords.mean(axis=0)
    values = np.log(np.maximum(array.ravel()[core].astype(np.float64), 1e-6))
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(core)), coords]), values, rcond=None)
    field = coords @ coef[1:]
    return rim, float(field.max() - field.min())


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres) / np.maximum(w0, 1)
    m1 = ((counts * centres).sum() - np.cumsum(counts * centres)) / np.maximum(w1, 1)
    return float(centres[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def body_mask(array: np.ndarray, modality: str) -> np.ndarray:
    """The body as the guard sees it: the registry's mask for CT and PET; for MR the same after a
    3-voxel smoothing, thresholded at Otsu's level (at least the registry's), so that a noisy
    background (its Rician mean can reach 8 % of the range) is not taken for body."""
    from scipy import ndimage

    if modalities.get(modality).family != "MR":
        return modalities.body_mask(array, modality)
    smooth = ndimage.uniform_filter(np.asarray(array, dtype=np.float32), size=3)
    lo, hi = np.percentile(smooth, (1.0, 99.0))
    inside = smooth[(smooth >= lo) & (smooth <= hi)]
    if hi <= lo or inside.size == 0:
        return np.zeros(array.shape, bool)
    fg = smooth > max(_otsu(inside), lo + 0.08 * (hi - lo))
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) for s in fg])


def volume_signals(volume: Volume, modality: str, axis: int | None = None) -> dict[str, float | list[float] | None]:
    """What the guard compares for one volume in physical units (see the module's docstring), its
    slices cut along ``axis`` (the synthesis plan's; None: :func:`engine.inference.slices.slice_axis`,
    as training cuts them)."""
    mod = modalities.get(modality)
    step = max(1, int(np.ceil((volume.array.size / MAX_VOXELS) ** (1 / 3))))
    array = np.asarray(volume.array[::step, ::step, ::step], dtype=np.float32)
    array = np.where(np.isfinite(array), array, np.nanmin(array) if np.isfinite(array).any() else 0.0)
    mask = body_mask(array, mod.name)
    axis, spacing, thickness = _slice_geometry(volume, axis)
    extent, edges = _extent_and_edges(mask, axis, (spacing[0] * step, spacing[1] * step))
    out: dict[str, Any] = {"in_plane_mm": float(min(spacing)), "in_plane_max_mm": float(max(spacing)),
                           "thickness_mm": thickness, "extent_mm": extent, "edge_slices": edges}
    inside = array[mask] if mask.any() else array.ravel()
    if mod.family == "MR":
        lo, hi = np.percentile(inside, modalities.MR_PERCENTILES)
        normed = np.clip((inside - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        out["quantiles"] = [float(q) for q in np.quantile(normed, MR_LEVELS)]
        out["rim"], out["bias"] = _mr_shape(array, mask, tuple(sp * step for sp in volume.spacing), float(lo),
                                            float(hi))
    else:
        p1, p50, p99 = np.percentile(inside, (1, 50, 99))
        out.update(p1=float(p1), p50=float(p50), p99=float(p99))
        if mod.family == "CT":
            out["air_peak"] = _peak(array.ravel(), -1300.0, -400.0)
            out["tissue_peak"] = _peak(inside, -450.0, 1500.0)
    return out


# -- the profile ---------------------------------------------------------------------------------
GEOMETRY_KEYS = ("in_plane_mm", "thickness_mm", "extent_mm", "edge_slices")
SCALAR_KEYS = ("p1", "p50", "p99", "air_peak", "tissue_peak", "rim", "bias")


def _span(values: Sequence[float | None], digits: int = 3) -> list[float] | None:
    kept = [float(v) for v in values if v is not None and np.isfinite(v)]
    return [round(min(kept), digits), round(max(kept), digits)] if kept else None


def _profile_from_signals(per_volume: Sequence[tuple[str, str, Mapping[str, Any]]], split: str,
                          subjects: int) -> dict:
    """The profile from (anatomy, modality, signals) of every training volume."""
    anatomies: dict[str, dict[str, list]] = {}
    mods: dict[str, dict[str, Any]] = {}
    for anatomy, modality, s in per_volume:
        geo = anatomies.setdefault(anatomy, {k: [] for k in GEOMETRY_KEYS})
        geo["in_plane_mm"] += [s["in_plane_mm"], s["in_plane_max_mm"]]
        for key in ("thickness_mm", "extent_mm", "edge_slices"):
            geo[key].append(s[key])
        entry = mods.setdefault(modality, {"anatomies": set(), "volumes": 0, "values": {}})
        entry["anatomies"].add(anatomy)
        entry["volumes"] += 1
        for key in SCALAR_KEYS:
            if key in s:
                entry["values"].setdefault(key, []).append(s[key])
        if "quantiles" in s:
            entry["values"].setdefault("quantiles", []).append(s["quantiles"])
    out_mods = {}
    for modality, entry in mods.items():
        record: dict[str, Any] = {"anatomies": sorted(entry["anatomies"]), "volumes": entry["volumes"]}
        for key, values in entry["values"].items():
            if key == "quantiles":
                q = np.asarray(values, dtype=float)
                record["quantiles"] = {"levels": list(MR_LEVELS), "lo": [round(v, 3) for v in q.min(axis=0)],
                                       "hi": [round(v, 3) for v in q.max(axis=0)]}
            else:
                record[key] = _span(values, 3 if key in ("rim", "bias") else 1)
        out_mods[modality] = record
    return {"version": PROFILE_VERSION, "split": split, "subjects": subjects,
            "anatomies": {a: {k: _span(v) for k, v in geo.items()} for a, geo in anatomies.items()},
            "modalities": out_mods}


def profile_from_volumes(volumes: Iterable[tuple[str, str, Volume]], split: str = "train",
                         subjects: int | None = None) -> dict:
    """The profile of (anatomy, modality, volume) triples in physical units (JSON-ready, a few
    hundred bytes per modality: ranges over the volumes, no per-subject data)."""
    per_volume = [(anatomy, modalities.canonical(m), volume_signals(v, m)) for anatomy, m, v in volumes]
    if not per_volume:
        raise ValueError("input profile: no training volume to measure")
    return _profile_from_signals(per_volume, split, len(per_volume) if subjects is None else subjects)


def training_profile(paired: PairedDataset, split: str = "train") -> dict:
    """What the guard compares an input with, measured on every volume of ``split`` of ``paired``."""
    subjects = paired.subject_names(split)
    if not subjects:
        raise ValueError(f"input profile: the {split!r} split has no subjects")
    return profile_from_volumes(((paired.anatomy(s), m, paired.volume(s, m)) for s in subjects
                                 for m in paired.subject_modalities(s)), split, len(subjects))


def merged_profiles(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict:
    """One profile of the training data of both (a model fine-tuned on new data has seen the start
    model's training data and the new data): every range spans both, the counts add up."""
    def spans(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict:
        out = {}
        for key in dict.fromkeys([*a, *b]):
            joined = _union([a.get(key), b.get(key)])
            out[key] = list(joined) if joined else None
        return out

    anatomies = {name: spans(first.get("anatomies", {}).get(name) or {}, second.get("anatomies", {}).get(name) or {})
                 for name in dict.fromkeys([*first.get("anatomies", {}), *second.get("anatomies", {})])}
    mods = {}
    for name in dict.fromkeys([*first.get("modalities", {}), *second.get("modalities", {})]):
        a, b = first.get("modalities", {}).get(name) or {}, second.get("modalities", {}).get(name) or {}
        scalars = spans({k: a[k] for k in SCALAR_KEYS if k in a}, {k: b[k] for k in SCALAR_KEYS if k in b})
        record: dict[str, Any] = {"anatomies": sorted({*a.get("anatomies", []), *b.get("anatomies", [])}),
                                  "volumes": int(a.get("volumes", 0)) + int(b.get("volumes", 0)), **scalars}
        quantiles = [q for q in (a.get("quantiles"), b.get("quantiles")) if q]
        if quantiles:
            record["quantiles"] = {"levels": quantiles[0]["levels"],
                                   "lo": [min(v) for v in zip(*(q["lo"] for q in quantiles))],
                                   "hi": [max(v) for v in zip(*(q["hi"] for q in quantiles))]}
        mods[name] = record
    return {"version": PROFILE_VERSION, "split": f"{first.get('split', '?')} + {second.get('split', '?')}",
            "subjects": int(first.get("subjects", 0)) + int(second.get("subjects", 0)),
            "anatomies": anatomies, "modalities": mods}


# -- the check -----------------------------------------------------------------------------------
def _union(ranges: Sequence[Sequence[float] | None]) -> tuple[float, float] | None:
    kept = [r for r in ranges if r]
    return (min(r[0] for r in kept), max(r[1] for r in kept)) if kept else None


def _mm(value: float) -> str:
    return f"{value:.3g} mm"


def _geometry_warnings(s: Mapping[str, Any], geo: Mapping[str, tuple[float, float] | None], what: str,
                       pixel_mm: float | None) -> list[str]:
    out = []
    if in_plane := geo.get("in_plane_mm"):
        lo, hi = in_plane
        # a model with a pixel size resamples every slice to it: finer pixels are harmless, coarser ones lose detail
        coarsest, finest = max(hi, pixel_mm or 0.0), (0.0 if pixel_mm else lo)
        for value in (s["in_plane_max_mm"], s["in_plane_mm"]):
            if value > coarsest * SPACING_FACTOR or value < finest / SPACING_FACTOR:
                out.append(f"in-plane pixel size {_mm(value)} is far from the training data's {_range_text(lo, hi)} mm "
                           f"({what}): check the file's spacing")
                break
    if thickness := geo.get("thickness_mm"):
        lo, hi = thickness
        value = s["thickness_mm"]
        if value > hi * THICKNESS_FACTOR or value < (0.0 if pixel_mm else lo) / THICKNESS_FACTOR:
            out.append(f"slice thickness {_mm(value)} is far from the training data's {_range_text(lo, hi)} mm ({what})")
    if (extent := geo.get("extent_mm")) and s["extent_mm"] > 0:
        lo, hi = extent
        value = s["extent_mm"]
        if value > hi * EXTENT_LARGE:
            out.append(f"the body spans {_mm(value)} in the slice plane, larger than any training scan "
                       f"({lo:.0f}–{hi:.0f} mm, {what}): another anatomy, or a wrong pixel spacing?")
        elif value < lo * EXTENT_SMALL:
            out.append(f"the body spans only {_mm(value)} in the slice plane, much smaller than the training scans "
                       f"({lo:.0f}–{hi:.0f} mm, {what}): a tight crop, or a wrong pixel spacing?")
    if edge := geo.get("edge_slices"):
        limit = max(EDGE_SLICES_FLOOR, edge[1] + EDGE_SLICES_MARGIN)
        if s["edge_slices"] > limit:
            out.append(f"the body is cut by the field of view in {100 * s['edge_slices']:.0f} % of its slices "
                       f"(training scans: at most {100 * edge[1]:.0f} %): expect errors near the edges")
    return out


def _outside(value: float | None, span: Sequence[float] | None, margin: float) -> bool:
    return value is not None and span is not None and not span[0] - margin <= value <= span[1] + margin


def _intensity_warnings(s: Mapping[str, Any], record: Mapping[str, Any], modality: str) -> list[str]:
    mod = modalities.get(modality)
    out = []
    if mod.family == "CT":
        for key, label, margin in (("tissue_peak", "soft-tissue peak", HU_MARGIN),
                                   ("p50", "median in the body", HU_MARGIN), ("air_peak", "air peak", HU_AIR_MARGIN),
                                   ("p1", "1st percentile in the body", HU_TAIL_MARGIN),
                                   ("p99", "99th percentile in the body", HU_TAIL_MARGIN)):
            span = record.get(key)
            if span is not None and _outside(s.get(key), span, margin):
                out.append(f"{modality} {label} at {s[key]:.0f} HU, outside the training data's "
                           f"{span[0]:.0f}…{span[1]:.0f} HU (±{margin:.0f} HU allowed): a calibration offset or "
                           f"another scanner's HU scale?")
    elif mod.family == "PET":
        for key, label in (("p50", "median SUV in the body"), ("p99", "99th-percentile SUV in the body")):
            span = record.get(key)
            margin = max(1.0, SUV_MARGIN * (span[1] - span[0])) if span else 0.0
            if span is not None and _outside(s.get(key), span, margin):
                out.append(f"PET {label} {s[key]:.2f}, outside the training data's {span[0]:.2f}…{span[1]:.2f}: "
                           "check the SUV conversion")
    else:
        q = record.get("quantiles")
        if q and s.get("quantiles"):
            off = [(level, v, lo, hi) for level, v, lo, hi in zip(q["levels"], s["quantiles"], q["lo"], q["hi"])
                   if not lo - MR_QUANTILE_MARGIN <= v <= hi + MR_QUANTILE_MARGIN]
            if off:
                level, v, lo, hi = max(off, key=lambda o: max(o[2] - o[1], o[1] - o[3]))
                out.append(f"the {modality} intensity histogram inside the body is unlike the training scans' "
                           f"(its {100 * level:.0f}th percentile sits at {v:.2f} of the range, training "
                           f"{lo:.2f}–{hi:.2f}): another contrast, an inverted image, or a strong bias field?")
        span = record.get("rim")
        if span is not None and _outside(s.get("rim"), span, MR_RIM_MARGIN):
            out.append(f"the {modality} contrast between the body's rim and its inside ({s['rim']:+.2f}) is unlike "
                       f"the training scans' ({span[0]:+.2f}…{span[1]:+.2f}): an inverted or mislabelled contrast?")
        span = record.get("bias")
        if span and s.get("bias") is not None and s["bias"] > max(span[1] + MR_BIAS_MARGIN, 1.5 * span[1],
                                                                  MR_BIAS_FLOOR):
            out.append(f"a smooth intensity gradient across the body (×{np.exp(s['bias']):.1f} from one side to "
                       f"the other; training at most ×{np.exp(span[1]):.1f}): a strong bias field — correct it "
                       "(e.g. N4) before synthesis")
    return out


def check_input(volume: Volume, source: str, profile: Mapping[str, Any] | None,
                pixel_mm: float | None = None, calibration: Mapping[str, Any] | None = None,
                axis: int | None = None) -> list[str]:
    """Warnings (each starting with :data:`WARNING_PREFIX`) when ``volume``, read as ``source``, is
    unlike the training data the ``profile`` describes; empty when it looks like it. Without a
    profile, only the note that nothing can be checked. With ``pixel_mm`` (the model's pixel size:
    it resamples every slice to it) pixels finer than the training data's are not flagged; with the
    card's ``calibration`` a CT-family input is checked as the pipeline will feed it (shifted); its
    slices are measured as cut along ``axis`` (the plan's: a named plane's; None: the acquisition axis)."""
    labels = _label_map_warning(volume, source)             # said of any input, profile or not
    if not profile or not isinstance(profile, Mapping) or not profile.get("modalities"):
        return labels + [NO_PROFILE_NOTE]
    source = modalities.canonical(source)
    record = profile["modalities"].get(source)
    if record is None:
        trained = ", ".join(profile["modalities"]) or "none"
        return [f"{WARNING_PREFIX}the model was not trained on {source} inputs (training modalities: {trained})"]
    if calibration and modalities.get(source).family == "CT":
        from engine.inference.calibration import calibration_shift

        array = np.asarray(volume.array, dtype=np.float32)
        shift, _ = calibration_shift(array, modalities.body_mask(array, source), calibration)
        volume = volume.with_array(array + np.float32(shift)) if shift else volume
    signals = volume_signals(volume, source, axis)
    anatomies = [profile.get("anatomies", {}).get(a) or {} for a in record.get("anatomies", [])]
    geo = {key: _union([a.get(key) for a in anatomies]) for key in GEOMETRY_KEYS}
    what = "/".join(record.get("anatomies", [])) or "training"
    warnings = _geometry_warnings(signals, geo, what, pixel_mm) + _intensity_warnings(signals, record, source)
    return labels + [WARNING_PREFIX + w for w in warnings]


def _label_map_warning(volume: Volume, source: str) -> list[str]:
    """The warning for an input that holds only a few whole-number values (:data:`LABEL_MAP_VALUES`) in
    flat regions (:data:`LABEL_MAP_FLAT`): a segmentation or mask passed as a scan (a BraTS ``_seg``
    file beside the T1 it labels) — its histogram alone is flagged as an odd contrast, which does not
    say what is wrong."""
    array = np.asarray(volume.array)
    values = array.ravel()[:: max(1, array.size // MAX_VOXELS)]
    values = values[np.isfinite(values)]
    if values.size == 0 or not np.all(values == np.round(values)):
        return []
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) > LABEL_MAP_VALUES:
        return []
    left, right = array[..., :-1], array[..., 1:]              # neighbours along rows
    background = distinct[np.argmax(counts)]
    off = (left != background) | (right != background)
    if not off.any() or float(np.mean(left[off] == right[off])) < LABEL_MAP_FLAT:
        return []
    shown = ", ".join(f"{v:g}" for v in distinct[:6]) + (", …" if len(distinct) > 6 else "")
    return [f"{WARNING_PREFIX}the input holds only {len(distinct)} distinct values, all whole numbers ({shown}): "
            f"a label map or mask (a segmentation), not a {source} scan?"]


def marked_description(description: str, warnings: Sequence[str]) -> str:
    """``description`` led by :data:`OOD_MARK` when the guard fired (a card without a profile does not count)."""
    return f"{OOD_MARK}{description}" if any(w != NO_PROFILE_NOTE for w in warnings) else description


def with_warnings(volume: Volume, warnings: Sequence[str]) -> Volume:
    """``volume`` with ``warnings`` appended to its notes (which every writer carries into provenance)."""
    return volume.replace(notes=(*volume.notes, *warnings)) if warnings else volume


def _range_text(lo: float, hi: float) -> str:
    """A range as a reader wants it: "1.88" when both ends print alike, else "0.94–1.88"."""
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}–{hi:.3g}"
