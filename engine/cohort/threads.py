"""``--threads N``: one bound on every thread pool a synthesis uses — torch's intra- and inter-op
pools, SimpleITK's readers and filters, the BLAS / OpenMP libraries numpy, scipy and torch loaded
(through threadpoolctl), and ONNX Runtime (its sessions take torch's thread count when created, so
the bound must be set before the model is opened)."""
from __future__ import annotations

import contextlib
from typing import Iterator


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

    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
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


def thread_counts() -> dict[str, int]:
    """The pools' sizes as they are now (recorded in the run manifest, so a bound is checked, not assumed)."""
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_info

    blas = [int(pool["num_threads"]) for pool in threadpool_info()]
    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
            "itk": int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()), "blas": max(blas, default=0)}
