"""Run mutated files through ``engine.io.scan`` and ``load``, each in a forked child with a time
limit (killed past it) and an address-space limit (RLIMIT_AS: the memory budget above what the
child starts with), and classify each outcome:

- ``load``: every volume found loaded, with finite geometry;
- ``clean error``: one line naming the file (a :class:`VolumeIOError`), the contract;
- failures: ``unnamed error`` (a VolumeIOError not naming the file, or several lines),
  ``traceback`` (any other exception), ``out of memory`` (an allocation failed, a MemoryError or a
  native reader's std::bad_alloc however it was reported: the memory guard let it through; under
  RLIMIT_AS this, not the peak RSS, is where a guard miss shows),
  ``bad geometry`` (a volume with NaN/inf geometry), ``truncated, loaded`` (a NIfTI / MHA / NRRD
  file cut short, and nothing else done to it, that loaded other voxels than its seed's: the
  missing ones became something),
  ``crash`` (the child died), ``hang``.

The driver never runs a native reader itself: children are forked from a process whose reader
libraries have started no threads.
"""
from __future__ import annotations

import faulthandler
import json
import os
import platform
import re
import resource
import select
import shlex
import signal
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.io.fuzz.mutate import mutate
from engine.io.fuzz.seeds import make_seeds

OUTCOMES = ("load", "clean error", "unnamed error", "traceback", "out of memory", "bad geometry",
            "truncated, loaded", "crash", "hang")
FAILURES = OUTCOMES[2:]
DEFAULT_MEMORY = 2 << 30            # the budget a child may allocate above what it starts with
MAX_ENTRIES = 3                     # volumes loaded per input


def run_fuzz(inputs: int = 1000, seed: int = 0, timeout_s: float = 20.0, memory_bytes: int = DEFAULT_MEMORY,
             workers: int = 2, keep: str | Path | None = None, command: str = "",
             progress: Callable[[str], None] = lambda _line: None) -> dict:
    """Fuzz ``inputs`` mutated files (input ``i`` is mutation ``(seed, i)`` of one seed file) and
    return the report; failing inputs are copied to ``keep`` when given."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synermedgen-fuzz-") as scratch_name:
        scratch = Path(scratch_name)
        seeds = _in_child(lambda: [str(p) for p in make_seeds(scratch / "seeds")], timeout_s=120.0)
        seed_bytes = [(Path(p), Path(p).read_bytes()) for p in seeds]
        _import_readers()
        baseline = _rss_bytes()
        results: list[dict] = []
        running: dict[int, tuple[int, float, dict]] = {}     # read fd → (pid, deadline, case)
        next_index = 0
        while next_index < inputs or running:
            while next_index < inputs and len(running) < workers:
                case = _case(next_index, seed, seed_bytes, scratch)
                fd, pid = _start(case["file"], memory_bytes, timeout_s, case.pop("reference"))
                case["started"] = time.monotonic()
                running[fd] = (pid, case["started"] + timeout_s, case)
                next_index += 1
            ready, _, _ = select.select(list(running), [], [], 0.05)
            now = time.monotonic()
            for fd in list(running):
                pid, deadline, case = running[fd]
                if fd in ready:
                    case.update(_finish(fd, pid))
                elif now > deadline:
                    os.kill(pid, signal.SIGKILL)
                    _finish(fd, pid)
                    case.update(outcome="hang", message=f"no result after {timeout_s:g} s")
                else:
                    continue
                del running[fd]
                case["seconds"] = round(now - case.pop("started"), 3)
                _settle(case, keep)
                results.append(case)
                if len(results) % 100 == 0 or len(results) == inputs:
                    tally = Counter(r["outcome"] for r in results)
                    progress(f"{len(results)}/{inputs}: " + ", ".join(f"{k} {tally[k]}" for k in OUTCOMES if tally[k]))
    return _report(results, seeds, inputs, seed, timeout_s, memory_bytes, baseline, time.monotonic() - start, command)


def _import_readers() -> None:
    """Import the readers once here, not in every child (importing starts no reader threads)."""
    import nibabel  # noqa: F401
    import pydicom.pixels  # noqa: F401

    import engine.io
    import engine.io.dicom_read  # noqa: F401


def _case(index: int, seed: int, seed_bytes: list[tuple[Path, bytes]], scratch: Path) -> dict:
    rng = np.random.default_rng([seed, index])
    source, data = seed_bytes[int(rng.integers(len(seed_bytes)))]
    mutated, what = mutate(data, source.name, rng)
    suffix = "".join(source.suffixes[-2:]) if source.name.endswith(".nii.gz") else source.suffix
    target = scratch / f"input_{index:06d}{suffix}"
    target.write_bytes(mutated)
    kind = _kind(source.name)
    cut_only = re.fullmatch(r"truncated to \d+ of \d+ bytes", what) and kind in ("nifti", "mha", "nrrd")
    return {"index": index, "seed_file": f"{source.parent.name}/{source.name}", "kind": kind,
            "mutation": what, "file": str(target), "reference": str(source) if cut_only else None}


def _kind(name: str) -> str:
    lower = name.lower()
    for suffix, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".mha", "mha"), (".nrrd", "nrrd"),
                         (".dcm", "dicom"), (".png", "png")):
        if lower.endswith(suffix):
            return kind
    return "other"


def _start(path: str, memory_bytes: int, timeout_s: float, reference: str | None = None) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child: open the file under limits, report, exit
        os.close(read_fd)
        code = 0
        try:
            _limit(memory_bytes, timeout_s)
            result = attempt(path, reference)
        except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
            result = {"outcome": "traceback", "message": f"{type(exc).__name__} in the harness: {exc}"[:400]}
            code = 1
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    return read_fd, pid


def _limit(memory_bytes: int, timeout_s: float) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    faulthandler.disable()
    for limit, soft in ((resource.RLIMIT_AS, _vm_bytes() + memory_bytes), (resource.RLIMIT_CPU, int(timeout_s) + 5)):
        hard = resource.getrlimit(limit)[1]
        resource.setrlimit(limit, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    from engine.io.reader_process import run_here

    run_here()                                       # this child is the sandbox: read in place


def _drain(fd: int) -> bytes:
    """Everything a child writes to ``fd`` until it closes its end; ``fd`` is closed."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _finish(fd: int, pid: int) -> dict:
    sent = _drain(fd)
    _, status, usage = os.wait4(pid, 0)
    peak = usage.ru_maxrss * 1024
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return {"outcome": "crash", "message": f"killed by {sig}", "peak_rss": peak}
    try:
        result = json.loads(sent)
    except ValueError:
        return {"outcome": "crash", "message": f"exited with {os.WEXITSTATUS(status)} and no result", "peak_rss": peak}
    return {**result, "peak_rss": peak}


