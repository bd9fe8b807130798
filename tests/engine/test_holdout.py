"""The real-data hold-out (engine/tasks/holdout.py): no test file of pydicom, pydicom-data or nibabel
can become training data — not as a dataset folder inside a package's test files, not as a copy in
a dataset of one's own — and ``train`` (and the U-Net baseline) refuse such a dataset before reading it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from training_support import PX

from cli import run_cli
from engine.tasks import holdout
from engine.tasks.phantoms import write_phantom_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_the_hold_out_refuses_to_be_training_data(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", subjects=1, ct_subject=False)
    holdout.check_holdout_unused(data)                       # a dataset of its own: fine
    item, path = holdout.holdout_paths("CT")[0]
    shutil.copy(path, data / "sub01" / "CT_copy.dcm")
    with pytest.raises(ValueError, match="hold-out"):
        holdout.check_holdout_unused(data)
    with pytest.raises(ValueError, match="hold-out"):
        holdout.check_holdout_unused(path.parent)            # a dataset inside the package's test files
    assert all(f.name not in json.dumps(sorted(str(p) for p in (ROOT / "resources").rglob("*")))
               for f, _ in holdout.holdout_paths())


def test_any_test_file_of_the_packages_is_refused_not_only_those_the_benchmark_scores(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", subjects=1, ct_subject=False)
    listed = {path for _, path in holdout.holdout_paths()}
    other = next(p for p in sorted(holdout.package_folders()["pydicom"].glob("*.dcm")) if p not in listed)
    shutil.copy(other, data / "sub01" / "extra.dcm")
    with pytest.raises(ValueError, match=f"copy of {other}"):
        holdout.check_holdout_unused(data)


def test_train_refuses_a_dataset_holding_a_hold_out_file_before_reading_it(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "data", subjects=2, shape=(12, 32, 32))
    nifti = holdout.package_folders()["nibabel"] / "anatomical.nii"
    shutil.copy(nifti, data / "sub01" / "T1.nii")
    (data / "sub01" / "T1.nii.gz").unlink()
    code = run_cli(["train", "--data", str(data), "--stage", "understanding", "--steps", "1", "--image-size", str(PX),
                    "--threads", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "T1.nii is a copy of" in err and "anatomical.nii" in err and "never training data" in err
    assert not (tmp_path / "out").exists()
