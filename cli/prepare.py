"""``python main.py prepare DATA -o OUT``: a trainable paired dataset from a folder as scanners and
planning systems export it — the fine-tuning wizard's *Map series and align volumes* page on the
command line (``engine.tasks.prepare``). Series that no name maps to a modality are mapped by
``--map`` rules or by the modality their headers suggest (``--guesses``); volumes that do not line up
with their subject's reference are registered rigidly. DATA is only read; OUT is written atomically."""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import textwrap
from pathlib import Path

from cli.common import json_ready
from cli.train import add_split_fractions
from engine.jobs import stderr_progress

REGISTER = ("needed", "all", "none")
LEAVE_OUT = ("-", "none")

EPILOG = """\
rules: --map PATTERN=MODALITY maps every series whose name matches PATTERN (shell wildcards, any case)
to MODALITY, or leaves it out with MODALITY "-". A series' names are its description, the path of its
file or folder inside the subject folder, and both after "SUBJECT/"; the first rule that matches wins.
Series no rule matches take the modality guessed from their headers with --guesses, else stay out.
Paths in patterns use "/" (a "\\" is read as "/").

several of one modality: a subject given several volumes of one modality (a planning CT and three daily
CBCTs) becomes one subject per such volume, named SUBJECT_MODALITY_K in the order their headers date
them, each with the subject's other volumes; dataset.json gives them SUBJECT as participant, so they
land in one split. The modality the others pair with (the CT there) cannot repeat, nor two modalities,
and one folder holds one patient's series: such a patient is left out with the reason.

frames of reference: a DICOM series acquired in another frame of reference than its subject's reference
is placed by a spatial registration (DICOM REG) anywhere in DATA relating both frames (the clinic's, as
stored; two that disagree are not used), else registered from its intensities (left out with
--register none). --ignore-registrations registers them all from their intensities instead (a REG
that --list or the wizard's overlay shows to be wrong).

examples:
  python main.py prepare EXPORT --list                                    # what there is to map and register
  python main.py prepare EXPORT -o DATASET --guesses                      # take the headers' modalities
  python main.py prepare EXPORT -o DATASET --map "*planning*=CT" --map "*cbct*=CBCT" --map "*=-"
  python main.py train --data DATASET --stage generation --routes CBCT:CT --init resources/models/default --out M
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="map a folder's series to modalities and register misaligned volumes: a dataset to train on",
        description=textwrap.fill(
            "Check DATA (one folder per subject, docs/evaluation.md), map the series no name maps to a modality, "
            "register the volumes that do not line up with their subject's reference, and write the paired dataset "
            "to OUT (NIfTI, dataset.json recording where each volume came from and how it was moved). The "
            "fine-tuning wizard's Map series and align volumes page does the same.", width=100),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="the dataset folder: one folder per subject")
    p.add_argument("-o", "--out", metavar="OUT",
                   help="the prepared dataset's folder: new, empty, or an earlier prepare's (replaced)")
    p.add_argument("--list", action="store_true",
                   help="list the series to map (with the modality each rule or guess gives) and the volumes to "
                        "register, and write nothing")
    p.add_argument("--map", action="append", default=[], metavar="PATTERN=MODALITY", type=_rule,
                   help="map the series matching PATTERN to MODALITY (\"-\" leaves them out); repeatable")
    p.add_argument("--guesses", action="store_true",
                   help="map each series no rule matches to the modality guessed from its headers and name")
    p.add_argument("--register", choices=REGISTER, default="needed",
                   help="needed (default): the volumes left out as their headers place them (another frame of "
                        "reference, no overlap, anatomy millimetres off); all: also those merely on another grid; "
                        "none: only what a stored spatial registration (REG) places, the rest left out")
    p.add_argument("--ignore-registrations", action="store_true",
                   help="do not place series by the spatial registrations (DICOM REG) in DATA: register them from "
                        "their intensities (a stored registration that is wrong)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="the registration's sampling and the split checked afterwards (the train command's "
                        "--seed; default 0)")
    add_split_fractions(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def _rule(text: str) -> tuple[str, str]:
    from engine import modalities

    pattern, sep, modality = text.rpartition("=")
    if not sep or not pattern.strip() or not modality.strip():
        raise argparse.ArgumentTypeError(f"a rule is PATTERN=MODALITY (e.g. '*cbct*=CBCT'), not {text!r}")
    modality = modality.strip()
    if modality.lower() in LEAVE_OUT:
        return pattern.strip(), ""
    try:
        return pattern.strip(), modalities.canonical(modality)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def series_names(choice, folder: Path) -> list[str]:
    """What a ``--map`` pattern is matched against: the series' description and its place in the subject
    folder (a DICOM series' folder, a file), each also after ``SUBJECT/``."""
    entry = choice.entry
    place = Path(entry.paths[0]).parent if entry.kind == "dicom" and entry.paths else Path(entry.key)
    try:
        inside = place.relative_to(folder).as_posix()
    except ValueError:
        inside = place.name
    names = [n for n in (entry.description, inside) if n and n != "."]
    return names + [f"{choice.subject}/{n}" for n in names]


def choose(choices, rules: list[tuple[str, str]], guesses: bool, folders: dict[str, str]):
    """Each series' modality ("" = left out) and why — the first matching rule, else its guess with
    ``guesses`` — by subject and date; and what is wrong with each rule that took no series (one that
    matched nothing is a typo, most likely)."""
    used: set[int] = set()
    matched: set[int] = set()
    chosen = []
    for choice in choices:
        names = [n.lower() for n in series_names(choice, Path(folders[choice.subject]))]
        hits = [i for i, (pattern, _) in enumerate(rules)                      # paths with / (a \\ is read as /)
                if any(fnmatch.fnmatchcase(n, pattern.lower().replace("\\", "/")) for n in names)]
        matched.update(hits)
        hit = hits[0] if hits else None
        if hit is not None:
            used.add(hit)
            chosen.append((choice, rules[hit][1], f"--map {rules[hit][0]}={rules[hit][1] or '-'}"))
        elif guesses and choice.guess:
            chosen.append((choice, choice.guess, "guessed"))
        else:
            why = choice.entry.not_anatomy or (f"no rule matched; --guesses would take its guess, {choice.guess}"
                                               if choice.guess else "no rule matched, and it suggests no modality")
            chosen.append((choice, "", why))
    unused = [f"--map {p}={m or '-'} " + ("matched only series an earlier rule took (the first rule that matches "
                                          "wins)" if i in matched else "matched no series")
              for i, (p, m) in enumerate(rules) if i not in used]
    return sorted(chosen, key=lambda c: (c[0].subject, c[0].entry.acquired or "~")), unused


def run(args: argparse.Namespace) -> int:
    from engine.io import find_registrations
    from engine.tasks import (
        find_unnamed_series,
        mappable,
        misaligned_volumes,
        placements,
        plan_subjects,
        prepare_dataset,
        validate_dataset,
    )

    if not args.list and not args.out:
        raise ValueError("say where to write the prepared dataset (-o OUT), or only look with --list")
    if args.ignore_registrations and args.register == "none":
        raise ValueError("--ignore-registrations with --register none would leave out every series in another frame "
                         "of reference: register them (--register needed) or use the stored registrations")
    progress = stderr_progress(not args.json)
    fractions = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    report = validate_dataset(args.data, seed=args.seed, progress=progress, **fractions)
    if not report.subjects_found:
        raise ValueError(report.error_message())
    choices, unscanned = find_unnamed_series(report, progress)
    chosen, unused = choose(choices, args.map, args.guesses, report.folders)
    candidates = misaligned_volumes(report)
    register = [m for m in candidates if args.register == "all" or m.kind == "other_frame"      # none: a REG may place it
                or (args.register == "needed" and m.needs_it)]
    mapping = {c: modality for c, modality, _ in chosen}
    plan = plan_subjects(report, mapping, register)
    search = args.register != "none"
    ahead = placements(plan, [], search)                      # the headers' frames first: REGs only if needed
    stored = find_registrations(report.root) if ahead and not args.ignore_registrations else None
    if ahead:
        ahead = placements(plan, stored[0] if stored else [], search, set_aside=args.ignore_registrations)
    mapped = {c.subject for c in choices}                     # said below, series by series
    listed = {id(f) for f in mappable(report)} | {id(f) for f in report.problems if f.subject in mapped
                                                  and f.kind in ("empty_subject", "single_modality")}
    result: dict = {
        "data": str(report.root), "not_scanned": unscanned, "unused_rules": unused,
        "problems": [f.to_dict() for f in report.problems if id(f) not in listed],
        "series": [{"subject": c.subject, "series": c.describe(), "key": c.entry.key, "guess": c.guess,
                    "acquired": c.entry.acquired, "modality": modality or None, "why": why}
                   for c, modality, why in chosen],
        "register": [{"subject": m.subject, "modality": m.modality, "path": m.path, "reference": m.reference,
                      "finding": m.kind, "registered": m in register} for m in candidates],
        "subjects": {u.name: {"of": u.origin, "volumes": {m: _source_name(v) for m, v in u.held.items()}}
                     for u in plan.units if u.split},
        "placements": {f"{subject}/{modality}": how.describe() for (subject, modality), how in ahead.items()},
        "left_out": plan.left_out, "dropped": list(plan.dropped.values()),
        "registrations_set_aside": args.ignore_registrations}
    lines = _listing(report, result, args)
    if not args.list:
        if not any(mapping.values()) and not register:
            if not report.usable or report.training_problem():
                raise ValueError(f"{report.root}: nothing to prepare and nothing to train on as it is: map its "
                                 "series (--map PATTERN=MODALITY rules, or --guesses to take the modalities their "
                                 "headers suggest; --list shows them)")
            lines.append(f"nothing to map or register: {report.root} trains as it is (train --data {args.data})")
        else:
            prepared = prepare_dataset(report, args.out, mapping=mapping, register=register, search=search,
                                       seed=args.seed, registrations=stored, set_aside=args.ignore_registrations,
                                       progress=progress)
            check = validate_dataset(prepared.root, seed=args.seed, **fractions)
            result["prepared"] = {
                "root": str(prepared.root), "skipped": prepared.skipped, "split_subjects": prepared.split_subjects,
                "notes": prepared.notes,
                "registered": [{"subject": r.subject, "modality": r.modality, "reference": r.reference,
                                "applied": r.registration.improved, "left_out": r.left_out,
                                **r.registration.to_dict()} for r in prepared.registered],
                "check": check.to_dict(), "no_training": check.training_problem()}
            lines += _outcome(prepared, check, set(plan.notes))
    if args.json:
        print(json.dumps(json_ready(result), indent=2))
    else:
        print("\n".join(lines))
    for rule in unused:
        print(f"warning: {rule}", file=sys.stderr)
    return 0


def _source_name(source) -> str:
    """A prepared subject's volume as the listing names it: a series' description and date, or a file."""
    if isinstance(source, str):
        return Path(source).name
    return source.description + (f" ({_date(source.acquired)})" if source.acquired else "")


def _date(acquired: str) -> str:
    """"20240305 081000" as "2024-03-05 08:10"."""
    day, _, time = acquired.partition(" ")
    return f"{day[:4]}-{day[4:6]}-{day[6:8]}" + (f" {time[:2]}:{time[2:4]}" if len(time) >= 4 else "")


def _listing(report, result: dict, args: argparse.Namespace) -> list[str]:
    lines = report.summary().splitlines()[:3]                  # counts, routes, split
    lines += [f"problem: {p['path']}: {p['message']}" for p in result["problems"]]
    lines += [f"note: {n}" for n in report.notes]
    if result["series"]:
        lines.append(f"series to map ({len(result['series'])}):")
        lines += [f"  {s['subject']}: {s['series']}{', ' + _date(s['acquired']) if s['acquired'] else ''} → "
                  f"{s['modality'] or 'left out'} ({s['why']})" for s in result["series"]]
    lines += [f"  not scanned: {message}" for message in result["not_scanned"]]
    if result["register"]:
        lines.append(f"volumes on another grid than their subject's reference ({len(result['register'])}):")
        lines += [f"  {r['subject']}: {r['modality']} onto {Path(r['reference']).name} → "
                  + (("placed by a stored registration (REG) if one relates the frames, else left out"
                      if args.register == "none" else "register") if r["registered"]
                     else "resample as the headers place it (--register all "
                     "registers it)" if r["finding"] == "resampled" else "leave out (--register needed registers it)")
                  for r in result["register"]]
    lines += [f"left out: {subject}: {reason}" for subject, reason in result["left_out"].items()]
    lines += [f"left out: {text.removesuffix(': left out')}" for text in result["dropped"]]
    if result["placements"]:
        lines.append("series in another frame of reference than their subject's reference:")
        lines += [f"  {where}: {how}" for where, how in result["placements"].items()]
    if result["subjects"]:
        lines.append("one subject per repeated volume, in the order their headers date them (one participant in "
                     "the split):")
        lines += [f"  {name}: {', '.join(f'{m} {v}' for m, v in subject['volumes'].items())}"
                  for name, subject in result["subjects"].items()]
    return lines


def _outcome(prepared, check, said: set[str]) -> list[str]:
    """What preparing did, then what checking the copy found (``said``: notes the listing gave already)."""
    lines = [f"prepared {prepared.root}:"]
    lines += [f"  {r.subject}: {r.modality} onto {r.reference}: {r.describe()}" for r in prepared.registered]
    if prepared.split_subjects:
        lines.append(f"  one subject per repeated volume (one participant in the split): {prepared.describe_split()}")
    if prepared.skipped:
        lines.append(f"  left out (fewer than two volumes): {', '.join(prepared.skipped)}")
    lines += [f"  note: {note}" for note in prepared.notes if note not in said]
    lines += ["checked:"] + [f"  {line}" for line in check.summary().splitlines()]
    problem = check.training_problem()
    if problem:
        lines.append(f"warning: {problem}")
    return lines