def attempt(path: str, reference: str | None = None) -> dict:
    """Scan ``path`` and load what it holds, in this process; what happened, as a dict. A file cut
    short from ``reference`` that loads must load the reference's voxels (DICOM and compressed
    streams may end in bytes that hold none)."""
    import warnings

    from engine import io
    from engine.io.errors import VolumeIOError

    warnings.simplefilter("ignore")
    name = Path(path).name
    try:
        catalog = io.scan(path)
        for k, entry in enumerate(catalog.entries[:MAX_ENTRIES]):
            volume = io.load(f"{path}#0") if entry.volumes > 1 else entry.load()
            if k == 0 and reference is not None:
                whole = io.load(f"{reference}#0" if entry.volumes > 1 else reference)
                if not np.array_equal(whole.array, volume.array, equal_nan=True):
                    return {"outcome": "truncated, loaded", "message": "voxels differ from the whole file's"}
            geometry = np.array([*volume.spacing, *volume.origin, *volume.direction], dtype=float)
            if not np.all(np.isfinite(geometry)):
                return {"outcome": "bad geometry", "message": f"spacing {volume.spacing}, origin {volume.origin}"}
    except Exception as exc:  # noqa: BLE001 - what the contract forbids, recorded with where it came from
        if _allocation_failed(exc):
            return {"outcome": "out of memory", "message": f"{str(exc)[:200]} {_where(traceback.format_exc())}"}
        if isinstance(exc, VolumeIOError):
            text = str(exc)
            clean = name in text and "\n" not in text
            return {"outcome": "clean error" if clean else "unnamed error", "message": text[:400]}
        return {"outcome": "traceback", "message": f"{type(exc).__name__}: {str(exc)[:200]} {_where(traceback.format_exc())}"}
    return {"outcome": "load", "message": ""}


def _allocation_failed(exc: BaseException) -> bool:
    """An error caused by an allocation that failed after the memory guard let the reading through:
    under the child's RLIMIT_AS a native reader's std::bad_alloc becomes an error (often a clean
    one), so a guard miss shows here and hardly ever as a peak above the budget."""
    from engine.io.reader_process import OUT_OF_MEMORY, allocation_failed

    causes = (exc, exc.__cause__, exc.__context__)
    return OUT_OF_MEMORY in str(exc) or any(c is not None and allocation_failed(c) for c in causes)


