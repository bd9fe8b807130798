"""The demo dataset and the demo study: plan the subjects of a recipe (anatomy, template, split),
simulate each from its own seeded generator, write the paired layout of docs/evaluation.md atomically.

    summary = build_demo_dataset("demo_data", n_brain_subjects=40, n_head_ct_subjects=12, seed=0)
    build_demo_study("resources/demo")          # one test brain + one test head, small
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from engine.demo_data import anatomy as anatomy_mod
from engine.demo_data.ct import CBCTSpec
from engine.demo_data.deform import DeformationSpec
from engine.demo_data.grid import Grid
from engine.demo_data.lesions import LesionSpec
from engine.demo_data.mr_physics import GAIN, AcquisitionSpec
from engine.demo_data.sources import SOURCES
from engine.demo_data.subjects import BRAIN_MODALITIES, HEAD_MODALITIES, SimulatedSubject, simulate_brain, simulate_head
from engine.atomic import atomic_folder
from engine.jobs import CancelToken, Cancelled, Progress, ProgressFn, check_cancel, noop

RECIPE_VERSION = 2
DATASET_NAME = "SynerMedGen demo dataset (simulated contrasts from real anatomy)"
STUDY_NAME = "SynerMedGen demo study"
SIMULATED_NOTICE = ("Simulated data derived from real anatomy: T1 is the real template T1 (tumours written "
                    "in by the signal model; skull-stripped, or with skull and scalp for some Colin27 "
                    "subjects); T1CE, T2, FLAIR and PD are simulated from tissue maps; CT is a real head CT "
                    "(deformed); CBCT is simulated from it. Research use only, not for diagnosis.")


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo dataset: with the sources' files, the same recipe gives
    the same arrays. Voxels are isotropic: ``fov / image_size`` mm (brain 240 mm → 1.875 mm,
    head 256 mm → 2.0 mm at the default 128 px); slices cover the anatomy. ``scalp_fraction`` of
    the subjects from a template with a whole head (Colin27) keep skull and scalp (drawn per
    subject); the others, and every MNI152 subject, are skull-stripped."""

    n_brain_subjects: int = 40
    n_head_ct_subjects: int = 12
    seed: int = 0
    image_size: int = 128
    brain_fov_mm: float = 240.0                    # holds a whole head (Colin27 with scalp: ≈ 213 mm front to back)
    scalp_fraction: float = 0.5
    scalp_margin_mm: float = 20.0                  # slices added above and below the brain when scalp is kept
    head_fov_mm: float = 256.0
    head_slab_margin_mm: float = 8.0               # kept off the CT's first/last slices
    brain_templates: tuple[str, ...] = ("mni152", "colin27")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    brain_deformation: DeformationSpec = DeformationSpec(scale_range=(0.9, 1.04))
    head_deformation: DeformationSpec = DeformationSpec(max_rotation_deg=(3.0, 3.0, 8.0), scale_range=(0.93, 1.04),
                                                        anisotropy=0.03, max_shift_mm=3.0, elastic_mm=2.0)
    lesions: LesionSpec = LesionSpec()
    acquisition: AcquisitionSpec = AcquisitionSpec()
    cbct: CBCTSpec = CBCTSpec()

    def __post_init__(self) -> None:
        if self.n_brain_subjects < 0 or self.n_head_ct_subjects < 0:
            raise ValueError("subject counts must be ≥ 0")
        if self.n_brain_subjects + self.n_head_ct_subjects == 0:
            raise ValueError("the recipe asks for no subject at all")
        if not 8 <= self.image_size <= 512:
            raise ValueError(f"image_size must be 8…512 pixels, got {self.image_size}")
        if self.n_brain_subjects and not self.brain_templates:
            raise ValueError("brain subjects need at least one brain template (mni152, colin27)")
        for name in self.brain_templates:
            if name not in ("mni152", "colin27"):
                raise ValueError(f"unknown brain template {name!r}; known: mni152, colin27")
        if not 0.0 <= self.scalp_fraction <= 1.0:
            raise ValueError(f"scalp_fraction must be within [0, 1], got {self.scalp_fraction}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three numbers summing to 1, got {self.split_fractions}")

    @property
    def brain_voxel_mm(self) -> float:
        return self.brain_fov_mm / self.image_size

    @property
    def head_voxel_mm(self) -> float:
        return self.head_fov_mm / self.image_size

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items()}
        d["brain_templates"] = list(self.brain_templates)
        d["split_fractions"] = list(self.split_fractions)
        for key in ("brain_deformation", "head_deformation", "lesions", "acquisition", "cbct"):
            d[key] = getattr(self, key).to_dict()
        return {"recipe_version": RECIPE_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "DemoRecipe":
        d = dict(d)
        version = d.pop("recipe_version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise ValueError(f"recipe version {version} is not supported (this builder writes {RECIPE_VERSION})")
        d["brain_templates"] = tuple(d["brain_templates"])
        d["split_fractions"] = tuple(d["split_fractions"])
        d["brain_deformation"] = DeformationSpec.from_dict(d["brain_deformation"])
        d["head_deformation"] = DeformationSpec.from_dict(d["head_deformation"])
        d["lesions"] = LesionSpec.from_dict(d["lesions"])
        d["acquisition"] = AcquisitionSpec.from_dict(d["acquisition"])
        d["cbct"] = CBCTSpec.from_dict(d["cbct"])
        return cls(**d)


@dataclass(frozen=True)
class SubjectPlan:
    """One subject before it is simulated: its name, anatomy, source and split."""

    name: str
    anatomy: str           # "brain" or "head"
    index: int             # within its anatomy: seeds the subject's generator
    source: str            # template / CT name
    split: str

    @property
    def modalities(self) -> tuple[str, ...]:
        return BRAIN_MODALITIES if self.anatomy == "brain" else HEAD_MODALITIES


@dataclass
class BuildSummary:
    """What a build wrote (the CLI prints it as JSON)."""

    out_dir: str
    name: str
    subjects: dict[str, int]
    split: dict[str, list[str]]
    modalities: dict[str, list[str]]
    grids: dict[str, dict]
    seconds: float
    bytes: int
    seed: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# -- planning ----------------------------------------------------------------------------------
def _split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    n_test = max(1, round(fractions[2] * n)) if n >= 2 else 0
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    return n - n_val - n_test, n_val, n_test


def plan_subjects(recipe: DemoRecipe) -> list[SubjectPlan]:
    """The recipe's subjects in a fixed order. Brain subjects cycle through the templates; the
    split is drawn per source (stratified), by subject, from the recipe's seed."""
    rows: list[tuple[str, str, int, str]] = []
    for i in range(recipe.n_brain_subjects):
        rows.append((f"brain_{i:03d}", "brain", i, recipe.brain_templates[i % len(recipe.brain_templates)]))
    for i in range(recipe.n_head_ct_subjects):
        rows.append((f"head_{i:03d}", "head", i, "invesalius-cranium"))
    split_of: dict[str, str] = {}
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 7919]))
    for source in sorted({r[3] for r in rows}):
        names = [r[0] for r in rows if r[3] == source]
        order = [names[k] for k in rng.permutation(len(names))]
        n_train, n_val, _ = _split_counts(len(order), recipe.split_fractions)
        for k, name in enumerate(order):
            split_of[name] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return [SubjectPlan(name, anatomy, index, source, split_of[name]) for name, anatomy, index, source in rows]


