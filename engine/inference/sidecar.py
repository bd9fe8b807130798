"""What a synthetic volume was made from and how, as the JSON sidecar written beside it: the model,
the route, the settings, the input (named inside the folder it was given in, never by the folders
above it: a sidecar travels with its output, and those folders may hold a patient's name), what
loading the input assumed or changed, and every warning the checks gave. ``cohort`` writes one per
item, ``synthesize`` one per output: ``NAME.nii.gz`` → ``NAME.json``, and a DICOM series folder
``NAME`` → ``NAME.json`` beside it."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.inference.checked import Checks
    from engine.io.volume import Volume

GENERATOR = "SynerMedGen Studio"
NAMING_THE_INPUT = ("SourceFile", "SourceSeries", "SourceName")     # left out of an anonymised export's sidecar


def folders_cut(path: str | Path, root: str | Path) -> Callable[[Iterable[str]], list[str]]:
    """A function giving texts (notes naming a slice's file, a 4-D file's ``FILE#INDEX``) with the
    folders above ``root``, and above ``path`` (an input, maybe outside it), cut from the absolute
    paths they name, only where a path begins."""
    def cut_first(*folders: Path) -> list[str]:               # the longer first; never a drive's root
        return sorted({os.path.join(str(f), "") for f in folders if len(f.parts) > 1}, key=len, reverse=True)
    path = Path(path)            # the root's folders first: a path inside it stays relative to the root
    prefixes = (cut_first(Path(root).absolute(), Path(root).resolve())
                + cut_first(path.absolute().parent, path.resolve().parent))
    starts = [re.compile(r"(?<![\w.~/\\-])" + re.escape(prefix)) for prefix in prefixes]   # where a path begins

    def local(texts: Iterable[str]) -> list[str]:
        cut = []
        for text in texts:
            for start in starts:
                text = start.sub("", text)
            cut.append(text)
        return cut
    return local


def provenance(synth, checks: Checks, settings, volume: Volume, result: Volume, source_file: str | None, *,
               description: str, local: Callable[[Iterable[str]], list[str]] = list) -> dict[str, Any]:
    """The sidecar of ``result``, made by ``synth`` from ``volume`` with ``settings`` after ``checks``;
    ``description`` is the one the writers put in the output's header (``Summary``: route, model,
    steps, the OOD flag — what an export of ``result`` from the app writes too); ``source_file`` names
    the input (None: not named, as in an anonymised export), with the series (its whole UID) and the
    name of the volume taken from it (a split series' part: ``… [echo 2]``); a synthetic input is
    said (``SourceSynthetic``); ``local`` cuts the folders above it from the notes (:func:`folders_cut`)."""
    from engine.inference.model_card import route_name
    from engine.inference.pipeline import RESEARCH_NOTE
    from engine.io.synthetic_mark import label
    from engine.version import version

    series = (volume.dicom or {}).get("SeriesInstanceUID", "")

    return {
        "Description": RESEARCH_NOTE,
        "Synthetic": True,
        "GeneratedBy": {"Name": GENERATOR, "Version": version()},
        "Model": synth.name,
        "Route": route_name(checks.source, checks.target),
        "Summary": description,
        "SourceModality": checks.source,
        **({"SourceFile": source_file} if source_file else {}),
        **({"SourceSeries": series} if series else {}),
        **({"SourceName": volume.name} if volume.name else {}),
        **({"SourceSynthetic": label(volume)} if volume.synthetic else {}),
        "InputNotes": local(volume.notes),          # what loading assumed or changed (interpolated slices, …)
        "Settings": settings.to_dict(),
        "Device": synth.execution_device,
        "Precision": synth.precision,
        "InputWarnings": local(checks.input_warnings),
        "BenchmarkWarnings": local(checks.benchmark_warnings),
        "Notes": local(result.notes),
        **({"Identified": checks.identified} if checks.identified else {}),
        **({"SourceNote": local([checks.source_note])[0]} if checks.source_note else {}),
    }


def sidecar_path(output: str | Path) -> Path:
    """The JSON sidecar beside an output: ``NAME.nii.gz`` → ``NAME.json``, a DICOM folder ``NAME`` → ``NAME.json``."""
    output = Path(output)
    name = output.name
    stem = name[:-len(".nii.gz")] if name.endswith(".nii.gz") else output.stem
    return output.with_name(stem + ".json")


def check_sidecar(output: str | Path) -> None:
    """ValueError when the sidecar of ``output`` would replace a file this app did not write (a real
    scan's BIDS sidecar beside the output's name): refused before any work."""
    path = sidecar_path(output)
    if path.exists() and not _ours(_read(path)):
        raise ValueError(f"{path}: exists and was not written by {GENERATOR}; the provenance of {Path(output).name} "
                         "would replace it: choose another output name")


def _read(path: Path) -> bytes:
    """``path``'s bytes (none when it is missing or cannot be read)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _ours(text: bytes) -> bool:
    """Whether ``text`` is a sidecar this app wrote."""
    try:
        return json.loads(text.decode("utf-8")).get("GeneratedBy", {}).get("Name") == GENERATOR
    except (ValueError, AttributeError):
        return False


def save_described(output: str | Path, write: Callable[[], Path], record: Mapping[str, Any] | None,
                   anonymised: bool = False) -> tuple[Path, Path | None]:
    """(the output ``write`` writes, its sidecar): the sidecar an earlier output left at this name goes
    first (one this app wrote; another program's is refused, :func:`check_sidecar`), so a process
    killed between the two files never leaves the new output described by the old one — and comes
    back when ``write`` fails (the writers are atomic: the earlier output is still there); then the
    output, then ``record`` beside it (None: the output is no synthetic, none is written)."""
    from engine.atomic import atomic_file

    if record:
        check_sidecar(output)
    old = sidecar_path(output)
    earlier = _read(old)                                 # b"" when there is none
    ours = _ours(earlier)
    if ours:
        old.unlink(missing_ok=True)
    try:
        written = write()
    except BaseException:
        if ours and not old.exists():
            with atomic_file(old) as tmp:
                tmp.write_bytes(earlier)
        raise
    return written, (write_sidecar(output, record, anonymised) if record else None)


def write_sidecar(output: str | Path, record: Mapping[str, Any], anonymised: bool = False) -> Path:
    """Write (atomically) the sidecar of ``output``, ``anonymised`` without what names the input; its path."""
    from engine.atomic import atomic_file

    path = sidecar_path(output)
    kept = {k: v for k, v in record.items() if not (anonymised and k in NAMING_THE_INPUT)}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(kept, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path
