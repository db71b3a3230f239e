"""Lower bounds on the benchmarked times, measured on this machine in the same run.

A speed target is a ratio to a peer; whether it is reachable depends on what the machine can do at
all. This module measures the two limits the GRU's cases run into and turns them into the best
ratio any implementation could reach against the peer's measured time:

* **matrix products at the peak** (training and batch-64 inference): the case's product FLOPs
  (``gru_flops``) divided by the matrix-product peak of this machine: the faster of ``torch.mm`` on
  large square matrices and grulab's panel GEMM (``gemm_nn``) on every thread, cache-resident
  (:func:`panel_gemm_peak`; on a Zen 4 core it outruns the framework's multi-threaded sgemm);
* **one step at batch 1** (streaming): the recurrent matrix-vector product ``U h`` reads all of
  ``U`` (3H x H floats) every step, which no cache reuse avoids. Its floor is the faster of one
  thread reading all of ``U`` and the split's skeleton: two threads at once, each reading its half
  of ``U`` (from huge pages, as the engine's split does), writing its half of the state and meeting
  the other at a barrier before the next step reads the whole state (:func:`split_step_seconds`),
  both timed here with the engine's own kernels (``gemm_nt``, ``barrier``) in a hot loop; the input
  products ``W x_t`` are added at the matrix-product peak. Two cores reading their L2 at once ran
  each slower than one alone (H=256: 4.1-4.5 against 3.4-3.6 us per half), so timing the halves
  one at a time would put the floor below what the split can reach. Element-wise work is left out,
  so the floor is still below what any real step takes.

For training, a third measurement puts the peak in context: the rate ``torch.mm`` reaches on the
step's largest and most regular product, a weight gradient (``dU = sum_t G_t^T h_{t-1}``, a
3H x T·B x H product; :func:`weight_gradient_gflops`), and the ratio against each peer if every
FLOP of the step ran at that rate. The recurrent products are smaller and wait on each other, and
element-wise work comes on top, so such a step would run its hardest parts as fast as the BLAS runs
its easiest: a target above that ratio asks for products faster than the machine's BLAS reaches.
"""

from __future__ import annotations

import time
from typing import Any

import numba
import numpy as np
import torch

from grulab.engine._jitmath import FLAGS, SLOT, barrier, gemm_nn, gemm_nt, pack_panels
from grulab.engine._pool import run_chunks
from grulab.engine._scratch import give_back, lend_pages


@numba.njit(**FLAGS)
def _matvec_loop(U, h, out, reps):  # noqa: ANN001, ANN202
    for _ in range(reps):
        gemm_nt(h, U, out)
        h[0, 0] = out[0, 0] * 1e-30  # a dependence between iterations, as in a recurrence


@numba.njit(**FLAGS)
def _barrier_loop(w, n, flags, reps):  # noqa: ANN001, ANN202
    for p in range(1, reps + 1):
        barrier(flags, w, n, p)


