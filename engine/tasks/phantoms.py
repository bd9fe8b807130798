"""Tiny synthetic paired datasets — geometric head phantoms with per-modality contrasts — for
tests and smoke runs of training and inference. Not anatomy: never for a shipped model."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine import modalities

# tissue → value per modality: background, scalp/skull, white matter, grey matter, CSF, lesion
_TISSUES = ("background", "skull", "wm", "gm", "csf", "lesion")
_CONTRASTS: dict[str, tuple[float, ...]] = {
    "T1": (0.0, 900.0, 800.0, 550.0, 150.0, 400.0),
    "T1CE": (0.0, 900.0, 800.0, 550.0, 150.0, 1000.0),
    "T2": (0.0, 300.0, 350.0, 550.0, 1000.0, 800.0),
    "FLAIR": (0.0, 200.0, 400.0, 600.0, 50.0, 1000.0),
    "PD": (0.0, 500.0, 600.0, 750.0, 900.0, 800.0),
    "CT": (-1000.0, 1200.0, 30.0, 40.0, 8.0, 35.0),
    "CBCT": (-950.0, 1100.0, 60.0, 70.0, 40.0, 65.0),
    "PET": (0.0, 0.5, 4.0, 8.0, 0.3, 14.0),
}


def phantom_labels(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A (z, y, x) label map (indices into the tissue list) whose cross-sections change with z."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    shift = rng.uniform(-0.06, 0.06, size=3).astype(np.float32)
    r = np.sqrt(((zz - shift[0]) / 0.95) ** 2 + ((yy - shift[1]) / 0.85) ** 2 + ((xx - shift[2]) / 0.75) ** 2)
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 1
    labels[r < 0.85] = 3
    wm = r + 0.12 * np.sin(4 * zz + 3 * xx + seed)            # wavy grey/white border
    labels[wm < 0.6] = 2
    ventricles = ((xx - shift[2]) / 0.12) ** 2 + ((yy - shift[1] + 0.1) / 0.3) ** 2 + (zz / 0.5) ** 2 < 1
    labels[ventricles] = 4
    centre = rng.uniform(-0.35, 0.35, size=3)
    lesion = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < 0.18 ** 2
    labels[lesion & (r < 0.8)] = 5
    return labels


def phantom_volume(labels: np.ndarray, modality: str, seed: int = 0) -> np.ndarray:
    """Physical-unit voxel values of ``modality`` for a label map, with mild noise."""
    name = modalities.canonical(modality)
    values = np.asarray(_CONTRASTS[name], np.float32)[labels]
    rng = np.random.default_rng(seed + 17 * list(_CONTRASTS).index(name))
    noise = {"MR": 15.0, "CT": 10.0, "PET": 0.1}[modalities.get(name).family]
    return (values + rng.normal(0.0, noise, labels.shape)).astype(np.float32)


def write_volume(array: np.ndarray, path: str | Path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_phantom_subject(folder: str | Path, modality_names: Sequence[str], *, shape=(24, 32, 32),
                          spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), seed: int = 0,
                          suffix: str = ".nii.gz") -> dict[str, Path]:
    """One subject folder with a co-registered volume per modality, named ``<MODALITY><suffix>``."""
    labels = phantom_labels(shape, seed)
    return {m: write_volume(phantom_volume(labels, m, seed), Path(folder) / f"{modalities.canonical(m)}{suffix}",
                            spacing, origin)
            for m in modality_names}


def write_phantom_dataset(root: str | Path, *, subjects: int = 4, modality_names: Sequence[str] = ("T1", "T2", "FLAIR"),
                          shape=(24, 32, 32), spacing=(1.0, 1.0, 2.0), ct_subject: bool = True,
                          anatomy: str = "brain", seed: int = 0, split: dict | None = None,
                          sources: dict[str, str] | None = None) -> Path:
    """A small valid dataset: ``subjects`` MR subjects (``sub01`` …) plus, with ``ct_subject``, one
    head CT/CBCT subject (``ct01``); a ``dataset.json`` with name, anatomy and (optional) split and
    subjects' sources."""
    root = Path(root)
    anatomies = {}
    for i in range(subjects):
        name = f"sub{i + 1:02d}"
        write_phantom_subject(root / name, modality_names, shape=shape, spacing=spacing, seed=seed + i)
        anatomies[name] = anatomy
    if ct_subject:
        write_phantom_subject(root / "ct01", ("CT", "CBCT"), shape=shape, spacing=spacing, seed=seed + 100)
        anatomies["ct01"] = "head"
    meta: dict = {"name": "phantoms", "anatomy": anatomies}
    if split is not None:
        meta["split"] = split
    if sources is not None:
        meta["subjects"] = {name: {"source": source} for name, source in sources.items()}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root
