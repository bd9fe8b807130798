"""Real anatomy as tissue maps: the MNI ICBM152 2009a brain (T1 + GM/WM probability maps, CSF as
brain − GM − WM), the Colin27 brain (T1 split into partial-volume tissue fractions; its whole
head, outside the brain, split into fat, muscle and bone classes) and the InVesalius head CT
(Hounsfield units, head-rest removed), each with its LPS grid."""
from __future__ import annotations

import plistlib
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from engine.demo_data import sources
from engine.demo_data.grid import Grid, anti_alias, block_factor, block_mean, xyz

TISSUES = ("gm", "wm", "csf")
HEAD_MAPS = ("head", "t1_head", "fat", "muscle", "bone")


@dataclass(frozen=True, eq=False)
class BrainTemplate:
    """A real brain: its T1-weighted intensities and tissue fractions on one grid.

    ``brain`` is the brain-mask fraction (1 inside, partial at the edge after resampling);
    ``gm + wm + csf == brain`` voxel-wise. ``t1_means`` are the T1 intensities of pure tissue
    (fraction > 0.9), used to put the real T1 on the simulated T1-weighted scale.
    """

    name: str
    description: str
    grid: Grid
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    t1_means: dict
    head: np.ndarray | None = None
    t1_head: np.ndarray | None = None
    fat: np.ndarray | None = None
    muscle: np.ndarray | None = None
    bone: np.ndarray | None = None

    @property
    def has_head(self) -> bool:
        return self.head is not None

    def head_extent_mm(self) -> np.ndarray:
        """(x, y, z) extent of the head (the brain's when skull-stripped)."""
        return _bbox_extent((self.brain if self.head is None else self.head) > 0.5, self.grid)

    def centre(self) -> np.ndarray:
        """LPS centre of the brain's bounding box."""
        return _bbox_centre(self.brain > 0.5, self.grid)

    def extent_mm(self) -> np.ndarray:
        return _bbox_extent(self.brain > 0.5, self.grid)

    def smoothed(self, voxel_mm: float) -> "BrainTemplate":
        """The template pre-filtered (block mean, then Gaussian) for sampling onto ``voxel_mm`` voxels."""
        factor = block_factor(self.grid, voxel_mm)
        f: dict[str, Any] = {}
        keys = ("t1", "gm", "wm", "csf", "brain") + (HEAD_MAPS if self.has_head else ())
        for k in keys:
            array, grid = block_mean(getattr(self, k), self.grid, factor)
            f[k] = anti_alias(array, grid.spacing, voxel_mm)
        return replace(self, grid=grid, **f)


@dataclass(frozen=True, eq=False)
class HeadCT:
    """A real head CT in HU (outside the head −1000) with its head mask."""

    name: str
    description: str
    grid: Grid
    hu: np.ndarray
    head: np.ndarray

    def centre(self) -> np.ndarray:
        return _bbox_centre(self.head, self.grid)

    def extent_mm(self) -> np.ndarray:
        return _bbox_extent(self.head, self.grid)

    def smoothed(self, voxel_mm: float) -> "HeadCT":
        factor = block_factor(self.grid, voxel_mm)
        hu, grid = block_mean(self.hu, self.grid, factor)
        head, _ = block_mean(self.head.astype(np.float32), self.grid, factor)
        return replace(self, grid=grid, hu=anti_alias(hu, grid.spacing, voxel_mm),
                       head=anti_alias(head, grid.spacing, voxel_mm))


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) foreground index in (x, y, z) order."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            raise ValueError("empty mask: the anatomy holds no foreground")
        lo.append(hits[0])
        hi.append(hits[-1])
    return np.array(lo[::-1], float), np.array(hi[::-1], float)


def _bbox_centre(mask: np.ndarray, grid: Grid) -> np.ndarray:
    lo, hi = _bbox(mask)
    return (grid.affine() @ np.append((lo + hi) / 2.0, 1.0))[:3]


def _bbox_extent(mask: np.ndarray, grid: Grid) -> np.ndarray:
    lo, hi = _bbox(mask)
    return (hi - lo + 1.0) * np.asarray(grid.spacing)


