"""``info``: the volumes and DICOM series found in a file or folder."""
from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list the volumes / DICOM series in a file or folder",
                       description="List every volume or DICOM series found in INPUT: shape, spacing, "
                                   "orientation, guessed modality, whether its header marks it synthetic "
                                   "(made by a model), and files that were skipped.")
    p.add_argument("input", help="a NIfTI/MHA/NRRD file, a DICOM file, a folder or a DICOMDIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import engine.io as io

    catalog = io.scan(args.input)
    rows = [e.describe() for e in catalog.entries]
    skipped = [{"path": s.path, "reason": s.reason} for s in catalog.skipped]
    if args.json:
        print(json.dumps({"input": args.input, "series": rows, "skipped": skipped}, indent=2))
        return 0
    print(f"{len(rows)} volume(s) in {args.input}")
    for r in rows:
        shape = "×".join(str(s) for s in reversed(r["shape_zyx"]))
        spacing = "×".join(f"{s:g}" for s in r["spacing_xyz_mm"])
        synthetic = "  SYNTHETIC (research use only)" if r["synthetic"] else ""
        print(f"- {r['description']}  [{r['modality'] or '?'}]{synthetic}  {shape} voxels  {spacing} mm  "
              f"{r['orientation']}  key={r['key']}")
        for note in r["notes"]:
            print(f"    note: {note}")
    for s in skipped:
        print(f"skipped {s['path']}: {s['reason']}")
    return 0


