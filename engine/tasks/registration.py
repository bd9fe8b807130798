"""Rigid registration of one modality onto another of the same subject, for datasets whose volumes
are not aligned: SimpleITK with Mattes mutual information (so T1 onto CT works as well as T1 onto
T2), an Euler 3-D transform started by aligning the centres of mass, and a coarse-to-fine
pyramid; the moving volume resampled onto the fixed grid; a before/after overlay slice to judge it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from engine import modalities
from engine.inference.field_of_view import padding_mask
from engine.inference.slices import slice_axis, slices_first
from engine.io.dicom_reg import StoredRegistration
from engine.io.itk_files import volume_to_sitk
from engine.io.volume import Volume
from engine.jobs import CancelToken, Progress, ProgressFn, check_cancel, noop

HISTOGRAM_BINS = 32
SAMPLING_SHARE = 0.25            # of the fixed voxels, drawn at random (seeded) at each level
ITERATIONS = 200                 # per pyramid level
MIN_LEVEL_VOXELS = 12            # a pyramid level keeps at least this many voxels along every axis


@dataclass(frozen=True)
class RigidRegistration:
    """A rigid transform from the fixed volume's space into the moving volume's (SimpleITK's
    convention: it maps fixed points to the moving points that land on them), with the mutual
    information before (identity; None when the volumes do not overlap) and after."""

    angles: tuple[float, float, float]          # radians about the LPS x, y, z axes
    translation: tuple[float, float, float]     # millimetres
    center: tuple[float, float, float]          # millimetres (LPS), the rotation centre
    mi_before: float | None
    mi_after: float                             # NaN: no overlap through it
    stored: str = ""                            # the spatial registration (DICOM REG) it was read from; "" found here
    stored_path: str = ""                       # that REG's file
    stored_uid: str = ""                        # and its SOPInstanceUID

    @property
    def improved(self) -> bool:
        """Whether it is applied: a stored registration when the volumes overlap through it (the clinic's
        own placement), one found here when it aligns them better than their headers do (mutual
        information rose)."""
        if math.isnan(self.mi_after):
            return False
        return bool(self.stored) or self.mi_before is None or self.mi_after >= self.mi_before

    def transform(self) -> sitk.Euler3DTransform:
        t = sitk.Euler3DTransform()
        t.SetCenter(self.center)
        t.SetRotation(*self.angles)
        t.SetTranslation(self.translation)
        return t

    def moving_to_fixed(self) -> np.ndarray:
        """The 4×4 matrix taking the moving volume's coordinates onto the fixed one's (the direction a
        planning system's registration is stated in; the inverse of :meth:`transform`)."""
        t = self.transform()
        rotation = np.asarray(t.GetMatrix(), float).reshape(3, 3)
        shift = np.asarray(t.GetTranslation(), float) + np.asarray(t.GetCenter(), float) - rotation @ np.asarray(
            t.GetCenter(), float)                                   # x_moving = R x_fixed + shift
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = rotation.T, -rotation.T @ shift
        return matrix

    def describe(self) -> str:
        """Rotation and translation from the moving volume's coordinates into the fixed one's (as a planning
        system states a registration; independent of the rotation centre the search used), with the
        mutual information before and after."""
        matrix = self.moving_to_fixed()
        shown = sitk.Euler3DTransform()
        shown.SetMatrix(tuple(float(v) for v in matrix[:3, :3].ravel()))
        angles = (shown.GetAngleX(), shown.GetAngleY(), shown.GetAngleZ())
        before = "no overlap" if self.mi_before is None else f"{self.mi_before:.3f}"
        after = "no overlap" if math.isnan(self.mi_after) else f"{self.mi_after:.3f}"
        found = (f"rotation ({_degrees(angles)}) about x, y, z (applied y, x, z) and translation "
                 f"({_millimetres(matrix[:3, 3])}) mm from its frame into the reference's; mutual information "
                 f"{before} → {after}")
        if self.stored:
            found = f"placed by the stored registration {self.stored}: {found}"
            return found if self.improved else f"{found}: the volumes do not overlap through it, so not applied"
        found = f"registered from its intensities: {found}"
        return found if self.improved else f"{found}: worse than the headers' placement, so not applied"

    def to_dict(self) -> dict:
        return {"matrix_moving_to_fixed": self.moving_to_fixed().tolist(),
                "itk_fixed_to_moving": {"angles_rad": list(self.angles), "translation_mm": list(self.translation),
                                        "center_mm": list(self.center)},      # SimpleITK's Euler3DTransform
                "mutual_information": {"before": self.mi_before,
                                       "after": None if math.isnan(self.mi_after) else self.mi_after},
                **({"stored": self.stored, "stored_path": self.stored_path, "stored_uid": self.stored_uid}
                   if self.stored else {})}


def _degrees(angles) -> str:
    return ", ".join(f"{math.degrees(a):.1f}°" for a in angles)


def _millimetres(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _registration_image(volume: Volume) -> tuple[sitk.Image, sitk.Image | None]:
    """The volume's intensities mapped to [0, 1] between its 1st and 99th percentile (HU and MR units
    alike, and non-negative so that the centre of mass is meaningful), and the mask of its voxels that
    hold data (None when all do). A CT or CBCT's values below air (−3024 HU padding had set air mid-grey
    and pulled the registration off) are air, and a CBCT's padding outside its field of view is left out
    of the metric: there the scan shows nothing to match."""
    array = np.asarray(volume.array, dtype=np.float32)
    padding = None
    if volume.modality and modalities.get(volume.modality).family == "CT":
        array = np.maximum(array, modalities.scale_bottom(volume.modality) or -1024.0)
    if volume.modality == "CBCT":               # a cone beam's field of view cuts the head: its padding is no air
        padding = padding_mask(volume)
        array[padding] = array[~padding].min() if (~padding).any() else 0.0
    data = array if padding is None else array[~padding]
    lo, hi = np.percentile(data, (1, 99)) if data.size else (0.0, 1.0)
    scaled = np.clip((array - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    image = volume_to_sitk(volume.with_array(scaled.astype(np.float32)))
    if padding is None or not padding.any():
        return image, None
    mask = sitk.Cast(volume_to_sitk(volume.with_array((~padding).astype(np.float32))), sitk.sitkUInt8)
    return image, mask


def _pyramid(fixed: sitk.Image) -> list[int]:
    smallest = min(fixed.GetSize())
    return [f for f in (4, 2) if smallest // f >= MIN_LEVEL_VOXELS] + [1]


def _method(seed: int, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # an unsigned 32-bit seed that is never 0, which SimpleITK reads as the wall clock (another sample each run)
    method.SetMetricSamplingPercentage(SAMPLING_SHARE, seed % (2**32 - 1) + 1)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    return method


def _mutual_information(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
                        transform: sitk.Transform) -> float | None:
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return -float(method.MetricEvaluate(fixed, moving))      # Mattes reports −MI
    except RuntimeError:                                           # no sample of fixed lands inside moving
        return None


def register_rigid(fixed: Volume, moving: Volume, *, seed: int = 0, progress: ProgressFn = noop,
                   cancel: CancelToken | None = None) -> RigidRegistration:
    """Find the rigid transform that best aligns ``moving`` onto ``fixed`` (both in physical space,
    any grids). Started where the headers place the volumes when they overlap (a daily CBCT beside its
    planning CT: a few millimetres off) and from their centres of mass aligned (which a field of view
    cutting one of them shifts), the better of the two kept. Deterministic for a seed. ValueError when
    the optimisation fails."""
    check_cancel(cancel)
    (fixed_image, fixed_mask), (moving_image, moving_mask) = _registration_image(fixed), _registration_image(moving)
    before = _mutual_information(_method(seed, fixed_mask, moving_mask), fixed_image, moving_image,
                                 sitk.Euler3DTransform())
    starts = [sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)]
    if before is not None:
        as_placed = sitk.Euler3DTransform()
        as_placed.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in fixed_image.GetSize()]))
        starts.insert(0, as_placed)
    shrink = _pyramid(fixed_image)
    total = ITERATIONS * len(shrink) * len(starts)
    count = [0]

    def report() -> None:
        count[0] += 1
        if count[0] % 10 == 0:
            progress(Progress(min(count[0], total), total, "registering"))

    best: tuple[float, sitk.Euler3DTransform] | None = None
    for start in starts:
        method = _method(seed, fixed_mask, moving_mask)
        method.SetShrinkFactorsPerLevel(shrink)
        method.SetSmoothingSigmasPerLevel([max(0, f // 2) for f in shrink])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4,
                                                        numberOfIterations=ITERATIONS, relaxationFactor=0.5)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(start, inPlace=True)
        method.AddCommand(sitk.sitkIterationEvent, report)
        try:
            result = method.Execute(fixed_image, moving_image)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise ValueError(f"rigid registration failed: {(lines or ['?'])[-1][:200]}") from None
        check_cancel(cancel)
        found = sitk.Euler3DTransform(result)
        after = _mutual_information(_method(seed, fixed_mask, moving_mask), fixed_image, moving_image, found)
        if after is not None and (best is None or after > best[0]):
            best = (after, found)
    if best is None:
        raise ValueError("rigid registration failed: the volumes do not overlap after it")
    progress(Progress(total, total, "registered"))
    after, found = best
    return RigidRegistration((found.GetAngleX(), found.GetAngleY(), found.GetAngleZ()),
                             tuple(found.GetTranslation()), tuple(found.GetCenter()), before, after)


def stored_registration(fixed: Volume, moving: Volume, matrix: np.ndarray, by: StoredRegistration
                        ) -> RigidRegistration:
    """A registration stored beside the volumes (``matrix``: rigid, 4×4, taking ``moving``'s frame of
    reference into ``fixed``'s: :func:`engine.io.dicom_reg.frame_matrix`) as the transform
    :func:`resample_rigid` applies, with the mutual information as the headers place the volumes and
    through it, for the record. Applied as stored: nothing is searched."""
    rotation, shift = np.asarray(matrix, float)[:3, :3], np.asarray(matrix, float)[:3, 3]
    u, _, vt = np.linalg.svd(rotation)                 # the nearest rotation: REG values carry rounding
    rotation = u @ vt
    transform = sitk.Euler3DTransform()                # SimpleITK maps fixed points to moving ones: the inverse
    transform.SetMatrix(tuple(float(v) for v in rotation.T.ravel()))
    transform.SetTranslation(tuple(float(v) for v in -(rotation.T @ shift)))
    (fixed_image, fixed_mask), (moving_image, moving_mask) = _registration_image(fixed), _registration_image(moving)
    method = _method(0, fixed_mask, moving_mask)
    before = _mutual_information(method, fixed_image, moving_image, sitk.Euler3DTransform())
    after = _mutual_information(method, fixed_image, moving_image, transform)
    return RigidRegistration((transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ()),
                             tuple(transform.GetTranslation()), (0.0, 0.0, 0.0), before,
                             float("nan") if after is None else after, by.describe(), by.path, by.uid)


def resample_rigid(moving: Volume, fixed: Volume, registration: RigidRegistration | None = None) -> Volume:
    """``moving`` on ``fixed``'s grid through the registration (identity when None; linear;
    outside the moving volume → its minimum), in its own units and modality."""
    transform = registration.transform() if registration is not None else sitk.Transform()
    background = float(np.min(moving.array)) if moving.array.size else 0.0
    image = sitk.Resample(volume_to_sitk(moving), volume_to_sitk(fixed), transform, sitk.sitkLinear, background,
                          sitk.sitkFloat32)
    note = "rigidly registered onto " + (fixed.modality or "the reference") if registration else "resampled"
    return fixed.with_array(sitk.GetArrayFromImage(image).astype(np.float32, copy=False), modality=moving.modality,
                            unit=moving.unit, name=moving.name, source=moving.source, notes=moving.notes + (note,))


def _unit_range(array: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(array, (1, 99.5)) if array.size else (0.0, 1.0)
    return np.clip((array - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def overlay(fixed: Volume, moving_on_fixed: Volume) -> np.ndarray:
    """The central slice (along the acquisition axis) of both volumes on the fixed grid as an RGB
    image, uint8 (rows, cols, 3): the fixed volume green, the moving one magenta; where they
    agree the image is grey."""
    axis = slice_axis(fixed.spacing)
    index = fixed.array.shape[axis] // 2
    f = _unit_range(slices_first(np.asarray(fixed.array, dtype=np.float32), axis)[index])
    m = _unit_range(slices_first(np.asarray(moving_on_fixed.array, dtype=np.float32), axis)[index])
    return (np.stack([m, f, m], axis=-1) * 255.0 + 0.5).astype(np.uint8)
