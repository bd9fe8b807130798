"""Shared helpers of the training tests (no tests here): a small phantom paired dataset, a tiny
training config, and running ``python main.py train`` as a subprocess that reports JSON lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.tasks.phantoms import write_phantom_dataset
from engine.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PX = 32          # slices of 32 px: 4×4 ViT tokens, 4×4 generation tokens in the tiny preset


def phantom_data(root: Path) -> Path:
    """Three MR subjects (T1, T2, FLAIR) and one CT/CBCT subject, 12 slices of 32×32 each."""
    if not (root / "dataset.json").exists():
        write_phantom_dataset(root, subjects=3, shape=(12, 32, 32))
    return root


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
