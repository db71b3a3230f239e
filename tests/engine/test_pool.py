"""The chunk launcher of the variant engines (every chunk runs once, errors surface, forks work) and the
unit split's helper thread."""

import multiprocessing as mp
import threading

import pytest
import torch

from grulab.engine import _pool


def test_every_chunk_runs_once_on_its_own_slice():
    seen = []
    lock = threading.Lock()

    def kernel(c, n, out):
        with lock:
            seen.append((c, n))
        out[c] = c + 1

    out = [0] * 3
    _pool.run_chunks(kernel, 3, out)
    assert sorted(seen) == [(0, 3), (1, 3), (2, 3)] and out == [1, 2, 3]
    _pool.run_chunks(kernel, 1, out)
    assert (0, 1) in seen


def test_a_worker_error_is_raised_in_the_caller():
    def kernel(c, n):
        if c == 1:
            raise RuntimeError("chunk 1 failed")

    with pytest.raises(RuntimeError, match="chunk 1 failed"):
        _pool.run_chunks(kernel, 2)


def test_chunks_respect_threads_and_minimum_rows(monkeypatch):
    monkeypatch.setattr(_pool, "threads", lambda: 4)
    assert _pool.chunks(3) == 1 and _pool.chunks(9) == 2 and _pool.chunks(1000) == 4
    assert _pool.chunks(1000, min_rows=400) == 2


def _child(q):
    from grulab.engine.variants_cpu import variant_gru_cpu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 3, generator=g)
    args = (x, torch.zeros(16, 4), torch.randn(12, 3, generator=g), torch.randn(12, 4, generator=g), None, None)
    q.put(float(variant_gru_cpu(*args)[1].sum()))


def test_a_forked_child_gets_fresh_threads(monkeypatch):
    """The parent's pool threads do not exist in a fork; without a fresh pool the child would hang."""
    monkeypatch.setattr(_pool, "threads", lambda: 2)  # two chunks of 8 rows, so the pool is used
    _pool.run_chunks(lambda c, n: None, 2)  # the parent has a pool
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    _child(q)
    expected = q.get(timeout=60)
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=120)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hung in run_chunks")
    assert p.exitcode == 0 and q.get(timeout=5) == expected


def test_stale_kernel_caches_are_dropped_when_an_engine_source_is_newer(tmp_path):
    """Numba's cache of a kernel does not notice edits to the files it compiles code from; the
    package drops cache files older than the newest engine source when it is imported."""
    import os

    from grulab.engine import _drop_stale_kernel_caches

    (tmp_path / "engine" / "__pycache__").mkdir(parents=True)
    (tmp_path / "other" / "__pycache__").mkdir(parents=True)
    old = [tmp_path / "engine" / "__pycache__" / "cpu.k-1.py311.nbi", tmp_path / "other" / "__pycache__" / "b.k-2.nbc"]
    fresh = tmp_path / "engine" / "__pycache__" / "cpu.k-3.py311.nbi"
    keep = tmp_path / "engine" / "__pycache__" / "cpu.cpython-311.pyc"
    for f in (*old, fresh, keep):
        f.write_text("x")
    src = tmp_path / "engine" / "_jitmath.py"
    src.write_text("# edited")
    for f in (*old, keep):
        os.utime(f, (1000, 1000))
    os.utime(src, (2000, 2000))
    os.utime(fresh, (3000, 3000))
    assert _drop_stale_kernel_caches(tmp_path) == 2
    assert not any(f.exists() for f in old) and fresh.exists() and keep.exists()


def test_helper_thread_runs_submitted_kernels_and_keeps_their_errors():
    done = threading.Event()
    where = []
    _pool.submit_helper(lambda a: where.append(threading.get_native_id()) or done.set(), [0.0])
    assert done.wait(10) and where[0] != threading.get_native_id() and where[0] == _pool._HELPER_TID[0]

    def fails(a):
        raise RuntimeError("kernel failed")

    _pool.submit_helper(fails, [0.0])
    done.clear()
    _pool.submit_helper(lambda a: done.set(), [0.0])  # the thread goes on after an error
    assert done.wait(10) and "kernel failed" in str(_pool._HELPER[0].errors[-1])
