"""DICOMweb with dicomweb-client: QIDO-RS queries (patient level: the studies' patients), WADO-RS
retrieve of a series into the cache one instance at a time (only those it lacks; cancelled between
instances), STOW-RS of DICOM files. Basic auth or a bearer token go in the HTTP session and never in a
message; every failure is a :class:`PacsError` naming the server."""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from engine.jobs import CancelToken, Progress, ProgressFn, noop
from engine.pacs.cache import Cache
from engine.pacs.errors import PacsError, check_cancel
from engine.pacs.query import Match, Query
from engine.pacs.sending import Outgoing, SendResult
from engine.pacs.servers import Server
from engine.pacs.tls import tls_reason

STOW_BATCH = 16                      # instances per STOW-RS request (memory stays small, progress moves)
QIDO_PAGE = 1000                     # matches asked for per QIDO-RS request (a server may send fewer)
MAX_MATCHES = 20_000                 # more is a query to narrow, not a list to show
AS_STORED = (("application/dicom", "*"),)   # WADO-RS: any transfer syntax, so the server need not transcode


class _Session(requests.Session):
    """Sends QIDO-RS wildcards ``*`` and ``?`` as themselves: RFC 3986 allows them in a query, and
    some servers (Orthanc 1.10) do not decode percent-escapes in query values."""

    def send(self, request, **kwargs):
        if request.method == "GET" and "?" in (request.url or ""):
            base, _, query = request.url.partition("?")
            request.url = f"{base}?{query.replace('%2A', '*').replace('%3F', '?')}"
        return super().send(request, **kwargs)


def _matching_value(value: str) -> str:
    """A QIDO-RS matching value with spaces and ``^`` as the one-character wildcard ``?``: the only
    spelling of them that a server which does not decode percent-escapes still matches."""
    return value.replace(" ", "?").replace("^", "?")


@contextlib.contextmanager
def client(server: Server) -> Iterator[DICOMwebClient]:
    """A client of the server for one piece of work; its HTTP connections are closed at the end."""
    with _Session() as session:
        if server.username:
            session.auth = (server.username, server.password)
        elif server.token:
            session.headers["Authorization"] = f"Bearer {server.token}"
        web = DICOMwebClient(url=server.url.rstrip("/"), session=session, timeout=server.timeout_s)
        web.set_http_retry_params(retry=False)       # an error (or a cancel) is reported at once
        yield web


@contextlib.contextmanager
def _errors(server: Server, service: str) -> Iterator[None]:
    """Turn the HTTP stack's errors into one line naming the server (never the credentials)."""
    try:
        yield
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            raise PacsError(server.name, f"{service}: the server refused our credentials (HTTP {code})") from None
        reason = exc.response.reason if exc.response is not None else ""
        raise PacsError(server.name, f"{service} failed (HTTP {code} {reason})".rstrip()) from None
    except requests.exceptions.SSLError as exc:
        raise PacsError(server.name, f"TLS problem with {server.url}: {tls_reason(exc)} (is the server's "
                                     "certificate valid and trusted here, is it https?)") from None
    except requests.Timeout:
        raise PacsError(server.name, f"{service}: no answer from {server.url} within {server.timeout_s:g} s") from None
    except requests.ConnectionError:
        raise PacsError(server.name, f"no DICOMweb server answered at {server.url} (is it running, is the URL "
                                     "right?)") from None
    except (requests.exceptions.InvalidJSONError, ValueError):     # not JSON, a multipart body that is not one
        raise PacsError(server.name, f"{service}: the server's answer could not be read as DICOMweb") from None
    except requests.RequestException as exc:
        raise PacsError(server.name, f"{service} failed ({type(exc).__name__})") from None


def _paged(server: Server, search, cancel: CancelToken | None = None, cap: int | None = MAX_MATCHES) -> list[Dataset]:
    """Every match of a QIDO-RS ``search`` (called with ``offset`` and ``limit``), page by page until
    an empty page — asking for all remaining pages at once never ended with a server that ignores
    ``offset`` — with a cancel check between pages. A page bringing nothing new is the end when what
    came so far is less than one page asked for (a server that sent everything at once), else a
    PacsError (it ignores ``offset``: the listing would be incomplete); so are an answer that is not
    DICOM JSON and more than ``cap`` matches (a query to narrow)."""
    found: list[Dataset] = []
    seen: set[str] = set()
    while True:
        check_cancel(server.name, cancel)
        with _errors(server, "QIDO-RS"):
            page = search(offset=len(found), limit=QIDO_PAGE)
        try:
            new = {json.dumps(item, sort_keys=True): item for item in page}
            datasets = [Dataset.from_json(item) for key, item in new.items() if key not in seen]
        except (TypeError, ValueError, AttributeError, KeyError):
            raise PacsError(server.name, "QIDO-RS: the answer is not a list of DICOM JSON objects") from None
        if not datasets:
            if new and len(found) >= QIDO_PAGE:
                raise PacsError(server.name, f"QIDO-RS: the server sent the same matches again for offset {len(found)} "
                                             "(it ignores offset), so the listing would be incomplete")
            return found
        seen.update(new)
        found += datasets
        if cap is not None and len(found) > cap:
            raise PacsError(server.name, f"QIDO-RS: more than {cap} matches; narrow the query (a name, "
                                         "an ID, a date range)")