def _where(text: str) -> str:
    """The innermost frame of the traceback and the innermost of the project's own."""
    frames = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("File ")]
    ours = [f for f in frames if "/engine/" in f]
    shown = dict.fromkeys(f for f in (ours[-1:] + frames[-1:]))
    return f"({' ← '.join(shown)})" if shown else ""


def _in_child(work: Callable[[], list[str]], timeout_s: float) -> list[str]:
    """``work()`` in a forked child (the driver stays free of native reader threads)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            from engine.io.reader_process import run_here

            run_here()
            os.write(write_fd, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], timeout_s)
    if ready:
        sent = _drain(read_fd)
    else:
        os.close(read_fd)
        sent = b""
    os.waitpid(pid, 0)
    if not sent:
        raise RuntimeError("the fuzzer's seed files could not be written")
    return json.loads(sent)


def _settle(case: dict, keep: str | Path | None) -> None:
    path = Path(case.pop("file"))
    if keep is not None and case["outcome"] in FAILURES:
        Path(keep).mkdir(parents=True, exist_ok=True)
        path.replace(Path(keep) / path.name)
    else:
        path.unlink(missing_ok=True)


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _report(results: list[dict], seeds: list[str], inputs: int, seed: int, timeout_s: float, memory_bytes: int,
            baseline: int, seconds: float, command: str) -> dict:
    tally = Counter(r["outcome"] for r in results)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_kind[r["kind"]][r["outcome"]] += 1
    peak = max((r.get("peak_rss", 0) for r in results), default=0)
    failures = [r for r in results if r["outcome"] in FAILURES]
    return {
        "command": command, "inputs": inputs, "seed": seed, "timeout_s": timeout_s, "seed_files": len(seeds),
        "memory_budget_bytes": memory_bytes, "driver_rss_bytes": baseline, "peak_rss_bytes": peak,
        "peak_within_budget": peak <= baseline + memory_bytes,
        "outcomes": {k: tally[k] for k in OUTCOMES}, "failures": len(failures),
        "by_kind": {kind: {k: c[k] for k in OUTCOMES if c[k]} for kind, c in sorted(by_kind.items())},
        "errors_naming_their_file": tally["clean error"],
        "seconds": round(seconds, 1), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "failed_inputs": failures[:100],
        "slowest_inputs": sorted(results, key=lambda r: -r["seconds"])[:5],
    }


def to_text(report: dict) -> str:
    lines = [(f"fuzzed {report['inputs']} inputs from {report['seed_files']} seed files in {report['seconds']} s "
              f"(seed {report['seed']}, {report['timeout_s']:g} s and {report['memory_budget_bytes'] >> 20} MiB per input)")]
    lines += [f"  {k:<14} {v}" for k, v in report["outcomes"].items()]
    lines.append(f"peak memory of a child {report['peak_rss_bytes'] >> 20} MiB (driver {report['driver_rss_bytes'] >> 20} MiB"
                 f" + budget {report['memory_budget_bytes'] >> 20} MiB: {'within' if report['peak_within_budget'] else 'OVER'})")
    for kind, counts in report["by_kind"].items():
        lines.append(f"  {kind:<6} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in report["failed_inputs"][:20]:
        lines.append(f"FAIL #{r['index']} {r['outcome']}: {r['seed_file']} [{r['mutation']}] {r['message']}")
    for r in report["slowest_inputs"]:
        lines.append(f"slow #{r['index']} {r['seconds']:.2f} s {r['outcome']}: {r['seed_file']} [{r['mutation']}]")
    if report["command"]:
        lines.append(f"command: {report['command']}")
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    rows = "".join(f"| {k} | {v} |\n" for k, v in report["outcomes"].items())
    return (f"Fuzzing: {report['inputs']} mutated inputs from {report['seed_files']} seed files "
            f"(`{report['command']}`, {report['machine']}, {report['seconds']} s)\n\n| outcome | inputs |\n|---|---|\n{rows}")


def command_line(inputs: int, seed: int, timeout_s: float, memory_bytes: int) -> str:
    words = ["python", "main.py", "bench", "fuzz", "--inputs", str(inputs), "--seed", str(seed)]
    words += [] if timeout_s == 20 else ["--timeout", f"{timeout_s:g}"]
    words += [] if memory_bytes == DEFAULT_MEMORY else ["--memory-mib", str(memory_bytes >> 20)]
    return shlex.join(words)
