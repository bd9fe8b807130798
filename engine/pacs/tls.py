"""DICOM over TLS (PS3.15 B.1, the Basic TLS Secure Transport Connection Profile): the secure contexts
of a DIMSE server that asks for it (``Server.tls``) — the server's certificate checked against the
system's authorities or the hospital's (``tls_ca``), our own certificate shown when the PACS asks for
one (``tls_cert`` / ``tls_key``: mutual TLS, and the certificate our storage SCP presents to a PACS
that connects back for C-MOVE) — and the TLS library's reasons said in a few words."""
from __future__ import annotations

import socket
import ssl

from engine.pacs.errors import PacsError
from engine.pacs.servers import Server

VERDICT_WAIT_S = 1.0                  # how long the check waits for a server to refuse our certificate
_CHECKED: set[tuple] = set()          # server settings whose TLS handshake succeeded in this process


def tls_reason(exc: Exception) -> str:
    """The TLS library's own reason (certificate verify failed, wrong version number…), short."""
    text = str(exc)
    for reason in ("certificate verify failed", "wrong version number", "hostname mismatch", "self-signed certificate",
                   "certificate has expired", "unknown protocol", "handshake failure", "certificate required",
                   "unknown ca", "bad certificate"):
        if reason in text.lower():
            return reason
    return "the secure connection failed"


def _load_own(server: Server, context: ssl.SSLContext) -> None:
    if server.tls_cert:
        try:
            context.load_cert_chain(server.tls_cert, server.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise PacsError(server.name, f"our TLS certificate {server.tls_cert} or its key {server.tls_key or '(in it)'} "
                                         f"cannot be used ({getattr(exc, 'strerror', None) or exc})") from None


def _authorities(server: Server, context: ssl.SSLContext, purpose: ssl.Purpose) -> None:
    if server.tls_ca:
        try:
            context.load_verify_locations(cafile=server.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise PacsError(server.name, f"the certificate authority file {server.tls_ca} cannot be read "
                                         f"({getattr(exc, 'strerror', None) or exc})") from None
    else:
        context.load_default_certs(purpose)


def client_context(server: Server) -> ssl.SSLContext:
    """The context of our associations with ``server``: its certificate verified (by ``tls_ca``, else the
    system's authorities) and its host name checked; ours shown when configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)          # verifies the peer and its host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _authorities(server, context, ssl.Purpose.SERVER_AUTH)
    _load_own(server, context)
    return context


def listener_context(server: Server) -> ssl.SSLContext:
    """The context of our storage SCP when ``server`` connects back for a C-MOVE over TLS: our
    certificate shown, and the PACS's required and verified (by ``tls_ca``, else the system's)."""
    if not server.tls_cert:
        raise PacsError(server.name, "a C-MOVE over TLS needs our own certificate (tls_cert and tls_key): the PACS "
                                     "connects back to us over TLS; retrieve by C-GET (move_port 0) otherwise")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    _authorities(server, context, ssl.Purpose.CLIENT_AUTH)
    _load_own(server, context)
    return context


def check_handshake(server: Server, context: ssl.SSLContext) -> None:
    """Open one TLS connection to ``server``, wait a moment for its verdict on our certificate (TLS 1.3
    sends it after the handshake) and close it, so that a refused certificate is said in words — an
    association over a failed handshake only reports that nothing answered. Once per server setting
    and process: later associations go straight on."""
    key = (server.host, server.port, server.tls_ca, server.tls_cert, server.tls_key)
    if key in _CHECKED:
        return
    try:
        with socket.create_connection((server.host, server.port), timeout=server.timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=server.host) as secure:
            secure.settimeout(VERDICT_WAIT_S)
            try:
                secure.recv(1)                          # a server that took us says nothing until we speak
            except TimeoutError:
                pass
    except ssl.SSLError as exc:
        raise PacsError(server.name, f"TLS problem with {server.host}:{server.port}: {tls_reason(exc)} (is the "
                                     "server's certificate signed by the authority in tls_ca and issued for this host "
                                     "name; does it expect TLS, and our certificate?)") from None
    except OSError:
        return                          # not reachable: the association says so in its own words
    _CHECKED.add(key)
