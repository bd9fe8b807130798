"""The fuzzer's seed files: the demo volumes written by the project's own writers (NIfTI, MHA,
NRRD, a DICOM series) in a temporary folder, and small real files that pydicom, pydicom-data and
nibabel ship for their own tests (read as seeds only, never trained on)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.paths import ROOT

DEMO = ROOT / "resources" / "demo"
DEMO_VOLUMES = (DEMO / "head" / "CT.nii.gz", DEMO / "brain" / "T1.nii.gz")
STEP = 6                                   # every 6th voxel: seeds of a few thousand voxels load in milliseconds
PYDICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm",
    "image_dfl.dcm", "liver_1frame.dcm", "no_meta.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_rle_2frame.dcm",
    "MR_truncated.dcm", "rtstruct.dcm", "badVR.dcm", "nested_priv_SQ.dcm", "UN_sequence.dcm",
    "rtdose_1frame.dcm",
)
PYDICOM_DATA_SEEDS = ("emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                      "emri_small_jpeg_2k_lossless.dcm", "JPEG-LL.dcm")
NIBABEL_SEEDS = ("anatomical.nii", "functional.nii", "example4d.nii.gz", "example_nifti2.nii.gz",
                 "standard.nii.gz", "resampled_anat_moved.nii")


def make_seeds(folder: str | Path) -> list[Path]:
    """Write the project's seed files into ``folder`` and return them with the packages' seeds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [*_project_seeds(folder), *package_seeds()]


def _project_seeds(folder: Path) -> list[Path]:
    import SimpleITK as sitk

    from engine import io
    from engine.io.itk_files import volume_to_sitk

    seeds: list[Path] = []
    for source in DEMO_VOLUMES:
        if not source.is_file():
            continue
        full = io.load(source)
        small = full.replace(array=np.ascontiguousarray(full.array[::STEP, ::STEP, ::STEP]),
                             spacing=tuple(s * STEP for s in full.spacing))
        stem = source.name.split(".")[0]
        for suffix in (".nii", ".nii.gz", ".mha", ".nrrd"):
            seeds.append(io.save(small, folder / f"{stem}{suffix}", description=f"fuzz seed from {stem}"))
        for suffix in (".mha", ".nrrd"):                 # the writer compresses these; the raw layout too
            plain = folder / f"{stem}_raw{suffix}"
            sitk.WriteImage(volume_to_sitk(small), str(plain), useCompression=False)
            seeds.append(plain)
        series = io.save(small, folder / f"{stem}_dicom", description=f"fuzz seed from {stem}")
        seeds.extend(sorted(p for p in Path(series).iterdir() if p.is_file())[:2])
        picture = folder / f"{stem}.png"
        middle = small.array[small.shape[0] // 2]
        grey = np.interp(middle, (middle.min(), middle.max() + 1e-6), (0, 255)).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(grey), str(picture))
        seeds.append(picture)
    return seeds


def package_seeds() -> list[Path]:
    """The packages' own test files that exist in this installation."""
    import nibabel
    import pydicom

    found = [Path(pydicom.__file__).parent / "data" / "test_files" / n for n in PYDICOM_SEEDS]
    found += [Path(nibabel.__file__).parent / "tests" / "data" / n for n in NIBABEL_SEEDS]
    try:
        import data_store  # pydicom-data: a test dependency
    except ImportError:
        pass
    else:
        found += [Path(data_store.__file__).parent / "data" / n for n in PYDICOM_DATA_SEEDS]
    return [p for p in found if p.is_file()]
