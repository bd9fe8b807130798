"""The paired dataset: a validated folder of subjects, their volumes on one grid per subject
(resampled when needed), normalised per volume, and the 2-D slices every task is built from."""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine import modalities
from engine.inference.slices import Placement, in_plane_spacing, slice_axis, slices_first, to_canvas
from engine.io.resample import resample_onto
from engine.io.volume import Volume
from engine.jobs import CancelToken, ProgressFn, noop
from engine.tasks.validation import (
    SPLITS,
    TEST_FRACTION,
    VAL_FRACTION,
    DatasetError,
    Finding,
    SubjectInfo,
    ValidationReport,
    read_volume,
    validate_dataset,
)

__all__ = ["DatasetError", "NormalisedVolume", "PairedDataset"]


@dataclass(frozen=True, eq=False)
class NormalisedVolume:
    """One modality of one subject in [0, 1] on the subject's grid, with what undoes it."""

    array: np.ndarray                       # (z, y, x) float32 in [0, 1]
    normalisation: modalities.Normalisation
    body_fraction: np.ndarray               # body-mask share of each slice along the slice axis


def load_volume(path: str | Path) -> Volume:
    """A volume file or DICOM folder in physical units; DatasetError naming the file otherwise."""
    path = Path(path)
    try:
        return read_volume(path)
    except Exception as exc:        # noqa: BLE001 — reported with the file name
        raise DatasetError(f"{path}: cannot be loaded ({getattr(exc, 'problem', None) or exc})") from exc


