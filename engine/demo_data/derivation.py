"""How the demo data is derived, in words: the markdown section the default model's card quotes
(the sources with their licences are :data:`engine.demo_data.sources.SOURCES`)."""
from __future__ import annotations

_SEQUENCE_TABLE = """\
| modality | how it is made | sequence (per-subject ranges, 3 T) |
|---|---|---|
| T1 | the real template T1, calibrated linearly onto the simulated T1-weighted scale (pure GM, WM, CSF); voxels whose tissue changed (tumour, oedema) get the change through the spoiled-gradient-echo model | GRE TR {t1_tr} ms, TE {t1_te} ms, α {t1_flip}° (lesion model only) |
| T1CE | as T1, the enhancing rim's T1 shortened by gadolinium (1/T1 = 1/T1₀ + r1·C, r1 = 3.7 L/mmol/s, C {uptake} mmol/L, heterogeneous) | same |
| T2 | spin echo S = PD·(1−e^(−TR/T1))·e^(−TE/T2) | TR {t2_tr} ms, TE {t2_te} ms |
| PD | spin echo, long TR, short TE | TR {pd_tr} ms, TE {pd_te} ms |
| FLAIR | inversion recovery \\|PD·(1−2e^(−TI/T1)+e^(−TR/T1))·e^(−TE/T2)\\|, TI = CSF null ±{ti_jitter:.0%} | TR {fl_tr} ms, TE {fl_te} ms |

All ranges are uniform draws, one per subject.
"""


def _r(pair) -> str:
    a, b = pair
    return f"{a:g} to {b:g}" if a < 0 else f"{a:g}–{b:g}"


