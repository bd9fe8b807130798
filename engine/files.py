"""Reading untrusted files (a model folder's, a card): JSON of bounded size and depth, safetensors
whose header the library validates. Every failure is a ``ValueError`` naming the file."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 << 20        # config, card and tokenizer files are kilobytes to a few megabytes
SAMPLED_BLOCKS, BLOCK_BYTES = 16, 1 << 16      # a sampled digest: what tells two same-size files apart cheaply


def file_digest(path: str | Path, sampled: bool = False) -> str:
    """SHA-256 of a file, read in blocks (``sampled``: of :data:`SAMPLED_BLOCKS` blocks spread evenly
    over it, where the head and tail of same-shape volumes are alike: background); OSError as raised."""
    import hashlib

    digest = hashlib.sha256()
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        if sampled:
            for k in range(SAMPLED_BLOCKS):
                f.seek(max(0, (size - BLOCK_BYTES) * k // max(1, SAMPLED_BLOCKS - 1)))
                digest.update(f.read(BLOCK_BYTES))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_json(file: str | Path, what: str = "JSON file") -> Any:
    """The parsed JSON of ``file``; ValueError naming it when it is too large, unreadable, not JSON
    or nested too deeply."""
    file = Path(file)
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise ValueError(f"{file}: not a readable {what} ({exc})") from exc
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{file}: {size >> 20} MiB is too large for a {what} (at most {MAX_JSON_BYTES >> 20} MiB)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:        # ValueError: not JSON, not UTF-8, an integer of over 4300 digits
        raise ValueError(f"{file}: not a readable {what} ({exc})") from exc
    except RecursionError:
        raise ValueError(f"{file}: not a readable {what} (nested too deeply)") from None


@contextmanager
def open_safetensors(file: str | Path) -> Iterator[Any]:
    """safetensors' ``safe_open`` on the CPU; a damaged or lying header (offsets past the end, a
    header length larger than the file) is a ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            yield handle
    except SafetensorError as exc:
        raise ValueError(f"{file}: not a valid safetensors file ({exc})") from None