class PairedDataset:
    """Subjects with two or more co-registered modalities; volumes load lazily and are cached.

    Slices run along the subject's acquisition axis (:func:`engine.inference.slices.slice_axis`);
    a slice is *usable* for training when every modality's body mask covers at least
    ``min_body_fraction`` of it. ``pixel_mm`` is the model's pixel size (physical-scale slicing,
    :mod:`engine.inference.slices`; None: each slice fitted to the model's size).
    """

    def __init__(self, report: ValidationReport, *, min_body_fraction: float = 0.05, cache_size: int = 16,
                 pixel_mm: float | None = None) -> None:
        if not report.usable:
            raise DatasetError(report.error_message())
        self.report = report
        self.min_body_fraction = float(min_body_fraction)
        self.cache_size = int(cache_size)
        self.pixel_mm = float(pixel_mm) if pixel_mm else None
        self._subjects = {s.name: s for s in report.subjects}
        self._cache: OrderedDict[tuple[str, str], NormalisedVolume] = OrderedDict()
        self._usable: dict[str, list[int]] = {}
        self._axis: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._planes: dict[str, tuple[int, int, tuple[float, float]]] = {}   # slice height, width, spacing
        self._bank: dict[tuple[str, str, int], torch.Tensor] = {}

    @classmethod
    def open(cls, root: str | Path, *, seed: int = 0, val_fraction: float = VAL_FRACTION,
             test_fraction: float = TEST_FRACTION, deep: bool = False, min_body_fraction: float = 0.05,
             cache_size: int = 16, pixel_mm: float | None = None, progress: ProgressFn = noop,
             cancel: CancelToken | None = None) -> PairedDataset:
        """Validate ``root`` and open it; DatasetError (listing the problems) when no pair remains.
        ``seed`` and the fractions draw the split of a dataset whose dataset.json lists none."""
        if Path(root).is_file():
            raise DatasetError(f"{root}: is a file; a paired dataset is a folder with one folder per subject "
                               "(DATASET/SUBJECT/T1.nii.gz, …); the fine-tuning wizard and python main.py prepare "
                               "make one from other layouts")
        if not Path(root).is_dir():
            raise DatasetError(f"{root}: no such dataset folder")
        report = validate_dataset(root, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, deep=deep,
                                  progress=progress, cancel=cancel)
        return cls(report, min_body_fraction=min_body_fraction, cache_size=cache_size, pixel_mm=pixel_mm)

    def __getstate__(self) -> dict:          # DataLoader workers start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    # -- subjects ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.report.name

    @property
    def modalities(self) -> list[str]:
        return self.report.modalities

    def subject_names(self, split: str | None = None) -> list[str]:
        """Usable subjects, all or those of one split (``train``, ``val``, ``test``)."""
        if split is None:
            return list(self._subjects)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        return list(self.report.split.get(split, []))

    def sources(self) -> list[str]:
        """The sources its dataset.json names for the usable subjects (site, scanner, template)."""
        return sorted({s.source for s in self.report.subjects if s.source})

    def leave_out(self, source: str) -> PairedDataset:
        """Leave-one-source-out: the same dataset with every subject of ``source`` taken out of the
        train and val splits and made the test split, so a model trained on the result never saw that
        source and is scored on all of it. DatasetError when no subject comes from ``source`` or no
        training subject remains."""
        held = sorted(s.name for s in self.report.subjects if s.source == source)
        root = self.report.root
        if not held:
            known = ", ".join(self.sources()) or "none (its dataset.json gives no subject a source)"
            raise DatasetError(f"{root}: no subject comes from the source {source!r}; its sources: {known}")
        split = {part: [n for n in self.report.split.get(part, []) if n not in held] for part in ("train", "val")}
        if not split["train"]:
            raise DatasetError(f"{root}: leaving out {source!r} leaves no training subject")
        report = replace(self.report, split={**split, "test": held})
        return PairedDataset(report, min_body_fraction=self.min_body_fraction, cache_size=self.cache_size,
                             pixel_mm=self.pixel_mm)

    def subject(self, name: str) -> SubjectInfo:
        try:
            return self._subjects[name]
        except KeyError:
            raise KeyError(f"no usable subject {name!r}; known: {', '.join(self._subjects)}") from None

    def subject_modalities(self, name: str) -> tuple[str, ...]:
        return self.subject(name).modalities

    def anatomy(self, name: str) -> str:
        return self.subject(name).anatomy

    def routes(self, split: str | None = None) -> list[tuple[str, str]]:
        present = {r for s in self.subject_names(split) for r in self.subject(s).routes}
        return [r for r in self.report.routes if r in present]

    # -- volumes and slices ----------------------------------------------------------------
    def volume(self, subject: str, modality: str) -> Volume:
        """The volume in physical units on the subject's grid (the first modality's)."""
        info = self.subject(subject)
        modality = modalities.canonical(modality)
        if modality not in info.files:
            raise KeyError(f"subject {subject!r} has no {modality}; it has {', '.join(info.modalities)}")
        volume = load_volume(info.files[modality])
        mod = modalities.get(modality)
        if not modalities.on_scale(modality, volume.unit):
            raise DatasetError(f"{info.files[modality]}: its values are in {volume.unit}, not {mod.unit}, the {modality} "
                               f"scale the model learns: bring it onto that scale first (for PET, SUV needs the "
                               f"patient's weight, the injected dose and the decay reference)")
        volume = volume.replace(modality=modality, unit=mod.unit)
        if modality in info.resample:
            volume = resample_onto(volume, load_volume(info.files[info.reference]), "resampled onto the subject grid "
                                   "(averaged over each of its voxels)", average=True)
        return volume

    def slice_axis(self, subject: str) -> int:
        """The array axis slices run along (0 = z, 1 = y, 2 = x) for this subject."""
        if subject not in self._axis:
            self.normalised(subject, self.subject(subject).reference)
        return self._axis[subject]

    def normalised(self, subject: str, modality: str) -> NormalisedVolume:
        """[0, 1] array with its Normalisation (docs/evaluation.md) and per-slice body fractions."""
        key = (subject, modalities.canonical(modality))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        volume = self.volume(*key)
        mask = modalities.body_mask(volume.array, key[1])
        norm = modalities.normalisation_for(volume.array, key[1], mask)
        if subject not in self._axis:
            axis = self._axis[subject] = slice_axis(volume.spacing)
            height, width = slices_first(volume.array, axis).shape[1:]
            self._planes[subject] = (int(height), int(width), in_plane_spacing(volume.spacing, axis))
        fraction = slices_first(mask, self._axis[subject]).reshape(mask.shape[self._axis[subject]], -1).mean(axis=1)
        self._count[subject] = int(fraction.shape[0])
        entry = NormalisedVolume(modalities.normalise(volume.array, norm), norm, fraction.astype(np.float32))
        self._cache[key] = entry
        while len(self._cache) > max(self.cache_size, 1):
            self._cache.popitem(last=False)
        return entry

    def num_slices(self, subject: str) -> int:
        if subject not in self._count:
            self.normalised(subject, self.subject(subject).reference)
        return self._count[subject]

    def usable_slices(self, subject: str) -> list[int]:
        """Slice indices where every modality shows enough body (computed once, kept)."""
        if subject not in self._usable:
            fractions = [self.normalised(subject, m).body_fraction for m in self.subject_modalities(subject)]
            keep = np.min(np.stack(fractions), axis=0) >= self.min_body_fraction
            self._usable[subject] = [int(i) for i in np.flatnonzero(keep)]
        return list(self._usable[subject])

    def slice(self, subject: str, modality: str, index: int) -> np.ndarray:
        """One 2-D slice in [0, 1] (float32 copy) along the subject's slice axis."""
        nv = self.normalised(subject, modality)
        stack = slices_first(nv.array, self.slice_axis(subject))
        if not 0 <= index < stack.shape[0]:
            raise IndexError(f"slice {index} is outside 0…{stack.shape[0] - 1} for {subject}/{modality}")
        return np.array(stack[index], dtype=np.float32)

    def placement(self, subject: str, image_size: int) -> Placement:
        """How this subject's slices map onto the model's input (the same for all its modalities)."""
        if subject not in self._planes:
            self.normalised(subject, self.subject(subject).reference)
        height, width, spacing = self._planes[subject]
        return Placement.for_shape(height, width, image_size, spacing, self.pixel_mm)

    def canvas(self, subject: str, modality: str, index: int, image_size: int) -> torch.Tensor:
        """The slice at the model's pixel size on its background canvas: (Hc, Wc) float32 in [0, 1],
        at least ``image_size`` on each side (training crops its ``image_size``² views from it)."""
        key = (subject, modalities.canonical(modality), int(image_size))
        banked = self._bank.get(key)
        if banked is None:
            image = to_canvas(self.slice(subject, modality, index), self.placement(subject, image_size))[0, 0]
            return image.clamp_(0.0, 1.0)
        if not 0 <= index < banked.shape[0]:
            raise IndexError(f"slice {index} is outside 0…{banked.shape[0] - 1} for {subject}/{modality}")
        return banked[index].float()

    def model_slice(self, subject: str, modality: str, index: int, image_size: int) -> torch.Tensor:
        """The slice as the model sees it: the centre (1, image_size, image_size) of its canvas, float32 in [0, 1]."""
        image = self.canvas(subject, modality, index, image_size)
        top, left = (image.shape[0] - image_size) // 2, (image.shape[1] - image_size) // 2
        return image[top:top + image_size, left:left + image_size][None].clone()

    def preload(self, image_size: int, split: str | None = None, progress: ProgressFn = noop,
                cancel: CancelToken | None = None, budget_bytes: int | None = None,
                unloadable: list[Finding] | None = None) -> int:
        """Read every volume of ``split`` once and keep its slices' canvases in memory (float16).

        Training draws thousands of random (subject, modality, slice) triples; without this, each
        draw can reload and re-normalise a whole volume. Stops adding subjects once ``budget_bytes``
        is held (the rest stay lazily loaded). Returns the bytes held.

        With ``unloadable`` (a list), a volume that cannot be read (voxel data damaged past its
        header, which validation reads) adds a finding there and its subject is passed over instead
        of raising, and the subjects past the budget are read once too: training would otherwise stop
        at such a file mid-run. :meth:`without` then takes those subjects out.
        """
        from engine.jobs import Progress, check_cancel

        subjects = self.subject_names(split)
        total = sum(len(self.subject_modalities(s)) for s in subjects)
        done = 0
        held = sum(t.numel() * t.element_size() for t in self._bank.values())
        for subject in subjects:
            banking = budget_bytes is None or held < budget_bytes
            if not banking and unloadable is None:
                break
            for modality in self.subject_modalities(subject):
                check_cancel(cancel)
                try:
                    held += self._bank_slices(subject, modality, image_size) if banking else 0
                    if modality == self.subject_modalities(subject)[-1]:
                        self.usable_slices(subject)            # computed while this subject's volumes are cached
                except DatasetError as exc:
                    if unloadable is None:
                        raise
                    path = self.subject(subject).files[modality]
                    unloadable.append(Finding("unreadable", path, str(exc).removeprefix(f"{path}: "), subject))
                    break
                finally:
                    done += 1
                    progress(Progress(done, total, f"preparing slices of {subject}"))
        return held

    def _bank_slices(self, subject: str, modality: str, image_size: int) -> int:
        """Keep one volume's slice canvases in memory; the bytes added."""
        key = (subject, modality, int(image_size))
        if key in self._bank:
            return 0
        nv = self.normalised(subject, modality)
        stack = slices_first(nv.array, self.slice_axis(subject))
        canvases = to_canvas(np.ascontiguousarray(stack, dtype=np.float32), self.placement(subject, image_size))
        self._bank[key] = canvases[:, 0].clamp_(0.0, 1.0).to(torch.float16)
        return self._bank[key].numel() * 2

    def without(self, findings: list[Finding]) -> PairedDataset:
        """The same dataset, sharing what it has loaded, less the subjects ``findings`` name (out of
        every split), which join its problems; DatasetError when no pair is left."""
        gone = {f.subject for f in findings}
        kept = copy.copy(self)
        kept.report = replace(self.report, subjects=[s for s in self.report.subjects if s.name not in gone],
                              split={part: [n for n in names if n not in gone]
                                     for part, names in self.report.split.items()},
                              problems=[*self.report.problems, *findings])
        if not kept.report.usable:
            raise DatasetError(kept.report.error_message())
        kept._subjects = {s.name: s for s in kept.report.subjects}
        return kept
