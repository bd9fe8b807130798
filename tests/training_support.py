"""Shared helpers of the training tests (no tests here): a small phantom paired dataset, one to prepare,
a tiny training config, and running ``python main.py train`` as a subprocess that reports JSON lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.io import save
from engine.io.itk_files import load_file
from engine.tasks.phantoms import write_phantom_dataset, write_phantom_subject
from engine.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PX = 32          # slices of 32 px: 4×4 ViT tokens, 4×4 generation tokens in the tiny preset
UNPREPARED_SHAPE = (10, 32, 32)


def phantom_data(root: Path) -> Path:
    """Three MR subjects (T1, T2, FLAIR) and one CT/CBCT subject, 12 slices of 32×32 each."""
    if not (root / "dataset.json").exists():
        write_phantom_dataset(root, subjects=3, shape=(12, 32, 32))
    return root


def unprepared_data(tmp_path: Path) -> Path:
    """A dataset to prepare (``prepare``), in ``tmp_path / "pairs"``: three good subjects; sub04's FLAIR
    lies 60 mm away; sub09 is a DICOM export with two series in a folder tree, and sub10 has an oddly
    named NIfTI beside its T1 (slices of 32×32, 10 of them)."""
    data = write_phantom_dataset(tmp_path / "pairs", subjects=3, shape=UNPREPARED_SHAPE, ct_subject=False)
    write_phantom_subject(data / "sub04", ("T1", "T2"), shape=UNPREPARED_SHAPE, seed=4)
    write_phantom_subject(data / "sub04", ("FLAIR",), shape=UNPREPARED_SHAPE, seed=4, origin=(60.0, 0.0, 0.0))
    exported = write_phantom_subject(tmp_path / "nifti", ("T1", "T2"), shape=UNPREPARED_SHAPE, seed=9)
    for i, (modality, description) in enumerate((("T1", "t1_mprage_sag"), ("T2", "t2_tse_tra"))):
        save(load_file(exported[modality]), data / "sub09" / "study" / f"series{i}", description=description)
    write_phantom_subject(data / "sub10", ("T1",), shape=UNPREPARED_SHAPE, seed=10)
    odd = write_phantom_subject(tmp_path / "odd", ("PD",), shape=UNPREPARED_SHAPE, seed=10)["PD"]
    (data / "sub10" / "3d_pd_weighted.nii.gz").write_bytes(odd.read_bytes())
    return data


def damage_voxels(volume: Path) -> Path:
    """Rewrite a phantom ``.nii.gz`` on a grid 3× finer (same physical box), noisy so that it is big
    enough for its header to read alone, and damage the end of its compressed voxels: the header and
    the gzip trailer stay intact, so only reading the voxels finds it."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(volume))
    fine = sitk.Image([3 * image.GetSize()[0], 3 * image.GetSize()[1], image.GetSize()[2]], sitk.sitkFloat32)
    fine.SetSpacing((image.GetSpacing()[0] / 3, image.GetSpacing()[1] / 3, image.GetSpacing()[2]))
    fine.SetOrigin((image.GetOrigin()[0] - image.GetSpacing()[0] / 3, image.GetOrigin()[1] - image.GetSpacing()[1] / 3,
                    image.GetOrigin()[2]))
    fine = sitk.Resample(image, fine, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(fine)
    noisy = sitk.GetImageFromArray(array + np.random.default_rng(0).normal(0.0, 5.0, array.shape).astype(np.float32))
    noisy.CopyInformation(fine)
    sitk.WriteImage(noisy, str(volume))
    raw = bytearray(volume.read_bytes())
    for i in range(len(raw) - 300, len(raw) - 100):
        raw[i] ^= 0x5A
    volume.write_bytes(bytes(raw))
    return volume


def tiny_config(data: Path, out: Path, stage: str, **changes) -> TrainConfig:
    values = dict(data=str(data), stage=stage, out=str(out), size="tiny", steps=3, batch_size=2, image_size=PX,
                  checkpoint_every=0, checkpoint_seconds=0, preview_every=0, eval_samples=2, threads=1)
    values.update(changes)
    return TrainConfig(**values)


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "train", *args]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_train(*args: str, timeout: float = 120) -> tuple[int, list[dict], str]:
    """(exit code, stdout JSON records, stderr) of ``python main.py train ARGS``."""
    proc = subprocess.run(train_command(*args), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, records(proc.stdout), proc.stderr


def records(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def step_losses(recs: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in recs if r["event"] == "step"}
