"""One simulated subject from one real anatomy: a brain (deformed tissue maps, tumours, five MR
contrasts from the signal equations, bias field, Rician noise; skull-stripped or with the scalp)
or a head (deformed real CT and its simulated CBCT). Everything a subject draws comes from the one
generator it is given."""
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
    are the tissue fractions the contrasts were simulated from (gm, wm, csf, oedema, rim, core, and
    with the scalp fat, muscle, bone and the head mask ``head``)."""

    anatomy: str
    grid: Grid
    images: dict[str, np.ndarray]
    transform: SubjectTransform
    details: dict = field(default_factory=dict)
    fractions: dict[str, np.ndarray] = field(default_factory=dict)


def simulate_brain(template: BrainTemplate, grid: Grid, rng: np.random.Generator,
                   deformation: DeformationSpec = DeformationSpec(),
                   lesion_spec: lesion_sim.LesionSpec = lesion_sim.LesionSpec(),
                   acquisition: mr.AcquisitionSpec = mr.AcquisitionSpec(),
                   scalp_probability: float = 0.0) -> SimulatedSubject:
    """A BraTS-like subject (T1, T1CE, T2, FLAIR, PD) from a (pre-filtered) template: skull-stripped
    (zero outside the brain), or — with ``scalp_probability`` when the template has a whole head —
    with skull and scalp, their fat / muscle / bone classes simulated by the same signal equations
    and Rician noise over the whole field of view (``details["skull_stripped"]`` says which)."""
    keep_scalp = bool(rng.random() < scalp_probability) and template.has_head
    transform = random_transform(rng, grid, deformation)
    points = transform.source_points(grid, grid.centre(), template.centre())
    keys = ("t1", "gm", "wm", "brain") + (("head", "t1_head") + mr.HEAD_TISSUES if keep_scalp else ())
    maps = resample_maps({k: getattr(template, k) for k in keys}, template.grid, points)
    del points
    maps["csf"] = np.clip(maps["brain"] - maps["gm"] - maps["wm"], 0.0, 1.0)   # interpolation is linear
    lesions = lesion_sim.draw_lesions(rng, grid, maps["wm"], maps["csf"], maps["brain"], lesion_spec)
    for lesion in lesions:
        maps = lesion_sim.push_tissue(maps, grid, lesion)
    before = {k: maps[k] for k in ("gm", "wm", "csf")}
    after, uptake = lesion_sim.insert_lesions(before, grid, lesions, lesion_spec.irregularity)
    acq = mr.draw_acquisition(rng, acquisition)
    brain = maps["brain"]
    head_tissues = {k: maps[k] for k in mr.HEAD_TISSUES} if keep_scalp else {}
    # with the scalp, the real T1 is the whole head's, calibrated with the same line as inside the brain
    real_t1, support = (maps["t1_head"], maps["head"]) if keep_scalp else (maps["t1"], brain)
    mask = brain > 0.5
    clean: dict[str, np.ndarray] = {}
    for modality in BRAIN_MODALITIES:
        if modality in ("T1", "T1CE"):
            clean[modality] = mr.t1_weighted(real_t1, support, before, after, template.t1_means, acq,
                                             uptake if modality == "T1CE" else None, modality)
        else:
            clean[modality] = mr.mix(modality, {**after, **head_tissues}, acq)
    subject_bias = mr.smooth_field(rng, grid.shape, acquisition.bias_lattice, acq.bias_strength)
    images = {}
    for modality in BRAIN_MODALITIES:
        bias = subject_bias * mr.smooth_field(rng, grid.shape, acquisition.bias_lattice, acquisition.bias_per_sequence)
        image = clean[modality] * bias
        # σ is relative to the brain in both cases, so the noise level means the same with or without scalp
        sigma = acq.noise_fraction[modality] * float(np.percentile(image[mask], 99.0)) if mask.any() else 0.0
        image = mr.rician(rng, image, sigma)
        # skull-stripped as BraTS; with the scalp, the magnitude noise stays in the air, as in a raw scan
        images[modality] = image if keep_scalp else np.where(mask, image, 0.0).astype(np.float32)
    details = {"template": template.name, "skull_stripped": not keep_scalp, "transform": transform.to_dict(),
               "lesions": [les.to_dict() for les in lesions], "acquisition": acq.to_dict()}
    fractions = {**after, "brain": brain, **head_tissues}
    if keep_scalp:
        fractions["head"] = maps["head"]
    return SimulatedSubject("brain", grid, images, transform, details, fractions)


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
