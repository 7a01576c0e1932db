"""Process memory settings for long-running jobs: malloc for CPU training, the garbage collector for serving.

`keep_freed_memory`: glibc's malloc serves blocks above a threshold (at most 32 MiB by default) with mmap
and unmaps them on free, so a training step's large temporaries are page-faulted in again on every step: on the
layer benchmark's large config a fresh 32 MiB SiLU output costs 17 ms where the arithmetic takes 4. Raising the
mmap and trim thresholds keeps those blocks in the heap; the price is that the process keeps its peak memory.
jemalloc or tcmalloc (via LD_PRELOAD) are the usual alternatives where they are installed.

`frozen_heap`: a server's loaded models and libraries live as long as it does, yet every full collection of
Python's cyclic garbage collector walks all of them. Under load on /v1/predict that walk was half of the
framework's time per request (428 → 225 µs in process on a 32-position input); `gc.freeze` exempts them.

`saved_for_backward`: the activation memory of a training step, what autograd holds until backward runs.
"""

import ctypes
import ctypes.util
import gc
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
LARGEST = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse; True if it could (glibc on Linux), else False.

    Process-wide and not undone, so it is for applications (`mor train` calls it), not for library code.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(option, LARGEST) == 1 for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Exempt every object alive on entry from garbage collection until exit (`gc.freeze`); process-wide.

    For a service after it has loaded what it serves: objects made later are collected as usual. Objects that
    become garbage while frozen are freed only after exit, so enter it once, when start-up is done.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def saved_for_backward(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps for backward while `fn` runs; leaves that require grad (parameters,
    inputs) and views of them excepted, since they are alive anyway. A storage saved twice counts once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if not (base.is_leaf and base.requires_grad):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())
