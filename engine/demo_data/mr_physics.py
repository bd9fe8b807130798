"""MR contrasts from tissue fractions: literature relaxation times at 3 T, the signal equations
(spin echo, inversion recovery, spoiled gradient echo), partial-volume mixing of the complex
(signed) signals, gadolinium T1 shortening, a smooth bias field and Rician noise.

Relaxation times (3 T; the values used are representative, the ranges are those reported):
- GM, WM: T1 1331 / 832 ms, T2 110 / 80 ms — Wansapura et al., J Magn Reson Imaging 9:531 (1999);
  Stanisz et al., Magn Reson Med 54:507 (2005) report 1820 / 1084 ms and 99 / 69 ms, the spread
  the per-subject jitter covers.
- CSF: T1 ≈ 4.3 s (Rooney et al., Magn Reson Med 57:308, 2007, report ≈ 4.4 s at 3 T), T2 ≈ 2 s.
- Proton density (water content relative to CSF): GM ≈ 0.80, WM ≈ 0.69 (Neeb et al.,
  NeuroImage 31:1156, 2006).
- Glioblastoma compartments (no single reference; representative of the prolonged T1/T2 reported
  by relaxometry of gliomas, e.g. MR fingerprinting, Badve et al., AJNR 38:492, 2017): vasogenic
  oedema T1 1450 ms / T2 150 ms / PD 0.83; enhancing (viable) tumour 1650 / 130 / 0.84;
  necrotic core (proteinaceous fluid) 2800 / 450 / 0.93.
- Non-brain head tissue (subjects that keep the skull and scalp), three classes:
  subcutaneous fat / marrow T1 380 ms — de Bazelaire et al., Radiology 230:652 (2004) report
  382 ms (T2 68 ms by single-shot fast spin echo) for subcutaneous fat at 3 T; T2 130 ms, PD 0.90
  are representative of fat in (fast) spin-echo imaging, where J-coupling keeps it bright;
  muscle / skin T1 1400 ms, T2 40 ms, PD 0.70 — representative of musculoskeletal relaxometry at
  3 T (Jordan et al., Eur J Radiol 82:734, 2013; de Bazelaire et al. give 898 / 29 ms for
  paravertebral muscle, the spread the jitter partly covers); cortical bone (with dura and air,
  all dark on T1) T1 250 ms, T2 1 ms, PD 0.05 — cortical bone has T2* below 1 ms and little
  mobile water, so it gives no signal at clinical echo times (Reichert et al., Magn Reson
  Imaging 23:611, 2005).
- Gadolinium: 1/T1 = 1/T1₀ + r1·C with r1 = 3.7 L mmol⁻¹ s⁻¹ (gadopentetate in plasma at 3 T,
  Rohrer et al., Invest Radiol 40:715, 2005) and C ≈ 0.1–0.4 mmol/L in enhancing tumour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.demo_data.grid import upsample_lattice

FIELD_STRENGTH_T = 3.0
GD_R1_PER_MM_S = 3.7        # L/mmol/s

# name: (T1 ms, T2 ms, PD relative to water)
TISSUES_3T: dict[str, tuple[float, float, float]] = {
    "gm": (1331.0, 110.0, 0.80),
    "wm": (832.0, 80.0, 0.69),
    "csf": (4300.0, 2000.0, 1.00),
    "oedema": (1450.0, 150.0, 0.83),
    "rim": (1650.0, 130.0, 0.84),       # enhancing viable tumour (pre-contrast)
    "core": (2800.0, 450.0, 0.93),      # necrosis
    "fat": (380.0, 130.0, 0.90),        # scalp fat, marrow (outside the brain)
    "muscle": (1400.0, 40.0, 0.70),     # muscle, skin
    "bone": (250.0, 1.0, 0.05),         # cortical bone, dura, air
}
LESION_TISSUES = ("oedema", "rim", "core")
HEAD_TISSUES = ("fat", "muscle", "bone")

# receiver gains: fixed per sequence so each modality keeps one arbitrary-but-consistent unit
GAIN = {"T1": 10000.0, "T1CE": 10000.0, "T2": 2000.0, "PD": 1000.0, "FLAIR": 3000.0}


# -- signal equations (magnitudes per unit PD; times in ms) -----------------------------------
def spin_echo(t1, t2, pd, tr, te):
    """S = PD·(1 − e^(−TR/T1))·e^(−TE/T2)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(t1, t2, pd, tr, te, ti):
    """Signed S = PD·(1 − 2e^(−TI/T1) + e^(−TR/T1))·e^(−TE/T2); the image is its magnitude after
    partial-volume summation."""
    return pd * (1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def spoiled_gradient_echo(t1, t2, pd, tr, te, flip_deg):
    """S = PD·sin α·(1 − E1)/(1 − cos α·E1)·e^(−TE/T2), E1 = e^(−TR/T1) (T2* ≈ T2 at short TE)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / t1)
    return pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-te / t2)


def null_inversion_time(t1, tr):
    """TI that nulls a tissue of longitudinal relaxation ``t1`` at repetition ``tr``:
    TI = T1·(ln 2 − ln(1 + e^(−TR/T1))) (≈ T1·ln 2 for TR ≫ T1)."""
    return t1 * (np.log(2.0) - np.log1p(np.exp(-tr / t1)))


def gadolinium_t1(t1_ms, concentration_mm):
    """Post-contrast T1 (ms): 1/T1 = 1/T1₀ + r1·C."""
    return 1.0 / (1.0 / t1_ms + GD_R1_PER_MM_S * np.asarray(concentration_mm) / 1000.0)


# -- acquisition -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AcquisitionSpec:
    """Ranges of the per-subject acquisition (uniform draws)."""

    t2_tr_ms: tuple[float, float] = (3000.0, 7000.0)
    t2_te_ms: tuple[float, float] = (80.0, 120.0)
    pd_tr_ms: tuple[float, float] = (2000.0, 4000.0)
    pd_te_ms: tuple[float, float] = (8.0, 30.0)
    flair_tr_ms: tuple[float, float] = (6000.0, 11000.0)
    flair_te_ms: tuple[float, float] = (80.0, 140.0)
    flair_ti_jitter: float = 0.04                  # TI = (1 ± this)·TI_null(CSF)
    t1_tr_ms: tuple[float, float] = (8.0, 30.0)    # spoiled GRE that models lesions in the real T1
    t1_te_ms: tuple[float, float] = (2.0, 6.0)
    t1_flip_deg: tuple[float, float] = (15.0, 35.0)
    relaxation_jitter: float = 0.12                # each tissue's T1, T2 × U(1 − j, 1 + j)
    pd_jitter: float = 0.06                        # each tissue's PD × U(1 − j, 1 + j), at most 1
    noise_fraction: tuple[float, float] = (0.005, 0.05)    # Rician σ / 99th percentile of the brain
    bias_strength: tuple[float, float] = (0.02, 0.25)     # std of log bias (subject)
    bias_per_sequence: float = 0.05                        # extra std of log bias (each sequence)
    bias_lattice: int = 4

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AcquisitionSpec":
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**values)


@dataclass(frozen=True)
class Acquisition:
    """One subject's drawn tissue parameters and sequence settings."""

    tissues: dict[str, tuple[float, float, float]]
    sequences: dict[str, dict[str, float]]
    noise_fraction: dict[str, float]
    bias_strength: float
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"field_strength_t": FIELD_STRENGTH_T,
                "tissues_t1_t2_pd": {k: [round(v, 1) if i < 2 else round(v, 3) for i, v in enumerate(t)]
                                     for k, t in self.tissues.items()},
                "sequences": {k: {p: round(v, 2) for p, v in s.items()} for k, s in self.sequences.items()},
                "noise_fraction": {k: round(v, 4) for k, v in self.noise_fraction.items()},
                "bias_strength": round(self.bias_strength, 4)}


