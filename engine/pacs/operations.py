"""The four things done with a PACS, whatever its protocol: verify it, query it, retrieve series
from it into the cache, send an exported series to it. A DICOMweb server (one with a URL) is
spoken to by QIDO-RS / WADO-RS / STOW-RS, any other by DIMSE (C-FIND, C-GET or C-MOVE, C-STORE)."""
from __future__ import annotations

from pathlib import Path

from engine.jobs import CancelToken, Progress, ProgressFn, noop
from engine.pacs import dicomweb, dimse
from engine.pacs.cache import Cache
from engine.pacs.choices import METHODS
from engine.pacs.errors import PacsError
from engine.pacs.query import Match, Query
from engine.pacs.sending import SendResult, outgoing
from engine.pacs.servers import Server


def echo(server: Server) -> float:
    """C-ECHO, or a one-study QIDO-RS query; the round trip in seconds. PacsError when it fails."""
    return dicomweb.echo(server) if server.is_dicomweb else dimse.echo(server)


def find(server: Server, query: Query, cancel: CancelToken | None = None) -> list[Match]:
    return (dicomweb if server.is_dicomweb else dimse).find(server, query, cancel)


def method_of(server: Server, method: str = "auto") -> str:
    """The retrieve method: ``wado`` for DICOMweb, ``move`` for a DIMSE server with a move port,
    else ``get``; a method the server cannot do raises ValueError."""
    if method not in METHODS:
        raise ValueError(f"retrieve method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        return "wado" if server.is_dicomweb else "move" if server.move_port else "get"
    if (method == "wado") != server.is_dicomweb:
        kind = "a DICOMweb" if server.is_dicomweb else "a DIMSE"
        raise ValueError(f"server {server.name!r} is {kind} server: it cannot retrieve by {method}")
    return method


def _scaled(whole: ProgressFn, k: int, n: int) -> ProgressFn:
    """Progress of the k-th of n series as progress of the ``whole`` retrieve."""
    def report(progress: Progress) -> None:
        prefix = f"series {k + 1} of {n}: " if n > 1 else ""
        whole(Progress(k + progress.fraction, n, prefix + progress.message))
    return report


def retrieve(server: Server, study_uid: str, series_uids: list[str] | None = None, cache: Cache | None = None,
             method: str = "auto", progress: ProgressFn = noop, cancel: CancelToken | None = None) -> list[Path]:
    """Retrieve the given series of a study (all of its series when None) into ``cache``; returns
    their folders, ready for the DICOM scanner. Instances already cached are not fetched again;
    the cache is pruned to its size limit before and after (these series kept)."""
    method = method_of(server, method)
    cache = (cache or Cache()).of_server(server.data_key)
    if not series_uids:
        found = find(server, Query(level="series", study_uid=study_uid), cancel)
        series_uids = [m.series_uid for m in found if m.series_uid]
        if not series_uids:
            raise PacsError(server.name, f"no series found for study {study_uid}")
    cache.ensure()
    cache.prune(keep={cache.series_dir(study_uid, uid) for uid in series_uids})
    fetch = {"wado": dicomweb.get, "get": dimse.get, "move": dimse.move}[method]
    folders = [fetch(server, study_uid, uid, cache, _scaled(progress, k, len(series_uids)), cancel)
               for k, uid in enumerate(series_uids)]
    cache.prune(keep=set(folders))
    return folders


def send(server: Server, folder: str | Path, progress: ProgressFn = noop,
         cancel: CancelToken | None = None) -> list[SendResult]:
    """Send the DICOM files of ``folder`` (an exported series) by STOW-RS or C-STORE; the result
    per instance (a refused instance is a result, a refused connection a PacsError)."""
    items = outgoing(folder)
    return (dicomweb if server.is_dicomweb else dimse).store(server, items, progress, cancel)
