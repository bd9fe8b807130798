"""DIMSE with pynetdicom: C-ECHO, C-FIND (patient / study / series, and the instances of a series),
C-GET and C-MOVE of a series into the cache (only the instances it does not hold yet), C-STORE of
DICOM files. Every failure is a :class:`PacsError` naming the server; a failure the server answers
releases the association, a cancel or a lost connection aborts it (a cancel raises
:class:`PacsCancelled`; whole instances stay in the cache)."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time, unseen by mypy
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category

from engine.jobs import CancelToken, Progress, ProgressFn, noop
from engine.pacs.cache import Cache
from engine.pacs.errors import PacsCancelled, PacsError, check_cancel
from engine.pacs.query import Match, Query, identifier
from engine.pacs.sending import Outgoing, SendResult
from engine.pacs.servers import Server
from engine.pacs.tls import check_handshake, client_context, listener_context

# what we accept when a PACS sends us instances: uncompressed, and the compressed syntaxes our reader decodes
RECEIVE_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
                    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"]
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")  # explicit LE, implicit LE, explicit BE
STORAGE_CLASSES = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]      # 120: room for one Q/R context
logging.getLogger("pynetdicom").setLevel(logging.WARNING)    # its INFO / DEBUG lines are not the user's concern

_PENDING = (0xFF00, 0xFF01)
NONE_ACCEPTED = "the server accepted none of the services we asked for"
CANCEL_POLL_S = 0.05                 # how soon a cancel aborts a C-GET / C-MOVE
STALL_TIMEOUTS = 10                  # a C-GET / C-MOVE with nothing from the PACS for this many timeouts is stopped
STOP_WAIT_S = 10.0                   # for our storage SCP's associations to end once aborted
_CANCEL_STATUS = 0xFE00
_REFUSED = 0xA700                    # "out of resources": what we answer a C-STORE once cancelled
_NOT_ASKED_FOR = 0xC000              # "cannot understand": an instance of another series than the one retrieved


def _ae(server: Server, long_running: bool = False) -> AE:
    """Our AE; ``long_running`` (a C-GET or C-MOVE) waits for each of the PACS's responses without a
    limit, since a PACS may send no pending response while it moves a large series (a cancel, or a
    PACS silent for 10 timeouts, aborts it: :func:`_watched`)."""
    ae = AE(ae_title=server.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = server.timeout_s
    if long_running:
        ae.dimse_timeout = ae.network_timeout = None
    return ae


class NothingAccepted(PacsError):
    """The server took the association but none of the presentation contexts asked for."""


class FailedStatus(PacsError):
    """The server answered a request with a failure: the association is still sound (released)."""


def _refusal(server: Server, assoc, answers: list) -> str:
    """Why an association was not established, in the user's words."""
    rejection = next((p for p in answers if getattr(p, "result", None) in (0x01, 0x02)), None)
    if rejection is not None:
        reason = str(rejection.reason_str)
        if "Called AE" in reason:
            return f"the server at {server.host}:{server.port} does not answer to AE title {server.ae_title!r}"
        if "Calling AE" in reason:
            return (f"the server does not know our AE title {server.calling_ae!r}; "
                    "register it at the PACS or change the calling AE title")
        return f"association rejected ({rejection.result_str}: {reason})"
    if any(getattr(p, "result", None) == 0x00 for p in answers):
        return NONE_ACCEPTED
    return (f"no DICOM association with {server.host}:{server.port}: nothing listens there, or it did not answer "
            f"within {server.timeout_s:g} s (is it running, is the port right?)")


