"""What the user exports, written atomically: a volume (NIfTI / MHA / DICOM derived series, under
a proposed name that says what it is; the engine's writers mark a synthetic volume in the file's
header), optionally anonymised to the DICOM Basic Profile (engine.io.deidentify), a screenshot PNG,
the metrics CSV. The engine's I/O (SimpleITK) is imported on first use, so the window opens without it."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtGui import QImage

from app.state.workspace import Document
from engine.jobs import CancelToken, ProgressFn, noop

if TYPE_CHECKING:
    from app.state.comparison import ComparisonResult
    from engine.io import Anonymiser

VOLUME_FILTERS = {
    "NIfTI (*.nii.gz)": ".nii.gz",
    "MetaImage (*.mha)": ".mha",
    "DICOM derived series (folder)": "",
}


def export_path(chosen: str, name_filter: str) -> Path:
    """The path to write for a file-dialog answer: the filter's suffix added when missing."""
    path = Path(chosen)
    suffix = VOLUME_FILTERS.get(name_filter, "")
    if suffix and not path.name.lower().endswith(suffix):
        path = path.with_name(path.name + suffix)
    return path


BURNED_IN_QUESTION = ("The series this volume comes from says its pixels carry burned-in annotation "
                      "(BurnedInAnnotation YES). An anonymised export removes names, IDs, dates and descriptions "
                      "from the header, but it does not change the pixels: text burned into the image may still "
                      "identify the patient.\n\nExport it anonymised anyway?")


def proposed_name(doc: Document, anonymised: bool = False) -> str:
    """The file name Export offers: what the volume is — ``CT_synthetic_from_CBCT`` (``…_2`` for the
    second of the same kind) — or the stem of the file or series it was loaded from; anonymised, never
    the source's name: ``CT_anonymised``."""
    volume = doc.volume
    if anonymised and not doc.synthetic:
        return f"{volume.modality or 'volume'}_anonymised"
    if anonymised:
        return f"{proposed_name(doc)}_anonymised"
    if not doc.synthetic:
        source = Path(doc.volume.source).name if doc.volume.source else ""
        if source and doc.volume.name == source:            # a file's: its name without its suffixes
            return source.split(".")[0] or "volume"
        # a series': its whole name, made a file name (a dot would read as a suffix: 3.0mm → 3_0mm)
        return re.sub(r'[\\/:*?"<>|.]+', "_", doc.title).strip(" _") or "volume"
    made_from = f"_from_{volume.derived_from}" if volume.derived_from else ""
    number = f"_{doc.ordinal}" if doc.ordinal > 1 else ""
    return f"{volume.modality or 'volume'}_synthetic{made_from}{number}"


def asks_for_patient(doc: Document, path: str | Path, anonymised: bool) -> bool:
    """Whether an export of ``doc`` to ``path`` may name its patient: a DICOM series (a planning system or
    PACS files it by its PatientID), not anonymised, of a volume that names none (read from a NIfTI, MHA
    or NRRD file, or synthesized from one)."""
    from engine import io
    from engine.io import names_no_patient

    return not anonymised and not io.file_kind(Path(path)) and names_no_patient(doc.volume)


def export_volume(doc: Document, path: str | Path, progress: ProgressFn = noop,
                  cancel: CancelToken | None = None, anonymiser: Anonymiser | None = None,
                  patient: tuple[str, str] = ("", "")) -> Path:
    """Write a document's volume, described as synthesis described it (route, model, steps, the OOD flag:
    the provenance's ``Summary``) or else by its title (a scan's as ``converted from …``, as the
    ``convert`` command says it, so a PACS never lists the export as the acquired series; the writers
    add a synthetic one's marking),
    and beside a synthetic one its provenance (``NAME.json``: model, route, settings, warnings); with an ``anonymiser`` (engine.io.deidentify.Anonymiser, one per app session) de-identified. Never
    over the files it was read or made from (a DICOM series export into the source series' folder
    would replace the acquired scan). ``patient`` (PatientID, PatientName) names the patient of a
    volume that names none (:func:`asks_for_patient`)."""
    from engine import io
    from engine.inference import save_described
    from engine.io import named_patient

    made_from = [d.volume.source for d in (doc, doc.source) if d is not None and d.volume.source]
    io.check_output(path, inputs=tuple(made_from))
    record = doc.volume.provenance
    described = record.get("Summary") or (doc.title if doc.volume.synthetic else f"converted from {doc.title}")
    written, _ = save_described(path, lambda: io.save(named_patient(doc.volume, *patient), path, description=described,
                                                      anonymise=anonymiser or False, progress=progress, cancel=cancel),
                                record, anonymised=bool(anonymiser))
    return written


def anonymised_export_session() -> Anonymiser:
    """A new export session for anonymised exports (the same source UIDs map to the same new ones in it)."""
    from engine.io import Anonymiser

    return Anonymiser()


def says_burned_in(doc: Document) -> bool:
    """Whether the document's DICOM source says its pixels carry burned-in annotation."""
    from engine.io import burned_in

    return burned_in(doc.volume)


def save_png(image: QImage, path: str | Path) -> Path:
    from engine.atomic import atomic_file

    path = Path(path)
    if image.isNull():
        raise ValueError(f"{path}: there is nothing to capture")
    with atomic_file(path) as tmp:
        if not image.save(str(tmp), "PNG"):
            raise OSError(f"{path}: the PNG could not be written")
    return path


def write_metrics_csv(result: ComparisonResult, path: str | Path) -> Path:
    """One row for the whole image, one inside the body mask (and both for the do-nothing baseline
    when the source is known), one per slice (scored axis)."""
    from engine.atomic import atomic_file

    path = Path(path)
    ev = result.evaluation
    names = (result.synthetic.name, result.reference.name)
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["scope", "slice", "psnr_db", "ssim_x100", "mae", "unit", "synthetic", "reference"])
        for scope, scores in (("whole", ev.whole), ("body", ev.body)):
            if scores is not None:
                writer.writerow([scope, "", scores.psnr, scores.ssim, scores.mae, ev.unit, *names])
        base = result.baseline                # the do-nothing baseline: the source, histogram-matched
        for scope, scores in ((("baseline whole", base.whole), ("baseline body", base.body)) if base else ()):
            if scores is not None:
                writer.writerow([scope, "", scores.psnr, scores.ssim, scores.mae, ev.unit,
                                 f"{result.source.name} (histogram-matched)", names[1]])
        per = ev.per_slice
        for k in range(len(per["psnr"])):
            writer.writerow(["slice", k, float(per["psnr"][k]), float(per["ssim"][k]), float(per["mae"][k]),
                             ev.unit, *names])
    return path