def _read(path: Path) -> tuple[np.ndarray, Grid]:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return array, Grid(array.shape, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _pure_means(t1: np.ndarray, fractions: dict[str, np.ndarray]) -> dict:
    return {k: float(np.median(t1[f > 0.9])) for k, f in fractions.items()}


# -- brains --------------------------------------------------------------------------------------
def load_mni152() -> BrainTemplate:
    """MNI ICBM152 2009a nonlinear symmetric (1 mm): T1, GM and WM probability maps from nilearn's
    wheel; the brain mask is the T1's non-zero support (the template is brain-extracted);
    CSF = mask − GM − WM clipped to [0, 1]."""
    paths = sources.find_mni152()
    t1, grid = _read(paths["t1"])
    gm, _ = _read(paths["gm"])
    wm, _ = _read(paths["wm"])
    brain = ndimage.binary_fill_holes(_largest_component(t1 > 0.5)).astype(np.float32)
    gm = np.clip(gm / 255.0, 0, 1) * brain
    wm = np.clip(wm / 255.0, 0, 1) * brain
    over = gm + wm > 1.0
    total = np.where(over, gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    fractions = {"gm": gm, "wm": wm, "csf": csf}
    return BrainTemplate("mni152", "MNI ICBM152 2009a nonlinear symmetric template (T1, GM, WM maps)", grid,
                         t1, gm.astype(np.float32), wm.astype(np.float32), csf.astype(np.float32), brain,
                         _pure_means(t1, fractions))


def _kmeans_1d(values: np.ndarray, init: np.ndarray, iterations: int = 30) -> np.ndarray:
    centres = init.astype(np.float64)
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[labels == k].mean() if np.any(labels == k) else centres[k] for k in range(len(centres))])
        if np.allclose(new, centres, atol=1e-4):
            break
        centres = new
    return np.sort(centres)