@contextlib.contextmanager
def association(server: Server, contexts: Sequence[tuple[str, list[str] | None]], *, roles: Sequence[str] = (),
                handlers: Sequence = (), long_running: bool = False) -> Iterator:
    """An established association asking for ``contexts`` ((abstract syntax, transfer syntaxes or
    None for the defaults)) with the SCP role for ``roles``; released at the end and after a failure
    the server answered (:class:`FailedStatus`), aborted on any other error (a cancel, a lost connection).
    ``long_running``: no DIMSE or network timeout (see :func:`_ae`)."""
    ae = _ae(server, long_running)
    for abstract, syntaxes in contexts:
        if syntaxes:
            ae.add_requested_context(abstract, syntaxes)
        else:
            ae.add_requested_context(abstract)
    answers: list = []
    all_handlers = [(evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive)), *handlers]
    secure = None
    if server.tls:
        context = client_context(server)
        check_handshake(server, context)           # a refused certificate said in words, not as "no answer"
        secure = (context, server.host)
    try:
        assoc = ae.associate(server.host, server.port, ae_title=server.ae_title,
                             ext_neg=[build_role(uid, scp_role=True) for uid in roles] or None,
                             tls_args=secure, evt_handlers=all_handlers)
    except OSError as exc:              # a host name that does not resolve, no route to it
        raise PacsError(server.name, f"cannot reach {server.host}:{server.port} ({exc.strerror or exc}): is the host "
                                     "name or address right?") from None
    if not assoc.is_established:
        problem = _refusal(server, assoc, answers)
        raise (NothingAccepted if problem == NONE_ACCEPTED else PacsError)(server.name, problem)
    try:
        yield assoc
    except FailedStatus:
        assoc.release()
        raise
    except BaseException:
        assoc.abort()
        raise
    else:
        assoc.release()


def status_text(code: int, server: Server | None = None) -> str:
    """A DIMSE status as the user reads it: its code, category and, for the failures met in practice,
    what it means (the move destination unknown, out of resources…)."""
    meaning = {
        0xA801: (f"the PACS does not know our AE title {server.calling_ae!r} as a C-MOVE destination: register it "
                 "there with this computer's address and move port, or use C-GET" if server else
                 "move destination unknown"),
        0xA700: "refused: out of resources", 0xA701: "out of resources: could not count the matches",
        0xA702: "out of resources: could not send every image", 0xA900: "the request does not match the service",
        0xA7FF: "refused: out of resources"}.get(code)
    return f"status 0x{code:04X} ({code_to_category(code)}{f': {meaning}' if meaning else ''})"


def _check(server: Server, service: str, status: Dataset | None) -> int:
    """The status code of a response; PacsError for a dropped connection or a failure."""
    if status is None or "Status" not in status:
        raise PacsError(server.name, f"{service}: the server sent no answer (connection lost or timed out)")
    code = int(status.Status)
    if code not in _PENDING and code != 0x0000 and code_to_category(code) not in ("Warning", "Cancel"):
        comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
        raise FailedStatus(server.name,
                           f"{service} failed with {status_text(code, server)}{comment}")
    return code


def echo(server: Server) -> float:
    """C-ECHO; the round trip in seconds."""
    started = time.perf_counter()
    with association(server, [(Verification, None)]) as assoc:
        _check(server, "C-ECHO", assoc.send_c_echo())
    return time.perf_counter() - started


def _answers(server: Server, assoc, model: str, keys: dict[str, str], level: str,
             cancel: CancelToken | None) -> list[Dataset]:
    found = []
    for status, answer in assoc.send_c_find(identifier(keys, level), model):
        check_cancel(server.name, cancel)
        if _check(server, "C-FIND", status) in _PENDING and answer is not None:
            found.append(answer)
    return found


def _c_find(server: Server, keys: dict[str, str], level: str, cancel: CancelToken | None) -> list[Dataset]:
    model = PatientRootQueryRetrieveInformationModelFind if level == "PATIENT" else StudyRootQueryRetrieveInformationModelFind
    with association(server, [(model, None)]) as assoc:
        return _answers(server, assoc, model, keys, level, cancel)


def find(server: Server, query: Query, cancel: CancelToken | None = None) -> list[Match]:
    """C-FIND at the query's level; series hierarchically (the matching studies, then each one's
    series, over one association), so that each level is asked only its own keys."""
    if query.level != "series":
        return [Match.from_dataset(query.level, ds) for ds in _c_find(server, query.keys(), query.level.upper(), cancel)]
    model = StudyRootQueryRetrieveInformationModelFind
    matches = []
    with association(server, [(model, None)]) as assoc:
        studies = [Match.from_dataset("study", ds)
                   for ds in _answers(server, assoc, model, query.study_query().keys(), "STUDY", cancel)]
        for study in studies:
            if study.study_uid:
                answers = _answers(server, assoc, model, query.series_keys(study.study_uid), "SERIES", cancel)
                matches += [Match.from_dataset("series", ds).within(study) for ds in answers]
    return matches


