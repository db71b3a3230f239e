"""Scratch buffers kept between calls for the engines' large per-call temporaries.

A training step at B=64, T=256, H=256 allocates the backward's gate gradients (``da``, 50 MB)
afresh on every call. glibc's allocator maps a block that large from the OS on each allocation and
unmaps it when freed (above its largest mmap threshold, 32 MiB on 64-bit), so every call pays a
page fault per 4 KB page: on this 2-vCPU machine allocating and first writing 50 MB took
10.5-11.7 ms against 1.8-1.9 ms for writing a buffer already mapped. The temporaries never leave
the call that uses them, so one buffer per name and dtype is kept and lent to the next call.
Smaller temporaries are left to the allocator, which recycles them through its heap for every
user of the process (keeping them too made the framework's own allocations in the same process
fault more).

Rules: a lent view is valid only inside its ``with`` block and nothing returned to a caller may
alias it; a call that finds its buffer lent out (another thread) allocates its own; requests below
``SCRATCH_MIN_BYTES`` or above ``SCRATCH_MAX_BYTES`` are not kept. :func:`release_scratch` frees
every kept buffer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

SCRATCH_MIN_BYTES = 32 * 2**20  # glibc's largest mmap threshold: smaller blocks are recycled by its heap
SCRATCH_MAX_BYTES = 256 * 2**20  # a larger temporary is allocated per call and not kept

_FREE: dict[tuple[str, torch.dtype], Tensor] = {}


def pages_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor over a NumPy allocation, for the large arrays that stay inside the
    engine (saved activations, scratch buffers). NumPy asks the kernel to back allocations from
    4 MB up with transparent huge pages (Linux ``madvise``; honoured where THP is ``madvise`` or
    ``always``), so the first writes fault once per 2 MB instead of once per 4 KB; torch's CPU
    allocator does not (unless ``THP_MEM_ALLOC_ENABLE`` is set before it starts). On this machine
    a training forward that saves its gates ran 66 against 85 ms (1.5 against 20.5 thousand page
    faults). Such a tensor cannot be resized, so outputs handed to callers keep torch's allocator."""
    return torch.from_numpy(np.empty(shape, np.float32 if dtype == torch.float32 else np.float64))


@contextmanager
def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Iterator[Tensor]:
    """An uninitialised C-contiguous tensor of ``shape`` and ``dtype`` for the ``with`` block, lent
    from the buffer kept under ``name`` (grown when too small)."""
    n = math.prod(shape)
    if not SCRATCH_MIN_BYTES <= n * dtype.itemsize <= SCRATCH_MAX_BYTES:
        yield torch.empty(shape, dtype=dtype)
        return
    key = (name, dtype)
    buf = _FREE.pop(key, None)  # atomic: a concurrent call finds nothing and allocates its own
    if buf is None or buf.numel() < n:
        buf = pages_empty((n,), dtype)
    try:
        yield buf[:n].view(shape)
    finally:
        _FREE[key] = buf


HUGE_PAGE = 2 * 2**20
PAGES_MAX_BYTES = 64 * 2**20  # the largest page-aligned buffer kept
_PAGES: dict[tuple[str, np.dtype], np.ndarray] = {}


def lend_pages(name: str, n: int, dtype: np.dtype) -> np.ndarray:
    """A 1-D array of at least ``n`` elements that starts on a 2 MB boundary and lies in
    transparent huge pages where the OS grants them (NumPy asks from 4 MB up, see
    :func:`pages_empty`): physically contiguous memory, whose lines spread evenly over the cache
    sets. Kept under ``name`` between calls and lent to one caller at a time (a caller that finds
    it lent out, in another thread, gets one of its own); :func:`give_back` returns it. Empty when
    ``n`` elements exceed ``PAGES_MAX_BYTES`` (the caller then allocates as it would without)."""
    if n * dtype.itemsize > PAGES_MAX_BYTES:
        return np.empty(0, dtype)
    buf = _PAGES.pop((name, dtype), None)  # atomic: a concurrent call finds nothing
    if buf is None or buf.shape[0] < n:
        size = max(4 * 2**20, n * dtype.itemsize + HUGE_PAGE)
        raw = np.empty(size // dtype.itemsize, dtype)
        start = (-raw.ctypes.data % HUGE_PAGE) // dtype.itemsize
        buf = raw[start : start + (size - HUGE_PAGE) // dtype.itemsize]
    return buf


def give_back(name: str, buf: np.ndarray) -> None:
    """Keep ``buf`` (from :func:`lend_pages`) for the next caller of ``name``."""
    if buf.shape[0]:
        _PAGES[(name, buf.dtype)] = buf


def release_scratch() -> None:
    """Free every scratch buffer kept between calls (they are allocated again on the next call)."""
    _FREE.clear()
    _PAGES.clear()