def draw_acquisition(rng: np.random.Generator, spec: AcquisitionSpec = AcquisitionSpec()) -> Acquisition:
    u = lambda r: float(rng.uniform(*r))   # noqa: E731
    tissues = {}
    for name, (t1, t2, pd) in TISSUES_3T.items():
        j, jp = spec.relaxation_jitter, spec.pd_jitter
        tissues[name] = (t1 * float(rng.uniform(1.0 - j, 1.0 + j)), t2 * float(rng.uniform(1.0 - j, 1.0 + j)),
                         min(1.0, pd * float(rng.uniform(1.0 - jp, 1.0 + jp))))
    t1_seq = {"tr": u(spec.t1_tr_ms), "te": u(spec.t1_te_ms), "flip_deg": u(spec.t1_flip_deg)}
    flair_tr = u(spec.flair_tr_ms)
    ti = float(null_inversion_time(tissues["csf"][0], flair_tr))
    ti *= 1.0 + float(rng.uniform(-1, 1)) * spec.flair_ti_jitter
    sequences = {
        "T1": t1_seq, "T1CE": dict(t1_seq),
        "T2": {"tr": u(spec.t2_tr_ms), "te": u(spec.t2_te_ms)},
        "PD": {"tr": u(spec.pd_tr_ms), "te": u(spec.pd_te_ms)},
        "FLAIR": {"tr": flair_tr, "te": u(spec.flair_te_ms), "ti": ti},
    }
    noise = {k: u(spec.noise_fraction) for k in sequences}
    return Acquisition(tissues, sequences, noise, u(spec.bias_strength))