def partial_volume_fractions(t1: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """CSF/GM/WM fractions of a T1-weighted brain by a linear two-class mixing model between
    the class means (found by 1-D k-means inside the mask): between CSF and GM means a voxel is
    a CSF/GM mixture, between GM and WM a GM/WM mixture."""
    inside = brain > 0.5
    values = t1[inside].astype(np.float64)
    mu_csf, mu_gm, mu_wm = _kmeans_1d(values[:: max(1, values.size // 400_000)],
                                      np.percentile(values, [3, 50, 95]))
    wm = np.clip((t1 - mu_gm) / (mu_wm - mu_gm), 0.0, 1.0)
    low = np.clip((t1 - mu_csf) / (mu_gm - mu_csf), 0.0, 1.0)
    gm = np.where(t1 >= mu_gm, 1.0 - wm, low)
    csf = np.where(t1 >= mu_gm, 0.0, 1.0 - low)
    return {k: (v * brain).astype(np.float32) for k, v in (("gm", gm), ("wm", wm), ("csf", csf))}


def load_colin27(cache_dir: str | Path | None = None) -> BrainTemplate:
    """Colin27 (1 mm, mricron-data): the T1 with scalp (``ch2``) inside the brain mask of its
    brain extraction (``ch2bet``, cleaned of stray voxels), split into tissue fractions by
    :func:`partial_volume_fractions`; outside the brain, inside :func:`head_mask`, the same
    linear mixing model between the dark (bone, dura, air), intermediate (muscle, skin) and
    bright (fat, marrow) T1 intensity means gives the bone / muscle / fat fractions."""
    paths = sources.find_or_fetch_colin27(cache_dir)
    t1, grid = _read(paths["t1"])
    bet, bet_grid = _read(paths["brain"])
    if bet.shape != t1.shape:
        raise ValueError(f"Colin27 files disagree in shape: {t1.shape} vs {bet.shape}")
    mask = ndimage.binary_opening(bet > 0.5, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    mask = _largest_component(mask)
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    brain = ndimage.binary_fill_holes(mask).astype(np.float32)
    t1_smooth = ndimage.gaussian_filter(t1, 0.5)
    fractions = partial_volume_fractions(t1_smooth, brain)
    head = head_mask(t1) | (brain > 0.5)
    outside = head.astype(np.float32) - brain
    classes = partial_volume_fractions(t1_smooth, outside)     # dark / intermediate / bright outside the brain
    return BrainTemplate("colin27", "Colin27 single-subject average (27 scans), T1 with partial-volume tissue "
                         "fractions and its whole head", grid, t1 * brain, fractions["gm"], fractions["wm"],
                         fractions["csf"], brain, _pure_means(t1, fractions), head=head.astype(np.float32),
                         t1_head=(t1 * head).astype(np.float32), fat=classes["wm"], muscle=classes["gm"],
                         bone=classes["csf"])


def head_mask(t1: np.ndarray) -> np.ndarray:
    """The head in a T1 with scalp: smoothed intensity above the background, opened to drop
    ghosting specks, the largest component, holes filled slice by slice (sinuses, airway)."""
    fg = ndimage.gaussian_filter(t1, 1.5) > 0.15 * float(np.percentile(t1, 99.0))
    fg = _largest_component(ndimage.binary_opening(fg, iterations=3))
    return np.stack([ndimage.binary_fill_holes(s) for s in fg])


def load_brain(name: str, cache_dir: str | Path | None = None) -> BrainTemplate:
    if name == "mni152":
        return load_mni152()
    if name == "colin27":
        return load_colin27(cache_dir)
    raise ValueError(f"unknown brain template {name!r}; known: mni152, colin27")


# -- the head CT ---------------------------------------------------------------------------------
def read_inv3(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """The HU matrix (z, y, x as stored), spacing (x, y, z) and main plist of an InVesalius
    project (``.inv3`` = a gzipped tar holding ``main.plist`` and a raw ``matrix.dat``)."""
    with tarfile.open(path, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"{path}: no main.plist inside; not an InVesalius project")
        main = plistlib.loads(tar.extractfile(members["main.plist"]).read())          # type: ignore[union-attr]
        matrix = main["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()                       # type: ignore[union-attr]
    dtype = np.dtype(matrix.get("dtype", "int16")).newbyteorder("<")
    array = np.frombuffer(raw, dtype=dtype).reshape(tuple(matrix["shape"]))
    spacing = tuple(float(s) for s in main["spacing"])
    return array, spacing, main                                                          # type: ignore[return-value]


def load_head_ct(cache_dir: str | Path | None = None) -> HeadCT:
    """The InVesalius example head CT ("ProMED CT 0051", 256×256×108, 0.957×0.957×1.5 mm) in HU.

    InVesalius keeps axial slices from inferior to superior with image rows running posterior →
    anterior (the face sits at high row indices); rows are flipped here so the grid is plain LPS
    (x → left, y → posterior, z → superior), identity direction. Left–right follows the DICOM
    convention (not recoverable from the file; the head is near-symmetric). The head-rest and
    everything outside the largest connected body component are set to −1000 HU (air); the
    grid is centred on the scanner origin (the file keeps no patient position).
    """
    path = sources.find_or_fetch_head_ct(cache_dir)
    array, spacing, main = read_inv3(path)
    if str(main.get("modality", "CT")).upper() != "CT":
        raise ValueError(f"{path}: modality {main.get('modality')!r}, expected CT")
    hu = np.clip(np.ascontiguousarray(array[:, ::-1, :]).astype(np.float32), -1024.0, 3071.0)
    body = _largest_component(hu > -500.0)
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    head = ndimage.binary_dilation(body, iterations=2)
    hu = np.where(head, np.maximum(hu, -1000.0), -1000.0).astype(np.float32)
    shape = hu.shape
    size = np.array([shape[2], shape[1], shape[0]], float)
    origin = xyz(-(size - 1) / 2.0 * np.asarray(spacing))
    grid = Grid(shape, spacing, origin)
    return HeadCT("invesalius-cranium", f"InVesalius example head CT ({main.get('name', 'Cranium')})", grid, hu,
                  head)
