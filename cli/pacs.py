"""``pacs``: verify, query, retrieve from and send to a PACS (DIMSE or DICOMweb), by a server's name
from the servers file (engine.pacs.servers) or by explicit options; ``--json`` for scripts.
Secrets come from environment variables, never from the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cli.common import json_ready
from engine.pacs import DEFAULT_LIMIT_BYTES, LEVELS, METHODS, parse_size

ACTIONS = ("echo", "find", "get", "send", "servers")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pacs", help="verify, query, retrieve from and send to a PACS (DIMSE or DICOMweb)",
        description="Talk to a PACS. echo: verify the connection (C-ECHO, or a QIDO-RS query). find: query at "
                    "patient, study or series level (C-FIND / QIDO-RS). get: retrieve a study's series into the "
                    "local cache (C-GET, C-MOVE or WADO-RS; instances already cached are not fetched again) and "
                    "print their folders, which open like any DICOM folder. send: send an exported series folder "
                    "(C-STORE / STOW-RS), with the result per instance. servers: list the stored servers, or add / "
                    "remove one. Research use only, not for diagnosis.")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("folder", nargs="?", help="send: the series folder to send (e.g. an exported synthetic series)")
    where = p.add_argument_group("the server: --server NAME, or explicit options")
    where.add_argument("--server", metavar="NAME", help="a server from the servers file")
    where.add_argument("--servers-file", metavar="FILE",
                       help="the servers file (default: pacs_servers.json in the app's config folder; "
                            "SYNERMEDGEN_CONFIG_DIR overrides the folder)")
    where.add_argument("--host", help="DIMSE: the PACS's host name or address")
    where.add_argument("--port", type=int, default=104, help="DIMSE: the PACS's port (default 104)")
    where.add_argument("--ae-title", help="DIMSE: the PACS's AE title")
    where.add_argument("--calling-ae", default=None, help="DIMSE: our AE title (default SYNERMEDGEN)")
    where.add_argument("--move-port", type=int, default=0,
                       help="DIMSE: retrieve by C-MOVE to our storage SCP listening on this port (the PACS must know "
                            "our AE title at this address; default 0: C-GET)")
    where.add_argument("--tls", action="store_true",
                       help="DIMSE: over TLS (DICOM's secure transport; the PACS's certificate is checked)")
    where.add_argument("--tls-ca", default="", metavar="PEM",
                       help="DIMSE over TLS: the certificate authorities to trust (default: the system's)")
    where.add_argument("--tls-cert", default="", metavar="PEM",
                       help="DIMSE over TLS: our certificate, for a PACS that asks for one and for C-MOVE (the PACS "
                            "connects back to us)")
    where.add_argument("--tls-key", default="", metavar="PEM", help="DIMSE over TLS: our certificate's private key, "
                                                                    "when not in --tls-cert")
    where.add_argument("--url", help="DICOMweb: the base URL (e.g. http://host:8042/dicom-web)")
    where.add_argument("--user", default="", help="DICOMweb: the user name for basic auth")
    where.add_argument("--password-env", metavar="VAR", help="DICOMweb: the environment variable holding the password")
    where.add_argument("--token-env", metavar="VAR", help="DICOMweb: the environment variable holding a bearer token")
    where.add_argument("--timeout", type=float, default=30.0,
                       help="seconds to wait for an answer (default 30); a retrieve that hears nothing (no response, "
                            "no image) for 10 times this is stopped")
    query = p.add_argument_group("find")
    query.add_argument("--level", choices=LEVELS, default="study")
    query.add_argument("--patient-name", default="", help="DICOM wildcards * and ? allowed, e.g. 'DOE^*'")
    query.add_argument("--patient-id", default="")
    query.add_argument("--date-from", default="", metavar="YYYYMMDD")
    query.add_argument("--date-to", default="", metavar="YYYYMMDD")
    query.add_argument("--modality", default="")
    query.add_argument("--description", default="", help="study (or, at series level, series) description")
    get = p.add_argument_group("get")
    get.add_argument("--study", default="", metavar="UID", help="find: the study's series; get: the study to retrieve")
    get.add_argument("--series", nargs="*", default=None, metavar="UID", help="get: these series only (default: all)")
    get.add_argument("--method", choices=METHODS, default="auto",
                     help="auto (default): WADO-RS for DICOMweb, C-MOVE with --move-port, else C-GET")
    get.add_argument("--cache", metavar="DIR",
                     help="keep the cache in a private synermedgen-pacs subfolder of DIR (default: the user's cache "
                          "folder; SYNERMEDGEN_PACS_CACHE overrides it); DIR's own permissions are left alone")
    get.add_argument("--cache-limit", metavar="SIZE", type=_size, default=DEFAULT_LIMIT_BYTES,
                     help="keep the cache within SIZE, e.g. 500M or 50G (default 20G): the series used longest ago "
                          "are removed before and after a retrieve")
    manage = p.add_argument_group("servers")
    manage.add_argument("--add", metavar="NAME", help="store the server given by the explicit options as NAME")
    manage.add_argument("--remove", metavar="NAME", help="remove the stored server NAME")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _secret(var: str | None) -> str:
    if not var:
        return ""
    value = os.environ.get(var)
    if value is None:
        raise ValueError(f"environment variable {var} is not set")
    return value


def explicit_server(args: argparse.Namespace, name: str):
    """The server the explicit options describe."""
    from engine.pacs import Server

    tls = {"tls": args.tls, "tls_ca": _absolute(args.tls_ca), "tls_cert": _absolute(args.tls_cert),
           "tls_key": _absolute(args.tls_key)}
    if args.url:
        if any(tls.values()):
            raise ValueError("--tls and its files are for DIMSE; a DICOMweb server is secured by an https:// URL")
        return Server(name, url=args.url, username=args.user, password=_secret(args.password_env),
                      token=_secret(args.token_env), timeout_s=args.timeout)
    if not (args.host and args.ae_title):
        raise ValueError("name a server: --server NAME, or --host and --ae-title (DIMSE), or --url (DICOMweb)")
    extra = {"calling_ae": args.calling_ae} if args.calling_ae else {}
    return Server(name, ae_title=args.ae_title, host=args.host, port=args.port, move_port=args.move_port,
                  timeout_s=args.timeout, **extra, **tls)


def _absolute(path: str) -> str:
    """A certificate file as stored: absolute (the servers file is read from any folder), "" stays "";
    one that does not exist is refused now, not at the first connection."""
    if not path:
        return ""
    found = Path(path).expanduser().absolute()
    if not found.is_file():
        raise ValueError(f"{path}: no such certificate file")
    return str(found)


def _server(args: argparse.Namespace):
    from engine.pacs import find_server

    if args.server:
        return _warned(find_server(args.server, args.servers_file))
    return _warned(explicit_server(args, args.url or f"{args.ae_title}@{args.host}:{args.port}"))


def _warned(server):
    """``server``, once a password or token it would send unencrypted is warned of on stderr."""
    if warning := server.clear_text_warning():
        print(f"warning: {warning}", file=sys.stderr)
    return server


def _print(args: argparse.Namespace, data: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(json_ready(data), indent=2))
    else:
        print("\n".join(lines))


def _servers(args: argparse.Namespace) -> int:
    from engine.pacs import load_servers, save_servers, servers_file

    path = servers_file() if not args.servers_file else args.servers_file
    servers = load_servers(path)
    if args.add:
        added = _warned(explicit_server(args, args.add))
        servers = [s for s in servers if s.name != added.name] + [added]
        save_servers(servers, path)
    if args.remove:
        if args.remove not in {s.name for s in servers}:
            raise ValueError(f"{path}: no PACS server named {args.remove!r}")
        servers = [s for s in servers if s.name != args.remove]
        save_servers(servers, path)
    _print(args, {"file": str(path), "servers": [{"name": s.name, "where": s.describe()} for s in servers]},
           [f"{len(servers)} server(s) in {path}", *(f"- {s.name}: {s.describe()}" for s in servers)])
    return 0


def run(args: argparse.Namespace) -> int:
    from engine import pacs
    from engine.jobs import stderr_progress

    if args.action == "servers":
        return _servers(args)
    server = _server(args)
    progress = stderr_progress(not args.quiet)
    if args.action == "echo":
        seconds = pacs.echo(server)
        _print(args, {"server": server.name, "where": server.describe(), "ok": True, "seconds": round(seconds, 4)},
               [f"{server.name}: answered in {seconds * 1000:.0f} ms ({server.describe()})"])
    elif args.action == "find":
        query = pacs.Query(level=args.level, patient_name=args.patient_name, patient_id=args.patient_id,
                           date_from=args.date_from, date_to=args.date_to, modality=args.modality,
                           description=args.description, study_uid=args.study)
        matches = pacs.find(server, query)
        _print(args, {"server": server.name, "level": args.level, "matches": [m.to_dict() for m in matches]},
               [f"{len(matches)} {args.level} match(es) on {server.name}", *(_line(m) for m in matches)])
    elif args.action == "get":
        if not args.study:
            raise ValueError("get needs --study UID (find them with `pacs find`)")
        method = pacs.method_of(server, args.method)
        folders = pacs.retrieve(server, args.study, args.series, pacs.Cache(args.cache, args.cache_limit), method, progress)
        _print(args, {"server": server.name, "method": method, "folders": [str(f) for f in folders]},
               [f"retrieved {len(folders)} series from {server.name} by {method}:", *(f"  {f}" for f in folders)])
    else:
        if not args.folder:
            raise ValueError("send needs the series FOLDER to send")
        results = pacs.send(server, args.folder, progress)
        failed = [r for r in results if not r.ok]
        _print(args, {"server": server.name, "sent": len(results) - len(failed), "failed": len(failed),
                      "instances": [r.to_dict() for r in results]},
               [f"sent {len(results) - len(failed)} of {len(results)} instances to {server.name}",
                *(f"  failed {r.path.name}: {r.detail}" for r in failed)])
        return 1 if failed else 0
    return 0


def _line(m) -> str:
    if m.level == "patient":
        return f"- {m.patient_name}  id={m.patient_id}"
    study = f"- {m.patient_name}  id={m.patient_id}  {m.study_date}  {m.study_description!r}"
    if m.level == "study":
        return f"{study}  [{m.modality}]  {m.instances} instances  study={m.study_uid}"
    return (f"{study}  series {m.series_number} {m.series_description!r} [{m.modality}]  {m.instances} instances  "
            f"study={m.study_uid} series={m.series_uid}")
