"""The run manifest of a cohort: JSON lines in the output folder, one record per item event
(``started``, ``done``, ``skipped``, ``failed``, ``not-applicable``: item, status, output, seconds, error, the input's and
the settings' fingerprints). Each process appends to its own part while it runs
(``cohort-manifest.rank-R.jsonl``, flushed line by line); at the end rank 0 merges every part into
``cohort-manifest.jsonl`` (the latest record of each item, written atomically). A rerun reads both, so
a killed run resumes: an item whose last record is ``done`` (or ``skipped``) with the same
fingerprints and output, whose output and sidecar are still there, is skipped; one left ``started`` is redone."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "cohort-manifest.jsonl"
PART_GLOB = "cohort-manifest.rank-*.jsonl"
FINISHED = ("done", "skipped")


def part_path(out: Path, rank: int) -> Path:
    return Path(out) / f"cohort-manifest.rank-{rank}.jsonl"


def now() -> str:
    """UTC time with microseconds: records of several parts sort by it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def input_fingerprint(files: Iterable[str], root: str | Path) -> str:
    """Whether an input changed: the hash of each file's path relative to the cohort's ``root``, its
    size and modification time (a study moved or mounted elsewhere is the same input)."""
    from engine.cohort.items import relative

    stats: list[tuple[str, int | None, int | None]] = []
    for f in files:
        try:
            st = os.stat(f)
            stats.append((relative(f, root), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((relative(f, root), None, None))
    return digest(stats)


def model_fingerprint(folder: str | Path) -> str:
    """Whether a model folder changed: its files' names (relative to it), sizes and times, not their
    bytes nor where the folder is (a model moved with its times kept is the same model)."""
    folder = Path(folder)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and "onnx" not in p.relative_to(folder).parts)
    return input_fingerprint(files, folder)


def _records(path: Path) -> list[dict]:
    """The records of one JSON-lines file; a torn last line (a kill mid-write) is ignored."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "item" in record:
            records.append(record)
    return records


def read_state(out: str | Path) -> dict[str, dict]:
    """The latest record of each item, from the merged manifest and any parts left beside it."""
    out = Path(out)
    records = _records(out / MANIFEST)
    for part in sorted(out.glob(PART_GLOB)):
        records.extend(_records(part))
    state: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: str(r.get("time", ""))):
        state[record["item"]] = record
    return state


def finished(record: Mapping | None, fingerprint: Mapping[str, str], out: Path, output: str) -> bool:
    """Whether an item's last ``record`` says it is done with these fingerprints into the item's
    ``output`` (a changed output column is redone), that output and its sidecar still there."""
    if not record or record.get("status") not in FINISHED:
        return False
    if any(record.get(k) != v for k, v in fingerprint.items()):
        return False
    if not output or record.get("output") != output:
        return False
    path = Path(out) / output
    from engine.inference import sidecar_path

    return path.exists() and sidecar_path(path).exists()


class PartWriter:
    """Appends this process's records to its part, each line flushed to the disk as it is written."""

    def __init__(self, out: Path, rank: int) -> None:
        self.path = part_path(out, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> dict:
        record = {"time": now(), **record}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        return record

    def close(self) -> None:
        self._file.close()


def merge(out: str | Path) -> Path:
    """Write the latest record of each item (sorted by item) to ``cohort-manifest.jsonl`` atomically,
    then remove the parts it holds."""
    from engine.atomic import atomic_file

    out = Path(out)
    parts = sorted(out.glob(PART_GLOB))
    state = read_state(out)
    path = out / MANIFEST
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(state[k], ensure_ascii=False) + "\n" for k in sorted(state)),
                       encoding="utf-8")
    for part in parts:
        part.unlink()
    return path
