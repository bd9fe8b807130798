"""What goes wrong reading or writing volumes: an error that names the file and the problem."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class VolumeIOError(ValueError):
    """A file or folder could not be read or written; ``str()`` names the path and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Skipped:
    """A file left out while scanning (not an image, truncated, …), with the reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"
