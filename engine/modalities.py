"""The modality registry: names, units, display windows, intensity normalisation and its
inverse, body masks, and guessing a modality from DICOM tags or a file name."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Modality:
    name: str                      # canonical name, e.g. "T1CE"
    description: str
    family: str                    # "MR", "CT" or "PET"
    unit: str                      # physical unit of the voxel values
    window: tuple[float, float]    # default (level, width) for display
    fixed_range: tuple[float, float] | None = None   # normalisation range; None → percentiles
    dicom_modality: str = "OT"


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("T1", "T1-weighted MR", "MR", "a.u.", (0.5, 1.0), dicom_modality="MR"),
        Modality("T1CE", "contrast-enhanced T1-weighted MR", "MR", "a.u.", (0.5, 1.0), dicom_modality="MR"),
        Modality("T2", "T2-weighted MR", "MR", "a.u.", (0.5, 1.0), dicom_modality="MR"),
        Modality("FLAIR", "T2 fluid-attenuated inversion recovery MR", "MR", "a.u.", (0.5, 1.0), dicom_modality="MR"),
        Modality("PD", "proton-density-weighted MR", "MR", "a.u.", (0.5, 1.0), dicom_modality="MR"),
        Modality("CT", "computed tomography", "CT", "HU", (40.0, 400.0), (-1024.0, 2000.0), "CT"),
        Modality("CBCT", "cone-beam CT", "CT", "HU", (40.0, 400.0), (-1024.0, 2000.0), "CT"),
        Modality("PET", "FDG PET", "PET", "SUVbw", (3.0, 6.0), (0.0, 20.0), "PT"),
    )
}

MR_PERCENTILES = (0.5, 99.5)


def scale_bottom(name: str) -> float | None:
    """The lowest value ``name``'s physical scale holds (air −1024 HU, SUV 0); None for MR's arbitrary
    units, which have no bottom."""
    fixed = get(name).fixed_range
    return None if fixed is None else fixed[0]


def on_scale(name: str | None, unit: str | None) -> bool:
    """Whether values of modality ``name`` in ``unit`` are on its registry scale (HU for CT, SUVbw for
    PET, any for MR's arbitrary units; no unit stated: the modality's), where its fixed range, window
    and presets hold; a PET in Bq/ml or counts is not."""
    mod = MODALITIES.get(name or "")
    return mod is not None and (mod.family == "MR" or not unit or unit == mod.unit)


def get(name: str) -> Modality:
    """The registry entry for ``name`` (case-insensitive); ValueError naming the known ones."""
    key = str(name).strip().upper()
    if key not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")
    return MODALITIES[key]


def canonical(name: str) -> str:
    return get(name).name


# -- masks and normalisation ----------------------------------------------------------------
BODY_HU = -500.0           # a CT's body: above this, between air and fat


def _gaps_bridged(fg: np.ndarray) -> np.ndarray:
    """``fg`` with each slice (axis 0) that holds none of it between two that do filled with the union
    of those two: for finding connected components across a gap only."""
    if fg.ndim != 3:
        return fg
    held = np.flatnonzero(fg.any(axis=(1, 2)))
    if len(held) < 2 or held[-1] - held[0] + 1 == len(held):
        return fg
    bridged = fg.copy()
    for before, after in zip(held[:-1], held[1:]):
        if after - before > 1:
            bridged[before + 1:after] = fg[before] | fg[after]
    return bridged


def body_mask(array: np.ndarray, modality: str) -> np.ndarray:
    """Foreground (body / head) mask: threshold, keep the largest component, fill holes per slice. A
    volume's slices (axis 0) holding no foreground between slices that hold some — a slice lost, blank
    or NaN — do not cut the body in two: the component is found as if each such slice held its
    neighbours' foreground (before, the smaller part of a head cut by one blank slice was dropped as
    a speck, and synthesis left it empty)."""
    from scipy import ndimage  # here: the registry above is imported by the app's light modules

    arr = np.asarray(array, dtype=np.float32)
    mod = get(modality)
    if mod.family == "CT":
        fg = arr > BODY_HU
    else:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros(arr.shape, bool)
        lo, hi = np.percentile(finite, (1.0, 99.0))
        fg = arr > lo + 0.08 * (hi - lo)
    if not fg.any():
        return fg
    labels, n = ndimage.label(_gaps_bridged(fg))
    if n > 1:
        sizes = np.bincount(labels[fg])
        sizes[0] = 0
        fg &= labels == int(np.argmax(sizes))
    filled = np.stack([ndimage.binary_fill_holes(s) for s in fg]) if fg.ndim == 3 else ndimage.binary_fill_holes(fg)
    return filled


@dataclass(frozen=True)
class Normalisation:
    """How one volume was mapped to [0, 1]: value = lo + n · (hi − lo)."""

    modality: str
    lo: float
    hi: float

    def to_dict(self) -> dict:
        return {"modality": self.modality, "lo": self.lo, "hi": self.hi}


def normalisation_for(array: np.ndarray, modality: str, mask: np.ndarray | None = None) -> Normalisation:
    """The per-volume normalisation of the evaluation protocol (docs/evaluation.md).

    MR: the 0.5–99.5 percentiles inside the body mask; CT/CBCT: HU [−1024, 2000]; PET: SUV [0, 20].
    """
    mod = get(modality)
    if mod.fixed_range is not None:
        return Normalisation(mod.name, *mod.fixed_range)
    arr = np.asarray(array, dtype=np.float32)
    if mask is None:
        mask = body_mask(arr, mod.name)
    values = arr[mask] if mask.any() else arr.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Normalisation(mod.name, 0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return Normalisation(mod.name, lo, hi)


def normalise(array: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Physical values → [0, 1] (clipped)."""
    out = (np.asarray(array, dtype=np.float32) - norm.lo) / (norm.hi - norm.lo)
    return np.clip(out, 0.0, 1.0)


