"""The cohort loop: one loaded model synthesizes every item of this process's share (items are dealt
out by rank under ``torchrun``), reading the next input in a background thread while the current
one is synthesized. Each item's output and its JSON sidecar (provenance) are written atomically, its
events recorded in the run manifest (:mod:`engine.cohort.manifest`); an item that fails is recorded
with its reason and the run goes on; an unchanged finished item is skipped."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import engine.io as io
from engine.cohort import manifest
from engine.cohort.items import Cohort, CohortItem, relative
from engine.cohort.lock import CohortBusy, OutputLock
from engine.cohort.threads import thread_counts
from engine.jobs import Cancelled, CancelToken, Progress, check_cancel

EventFn = Callable[[dict], None]
EXIT_SOME_FAILED = 3        # the run ended, some items failed (0: none did; 1 an unexpected error, 2 bad usage)


def no_events(event: dict) -> None:
    """The default event callback: ignores every event."""


@dataclass
class Summary:
    """How a run went, over every rank: items succeeded (synthesized now), skipped (finished before,
    unchanged), not applicable (nothing to do: a BIDS session without a source image) and failed; the
    thread pools' sizes during the run (rank 0's)."""

    items: int = 0
    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    not_applicable: int = 0
    seconds: float = 0.0
    world_size: int = 1
    threads: dict[str, int] = field(default_factory=dict)
    manifest: str = ""

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (every item done, skipped or not applicable), else :data:`EXIT_SOME_FAILED`."""
        return EXIT_SOME_FAILED if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def one_line(exc: BaseException) -> str:
    """An error as the one line the manifest keeps (its type when it has no message)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def synthesize_item(synth, item: CohortItem, volume, settings, progress, root: str | Path,
                    cancel: CancelToken | None = None) -> tuple[Any, str, dict]:
    """(the synthetic volume, its description, its provenance) of one item, with the checks ``synthesize``
    makes (:func:`engine.inference.synthesize_checked`: the source modality, the route, the input guard,
    the benchmark warnings); the provenance (:func:`engine.inference.provenance`) names the input
    relative to the cohort's ``root`` (an absolute path may hold a patient's name)."""
    from engine.inference import folders_cut, provenance, synthesize_checked

    result, description, checks = synthesize_checked(synth, volume, item.source, item.target, settings,
                                                     progress=progress, cancel=cancel)
    record = provenance(synth, checks, settings, volume, result, relative(item.path, root), description=description,
                        local=folders_cut(item.path, root))
    return result, description, record


def _write(result, description: str, provenance: dict, path: Path) -> None:
    """The output, then its provenance (:func:`engine.inference.save_described`: an earlier run's goes
    first, so a write cut short never leaves a new output described by an old sidecar)."""
    import engine.io as io
    from engine.inference import save_described

    save_described(path, lambda: io.save(result, path, description=description), provenance)


def earlier_output(out: Path, item: CohortItem) -> str:
    """What a failed item says of the output an earlier run left at its name ("" when none)."""
    left = out / item.output
    if not item.output or not left.exists():
        return ""
    return (f"; {item.output} is still the earlier run's output, made from the input as it was then (its "
            "provenance says how)")


def run_cohort(cohort: Cohort, synth, out: str | Path, settings, *, identity: Mapping[str, Any],
               on_event: EventFn = no_events, cancel: CancelToken | None = None, ctx=None) -> Summary:
    """Synthesize this process's items of ``cohort`` into ``out`` with ``synth`` (loaded once) and
    ``settings``. ``identity`` (the model's fingerprint, backend, precision) joins the settings in each
    item's fingerprint. ``ctx`` (:class:`engine.training.distributed.Distributed`) deals items by rank;
    rank 0 merges the manifest after every rank is done. ``on_event`` gets ``start``, ``progress`` (within
    an item) and ``item`` (each record) events. A folder another run holds raises :class:`CohortBusy`
    (a ValueError naming the holder) before anything is read. Cancelling raises :class:`Cancelled` (the item in flight
    stays ``started`` and is redone by the next run)."""
    from engine.training.distributed import Distributed

    ctx = ctx or Distributed()
    out = Path(out)
    lock = OutputLock(out)
    error = ""
    if ctx.is_main:                                 # one run per folder: held until the manifest is merged
        try:
            lock.acquire()
        except CohortBusy as exc:
            error = str(exc)
    if any(ctx.any(bool(error))):
        raise CohortBusy(error or f"{out}: another cohort run is writing to this output folder")
    try:
        return _run_locked(cohort, synth, out, settings, identity, on_event, cancel, ctx)
    finally:
        lock.release()


def _run_locked(cohort: Cohort, synth, out: Path, settings, identity: Mapping[str, Any], on_event: EventFn,
                cancel: CancelToken | None, ctx) -> Summary:
    from engine.inference import check_sidecar

    started = time.perf_counter()
    previous = manifest.read_state(out)
    ctx.barrier()                                   # every rank has read the state before any appends to it
    mine = list(cohort.items[ctx.rank::ctx.world_size])
    if ctx.is_main and cohort.convention == "bids":
        from engine.cohort.bids import write_dataset_description

        write_dataset_description(out, ",".join(sorted({i.target for i in cohort.items if i.target})), synth.name)
    threads = thread_counts()
    on_event({"event": "start", "items": len(cohort.items), "mine": len(mine), "rank": ctx.rank,
              "world_size": ctx.world_size, "convention": cohort.convention, "threads": threads})
    writer = manifest.PartWriter(out, ctx.rank)
    counts = {"done": 0, "skipped": 0, "failed": 0, "not-applicable": 0}

    def record(item: CohortItem, status: str, **fields) -> None:
        rec = writer.write({"item": item.key, "status": status, "rank": ctx.rank, "model": synth.name, **fields})
        if status in counts:
            counts[status] += 1
        on_event({"event": "item", **rec})

    inputs = {io.path_key(f) for item in cohort.items for f in (*item.files, item.path)}     # files and folders
    work: list[tuple[CohortItem, dict]] = []
    for item in mine:
        fingerprint = {"input": manifest.input_fingerprint(item.files, cohort.root),
                       "settings": manifest.digest({**identity, "settings": settings.to_dict(), "target": item.target,
                                                    "source": item.source})}
        if not item.error and io.written_keys(out / item.output) & inputs:
            item = replace(item, error=f"{item.path}: its output {out / item.output} is an input of this cohort; "
                                       "not overwritten")
        if not item.error:
            try:
                check_sidecar(out / item.output)    # a JSON there we did not write is never replaced
            except ValueError as exc:
                item = replace(item, error=str(exc))
        if item.error:
            record(item, "failed", output=item.output, seconds=0.0, error=item.error + earlier_output(out, item),
                   **fingerprint)
        elif item.not_applicable:
            record(item, "not-applicable", output="", seconds=0.0, error=item.not_applicable, **fingerprint)
        elif manifest.finished(previous.get(item.key), fingerprint, out, item.output):
            record(item, "skipped", output=item.output, seconds=0.0, error="", **fingerprint)
        else:
            work.append((item, fingerprint))

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-read") as reader:
            pending: Future | None = reader.submit(work[0][0].load) if work else None
            for index, (item, fingerprint) in enumerate(work):
                check_cancel(cancel)
                begun = time.perf_counter()
                loading, pending = pending, (reader.submit(work[index + 1][0].load) if index + 1 < len(work)
                                             else None)
                record(item, "started", output=item.output, **fingerprint)
                slices = [0.0]

                def progress(p: Progress, key: str = item.key, seen: list[float] = slices) -> None:
                    seen[0] = max(seen[0], p.total)
                    on_event({"event": "progress", "item": key, "done": p.done, "total": p.total})
                assert loading is not None                  # submitted for every item of ``work``
                try:
                    volume = loading.result()
                    result, description, provenance = synthesize_item(synth, item, volume, settings, progress, cohort.root,
                                                                      cancel)
                    _write(result, description, provenance, out / item.output)
                except Cancelled:
                    raise
                except Exception as exc:            # noqa: BLE001 — one bad input must not stop the cohort
                    record(item, "failed", output=item.output, seconds=round(time.perf_counter() - begun, 3),
                           error=one_line(exc) + earlier_output(out, item), **fingerprint)
                    continue
                record(item, "done", output=item.output, seconds=round(time.perf_counter() - begun, 3), error="",
                       route=provenance["Route"], slices=int(slices[0]), batch_size=synth.last_batch_size,
                       threads=thread_counts(), **fingerprint)
    finally:
        writer.close()
    ctx.barrier()
    totals = [int(sum(col)) for col in zip(*ctx.gather_floats([float(n) for n in counts.values()]))]
    merged = manifest.merge(out) if ctx.is_main else manifest.MANIFEST
    return Summary(items=len(cohort.items), succeeded=totals[0], skipped=totals[1], failed=totals[2],
                   not_applicable=totals[3],
                   seconds=round(time.perf_counter() - started, 3), world_size=ctx.world_size, threads=threads,
                   manifest=str(out / Path(merged).name))
