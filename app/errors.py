"""Turning an exception into a message for the user: what went wrong and, where known, with which
file (no traceback). Qt-free, so the synthesis process uses it too."""
from __future__ import annotations


class UserFacingError(Exception):
    """An error whose message is already written for the user."""


# What bad input, a full disk or too little memory raise: told to the user, the traceback only in
# the log file. Anything else is a bug, worth a line on the terminal too.
EXPECTED = (UserFacingError, ValueError, OSError, MemoryError)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, (UserFacingError, ValueError, FileNotFoundError, PermissionError)):  # VolumeIOError: ValueError
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "not enough memory for this operation; close other volumes or use a smaller one"
    return f"{type(exc).__name__}: {exc}"