def _search(server: Server, level: str, keys: dict[str, str], cancel: CancelToken | None = None) -> list[Dataset]:
    filters = {k: _matching_value(v) for k, v in keys.items() if v}
    fields = [k for k, v in keys.items() if not v]
    with client(server) as web:
        search = web.search_for_series if level == "series" else web.search_for_studies
        return _paged(server, lambda **page: search(search_filters=filters, fields=fields, **page), cancel)


def echo(server: Server) -> float:
    """A one-study QIDO-RS query, to check the URL and the credentials; the round trip in seconds."""
    started = time.perf_counter()
    with client(server) as web, _errors(server, "QIDO-RS"):
        web.search_for_studies(limit=1, fields=["StudyInstanceUID"])
    return time.perf_counter() - started


def find(server: Server, query: Query, cancel: CancelToken | None = None) -> list[Match]:
    """QIDO-RS at the query's level; a patient-level query lists the patients of the matching studies."""
    if query.level != "patient":
        return [Match.from_dataset(query.level, ds) for ds in _search(server, query.level, query.keys(), cancel)]
    keys = Query(level="study", patient_name=query.patient_name, patient_id=query.patient_id).keys()
    patients: dict[tuple[str, str], Match] = {}
    for ds in _search(server, "study", keys, cancel):
        match = Match.from_dataset("patient", ds)
        patients.setdefault((match.patient_id, match.patient_name), match)
    return list(patients.values())


def instances(server: Server, study_uid: str, series_uid: str, cancel: CancelToken | None = None) -> list[str]:
    with client(server) as web:
        found = _paged(server, lambda **page: web.search_for_instances(study_uid, series_uid, fields=["SOPInstanceUID"],
                                                                        **page), cancel, cap=None)
    try:
        return [str(ds.SOPInstanceUID) for ds in found]
    except AttributeError:
        raise PacsError(server.name, "QIDO-RS: an instance of the answer has no SOPInstanceUID") from None


def _encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def get(server: Server, study_uid: str, series_uid: str, cache: Cache, progress: ProgressFn = noop,
        cancel: CancelToken | None = None) -> Path:
    """Retrieve one series by WADO-RS into ``cache``; returns the series folder."""
    wanted = instances(server, study_uid, series_uid, cancel)
    if not wanted:
        raise PacsError(server.name, f"series {series_uid} has no instances there")
    before = cache.cached(study_uid, series_uid)
    missing = cache.missing(study_uid, series_uid, wanted, before)
    total, done = len(wanted), len(wanted) - len(missing)
    progress(Progress(done, total, f"{done} of {total} instances already cached"))
    with client(server) as web, cache.receiving(study_uid, series_uid) if missing else contextlib.nullcontext():
        for sop_uid in missing:
            check_cancel(server.name, cancel)
            with _errors(server, "WADO-RS"):
                ds = web.retrieve_instance(study_uid, series_uid, sop_uid, media_types=AS_STORED)
            cache.write(study_uid, series_uid, sop_uid, _encoded(ds))
            done += 1
            progress(Progress(done, total, f"received {done} of {total} instances"))
    return cache.settle(study_uid, series_uid, wanted, before)


def _stow_results(response: Dataset, batch: list[Outgoing]) -> list[SendResult]:
    stored = {str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])}
    failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0) or 0)
              for item in response.get("FailedSOPSequence", [])}
    results = []
    for o in batch:
        if o.sop_uid in failed:
            results.append(SendResult(o.path, o.sop_uid, False, f"failure reason 0x{failed[o.sop_uid]:04X}"))
        else:
            ok = o.sop_uid in stored
            results.append(SendResult(o.path, o.sop_uid, ok, "stored" if ok else "not in the server's answer"))
    return results


def store(server: Server, outgoing: list[Outgoing], progress: ProgressFn = noop,
          cancel: CancelToken | None = None) -> list[SendResult]:
    """STOW-RS in batches of :data:`STOW_BATCH`; the result per instance."""
    results: list[SendResult] = []
    with client(server) as web:
        for start in range(0, len(outgoing), STOW_BATCH):
            check_cancel(server.name, cancel)
            batch = outgoing[start:start + STOW_BATCH]
            datasets = [pydicom.dcmread(o.path) for o in batch]
            with _errors(server, "STOW-RS"):
                response = web.store_instances(datasets)
            results.extend(_stow_results(response, batch))
            progress(Progress(len(results), len(outgoing), f"sent {len(results)} of {len(outgoing)} instances"))
    return results
