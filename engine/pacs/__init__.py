"""PACS connectivity (Qt-free): servers by name (engine.pacs.servers), queries (engine.pacs.query),
verify / find / retrieve / send over DIMSE (pynetdicom) or DICOMweb (dicomweb-client)
(engine.pacs.operations), and the private, resumable cache of retrieved instances (engine.pacs.cache).

    server = find_server("research-pacs")
    matches = find(server, Query(level="series", patient_id="P001"))
    folders = retrieve(server, matches[0].study_uid, [matches[0].series_uid])   # then engine.io.scan
    results = send(server, exported_series_folder)
"""
from __future__ import annotations

from engine.exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {     # pynetdicom and dicomweb-client load on first use
    "Cache": "cache", "DEFAULT_LIMIT_BYTES": "cache", "parse_size": "cache", "LEVELS": "choices",
    "METHODS": "choices",
    "PacsError": "errors", "PacsCancelled": "errors",
    "echo": "operations", "find": "operations", "method_of": "operations", "retrieve": "operations",
    "send": "operations", "Match": "query", "Query": "query",
    "Server": "servers", "find_server": "servers", "load_servers": "servers", "save_servers": "servers",
    "servers_file": "servers",
})