def subject_rng(recipe: DemoRecipe, plan: SubjectPlan) -> np.random.Generator:
    """The subject's own generator: the same subject whatever the dataset size or worker count."""
    return np.random.default_rng(np.random.SeedSequence([recipe.seed, 0 if plan.anatomy == "brain" else 1, plan.index]))


# -- anatomy and grids (cached per process) ------------------------------------------------------
@functools.lru_cache(maxsize=6)
def _brain_template(name: str, voxel_mm: float, cache_dir: str | None) -> anatomy_mod.BrainTemplate:
    return anatomy_mod.load_brain(name, cache_dir).smoothed(voxel_mm)


@functools.lru_cache(maxsize=3)
def _head_ct(voxel_mm: float, cache_dir: str | None) -> anatomy_mod.HeadCT:
    return anatomy_mod.load_head_ct(cache_dir).smoothed(voxel_mm)


def brain_grid(recipe: DemoRecipe, cache_dir: str | None = None) -> Grid:
    """The grid every brain subject is written on: image_size² in-plane, enough slices for the
    tallest template at the largest drawn scale (and the scalp above it when kept), centred on
    the LPS origin."""
    voxel = recipe.brain_voxel_mm
    top = max(recipe.brain_deformation.scale_range) * (1.0 + recipe.brain_deformation.anisotropy)
    templates = [_brain_template(name, voxel, cache_dir) for name in recipe.brain_templates]
    height = max(t.extent_mm()[2] for t in templates) * top + 4.0 * voxel
    if recipe.scalp_fraction > 0 and any(t.has_head for t in templates):
        height += 2.0 * recipe.scalp_margin_mm          # the vertex's scalp above, the skull base below
    return Grid.centred((0.0, 0.0, 0.0), (recipe.image_size, recipe.image_size, int(np.ceil(height / voxel))), voxel)