def tissue_signal(modality: str, tissue: tuple[float, float, float], seq: dict[str, float]):
    """Signed signal per unit volume of one tissue (no gain)."""
    t1, t2, pd = tissue
    if modality in ("T1", "T1CE"):
        return spoiled_gradient_echo(t1, t2, pd, seq["tr"], seq["te"], seq["flip_deg"])
    if modality in ("T2", "PD"):
        return spin_echo(t1, t2, pd, seq["tr"], seq["te"])
    if modality == "FLAIR":
        return inversion_recovery(t1, t2, pd, seq["tr"], seq["te"], seq["ti"])
    raise ValueError(f"no signal model for {modality}")


# -- images ----------------------------------------------------------------------------------
def mix(modality: str, fractions: dict[str, np.ndarray], acq: Acquisition) -> np.ndarray:
    """Partial-volume image: the magnitude of Σ_k f_k·S_k (signed signals add, as magnetisation
    does within a voxel), times the sequence gain."""
    seq = acq.sequences[modality]
    out = None
    for name, frac in fractions.items():
        s = float(tissue_signal(modality, acq.tissues[name], seq))
        out = frac * s if out is None else out + frac * s
    assert out is not None, "a subject always has tissue maps to mix"
    return (np.abs(out) * GAIN[modality]).astype(np.float32)


def calibrate_real_t1(t1_means: dict, acq: Acquisition) -> tuple[float, float]:
    """(a, b) with a·T1_real + b ≈ simulated T1-weighted signal of pure GM, WM and CSF (least
    squares), so lesion compartments can be written into the real T1 on one scale."""
    seq = acq.sequences["T1"]
    keys = ("gm", "wm", "csf")
    x = np.array([t1_means[k] for k in keys], float)
    y = np.array([float(tissue_signal("T1", acq.tissues[k], seq)) * GAIN["T1"] for k in keys])
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


def t1_weighted(real_t1: np.ndarray, brain: np.ndarray, fractions_before: dict[str, np.ndarray],
                fractions_after: dict[str, np.ndarray], t1_means: dict, acq: Acquisition,
                uptake_mm: np.ndarray | None = None, modality: str = "T1") -> np.ndarray:
    """The real T1 (calibrated) where tissue is unchanged, with every voxel's change in tissue
    fractions (lesions) added through the T1-weighted signal model; for T1CE the enhancing
    compartment's T1 is shortened by gadolinium of concentration ``uptake_mm``."""
    a, b = calibrate_real_t1(t1_means, acq)
    out = a * real_t1 + b * brain
    seq = acq.sequences["T1"]
    for name in fractions_after:
        delta = fractions_after[name] - fractions_before.get(name, 0.0)
        if not np.any(delta):
            continue
        tissue = acq.tissues[name]
        if modality == "T1CE" and name == "rim" and uptake_mm is not None:
            post = gadolinium_t1(tissue[0], uptake_mm)
            s = spoiled_gradient_echo(post, tissue[1], tissue[2], seq["tr"], seq["te"], seq["flip_deg"])
        else:
            s = float(tissue_signal("T1", tissue, seq))
        out = out + delta * s * GAIN["T1"]
    return np.clip(out, 0.0, None).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], lattice: int, std: float) -> np.ndarray:
    """A smooth random field exp(g), g cubic-spline upsampled from a ``lattice``³ Gaussian grid."""
    coarse = rng.normal(0.0, std, size=(lattice,) * 3)
    coarse -= coarse.mean()
    return np.exp(upsample_lattice(coarse, shape))


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """|image + n₁ + i·n₂| with n₁, n₂ ~ N(0, σ²): the magnitude-image noise of MR."""
    n1 = rng.standard_normal(image.shape, dtype=np.float32)
    n2 = rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2).astype(np.float32)