def denormalise(array: np.ndarray, norm: Normalisation) -> np.ndarray:
    """[0, 1] → physical values (the inverse of :func:`normalise` inside the range)."""
    return (np.asarray(array, dtype=np.float32) * (norm.hi - norm.lo) + norm.lo).astype(np.float32)


# -- guessing ---------------------------------------------------------------------------------
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    ("T1CE", r"(?<!pa)(t1w?[-_ ]?(ce|c|gd|gad|post(contrast|gd|gad|gado|km)?|contrast|\+ ?c)|mprage[-_ ]?(post|gd))"
             r"(?![a-z])"),
    ("FLAIR", r"flair|t2[-_ ]?f(lair)?\b|dark ?fluid|(?<![a-z])da ?fl(?![a-z])"),
    ("CBCT", r"cbct|cone[-_ ]?beam"),
    ("PET", r"\bpet\b|\bpt\b|suv|fdg"),
    ("PD", r"\bpd\b|pdw|proton[-_ ]?dens"),
    ("T2", r"(?<!pa)t2"),                   # also AxT2, SAGT2; not Siemens' "pat2" (parallel imaging factor 2)
    ("T1", r"(?<!pa)t1|mprage|spgr|tfl|bravo|(?<![a-z])tfe(?![a-z])"),
    ("CT", r"\bct\b|\bsct\b"),
)
_SCANNED = ("CBCT", "PET", "CT")                  # names that say these need no MR reading
_T1_FLAIR = r"(?<!pa)t1w? ?flair"                # GE's T1 FLAIR: T1-weighted (an inversion time of about 850 ms)
# a T1 named with its contrast agent anywhere (post, Gd, KM: Kontrastmittel, +C) is a T1CE, unless the name says
# before or without it (pre, ohne, without, non-contrast, nativ); "post" before op / surgery / therapy is no agent
_CONTRAST_WORDS = (r"(?<![a-z])(post(?! ?(op|surg|operat|treat|tx|rt|radi|ther))(contrast|gd|gad|gado|km)?|gd|gad|gado|"
                   r"km|contrast|ce|\+ ?c|c ?\+)(?![a-z])")
_NO_CONTRAST_WORDS = (r"(?<![a-z])((pre|ohne|without|non|no|w ?o)[ -]?(contrast|kontrast|km|gd|gad|gado|c)|"
                      r"pre|nativ|native|plain)(?![a-z])")