def derivation_text(recipe=None) -> str:
    """Markdown for the model card: where the demo data comes from and how it is simulated
    (``recipe``: a :class:`~engine.demo_data.builder.DemoRecipe`, default the default recipe)."""
    from engine.demo_data.builder import DemoRecipe
    from engine.demo_data.mr_physics import TISSUES_3T

    r = recipe or DemoRecipe()
    acq, les, cb = r.acquisition, r.lesions, r.cbct
    tissues = "\n".join(f"| {name} | {t1:g} | {t2:g} | {pd:g} |" for name, (t1, t2, pd) in TISSUES_3T.items())
    table = _SEQUENCE_TABLE.format(
        t1_tr=_r(acq.t1_tr_ms), t1_te=_r(acq.t1_te_ms), t1_flip=_r(acq.t1_flip_deg), uptake=_r(les.uptake_mm),
        t2_tr=_r(acq.t2_tr_ms), t2_te=_r(acq.t2_te_ms), pd_tr=_r(acq.pd_tr_ms), pd_te=_r(acq.pd_te_ms),
        fl_tr=_r(acq.flair_tr_ms), fl_te=_r(acq.flair_te_ms), ti_jitter=acq.flair_ti_jitter)
    return f"""\
## Training data: simulated contrasts from real anatomy

**No real paired multi-contrast MR, no real MR–CT or CT–CBCT pair was used.** Public training sets
(BraTS, SynthRAD) cannot be downloaded here; the demo data is derived from real anatomy shipped
inside installable packages and the missing contrasts are simulated. Metrics measured on it say
how well the model learns these simulations, not how it performs on patients.

### Sources
- **Brains**: the MNI ICBM152 2009a nonlinear symmetric template (T1 and grey/white-matter
  probability maps, 1 mm; from the nilearn wheel) and Colin27 (T1 and brain extraction, 1 mm;
  Debian `mricron-data`, tissue fractions by a linear partial-volume model between the CSF, GM
  and WM intensity means). CSF = brain mask − GM − WM. Colin27's whole head (mask: smoothed T1
  above 15 % of its 99th percentile, largest component, holes filled per slice) is split outside
  the brain by the same linear model into three classes by T1 intensity: bright = fat / marrow,
  intermediate = muscle / skin, dark = cortical bone (with dura, air and the CSF outside the
  brain mask, which are all dark on T1 — on T2 and FLAIR that CSF is therefore dark too, a
  simplification).
- **Head**: one real head CT in Hounsfield units (InVesalius example `Cranium.inv3`, 256×256×108,
  0.957×0.957×1.5 mm; Debian `invesalius-examples`), head-rest removed.

Every brain subject therefore shares its anatomy with one of two real brains, every head subject
with one real head; subjects differ by deformation, tumours and acquisition. The test split holds
out whole simulated subjects, not new real anatomy.

### Brain MR (BraTS-like; {r.n_brain_subjects} subjects by default)
0. **Skull on or off**: each Colin27 subject keeps its skull and scalp with probability
   {r.scalp_fraction:g} (drawn from the subject's generator, recorded as `skull_stripped` in
   `dataset.json`); the other Colin27 subjects and every MNI152 subject (a skull-stripped template)
   are skull-stripped.
1. **Deformation**: a random affine (rotation up to ±{r.brain_deformation.max_rotation_deg[0]:g}/±{r.brain_deformation.max_rotation_deg[1]:g}/±{r.brain_deformation.max_rotation_deg[2]:g}° about x/y/z, size
   ×{_r(r.brain_deformation.scale_range)}, ±{r.brain_deformation.anisotropy:g} per axis, shift ±{r.brain_deformation.max_shift_mm:g} mm) and a smooth elastic field (control points every
   {r.brain_deformation.control_spacing_mm:g} mm, σ {r.brain_deformation.elastic_mm:g} mm, cubic splines) resample the template's T1 and tissue maps.
2. **Tumours** (in {les.probability:.0%} of subjects, a second one in {les.second_probability:.0%} of those), placed in deep white
   matter before any contrast is computed: radius {_r(les.radius_mm)} mm, irregular ellipsoidal level sets
   perturbed by smoothed noise; necrotic core (ratio {_r(les.core_ratio)} of the radius), enhancing rim,
   vasogenic oedema reaching {_r(les.oedema_margin_mm)} mm beyond the tumour that takes 90 % of white matter and 15 % of
   grey matter (it spreads along white matter); kinds necrotic / solid / non-enhancing with
   weights {'/'.join(f'{w:g}' for w in les.kind_weights)}; mass effect pushes the surrounding tissue outward (incompressible
   expansion, added volume (k·R)³, k {_r(les.mass_effect)}).
3. **Relaxation** (3 T; per subject and tissue, T1 and T2 each ×U({1 - acq.relaxation_jitter:g}, {1 + acq.relaxation_jitter:g}), PD ×U({1 - acq.pd_jitter:g}, {1 + acq.pd_jitter:g}) capped at 1;
   fat, muscle and bone only where the scalp is kept):

| tissue | T1 (ms) | T2 (ms) | PD |
|---|---|---|---|
{tissues}

   GM/WM after Wansapura et al., JMRI 9:531 (1999) (Stanisz et al., MRM 54:507 (2005) give the
   spread); CSF after Rooney et al., MRM 57:308 (2007); PD after Neeb et al., NeuroImage 31:1156
   (2006); tumour compartments are representative values within the ranges reported for gliomas
   (e.g. Badve et al., AJNR 38:492 (2017)); fat T1 after de Bazelaire et al., Radiology 230:652
   (2004) (382 ms at 3 T; its 68 ms T2 is from single-shot fast spin echo, the 130 ms used keeps
   fat bright on fast-spin-echo T2 as seen clinically); muscle representative of 3 T
   musculoskeletal relaxometry (Jordan et al., Eur J Radiol 82:734 (2013); de Bazelaire et al.
   give 898 / 29 ms for paravertebral muscle); cortical bone has T2* below 1 ms and almost no
   signal at clinical echo times (Reichert et al., Magn Reson Imaging 23:611 (2005)); gadolinium
   relaxivity after Rohrer et al., Invest Radiol 40:715 (2005).
4. **Contrasts**: partial-volume mixing of the signed signals of every tissue fraction, then the
   magnitude (with the scalp, T1 and T1CE outside the brain are the real Colin27 T1 on the same
   calibration line; T2, FLAIR and PD there come from the fat / muscle / bone fractions):

{table}
5. **Acquisition**: a smooth multiplicative bias field per subject (log std {_r(acq.bias_strength)}) times a
   smaller one per sequence (log std {acq.bias_per_sequence:g}); Rician noise with σ = {_r(acq.noise_fraction)} × the 99th
   percentile of the brain, drawn per sequence; skull-stripped subjects are 0 outside the brain
   mask, subjects with the scalp keep the Rician noise everywhere (air included), as a raw scan.
   Fixed gains per sequence keep one arbitrary-but-consistent unit per modality (a.u.).

### Head CT / CBCT ({r.n_head_ct_subjects} subjects by default)
- **CT**: the real head CT (HU), deformed as above (rotation ±{r.head_deformation.max_rotation_deg[0]:g}/±{r.head_deformation.max_rotation_deg[1]:g}/±{r.head_deformation.max_rotation_deg[2]:g}°, size ×{_r(r.head_deformation.scale_range)},
  elastic σ {r.head_deformation.elastic_mm:g} mm); outside the head −1000 HU.
- **CBCT**, simulated from that CT on the same grid: view-aliasing streaks of a sparse-view
  ({_r(cb.views)} views) filtered back-projection, computed as a convolution of each slice with the
  sparse-view point-spread function (high-passed); cupping (×(1 − c·(1 − r²/R²)), c {_r(cb.cupping)}) and a
  smooth scatter shading (std {_r(cb.scatter_shading)}); {_r(cb.rings)} detector rings (±{_r(cb.ring_hu)} HU); correlated noise
  ({_r(cb.noise_hu)} HU); an HU miscalibration (×{_r(cb.hu_scale)}, {_r(cb.hu_offset)} HU); a cylindrical field of view of
  radius {_r(cb.fov_radius_mm)} mm about an axis shifted up to ±{cb.fov_shift_mm:g} mm (outside −1000 HU) with a truncation
  term of {_r(cb.truncation_hu)} HU at its edge (negative: darkening). Every parameter is a uniform draw per
  subject; a negative cupping c is capping (the centre brightened). Ring radii are uniform in
  5 mm … R and each ring's sign is random.
  Not modelled: cone-beam (Feldkamp) artefacts, motion, metal, beam hardening as such.

### Grid, units, split
- Brain: {r.image_size}×{r.image_size} axial pixels of {r.brain_voxel_mm:g} mm (isotropic, a {r.brain_fov_mm:g} mm field of
  view that holds the whole head), slices covering the brain (plus {r.scalp_margin_mm:g} mm above and below for every brain
  subject when the recipe keeps some scalps); head: {r.image_size}×{r.image_size} pixels of {r.head_voxel_mm:g} mm. LPS, identity direction; all
  modalities of a subject on one grid. CT/CBCT in HU; MR in a.u. (int16 NIfTI).
- Subject-level split {'/'.join(f'{f:g}' for f in r.split_fractions)} (train/val/test), stratified by source anatomy, seed {r.seed}.
- Rebuild: `python main.py make-demo-data --out demo_data --seed {r.seed}` (deterministic for a seed).

### Routes that are simulated, not validated
MR↔CT and PET↔CT have no pairs here, real or simulated from the same subject; any such route
in this model is **simulated, not validated**. Research use only, not for diagnosis.
"""
