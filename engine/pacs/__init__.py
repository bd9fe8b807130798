"""PACS connectivity (Qt-free): servers by name (engine.pacs.servers), queries (engine.pacs.query),
verify / find / retrieve / send over DIMSE (pynetdicom) or DICOMweb (dicomweb-client)
(engine.pacs.operations), and the private, resumable cache of retrieved instances (engine.pacs.cache).

    server = find_server("research-pacs")
    matches = find(server, Query(level="series", patient_id="P001"))
    folders = retrieve(server, matches[0].study_uid, [matches[0].series_uid])   # then engine.io.scan
    results = send(server, exported_series_folder)
"""
from engine.pacs.cache import Cache
from engine.pacs.errors import PacsCancelled, PacsError
from engine.pacs.operations import echo, find, method_of, retrieve, send
from engine.pacs.query import Match, Query
from engine.pacs.servers import Server, find_server, load_servers, save_servers, servers_file

__all__ = ["Cache", "Match", "PacsCancelled", "PacsError", "Query", "Server", "echo", "find", "find_server",
           "load_servers", "method_of", "retrieve", "save_servers", "send", "servers_file"]