# MR series of no modality the model knows, whatever contrast their name also says (what they are, and the names
# and ImageType values that say it)
_OTHER_MR: tuple[tuple[str, str], ...] = (
    ("T2* / susceptibility-weighted", r"t2 ?(star|\*)|(?<![a-z])t2w? (fl[23]d|gre|ffe|me ?gre|medic|merge)|\bswi\b|"
                                      r"\bswan\b|\bsusc|\bhemo\b"),
    ("diffusion", r"\bdwi\b|\bdiff\b|diffusion|\badc\b|\bdti\b|\btrace ?w?\b|\bep b\d|(?<![a-z])b ?1000(?![0-9])"),
    ("BOLD / fMRI", r"\bbold\b|fmri|\bepfid|\bmoco ?series|resting ?state"),
    ("perfusion", r"\bperf|\basl\b|casl\b|\bdsc\b|\bdce\b"),
    ("angiography", r"\btof\b|angio|\bmra\b|\bmrv\b"),
    ("field map", r"field ?map|b[01] ?map"),
    ("phase image", r"\bphase\b|\bpha\b"),
    ("quantitative map", r"(?<![a-z])(t1|t2|t2 ?star|r2 ?star|pd) ?maps?(?![a-z])|molli|mapit|relaxometry|"
                         r"(?<![a-z])t1 images(?![a-z])"),
    ("spectroscopy", r"spectro|\bsvs\b|\bcsi\b|\bmrs\b"),
    ("STIR (short-TI inversion recovery: fat dark)", r"\bstir\b"),
)
# a gradient echo named without its weighting is a T2* (a T1 gradient echo says T1: T1W_FFE, SPGR, MPRAGE)
_BARE_GRADIENT_ECHO = r"(?<![a-z])(gre|ffe|medic|merge)(?![a-z])"
_OTHER_MR_IMAGE_TYPES = {
    "DIFFUSION": "diffusion", "ADC": "diffusion", "TRACEW": "diffusion", "FA": "diffusion", "EADC": "diffusion",
    "SWI": "T2* / susceptibility-weighted", "MNIP": "T2* / susceptibility-weighted", "MIP": "angiography",
    "P": "phase image", "PHASE": "phase image", "PERFUSION": "perfusion", "ASL": "perfusion", "CBF": "perfusion",
    "FMRI": "BOLD / fMRI", "MOCO": "BOLD / fMRI", "FIELD_MAP": "field map", "B0MAP": "field map",
    "T1 MAP": "quantitative map", "T2 MAP": "quantitative map", "T2* MAP": "quantitative map",
    "T2STAR MAP": "quantitative map", "R2STAR MAP": "quantitative map",
}


def _tokens(text: str) -> str:
    """Lower-case text with separators turned into spaces so that word boundaries work ("*" kept: T2*)."""
    return " " + re.sub(r"[^a-z0-9+*]+", " ", text.lower()) + " "


def other_mr(text: str, image_type: str = "") -> str:
    """What an MR series of no modality the model knows is ("diffusion", "phase image", …), by its
    ImageType or a name; "" for any other series."""
    for value in image_type.upper().split("\\"):
        if value.strip() in _OTHER_MR_IMAGE_TYPES:
            return _OTHER_MR_IMAGE_TYPES[value.strip()]
    if re.search(r"(?<![A-Za-z])SWIp(?![A-Za-z])", text):       # Philips' SWI (not "sWIP", work in progress)
        return "T2* / susceptibility-weighted"
    t = _tokens(text)
    for kind, pattern in _OTHER_MR:
        if re.search(pattern, t):
            return kind
    if re.search(_BARE_GRADIENT_ECHO, t) and not re.search(dict(_NAME_PATTERNS)["T1"], t):
        return "T2* / susceptibility-weighted"
    return ""


def guess_from_text(text: str) -> str | None:
    """Guess a modality from a file name or a series description (None when nothing matches, or when it
    names an MR series of no modality the model knows: T2*, SWI, diffusion, BOLD, …, :func:`other_mr`;
    a CT, CBCT or PET name is taken first: a 4-D CT's "phase 10" is no MR phase image)."""
    t = _tokens(text)
    for name, pattern in _NAME_PATTERNS:
        if name in _SCANNED and re.search(pattern, t):
            return name
    if other_mr(text):
        return None
    for name, pattern in _NAME_PATTERNS:
        if re.search(pattern, t):
            if name == "FLAIR" and re.search(_T1_FLAIR, t):
                name = "T1"
            if name in ("T1", "T1CE") and re.search(_NO_CONTRAST_WORDS, t):
                return "T1"
            return "T1CE" if name == "T1" and re.search(_CONTRAST_WORDS, t) else name
    return None


