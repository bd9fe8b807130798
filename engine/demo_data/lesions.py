"""Synthetic brain tumours written into tissue maps before any contrast is simulated: a
necrotic core, an enhancing rim and vasogenic oedema that spreads through white matter, with
irregular borders (a level set perturbed by smoothed noise) and mass effect (the surrounding
tissue pushed outward as by an incompressible expansion)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from engine.demo_data.grid import Grid, lps_to_index, sample, xyz

KINDS = ("necrotic", "solid", "non_enhancing")


@dataclass(frozen=True)
class LesionSpec:
    """How often and how large tumours are drawn."""

    probability: float = 0.75                  # subjects with at least one tumour
    second_probability: float = 0.15           # …of which with a second one
    radius_mm: tuple[float, float] = (8.0, 20.0)
    core_ratio: tuple[float, float] = (0.35, 0.7)
    oedema_margin_mm: tuple[float, float] = (8.0, 28.0)     # oedema beyond the tumour edge
    kind_weights: tuple[float, float, float] = (0.7, 0.15, 0.15)   # necrotic, solid, non_enhancing
    irregularity: float = 0.22
    mass_effect: tuple[float, float] = (0.3, 0.65)                  # cube root of added volume / radius
    uptake_mm: tuple[float, float] = (0.12, 0.35)                   # gadolinium in the enhancing rim

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "LesionSpec":
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**values)


@dataclass(frozen=True)
class Lesion:
    kind: str
    centre_lps: tuple[float, float, float]
    radius_mm: float
    axes: tuple[float, float, float]           # relative semi-axes (product 1)
    rotation: tuple[float, ...]                # 3×3 row-major
    core_ratio: float
    oedema_margin_mm: float
    mass_effect: float
    uptake_mm: float
    noise_seed: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "centre_lps_mm": [round(v, 2) for v in self.centre_lps],
                "radius_mm": round(self.radius_mm, 2), "core_ratio": round(self.core_ratio, 3),
                "oedema_margin_mm": round(self.oedema_margin_mm, 2), "mass_effect": round(self.mass_effect, 3),
                "gadolinium_mmol_per_l": round(self.uptake_mm, 3)}

    @property
    def oedema_radius_mm(self) -> float:
        return self.radius_mm + self.oedema_margin_mm

    @property
    def reach_mm(self) -> float:
        return self.oedema_radius_mm * max(self.axes) * (1.0 + 3.0 * 0.22) + 6.0


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def draw_lesions(rng: np.random.Generator, grid: Grid, wm: np.ndarray, csf: np.ndarray, brain: np.ndarray,
                 spec: LesionSpec = LesionSpec()) -> list[Lesion]:
    """Zero, one or two tumours centred in deep white matter (WM fraction > 0.8, away from CSF
    and from the brain's edge by more than the tumour radius)."""
    if rng.uniform() >= spec.probability:
        return []
    count = 2 if rng.uniform() < spec.second_probability else 1
    # candidate centres on every second voxel: distances are only needed coarsely
    step = 2 if min(wm.shape) >= 32 else 1
    wm, csf, brain = wm[::step, ::step, ::step], csf[::step, ::step, ::step], brain[::step, ::step, ::step]
    grid = Grid(wm.shape, xyz(s * step for s in grid.spacing), grid.origin, grid.direction)
    spacing = tuple(grid.spacing[::-1])
    depth = ndimage.distance_transform_edt(brain > 0.5, sampling=spacing)
    from_csf = ndimage.distance_transform_edt(csf < 0.5, sampling=spacing)
    lesions: list[Lesion] = []
    for _ in range(count):
        radius = float(rng.uniform(*spec.radius_mm)) / (1.0 if not lesions else 1.6)
        kind = KINDS[int(rng.choice(len(KINDS), p=np.asarray(spec.kind_weights) / sum(spec.kind_weights)))]
        axes = rng.uniform(0.75, 1.3, size=3)
        axes = axes / np.prod(axes) ** (1.0 / 3.0)
        rotation = _rotation(rng)
        core = float(rng.uniform(*spec.core_ratio)) if kind == "necrotic" else 0.0
        oedema = float(rng.uniform(*spec.oedema_margin_mm))
        mass = float(rng.uniform(*spec.mass_effect))
        uptake = float(rng.uniform(*spec.uptake_mm)) if kind != "non_enhancing" else 0.0
        noise_seed = int(rng.integers(0, 2 ** 31))
        centre = None
        for shrink in (1.0, 0.8, 0.6):
            r = radius * shrink
            ok = (wm > 0.8) & (depth > r * max(axes) + 4.0) & (from_csf > 0.5 * r)
            for other in lesions:
                ok &= _distance_from(grid, other.centre_lps) > other.oedema_radius_mm + r
            candidates = np.flatnonzero(ok)
            if candidates.size:
                k = np.unravel_index(int(candidates[rng.integers(candidates.size)]), wm.shape)
                centre = xyz((grid.affine() @ np.array([k[2], k[1], k[0], 1.0]))[:3])
                radius = r
                break
        if centre is None:
            continue
        lesions.append(Lesion(kind, centre, radius, xyz(axes), tuple(rotation.ravel()), core,
                              oedema, mass, uptake, noise_seed))
    return lesions


def _distance_from(grid: Grid, centre) -> np.ndarray:
    pts = grid.points()
    return np.sqrt(((pts - np.asarray(centre, np.float32)[:, None, None, None]) ** 2).sum(axis=0))


def push_tissue(maps: dict[str, np.ndarray], grid: Grid, lesion: Lesion) -> dict[str, np.ndarray]:
    """Mass effect: tissue at distance r from the centre came from r₀ = ∛(r³ − V), V = (k·R)³ —
    the displacement of an incompressible medium around a growing sphere (≈ V/3r² far away)."""
    volume = (lesion.mass_effect * lesion.radius_mm) ** 3
    if volume <= 0:
        return maps
    box, sub = grid.box(lesion.centre_lps, 4.0 * lesion.radius_mm * max(lesion.axes) + 2.0)
    pts = sub.points(np.float64)
    rel = pts - np.asarray(lesion.centre_lps)[:, None, None, None]
    r = np.sqrt((rel ** 2).sum(axis=0))
    r0 = np.cbrt(np.clip(r ** 3 - volume, 0.0, None))
    ratio = np.where(r > 1e-6, r0 / np.maximum(r, 1e-6), 0.0)
    src = np.asarray(lesion.centre_lps)[:, None, None, None] + rel * ratio
    index = lps_to_index(grid, src.astype(np.float32))
    out = {}
    for key, array in maps.items():
        new = array.copy()
        new[box] = sample(array, index, order=1, mode="nearest")
        out[key] = new
    return out


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    std = float(n.std())
    return n / std if std > 0 else n


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def lesion_fractions(grid: Grid, lesion: Lesion,
                     irregularity: float = 0.22) -> tuple[tuple[slice, ...], dict[str, np.ndarray]]:
    """Soft compartment fractions inside the lesion's box: ``tumour`` (core + rim), ``core``,
    ``oedema_zone`` (before it is restricted to white matter) and ``uptake`` (mmol/L in the rim,
    heterogeneous)."""
    box, sub = grid.box(lesion.centre_lps, lesion.reach_mm)
    pts = sub.points(np.float64)
    rel = pts - np.asarray(lesion.centre_lps)[:, None, None, None]
    rot = np.asarray(lesion.rotation).reshape(3, 3)
    local = np.tensordot(rot.T, rel, axes=1) / np.asarray(lesion.axes)[:, None, None, None]
    rho = np.sqrt((local ** 2).sum(axis=0))                                 # mm, ellipsoidal
    rng = np.random.default_rng(lesion.noise_seed)
    voxel = float(min(grid.spacing))
    sigma = max(0.8, 0.3 * lesion.radius_mm / voxel)
    n1, n2, n3, n4 = (_smooth_noise(rng, sub.shape, s) for s in (sigma, sigma * 0.7, sigma * 1.3, sigma * 0.5))
    edge = max(0.6, 0.35 * voxel)                                            # mm, partial-volume width
    R = lesion.radius_mm
    phi = rho / R + irregularity * n1
    tumour = _sigmoid((1.0 - phi) * R / edge)
    if lesion.core_ratio > 0:
        core = _sigmoid((lesion.core_ratio - (phi + 0.5 * irregularity * n2)) * R / edge) * tumour
    else:
        core = np.zeros_like(tumour)
    R_o = lesion.oedema_radius_mm
    phi_o = rho / R_o + 1.2 * irregularity * n3
    oedema_zone = _sigmoid((1.0 - phi_o) * R_o / max(edge, 2.5))
    uptake = lesion.uptake_mm * np.clip(1.0 + 0.35 * n4, 0.2, None)
    f = {"tumour": tumour, "core": core, "oedema_zone": oedema_zone, "uptake": uptake}
    return box, {k: v.astype(np.float32) for k, v in f.items()}


def insert_lesions(fractions: dict[str, np.ndarray], grid: Grid, lesions: list[Lesion],
                   irregularity: float = 0.22) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fractions with tumours written in: the tumour replaces every tissue in proportion,
    oedema takes 90 % of the remaining white matter and 15 % of grey matter in its zone.
    Returns (fractions with gm, wm, csf, oedema, rim, core; rim gadolinium uptake in mmol/L)."""
    gm, wm, csf = (fractions[k].copy() for k in ("gm", "wm", "csf"))
    brain = gm + wm + csf
    out = {"oedema": np.zeros_like(gm), "rim": np.zeros_like(gm), "core": np.zeros_like(gm)}
    uptake = np.zeros_like(gm)
    for lesion in lesions:
        box, f = lesion_fractions(grid, lesion, irregularity)
        inside = brain[box]
        tumour = np.minimum(f["tumour"], inside)                             # only where there is brain
        keep = 1.0 - np.divide(tumour, inside, out=np.zeros_like(tumour), where=inside > 1e-6)
        core = np.minimum(f["core"], tumour)
        g, w, c = gm[box] * keep, wm[box] * keep, csf[box] * keep
        ed_w, ed_g = 0.9 * f["oedema_zone"] * w, 0.15 * f["oedema_zone"] * g
        out["oedema"][box] = out["oedema"][box] * keep + ed_w + ed_g
        out["core"][box] = out["core"][box] * keep + core
        out["rim"][box] = out["rim"][box] * keep + (tumour - core)
        gm[box], wm[box], csf[box] = g - ed_g, w - ed_w, c
        uptake[box] = np.where(tumour - core > 1e-3, np.maximum(uptake[box], f["uptake"]), uptake[box])
    result = {"gm": gm, "wm": wm, "csf": csf, **out}
    return {k: np.clip(v, 0.0, 1.0).astype(np.float32) for k, v in result.items()}, uptake.astype(np.float32)
