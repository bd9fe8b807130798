"""``--threads N``: one bound on every thread pool a synthesis uses — torch's intra- and inter-op
pools, SimpleITK's readers and filters, the BLAS / OpenMP libraries numpy, scipy and torch loaded
(through threadpoolctl), the reader process's pools (:func:`engine.io.reader_process.limit_threads`),
and ONNX Runtime (its sessions take torch's thread count when created, so
the bound must be set before the model is opened)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Bound every pool to ``threads`` inside the block (None: leave them), then put back the sizes
    they had (torch's inter-op pool can only be sized before its first use, so it may stay)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    import numpy  # noqa: F401 - load the BLAS libraries before they are bounded
    import scipy.linalg  # noqa: F401
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    from engine.io import reader_process

    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    reader_before = reader_process.limit_threads(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:            # only possible before the first inter-op work of the process
        pass
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])
        reader_process.limit_threads(reader_before)


def thread_counts() -> dict[str, int]:
    """The pools' sizes as they are now, the reader process's as it reports them (recorded in the run
    manifest, so a bound is checked, not assumed)."""
    import torch

    from engine.io import reader_process

    here, reader = reader_process.pool_sizes(), reader_process.native("the reader process", reader_process.pool_sizes)
    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(), **here,
            "reader_itk": reader["itk"], "reader_blas": reader["blas"]}