def instances(server: Server, study_uid: str, series_uid: str,
              cancel: CancelToken | None = None) -> dict[str, str]:
    """The SOPInstanceUIDs of one series with their SOPClassUIDs ("" where the server gives none),
    by C-FIND at IMAGE level."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": "", "SOPClassUID": ""}
    return {str(ds.SOPInstanceUID): str(ds.get("SOPClassUID", "") or "")
            for ds in _c_find(server, keys, "IMAGE", cancel) if ds.get("SOPInstanceUID")}


def storage_classes(server: Server, classes: set[str]) -> list[str]:
    """The storage SOP classes to ask for, to receive instances of ``classes``: just those, or
    every class we take when the server did not say (an empty class); PacsError for a class we
    cannot take."""
    if not classes or "" in classes:
        return STORAGE_CLASSES
    unknown = sorted(classes - set(STORAGE_CLASSES))
    if unknown:
        names = ", ".join(f"{UID(uid).name} ({uid})" if UID(uid).name != uid else uid for uid in unknown)
        raise PacsError(server.name, f"the series holds instances of a kind we cannot receive: {names}")
    return sorted(classes)


class _Receiver:
    """Writes the instances a PACS sends into the cache, counting them for progress; once cancelled
    it refuses further instances (so nothing more is written)."""

    def __init__(self, server: Server, cache: Cache, study_uid: str, series_uid: str, done: int, total: int,
                 progress: ProgressFn, cancel: CancelToken | None) -> None:
        self.server, self.cache, self.study_uid, self.series_uid = server, cache, study_uid, series_uid
        self.done, self.total, self.progress, self.cancel = done, total, progress, cancel
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.heard = time.monotonic()      # when the PACS last sent something (any piece of a message)

    def hear(self, _event=None) -> None:
        """Bound to every PDU received from the PACS: a large image still arriving is not silence."""
        self.heard = time.monotonic()

    def __call__(self, event) -> int:
        self.hear()
        if (self.cancel is not None and self.cancel.cancelled) or self.error is not None:
            return _REFUSED
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if str(event.dataset.get("SeriesInstanceUID", "")) != self.series_uid:
            return _NOT_ASKED_FOR        # our storage SCP (C-MOVE) keeps only the series it asked for
        try:
            self.cache.write(self.study_uid, self.series_uid, sop_uid, event.encoded_dataset())
        except Exception as exc:  # noqa: BLE001 - kept and raised on the caller's thread
            self.error = exc
            return _REFUSED
        with self.lock:
            self.done += 1
            done = self.done
        self.progress(Progress(done, self.total, f"received {done} of {self.total} instances"))
        return 0x0000

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _retrieve_identifier(study_uid: str, series_uid: str, missing: list[str], whole: bool) -> Dataset:
    if whole:
        return identifier({"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}, "SERIES")
    return identifier({"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
                       "SOPInstanceUID": missing}, "IMAGE")


def _retrieve(server: Server, study_uid: str, series_uid: str, cache: Cache, progress: ProgressFn,
              cancel: CancelToken | None, fetch: Callable[[_Receiver, Dataset, list[str]], None]) -> Path:
    classes = instances(server, study_uid, series_uid, cancel)
    wanted = list(classes)
    if not wanted:
        raise PacsError(server.name, f"series {series_uid} has no instances there")
    before = cache.cached(study_uid, series_uid)
    missing = sorted(set(cache.missing(study_uid, series_uid, wanted, before)))
    total = len(wanted)
    progress(Progress(total - len(missing), total, f"{total - len(missing)} of {total} instances already cached"))
    if missing:
        kinds = storage_classes(server, {classes[uid] for uid in missing})
        receiver = _Receiver(server, cache, study_uid, series_uid, total - len(missing), total, progress, cancel)
        try:
            with cache.receiving(study_uid, series_uid):
                fetch(receiver, _retrieve_identifier(study_uid, series_uid, missing, len(missing) == total), kinds)
        except PacsError:
            receiver.raise_error()       # the cause (a full disk) rather than the PACS's count of refusals
            raise
        receiver.raise_error()
        check_cancel(server.name, cancel)
        left = cache.missing(study_uid, series_uid, wanted)
        if left:
            raise PacsError(server.name, f"retrieve of series {series_uid} ended with {len(left)} of {total} "
                                         "instances missing")
    return cache.settle(study_uid, series_uid, wanted, before)


@contextlib.contextmanager
def _watched(assoc, server: Server, service: str, receiver: _Receiver, cancel: CancelToken | None) -> Iterator[None]:
    """Abort ``assoc`` from a watcher thread as soon as ``cancel`` is set, or when the PACS has sent
    nothing (no response, no instance) for :data:`STALL_TIMEOUTS` times the server's timeout — then
    a PacsError says so (the whole instances received stay): a C-GET or C-MOVE waits for the PACS
    without a per-response limit (a PACS may say nothing while it gathers a large series), so
    neither a cancel nor a stalled PACS must wait for its next response."""
    ended, stalled = threading.Event(), threading.Event()
    limit = STALL_TIMEOUTS * server.timeout_s

    def watch() -> None:
        while not ended.wait(CANCEL_POLL_S):
            cancelled = cancel is not None and cancel.cancelled
            if cancelled or time.monotonic() - receiver.heard > limit:
                if not cancelled:
                    stalled.set()
                assoc.abort()
                assoc.dimse.msg_queue.put((None, None))     # wakes the reader, as a peer's abort does
                return

    watcher = threading.Thread(target=watch, name="pacs-transfer-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        watcher.join()
        if stalled.is_set():
            raise PacsError(server.name, f"{service}: nothing from the server for {limit:g} s ({STALL_TIMEOUTS} × its "
                                         "timeout); stopped, the instances received are kept: retrieve again to go on")


def _follow(server: Server, service: str, responses, receiver: _Receiver, cancel: CancelToken | None) -> None:
    """Read a C-GET / C-MOVE's responses; a cancel aborts (the association's context aborts it)."""
    for status, _ in responses:
        receiver.hear()
        check_cancel(server.name, cancel)
        code = _check(server, service, status)
        if code == _CANCEL_STATUS:
            raise PacsCancelled(server.name)
        if code not in _PENDING and int(status.get("NumberOfFailedSuboperations", 0) or 0):
            failed = int(status.NumberOfFailedSuboperations)
            raise FailedStatus(server.name, f"{service}: {failed} instance(s) could not be sent to us")


def get(server: Server, study_uid: str, series_uid: str, cache: Cache, progress: ProgressFn = noop,
        cancel: CancelToken | None = None) -> Path:
    """Retrieve one series by C-GET into ``cache``; returns the series folder."""
    def fetch(receiver: _Receiver, ds: Dataset, kinds: list[str]) -> None:
        contexts = [(StudyRootQueryRetrieveInformationModelGet, None), *((uid, RECEIVE_SYNTAXES) for uid in kinds)]
        with association(server, contexts, roles=kinds,
                         handlers=[(evt.EVT_C_STORE, receiver), (evt.EVT_PDU_RECV, receiver.hear)],
                         long_running=True) as assoc, _watched(assoc, server, "C-GET", receiver, cancel):
            if kinds != STORAGE_CLASSES:
                _check_offered(server, assoc, kinds)
            _follow(server, "C-GET", assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet), receiver,
                    cancel)
    return _retrieve(server, study_uid, series_uid, cache, progress, cancel, fetch)


def _check_offered(server: Server, assoc, kinds: list[str]) -> None:
    """FailedStatus naming the SOP classes the server will not send us in this association."""
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts if cx.as_scp is not False}
    refused = [UID(uid).name for uid in kinds if uid not in accepted]
    if refused:
        raise FailedStatus(server.name, f"C-GET: the server will not send us {', '.join(refused)} in a transfer "
                                        "syntax we read")


def _stop(listener) -> None:
    """Stop our storage SCP: its open associations aborted and their threads ended, so that no
    instance is written after the retrieve returns."""
    active = listener.active_associations
    for assoc in active:
        assoc.abort()
    for assoc in active:
        assoc.join(STOP_WAIT_S)
    listener.shutdown()


def move(server: Server, study_uid: str, series_uid: str, cache: Cache, progress: ProgressFn = noop,
         cancel: CancelToken | None = None) -> Path:
    """Retrieve one series by C-MOVE to our own storage SCP (``server.move_port``, AE
    ``server.calling_ae``) into ``cache``; returns the series folder."""
    if not server.move_port:
        raise PacsError(server.name, "C-MOVE needs the port of our storage SCP (move_port)")
    secure = listener_context(server) if server.tls else None      # the PACS connects back over TLS too

    def fetch(receiver: _Receiver, ds: Dataset, kinds: list[str]) -> None:
        scp = _ae(server)
        scp.require_calling_aet = [server.ae_title]       # only the PACS we asked may store into our cache
        for uid in kinds:
            scp.add_supported_context(uid, RECEIVE_SYNTAXES)
        try:
            listener = scp.start_server(("", server.move_port), block=False, ssl_context=secure,
                                        evt_handlers=[(evt.EVT_C_STORE, receiver), (evt.EVT_PDU_RECV, receiver.hear)])
        except OSError as exc:
            raise PacsError(server.name, f"cannot listen on port {server.move_port} for C-MOVE "
                                         f"({exc.strerror or exc})") from None
        assert listener is not None                     # block=False returns the running server
        try:
            with association(server, [(StudyRootQueryRetrieveInformationModelMove, None)],
                             handlers=[(evt.EVT_PDU_RECV, receiver.hear)], long_running=True) as assoc, _watched(assoc, server, "C-MOVE", receiver, cancel):
                responses = assoc.send_c_move(ds, server.calling_ae, StudyRootQueryRetrieveInformationModelMove)
                _follow(server, "C-MOVE", responses, receiver, cancel)
        finally:
            _stop(listener)
    return _retrieve(server, study_uid, series_uid, cache, progress, cancel, fetch)


def _offered_syntaxes(syntax: str) -> list[str]:
    """The transfer syntaxes offered for a file in ``syntax``: an uncompressed one may also go as
    Explicit or Implicit VR Little Endian (pynetdicom converts), a compressed one only as it is."""
    if syntax in UNCOMPRESSED:
        return [syntax, *(s for s in UNCOMPRESSED[:2] if s != syntax)]
    return [syntax]


def _accepted(assoc, item: Outgoing) -> bool:
    """Whether the association can carry ``item``: its SOP class in its transfer syntax, or any
    uncompressed syntax for an uncompressed file."""
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == item.sop_class and cx.as_scu is not False:
            agreed = str(cx.transfer_syntax[0])
            if agreed == item.transfer_syntax or (agreed in UNCOMPRESSED and item.transfer_syntax in UNCOMPRESSED):
                return True
    return False


def store(server: Server, outgoing: list[Outgoing], progress: ProgressFn = noop,
          cancel: CancelToken | None = None) -> list[SendResult]:
    """C-STORE each file over one association; the result per instance. An instance whose SOP class
    or transfer syntax the server refused is a failed result naming them; when the connection
    drops, the results so far are returned with the instances not sent marked failed."""
    contexts = sorted({(o.sop_class, tuple(_offered_syntaxes(o.transfer_syntax))) for o in outgoing})
    if len(contexts) > 128:
        raise PacsError(server.name, "too many kinds of instance to send at once (more than 128)")
    results: list[SendResult] = []

    def done(item: Outgoing, ok: bool, detail: str) -> None:
        results.append(SendResult(item.path, item.sop_uid, ok, detail))
        progress(Progress(len(results), len(outgoing), f"sent {len(results)} of {len(outgoing)} instances"))

    def not_taken(item: Outgoing) -> str:
        return f"the server does not take {UID(item.sop_class).name} in {UID(item.transfer_syntax).name}"

    try:
        with association(server, [(sop, list(syntaxes)) for sop, syntaxes in contexts]) as assoc:
            for k, item in enumerate(outgoing):
                check_cancel(server.name, cancel)
                if not _accepted(assoc, item):
                    done(item, False, not_taken(item))
                    continue
                try:
                    status = assoc.send_c_store(item.path)
                except (ValueError, AttributeError) as exc:      # a file pynetdicom cannot encode
                    done(item, False, f"not sent ({exc})")
                    continue
                if status is None or "Status" not in status:
                    for rest in outgoing[k:]:
                        results.append(SendResult(rest.path, rest.sop_uid, False,
                                                  "not sent: the connection to the server was lost"))
                    break
                code = int(status.Status)
                done(item, code == 0 or code_to_category(code) == "Warning",
                     status_text(code))
    except NothingAccepted:                  # raised before any instance: none of their kinds is taken
        for item in outgoing:
            done(item, False, not_taken(item))
    return results
