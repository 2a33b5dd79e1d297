"""Worker threads for the numba kernels, which release the GIL: a volume is cut into slabs of planes,
one slab per thread.

Shared by the deformable stage (deformable.py, diffeomorphic.py) and the Gaussian smoothing
(smoothing.py), so a process keeps one pool, sized to the CPUs it may use.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# The process's CPUs, at most this many.
MAX_THREADS = 16


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    """One shared pool of worker threads for the GIL-free kernels."""
    return ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="oneclick-kernels")


def thread_count() -> int:
    """The CPUs this process may use, capped at MAX_THREADS."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(available or 1, MAX_THREADS))


def run_slabs(kernel, planes: int, *arguments) -> None:
    """kernel(*arguments, start, stop) over the planes [0, planes), one slab per worker thread."""
    slabs = min(thread_count(), planes)
    bounds = np.linspace(0, planes, slabs + 1).astype(np.int64)
    if slabs <= 1:
        kernel(*arguments, 0, planes)
        return
    futures = [_pool().submit(kernel, *arguments, int(start), int(stop))
               for start, stop in zip(bounds[:-1], bounds[1:]) if stop > start]
    for future in futures:
        future.result()
