"""Run a compiled chunk kernel over threads: the launcher of the variant engines.

The kernels of :mod:`grulab.engine.mingru_cpu` and :mod:`grulab.engine.variants_cpu` take
``(c, nchunks, ...)`` and process chunk ``c`` of their rows; chunks never interact. They compile
with ``nogil``, so plain Python threads run them in parallel. This replaces a ``parallel=True``
wrapper per kernel (``prange`` over chunks): such a wrapper is compiled again with the whole
kernel inlined into it, which doubled the first-use compile time for the same speed.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import torch

from grulab.engine._jitmath import ftz_enter, ftz_leave

MIN_ROWS_PER_CHUNK = 4  # below this a chunk's small GEMMs degenerate to matrix-vector products

_POOL: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _forget_pools() -> None:
    """A forked child inherits the pools but not their threads: start afresh there."""
    global _LOCK
    _POOL.clear()
    _HELPER.clear()
    _HELPER_TID.clear()
    _HELPER_MASK.clear()
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def threads() -> int:
    """Threads to use: torch's intra-op setting, capped by Numba's (``NUMBA_NUM_THREADS``)."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def cpus_available() -> int:
    """CPUs this thread may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def chunks(rows: int, min_rows: int = MIN_ROWS_PER_CHUNK, n_threads: int | None = None) -> int:
    """How many chunks to split ``rows`` independent rows into: one per thread (``n_threads``, by
    default :func:`threads`), ``min_rows`` each."""
    return max(1, min(threads() if n_threads is None else n_threads, rows // min_rows))


def _pool(workers: int) -> ThreadPoolExecutor:
    with _LOCK:
        if workers not in _POOL:
            _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="grulab")
        return _POOL[workers]


_HELPER_TID: list[int] = []  # native id of the helper thread (_Helper), once it has started
_HELPER_MASK: list[set[int]] = []  # the CPU set last given to it
try:  # PyDLL: the call keeps the GIL (a CDLL call releases it, and the helper, back from its last
    # task, took it then: the next task's hand-over cost 77 against 91 us per call back to back)
    _sched_getcpu = ctypes.PyDLL(None).sched_getcpu
except (AttributeError, OSError):  # not glibc/Linux: no placement, the scheduler decides
    _sched_getcpu = None


def _record_tid() -> None:
    _HELPER_TID[:] = [threading.get_native_id()]


def _keep_off_this_cpu() -> None:
    """Keep the helper thread off the CPU the calling thread runs on. Woken by a thread that keeps
    running, a sleeping thread is often queued on the waker's CPU (which has its data in cache) and
    waits there, milliseconds on a virtual machine, until a load balancer moves it to the idle CPU."""
    if _sched_getcpu is None or not _HELPER_TID or not hasattr(os, "sched_setaffinity"):
        return
    allowed = os.sched_getaffinity(0)
    mask = allowed - {_sched_getcpu()}
    if not mask or _HELPER_MASK == [mask]:
        return
    try:
        os.sched_setaffinity(_HELPER_TID[0], mask)
        _HELPER_MASK[:] = [mask]
    except OSError:  # the thread is gone (a forked child) or the set is not allowed: leave it to the scheduler
        pass


def _float32_call(args: tuple) -> bool:
    """Whether a kernel call computes in float32: the dtype of its first floating-point array (the
    kernels take one floating dtype throughout). Stops at that array, so a call with dozens of
    arguments costs no scan of them all."""
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            return a.dtype == np.float32
    return False


def flushing_call(kernel: Callable[..., Any], *args: Any) -> None:
    """``kernel(*args)`` with subnormal float32 numbers flushed to zero on this thread, if any of its
    arrays is float32. Saturated gates make subnormal products (``z (h_tilde - h)`` with ``z`` near
    1e-38), and x86 cores take a slow path for each: a forward with saturated weights ran 1.6x
    slower (112 ms against 75 ms at B=64, T=256, H=256). The flushed values are below 1.2e-38, far
    below float32's resolution of any state or gradient they are added to; float64 keeps IEEE
    subnormals (its path is the accuracy reference)."""
    if not _float32_call(args):
        kernel(*args)
        return
    old = ftz_enter()
    try:
        kernel(*args)
    finally:
        ftz_leave(old)


class _Helper:
    """One long-lived thread that runs the kernels submitted to it, in order, and nothing else: the
    partner of a caller that works with it in lockstep (the unit split). A ``SimpleQueue`` hands
    it each task: after an idle spell, ``ThreadPoolExecutor.submit`` (a future, locks, a work
    item, a thread-count check) cost 90-120 us of the caller's time, the queue's ``put`` a
    fraction of it. The caller synchronises with the kernel through its arguments (flags), not
    through the task; an exception in the kernel is kept in ``errors`` (the kernels validate
    nothing at run time that their launchers have not checked). The kernel runs as it is: one
    that computes in float32 sets flush-to-zero itself (``cpu._gru_fwd_units_worker``)."""

    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), name="grulab-helper", daemon=True)
        self.thread.start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        _record_tid()
        started.set()
        while True:
            kernel, args = self.tasks.get()
            try:
                kernel(*args)
            except BaseException as e:  # noqa: BLE001 (kept for the caller to inspect; the thread goes on)
                del self.errors[:-7]
                self.errors.append(e)


_HELPER: list[_Helper] = []


def submit_helper(kernel: Callable[..., Any], *args: Any) -> None:
    """``kernel(*args)`` on the helper thread (:class:`_Helper`), placed on another CPU than the
    caller's, for a kernel the caller works with in lockstep. Returns at once; the caller learns
    that the kernel has run from the flags it shares with it."""
    if not _HELPER:
        with _LOCK:
            if not _HELPER:
                _HELPER.append(_Helper())
    _keep_off_this_cpu()
    _HELPER[0].tasks.put((kernel, args))


def run_chunks(kernel: Callable[..., Any], n: int, *args: Any) -> None:
    """``kernel(c, n, *args)`` for ``c = 0 .. n-1``: chunk 0 on this thread, the others on a pool."""
    if n == 1:
        flushing_call(kernel, 0, 1, *args)
        return
    futures = [_pool(n - 1).submit(flushing_call, kernel, c, n, *args) for c in range(1, n)]
    try:
        flushing_call(kernel, 0, n, *args)
    finally:
        for f in futures:
            f.result()  # re-raises a worker's exception here
