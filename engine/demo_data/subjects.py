"""One simulated subject from one real anatomy: a brain (deformed tissue maps, tumours, five MR
contrasts from the signal equations, bias field, Rician noise) or a head (deformed real CT and
its simulated CBCT). Everything a subject draws comes from the one generator it is given."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.demo_data import ct as ct_sim
from engine.demo_data import lesions as lesion_sim
from engine.demo_data import mr_physics as mr
from engine.demo_data.anatomy import BrainTemplate, HeadCT
from engine.demo_data.deform import DeformationSpec, SubjectTransform, random_transform, resample_maps
from engine.demo_data.grid import Grid

BRAIN_MODALITIES = ("T1", "T1CE", "T2", "FLAIR", "PD")
HEAD_MODALITIES = ("CT", "CBCT")


@dataclass(eq=False)
class SimulatedSubject:
    """Arrays (z, y, x) per modality on ``grid`` and what was drawn. ``fractions`` (brain only)
    are the tissue fractions the contrasts were simulated from (gm, wm, csf, oedema, rim, core)."""

    anatomy: str
    grid: Grid
    images: dict[str, np.ndarray]
    transform: SubjectTransform
    details: dict = field(default_factory=dict)
    fractions: dict[str, np.ndarray] = field(default_factory=dict)


def simulate_brain(template: BrainTemplate, grid: Grid, rng: np.random.Generator,
                   deformation: DeformationSpec = DeformationSpec(),
                   lesion_spec: lesion_sim.LesionSpec = lesion_sim.LesionSpec(),
                   acquisition: mr.AcquisitionSpec = mr.AcquisitionSpec()) -> SimulatedSubject:
    """A BraTS-like subject (skull-stripped T1, T1CE, T2, FLAIR, PD) from a (pre-filtered) template."""
    transform = random_transform(rng, grid, deformation)
    points = transform.source_points(grid, grid.centre(), template.centre())
    maps = resample_maps({k: getattr(template, k) for k in ("t1", "gm", "wm", "brain")}, template.grid, points)
    del points
    maps["csf"] = np.clip(maps["brain"] - maps["gm"] - maps["wm"], 0.0, 1.0)   # interpolation is linear
    lesions = lesion_sim.draw_lesions(rng, grid, maps["wm"], maps["csf"], maps["brain"], lesion_spec)
    for lesion in lesions:
        maps = lesion_sim.push_tissue(maps, grid, lesion)
    before = {k: maps[k] for k in ("gm", "wm", "csf")}
    after, uptake = lesion_sim.insert_lesions(before, grid, lesions, lesion_spec.irregularity)
    acq = mr.draw_acquisition(rng, acquisition)
    brain = maps["brain"]
    mask = brain > 0.5
    clean: dict[str, np.ndarray] = {}
    for modality in BRAIN_MODALITIES:
        if modality in ("T1", "T1CE"):
            clean[modality] = mr.t1_weighted(maps["t1"], brain, before, after, template.t1_means, acq,
                                             uptake if modality == "T1CE" else None, modality)
        else:
            clean[modality] = mr.mix(modality, after, acq)
    subject_bias = mr.smooth_field(rng, grid.shape, acquisition.bias_lattice, acq.bias_strength)
    images = {}
    for modality in BRAIN_MODALITIES:
        bias = subject_bias * mr.smooth_field(rng, grid.shape, acquisition.bias_lattice, acquisition.bias_per_sequence)
        image = clean[modality] * bias
        sigma = acq.noise_fraction[modality] * float(np.percentile(image[mask], 99.0)) if mask.any() else 0.0
        image = mr.rician(rng, image, sigma)
        images[modality] = np.where(mask, image, 0.0).astype(np.float32)     # skull-stripped, as BraTS
    details = {"template": template.name, "transform": transform.to_dict(),
               "lesions": [les.to_dict() for les in lesions], "acquisition": acq.to_dict()}
    return SimulatedSubject("brain", grid, images, transform, details, {**after, "brain": brain})


def simulate_head(head: HeadCT, grid: Grid, rng: np.random.Generator,
                  deformation: DeformationSpec = DeformationSpec(),
                  cbct_spec: ct_sim.CBCTSpec = ct_sim.CBCTSpec()) -> SimulatedSubject:
    """A CT (the real head CT, deformed; HU) and its simulated CBCT on the same grid."""
    transform = random_transform(rng, grid, deformation)
    points = transform.source_points(grid, grid.centre(), head.centre())
    maps = resample_maps({"hu": head.hu, "head": head.head.astype(np.float32)}, head.grid, points,
                         modes={"hu": ("nearest", 0.0), "head": ("nearest", 0.0)})
    del points
    ct = np.where(maps["head"] > 0.5, maps["hu"], ct_sim.AIR_HU).astype(np.float32)
    cbct, params = ct_sim.simulate_cbct(ct, grid, rng, cbct_spec)
    details = {"source": head.name, "transform": transform.to_dict(), "cbct": params}
    return SimulatedSubject("head", grid, {"CT": ct, "CBCT": cbct}, transform, details,
                            {"head": (maps["head"] > 0.5).astype(np.float32)})
