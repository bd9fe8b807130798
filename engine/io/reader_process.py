"""The reader process: native readers (SimpleITK / ITK, image codecs) run in a child process with a
time and memory limit, so a crash, a hang or a runaway allocation on a hostile file ends in one
clear error naming the file instead of taking the app or the command line down.

``native(path, fn, *args)`` runs ``fn(*args)`` there and returns its result; one child serves the
whole program, one request at a time, started on first use and again after it died. A process
that is itself such a sandbox (the fuzzer's children) calls :func:`run_here` to read in place, as
daemonic processes (DataLoader workers, the app's synthesis process) do, which may start none.
:func:`limit_threads` bounds the reader process's thread pools (SimpleITK, BLAS / OpenMP) from its
next request on; :func:`pool_sizes`, run through ``native``, reports them.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from engine.io.errors import VolumeIOError
from engine.jobs import Cancelled, CancelToken

HEADER_TIMEOUT_S = 20.0            # a header, a picture, a slice: never longer than this
BYTES_PER_SECOND = 10 << 20        # loading a volume may take this much longer per byte of its peak
SLACK_BYTES = 1 << 30              # address space above the reading's own peak (libraries, the allocator)
SLACK_PER_CPU = 32 << 20           # and per core: ITK starts a thread per core (its stack, its buffers)
CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}    # glibc reserves 64 MiB of address space per arena, up to 8 per core
POLL_S = 0.05

_here = False
_threads: int | None = None        # the bound sent with every request (None: the reader's own defaults)


def run_here() -> None:
    """Read in this process from now on (it is a sandbox itself)."""
    global _here
    _here = True


def limit_threads(threads: int | None) -> int | None:
    """Bound the reader process's thread pools to ``threads`` from its next request on (None: put
    back their defaults); returns the bound this replaces."""
    global _threads
    before, _threads = _threads, threads
    return before


def pool_sizes() -> dict[str, int]:
    """The thread pools' sizes where it runs (through ``native``: in the reader process)."""
    import SimpleITK as sitk
    from threadpoolctl import threadpool_info

    return {"itk": int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()),
            "blas": max((int(pool["num_threads"]) for pool in threadpool_info()), default=0)}


def native(path: str | Path, fn: Callable[..., Any], *args: Any, peak_bytes: int = 0,
           cancel: CancelToken | None = None) -> Any:
    """``fn(*args)`` (a module-level function) in the reader process, for the file ``path``: a
    :class:`VolumeIOError` naming ``path`` when the reader crashes, runs past its time (longer for
    a larger ``peak_bytes``) or fails unexpectedly; a numpy array result comes back without copies."""
    if _here or multiprocessing.current_process().daemon:
        return fn(*args)           # a daemonic process (a DataLoader worker) may start none: it is a sandbox itself
    timeout_s = HEADER_TIMEOUT_S + peak_bytes / BYTES_PER_SECOND
    slack = SLACK_BYTES + (os.cpu_count() or 1) * SLACK_PER_CPU
    return _process().call(Path(path), fn, args, peak_bytes + slack, timeout_s, cancel)


class _ReaderProcess:
    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")     # never fork a process that may run Qt
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None         # set and cleared together with the process
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def call(self, path: Path, fn: Callable, args: tuple, memory_bytes: int, timeout_s: float,
             cancel: CancelToken | None) -> Any:
        while not self._lock.acquire(timeout=POLL_S):         # another thread's reading: wait, cancellably
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
        try:
            kind, payload = self._exchange(path, fn, args, memory_bytes, timeout_s, cancel)
        finally:
            self._lock.release()
        if kind == "ok":
            return payload
        if kind == "error":
            raise VolumeIOError(*payload)
        raise VolumeIOError(path, payload)

    def _exchange(self, path: Path, fn: Callable, args: tuple, memory_bytes: int, timeout_s: float,
                  cancel: CancelToken | None) -> tuple[str, Any]:
        """One request and its reply, under the lock; an array reply is ("ok", the result)."""
        process, conn = self._ensure_started()
        conn.send((fn.__module__, fn.__qualname__, args, memory_bytes, _threads))
        deadline = time.monotonic() + timeout_s
        while not conn.poll(POLL_S):
            if cancel is not None and cancel.cancelled:
                self._stop()
                raise Cancelled()
            if not process.is_alive():
                raise self._died(path)
            if time.monotonic() > deadline:
                self._stop()
                raise VolumeIOError(path, f"reading it took longer than {timeout_s:.0f} s and was stopped; the "
                                          f"file is damaged, or on a drive too slow to read it from")
        try:
            kind, payload = conn.recv()
            if kind == "array":
                shape, dtype, rest = payload
                array = np.empty(shape, dtype=dtype)
                if array.nbytes:
                    conn.recv_bytes_into(array.data.cast("B"))
                return "ok", _with_array(rest, array)
        except (EOFError, OSError):
            raise self._died(path) from None
        except multiprocessing.BufferTooShort:
            self._stop()                             # the pipe is out of step: start afresh next time
            raise VolumeIOError(path, "the image reader sent more voxel data than it announced; the file "
                                      "is damaged or not a valid image") from None
        return kind, payload

    def _ensure_started(self) -> tuple[BaseProcess, Connection]:
        if self._process is not None and self._process.is_alive():
            assert self._conn is not None, "the pipe is set and cleared together with the process"
            return self._process, self._conn
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve, args=(child,), daemon=True, name="synermedgen-reader")
        main = sys.modules.get("__main__")
        # the child needs nothing of the main script: spawn would run a script without a __main__ guard again
        sys.modules["__main__"] = types.ModuleType("__main__")
        saved = {key: os.environ.get(key) for key in CHILD_ENV}
        os.environ.update(CHILD_ENV)                 # the child's environment is this one at its start
        try:
            process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if main is not None:
                sys.modules["__main__"] = main
            child.close()
        self._process, self._conn = process, parent
        return process, parent

    def _died(self, path: Path) -> VolumeIOError:
        assert self._process is not None, "called while the started process is still held"
        self._process.join(1.0)
        code = self._process.exitcode
        self._stop()
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"stopped (exit code {code})")
        return VolumeIOError(path, f"the image reader {how} on this file: it is damaged or not a valid image "
                                   f"(or too large for the memory available)")

    def _stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5.0)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def close(self) -> None:
        if os.getpid() != self._pid:            # a forked child's copy: the process is its parent's
            return
        with self._lock:
            if self._process is not None and self._conn is not None and self._process.is_alive():
                try:
                    self._conn.send(None)
                    self._process.join(2.0)
                except (OSError, ValueError):
                    pass
            self._stop()