@numba.njit(**FLAGS)
def _split_loop(w, n, U, hbuf, out, flags, reps):  # noqa: ANN001, ANN202
    """Worker ``w`` of the split's skeleton: per step, its rows of ``U`` times the whole state, its
    half of the next state written, a barrier (the unit split's step without its element-wise work
    and input products)."""
    H = hbuf.shape[2]
    k0, nk = (0, H // 2) if w == 0 else (H // 2, H - H // 2)
    Uw, ow = U[w], out[w]  # (whole sub-arrays: a slice of U's rows would type as non-contiguous and not vectorise)
    for s in range(reps):
        gemm_nt(hbuf[s % 2], Uw, ow)
        hn, o = hbuf[(s + 1) % 2, 0, k0 : k0 + nk], ow[0]
        for j in range(nk):
            hn[j] = o[j] * 1e-3  # a state that depends on the product, as in a recurrence
        barrier(flags, w, n, s + 1)


def split_step_seconds(H: int, reps: int = 2000) -> float:
    """Seconds per step of the unit split's skeleton at batch 1 (:func:`_split_loop`, float32): two
    threads at once, each with its half of ``U``'s rows in huge pages."""
    nk = H - H // 2
    arena = lend_pages("bench.split", 2 * 3 * nk * H, np.dtype(np.float32))
    if arena.shape[0] >= 2 * 3 * nk * H:
        U = arena[: 2 * 3 * nk * H].reshape(2, 3 * nk, H)
    else:  # (too large for the kept pages: ordinary memory)
        U = np.empty((2, 3 * nk, H), np.float32)
    try:
        U[...] = np.random.default_rng(0).standard_normal(U.shape, dtype=np.float32) / np.sqrt(H)
        hbuf = np.zeros((2, 1, H), np.float32)
        out = np.empty((2, 1, 3 * nk), np.float32)

        def run(n: int) -> None:
            run_chunks(_split_loop, 2, U, hbuf, out, np.zeros(3 * SLOT, np.int64), n)

        run(10)
        return _best(lambda: run(reps)) / reps
    finally:
        give_back("bench.split", arena)


def _best(fn: Any, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matvec_seconds(rows: int, cols: int, reps: int = 2000) -> float:
    """Seconds per float32 matrix-vector product ``(rows, cols) @ (cols,)`` on one thread, hot."""
    rng = np.random.default_rng(0)
    U = rng.standard_normal((rows, cols), dtype=np.float32)
    h = rng.standard_normal((1, cols), dtype=np.float32)
    out = np.empty((1, rows), np.float32)
    _matvec_loop(U, h, out, 10)
    return _best(lambda: _matvec_loop(U, h, out, reps)) / reps


@numba.njit(**FLAGS)
def _gemm_loop(c, n, A, P, C, reps):  # noqa: ANN001, ANN202
    for _ in range(reps):
        gemm_nn(A[c], P[c], C[c], C.shape[2])


def panel_gemm_peak(threads: int, M: int = 96, K: int = 256, N: int = 384, reps: int = 200) -> float:
    """GFLOP/s of grulab's panel GEMM with ``threads`` threads, each on its own cache-resident
    operands (float32, ``(M, K) @ (K, N)``: the GRU's recurrent products, many rows)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((threads, M, K), dtype=np.float32)
    P = np.stack([pack_panels(rng.standard_normal((N, K), dtype=np.float32)) for _ in range(threads)])
    C = np.empty((threads, M, N), np.float32)
    run_chunks(_gemm_loop, threads, A, P, C, 2)
    return threads * reps * 2 * M * N * K / _best(lambda: run_chunks(_gemm_loop, threads, A, P, C, reps)) / 1e9


def barrier_seconds(reps: int = 20000) -> float:
    """Seconds per barrier between two threads spinning in step (the unit split's per-step cost)."""
    def run() -> None:
        run_chunks(_barrier_loop, 2, np.zeros(3 * SLOT, np.int64), reps)

    run_chunks(_barrier_loop, 2, np.zeros(3 * SLOT, np.int64), 10)
    return _best(run, 3) / reps


def weight_gradient_gflops(N: int, M: int, K: int, repeats: int = 3) -> float:
    """Best GFLOP/s of ``torch.mm`` forming a weight gradient ``G^T S`` from gate gradients
    ``G (N, M)`` and states ``S (N, K)`` summed over their ``N = T·B`` rows, in the faster of its two
    layouts (``G^T S`` and ``(S^T G)^T``; float32, torch's thread count)."""
    gen = torch.Generator().manual_seed(0)
    G, S = torch.randn(N, M, generator=gen), torch.randn(N, K, generator=gen)
    best = float("inf")
    for fn in (lambda: torch.mm(G.t(), S), lambda: torch.mm(S.t(), G)):
        fn()
        best = min(best, _best(fn, repeats))
    return 2 * N * M * K / best / 1e9


def stream_floor(I: int, H: int, peak_gflops: float, threads: int) -> dict[str, float]:
    """Per-step floor at batch 1 (seconds): the recurrent product on one thread, or the split's
    skeleton on two (:func:`split_step_seconds`), plus the input products at the peak."""
    one = matvec_seconds(3 * H, H)
    two = split_step_seconds(H) if threads >= 2 and H >= 2 else float("inf")
    inputs = 2 * 3 * H * I / (peak_gflops * 1e9)
    return {"matvec_1_thread_s": one, "split_2_threads_s": two, "inputs_at_peak_s": inputs,
            "floor_s": min(one, two) + inputs}


def compute_bounds(rows: list[dict[str, Any]], peak_gflops: float, threads: int) -> list[dict[str, Any]]:
    """One bound per benchmarked row of the streaming, inference and training cases: the floor time
    and, for each peer in the row, the largest ratio (peer time / floor) any implementation could
    show against it."""
    out = []
    barrier_s = barrier_seconds() if threads >= 2 else float("inf")
    for r in rows:
        case, shape, res = r["case"], r["shape"], r["results"]
        if case == "streaming":
            f = stream_floor(shape["I"], shape["H"], peak_gflops, threads)
            floor = f["floor_s"] * 1e6  # the row's unit: us per step
            detail = {k: v * 1e6 for k, v in f.items()} | {"barrier_s": barrier_s * 1e6}
        elif case in ("inference", "training"):
            floor = r["flops"] / (peak_gflops * 1e9) * 1e3  # ms
            detail = {"gflop": r["flops"] / 1e9}
        else:
            continue
        peers = {k: v / floor for k, v in res.items() if not k.startswith("grulab") and "GRUCell" not in k}
        bound = {"case": case, "shape": shape, "unit": r["unit"], "floor": floor, "grulab": res.get("grulab"),
                 "best_ratio": peers, "detail": detail}
        if case == "training":
            rate = weight_gradient_gflops(shape["T"] * shape["B"], 3 * shape["H"], shape["H"])
            at_rate = r["flops"] / (rate * 1e9) * 1e3
            detail |= {"weight_gradient_gflops": rate, "weight_gradient_fraction": rate / peak_gflops,
                       "step_at_weight_gradient_rate": at_rate}
            bound["best_ratio_at_weight_gradient_rate"] = {k: v * floor / at_rate for k, v in peers.items()}
        out.append(bound)
    return out
