"""The one error type of PACS work: a one-line message naming the server and what went wrong
(server down, AE title or credentials refused, association rejected, a failed query); a cancelled
transfer raises :class:`PacsCancelled`, which is also the engine's ``Cancelled``."""
from __future__ import annotations

from engine.jobs import Cancelled, CancelToken


class PacsError(ConnectionError):
    """Talking to a PACS failed; ``str()`` is one line that names the server."""

    def __init__(self, server: str, problem: str) -> None:
        self.server = server
        self.problem = problem
        super().__init__(f"PACS {server!r}: {problem}")

    def __str__(self) -> str:
        return f"PACS {self.server!r}: {self.problem}"


class PacsCancelled(PacsError, Cancelled):
    """A transfer was cancelled by the user; what it had completed stays, nothing half-written."""

    def __init__(self, server: str, problem: str = "cancelled") -> None:
        super().__init__(server, problem)


def check_cancel(server: str, cancel: CancelToken | None) -> None:
    """Raise :class:`PacsCancelled` naming ``server`` once ``cancel`` is set."""
    if cancel is not None and cancel.cancelled:
        raise PacsCancelled(server)