_instance: _ReaderProcess | None = None
_instance_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child starts its own reader process: the parent's pipe and lock are not its own."""
    global _instance, _instance_lock
    _instance, _instance_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _process() -> _ReaderProcess:
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = _ReaderProcess()
            atexit.register(_instance.close)
        return _instance


# -- the child ------------------------------------------------------------------------------------------
def serve(conn) -> None:
    """The reader process's loop: one request at a time until told to stop (or the pipe closes)."""
    import importlib

    run_here()
    bound = _ThreadBound()
    quiet = os.open(os.devnull, os.O_WRONLY)     # native readers print warnings of their own; the errors say it all
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        module, name, args, memory_bytes, threads = request
        bound.set(threads)
        restore = _limit_address_space(memory_bytes)
        try:
            fn = getattr(importlib.import_module(module), name)
            result = fn(*args)
        except VolumeIOError as exc:
            conn.send(("error", (exc.path, exc.problem)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a reader's failure on a damaged file, as one line
                                      # (codecs written in Rust raise PanicException, a BaseException)
            detail = " ".join(str(exc).split())[:200]
            conn.send(("failed", OUT_OF_MEMORY if allocation_failed(exc)
                       else f"cannot be read ({type(exc).__name__}: {detail})"))
        else:
            _send(conn, result)
        finally:
            restore()


OUT_OF_MEMORY = "reading it needs more memory than is available"
_NATIVE_ALLOCATION_FAILURES = ("std::bad_alloc", "bad_alloc", "Failed to allocate memory", "MemoryAllocationError",
                               "Cannot allocate memory")


def allocation_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: Python's MemoryError, or a native reader's
    (std::bad_alloc, ITK's MemoryAllocationError) passed on as another exception."""
    return isinstance(exc, MemoryError) or any(text in str(exc) for text in _NATIVE_ALLOCATION_FAILURES)


def _limit_address_space(memory_bytes: int) -> Callable[[], None]:
    """Limit this process's address space to what it maps now plus ``memory_bytes``; returns what
    lifts the limit again. Where that cannot be done (Windows has no ``resource``; macOS has no
    /proc to measure from and does not enforce RLIMIT_AS) nothing is limited: the timeout and the
    memory guard before the read still hold."""
    try:
        import resource
    except ImportError:
        return _nothing
    used = _vm_bytes()
    if not used or not hasattr(resource, "RLIMIT_AS"):
        return _nothing
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + memory_bytes
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    except (ValueError, OSError):
        return _nothing
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _nothing() -> None:
    pass


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")    # for libraries loaded later


class _ThreadBound:
    """The reader process's side of :func:`limit_threads`: SimpleITK's pool, the BLAS / OpenMP pools
    (through threadpoolctl) and the thread variables bounded, or put back as the process started with."""

    def __init__(self) -> None:
        self.threads: int | None = None
        self._defaults: tuple[int, Any, dict[str, str | None]] | None = None

    def set(self, threads: int | None) -> None:
        if threads == self.threads:
            return
        import SimpleITK as sitk
        from threadpoolctl import threadpool_limits

        if self._defaults is None:
            self._defaults = (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), threadpool_limits(limits=None),
                              {name: os.environ.get(name) for name in _THREAD_VARIABLES})
        itk, blas, variables = self._defaults
        if threads is None:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk)
            blas.restore_original_limits()
            for name, value in variables.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        else:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            threadpool_limits(limits=threads)
            os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
        self.threads = threads


def _send(conn, result: Any) -> None:
    array, rest = _without_array(result)
    if array is None:
        conn.send(("ok", result))
        return
    array = np.ascontiguousarray(array)
    conn.send(("array", (array.shape, array.dtype.str, rest)))
    if array.nbytes:
        conn.send_bytes(array.data.cast("B"))


def _without_array(result: Any) -> tuple[np.ndarray | None, Any]:
    """The big array of a result (an array, or a Volume's), and the rest to pickle."""
    from engine.io.volume import Volume

    if isinstance(result, np.ndarray):
        return result, None
    if isinstance(result, Volume):
        return result.array, result.replace(array=np.zeros((1, 1, 1), np.float32))
    return None, result


def _with_array(rest: Any, array: np.ndarray) -> Any:
    return array if rest is None else rest.replace(array=array)


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return 0