def guess_from_filename(path: str) -> str | None:
    name = re.split(r"[\\/]", str(path))[-1]
    name = re.sub(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd|\.nhdr|\.dcm)$", "", name, flags=re.I)
    return guess_from_text(name)


DICOM_NAMES = ("SeriesDescription", "ProtocolName", "SequenceName", "ImageComments")


def dicom_names(tags: Mapping[str, object]) -> str:
    """What a DICOM series is called, every name it has (a guess reads them together)."""
    return " ".join(str(tags.get(k, "") or "") for k in DICOM_NAMES)


def other_mr_series(tags: Mapping[str, object]) -> str:
    """:func:`other_mr` of an MR series' ImageType and names, read together as the guess reads them."""
    return other_mr(dicom_names(tags), str(tags.get("ImageType", "") or ""))


def guess_from_dicom(tags: Mapping[str, object]) -> str | None:
    """Guess from DICOM attributes (keywords as keys): Modality, descriptions, TR/TE/TI, contrast. A
    description naming both PD and T2 (one dual-echo series, split by echo) is told by each echo's timing."""
    modality = str(tags.get("Modality", "") or "").upper()
    text = dicom_names(tags)
    if modality in ("PT", "PET"):
        return "PET"
    if modality == "CT":          # a linac's imager (Varian On-Board Imager, Halcyon, Ethos; Elekta XVI) makes CBCTs
        imager = " ".join(str(tags.get(k, "") or "") for k in ("StationName", "ManufacturerModelName"))
        t = _tokens(f"{text} {imager}")
        return "CBCT" if re.search(r"cbct|cone[-_ ]?beam|\bobi\b|\bxvi\b|on board imager|halcyon|ethos", t) else "CT"
    if modality != "MR":
        return guess_from_text(text) if text.strip() else None
    if other_mr_series(tags):
        return None                      # its timing would call a DWI a T2, an SWI a T1, a BOLD series a PD
    by_text = guess_from_text(text)
    if by_text == "T2" and _guess_mr_from_timing(tags) == "FLAIR":
        return "FLAIR"                   # a T2 inverting fluid (TIRM, SPACE-FLAIR): its inversion time says so
    if by_text == "PD" and re.search(dict(_NAME_PATTERNS)["T2"], _tokens(text)):
        timed = _guess_mr_from_timing(tags)              # a dual echo (PD+T2): each echo by its own TE
        by_text = timed if timed in ("PD", "T2") else by_text
    if by_text in ("T1CE", "FLAIR", "PD", "T2", "T1"):
        if by_text == "T1" and str(tags.get("ContrastBolusAgent", "") or "").strip():
            return "T1CE"
        return by_text
    return _guess_mr_from_timing(tags)


def _float(tags: Mapping[str, object], key: str) -> float | None:
    try:
        value = tags.get(key)
        return None if value in (None, "") else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _guess_mr_from_timing(tags: Mapping[str, object]) -> str | None:
    tr, te, ti = _float(tags, "RepetitionTime"), _float(tags, "EchoTime"), _float(tags, "InversionTime")
    if tr is None or te is None:
        return None
    if ti is not None and ti <= 0:
        ti = None                        # GE and Philips write 0 for a sequence with no inversion
    contrast = bool(str(tags.get("ContrastBolusAgent", "") or "").strip())
    if ti is not None and ti > 1500 and te > 60:
        return "FLAIR"
    if ti is not None and ti < 300 and tr > 1500:
        return None                      # a STIR: inverting fat, no contrast the model knows (a T2's timing besides)
    if te < 30 and (tr < 1200 or (ti is not None and ti < 1500)):
        return "T1CE" if contrast else "T1"
    if tr > 1500 and te >= 60:
        return "T2"
    if tr > 1500 and te < 40:
        return "PD"
    return None