def head_grid(recipe: DemoRecipe, cache_dir: str | None = None) -> Grid:
    """The head grid: image_size² in-plane over head_fov_mm, the CT's slab less a margin."""
    voxel = recipe.head_voxel_mm
    ct = _head_ct(voxel, cache_dir)
    height = ct.grid.shape[0] * ct.grid.spacing[2] - 2.0 * recipe.head_slab_margin_mm
    return Grid.centred((0.0, 0.0, 0.0), (recipe.image_size, recipe.image_size, max(1, int(height // voxel))), voxel)


def simulate_subject(recipe: DemoRecipe, plan: SubjectPlan, cache_dir: str | None = None) -> SimulatedSubject:
    """One planned subject, simulated (no files written)."""
    rng = subject_rng(recipe, plan)
    if plan.anatomy == "brain":
        template = _brain_template(plan.source, recipe.brain_voxel_mm, cache_dir)
        return simulate_brain(template, brain_grid(recipe, cache_dir), rng, recipe.brain_deformation, recipe.lesions,
                              recipe.acquisition, recipe.scalp_fraction)
    head = _head_ct(recipe.head_voxel_mm, cache_dir)
    return simulate_head(head, head_grid(recipe, cache_dir), rng, recipe.head_deformation, recipe.cbct)


# -- writing ------------------------------------------------------------------------------------
UNITS = {"T1": "a.u.", "T1CE": "a.u.", "T2": "a.u.", "FLAIR": "a.u.", "PD": "a.u.", "CT": "HU", "CBCT": "HU"}


def write_int16_nifti(array: np.ndarray, grid: Grid, path: Path, description: str = "") -> Path:
    """A compressed NIfTI of rounded int16 values (HU for CT/CBCT; MR a.u. ≫ 1, so rounding is far
    below the noise) with the grid's exact geometry. Deterministic bytes for the same array."""
    values = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(tuple(float(s) for s in grid.spacing))
    image.SetOrigin(tuple(float(o) for o in grid.origin))
    image.SetDirection(tuple(float(d) for d in grid.direction))
    if description:
        image.SetMetaData("descrip", description[:79])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _write_subject(subject: SimulatedSubject, folder: Path, source: str) -> None:
    for modality, array in subject.images.items():
        kind = "real" if modality in ("CT",) else "simulated"
        write_int16_nifti(array, subject.grid, folder / f"{modality}.nii.gz",
                          f"SynerMedGen demo {modality} ({kind}, from {source}); research use only")


def _job(recipe_dict: dict, plan: SubjectPlan, folder: str, cache_dir: str | None) -> tuple[str, dict]:
    """Worker entry: simulate one subject and write its files; returns (name, details)."""
    recipe = DemoRecipe.from_dict(recipe_dict)
    subject = simulate_subject(recipe, plan, cache_dir)
    _write_subject(subject, Path(folder) / plan.name, plan.source)
    return plan.name, subject.details


def _make_readable(folder: Path) -> None:
    """Temporary folders are created private (0700); the finished dataset gets the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _grids(recipe: DemoRecipe, cache_dir: str | None) -> dict[str, Grid]:
    grids = {}
    if recipe.n_brain_subjects:
        grids["brain"] = brain_grid(recipe, cache_dir)
    if recipe.n_head_ct_subjects:
        grids["head"] = head_grid(recipe, cache_dir)
    return grids


def _metadata(recipe: DemoRecipe, plans: list[SubjectPlan], details: dict[str, dict], grids: dict[str, Grid],
              name: str, extra: dict | None = None) -> dict:
    anatomies = sorted({p.anatomy for p in plans})
    used = {p.source for p in plans}
    return {
        "name": name,
        "format_version": 1,
        "generator": "engine.demo_data (python main.py make-demo-data)",
        "notice": SIMULATED_NOTICE,
        "anatomy": {p.name: p.anatomy for p in plans},
        "split": {s: [p.name for p in plans if p.split == s] for s in ("train", "val", "test")},
        "modalities": {a: list(BRAIN_MODALITIES if a == "brain" else HEAD_MODALITIES) for a in anatomies},
        "units": {m: UNITS[m] for a in anatomies for m in (BRAIN_MODALITIES if a == "brain" else HEAD_MODALITIES)},
        "mr_gain": {m: GAIN[m] for m in BRAIN_MODALITIES} if "brain" in anatomies else {},
        "grids": {k: g.to_dict() for k, g in grids.items()},
        "subjects": {p.name: {"anatomy": p.anatomy, "source": p.source, "split": p.split, **details.get(p.name, {})}
                     for p in plans},
        "recipe": recipe.to_dict(),
        "sources": [s for s in SOURCES if s["source"] in used],
        **(extra or {}),
    }


def _fill_caches(recipe: DemoRecipe, plans: list[SubjectPlan], cache_dir: str | None) -> dict[str, Grid]:
    for source in sorted({p.source for p in plans if p.anatomy == "brain"}):
        _brain_template(source, recipe.brain_voxel_mm, cache_dir)
    return _grids(recipe, cache_dir)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork shares the loaded anatomy with the workers; elsewhere each worker loads it once
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def build_demo_dataset(out_dir: str | Path, n_brain_subjects: int | None = None, n_head_ct_subjects: int | None = None,
                       seed: int | None = None, image_size: int | None = None, *, recipe: DemoRecipe | None = None,
                       cache_dir: str | Path | None = None, workers: int = 1, progress: ProgressFn = noop,
                       cancel: CancelToken | None = None) -> BuildSummary:
    """Write the demo dataset (docs/evaluation.md's paired layout) into ``out_dir``, replacing it atomically.

    Arguments left as None come from ``recipe`` (default :class:`DemoRecipe`: 40 brain subjects
    with T1, T1CE, T2, FLAIR, PD; 12 head subjects with CT, CBCT; seed 0; 128 px). The same
    recipe gives the same arrays and the same files, whatever ``workers`` is. Raises
    :class:`~engine.demo_data.sources.SourceMissing` naming the package when a source is absent.
    """
    started = time.perf_counter()
    recipe = recipe or DemoRecipe()
    changes: dict[str, Any] = {k: v for k, v in (("n_brain_subjects", n_brain_subjects),
                                                 ("n_head_ct_subjects", n_head_ct_subjects),
                                                 ("seed", seed), ("image_size", image_size)) if v is not None}
    recipe = replace(recipe, **changes)
    cache = str(cache_dir) if cache_dir is not None else None
    plans = plan_subjects(recipe)
    total = len(plans) + 2
    progress(Progress(0, total, "loading anatomy"))
    grids = _fill_caches(recipe, plans, cache)
    check_cancel(cancel)
    if recipe.n_head_ct_subjects:
        _head_ct(recipe.head_voxel_mm, cache)
    progress(Progress(1, total, "anatomy loaded"))
    details: dict[str, dict] = {}
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        if workers <= 1:
            for k, plan in enumerate(plans):
                check_cancel(cancel)
                name, info = _job(recipe.to_dict(), plan, str(tmp), cache)
                details[name] = info
                progress(Progress(1 + k + 1, total, f"{name} written"))
        else:
            _run_pool(recipe, plans, str(tmp), cache, workers, details, total, progress, cancel)
        check_cancel(cancel)
        meta = _metadata(recipe, plans, details, grids, DATASET_NAME)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        _make_readable(tmp)
    progress(Progress(total, total, "dataset written"))
    return BuildSummary(str(out), DATASET_NAME,
                        {"brain": recipe.n_brain_subjects, "head": recipe.n_head_ct_subjects},
                        meta["split"], meta["modalities"], meta["grids"], round(time.perf_counter() - started, 2),
                        _folder_bytes(out), recipe.seed, {"workers": max(1, workers)})


def _run_pool(recipe: DemoRecipe, plans: list[SubjectPlan], tmp: str, cache: str | None, workers: int,
              details: dict, total: int, progress: ProgressFn, cancel: CancelToken | None) -> None:
    done = 0
    recipe_dict = recipe.to_dict()
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    try:
        pending = {executor.submit(_job, recipe_dict, plan, tmp, cache) for plan in plans}
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                name, info = future.result()
                details[name] = info
                done += 1
                progress(Progress(1 + done, total, f"{name} written"))
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# -- the demo study ------------------------------------------------------------------------------
def _has_enhancing_lesion(subject: SimulatedSubject) -> bool:
    return any(les["kind"] != "non_enhancing" for les in subject.details.get("lesions", []))


def build_demo_study(out_dir: str | Path, *, recipe: DemoRecipe | None = None, cache_dir: str | Path | None = None,
                     progress: ProgressFn = noop, cancel: CancelToken | None = None) -> BuildSummary:
    """The study shown on first launch: the first test-split brain subject of ``recipe`` (default
    recipe) that has an enhancing tumour, as ``brain/`` (T1, T1CE, T2, FLAIR, PD), and the first
    test-split head subject as ``head/`` (CT, CBCT), with a ``dataset.json``. Its arrays are those
    the same recipe writes into the demo dataset."""
    started = time.perf_counter()
    recipe = recipe or DemoRecipe()
    cache = str(cache_dir) if cache_dir is not None else None
    plans = plan_subjects(recipe)
    tests = {a: [p for p in plans if p.anatomy == a and p.split == "test"] for a in ("brain", "head")}
    progress(Progress(0, 3, "loading anatomy"))
    grids = _fill_caches(recipe, plans, cache)
    chosen: dict[str, tuple[SubjectPlan, SimulatedSubject]] = {}
    for plan in tests["brain"]:
        check_cancel(cancel)
        subject = simulate_subject(recipe, plan, cache)
        if "brain" not in chosen:
            chosen["brain"] = (plan, subject)
        if _has_enhancing_lesion(subject):
            chosen["brain"] = (plan, subject)
            break
    progress(Progress(1, 3, "brain subject simulated"))
    if tests["head"]:
        check_cancel(cancel)
        chosen["head"] = (tests["head"][0], simulate_subject(recipe, tests["head"][0], cache))
    progress(Progress(2, 3, "head subject simulated"))
    if not chosen:
        raise ValueError("the recipe's test split is empty: no subject for the demo study")
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        for anatomy, (plan, subject) in chosen.items():
            _write_subject(subject, tmp / anatomy, plan.source)
        renamed = [replace(plan, name=anatomy) for anatomy, (plan, _) in chosen.items()]
        details = {anatomy: {"derived_from_subject": plan.name, **subject.details}
                   for anatomy, (plan, subject) in chosen.items()}
        meta = _metadata(recipe, renamed, details, {a: grids[a] for a in chosen}, STUDY_NAME,
                         {"licence_note": "The head subject derives from a GPL-2 licensed CT (invesalius-examples); "
                                          "see resources/DATA_LICENSES.md."})
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        _make_readable(tmp)
    progress(Progress(3, 3, "demo study written"))
    return BuildSummary(str(out), STUDY_NAME, {a: 1 for a in chosen}, meta["split"], meta["modalities"],
                        meta["grids"], round(time.perf_counter() - started, 2), _folder_bytes(out), recipe.seed,
                        {"derived_from": {a: p.name for a, (p, _) in chosen.items()}})


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
