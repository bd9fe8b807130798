"""Turning an exception into a message for the user: what went wrong and, where known, with which
file (no traceback). Qt-free, so the synthesis process uses it too."""
from __future__ import annotations

import linecache
import sys
from pathlib import Path

_PROJECT = Path(__file__).resolve().parents[1]


class UserFacingError(Exception):
    """An error whose message is already written for the user."""


def is_expected(exc: BaseException) -> bool:
    """What bad input, a full disk or too little memory raise: told to the user, the traceback only
    in the log file. A ValueError counts only when a ``raise`` in the project's own code made it, with
    a message for the user; one from inside numpy, torch or another library is a bug, as is anything else
    (worth a line on the terminal too, and its type in the message)."""
    if isinstance(exc, (UserFacingError, OSError, MemoryError, *_engine_errors())):
        return True
    return isinstance(exc, ValueError) and _raised_by_the_project(exc)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "not enough memory for this operation; close other volumes or use a smaller one"
    if isinstance(exc, (FileNotFoundError, PermissionError)) or is_expected(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _engine_errors() -> tuple[type, ...]:
    """The engine's error types for bad input, when the engine's I/O is loaded (without it, none of
    them can have been raised; importing it here would load SimpleITK into the window's process)."""
    module = sys.modules.get("engine.io.errors")
    return (module.VolumeIOError,) if module is not None else ()


def _raised_by_the_project(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return True                             # made, not raised: its text was written for a reader
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code.co_filename
    where = Path(code).resolve()
    if not where.is_relative_to(_PROJECT) or ".venv" in where.relative_to(_PROJECT).parts:
        return False
    return linecache.getline(code, tb.tb_lineno).lstrip().startswith("raise")   # not a C library's error
