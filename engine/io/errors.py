"""What goes wrong reading or writing volumes: an error that names the file and the problem."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_PROBLEM = 600                 # characters of a problem shown (a damaged header can hold pages of text)


def one_line(text: str) -> str:
    """``text`` on one line (a damaged file's text may hold line breaks), at most :data:`MAX_PROBLEM` long."""
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_PROBLEM else text[:MAX_PROBLEM - 1] + "…"


class VolumeIOError(ValueError):
    """A file or folder could not be read or written; ``str()`` names the path and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


@dataclass(frozen=True)
class Skipped:
    """A file left out while scanning (not an image, truncated, …), with the reason; ``not_an_image``:
    it holds no image volume to read at all (an RT structure set, a report, a duplicate of an image
    already found), rather than an image that could not be read."""

    path: str
    reason: str
    not_an_image: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", one_line(self.reason))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def special_file(path: str | Path) -> str | None:
    """What ``path`` is when it is a FIFO, a device or a socket (opening one can block for ever or
    read without end), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None
