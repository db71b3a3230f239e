"""The fused CPU engine: whole-sequence GRU forward and backward in compiled code (Numba).

Per layer and direction (the shapes of :mod:`grulab.engine.reference`):

forward
    1. ``xp = x W^T + b_W`` for all steps at once: one large matrix product (torch, all threads);
       from ``FUSE_MIN_ROWS`` rows per thread on, each thread instead computes ``x_t W^T + b_W`` for
       its rows inside the loop below (the same products, no T·B·3H buffer through memory).
    2. ``_gru_fwd_rows``: the recurrent loop in compiled code (nogil), one chunk of batch rows per
       thread of :mod:`grulab.engine._pool` (rows are independent: threads never synchronise).
       Each step is a small GEMM ``h_prev U^T`` (``_jitmath.matmul_t``) fused with the gate
       equations (1)-(4). For a small batch (one chunk), :class:`PathTuner` picks by measured speed
       among this and ``_gru_fwd_units_worker`` (its own input products in blocks of steps), alone
       or with a helper thread that takes half of the hidden units (from the first step when it
       starts soon enough, else from a later block of steps). Under
       ``torch.use_deterministic_algorithms(True)`` the path is fixed per shape and the helper
       waited for, so identical calls give identical values.
backward
    3. ``_gru_bwd_rows``: the recurrent loop of eqs. (5)-(12) in compiled code, writing the gate
       pre-activation gradients ``da = [da_z, da_r, da_h]`` (and ``du_h`` for reset="after").
    4. The weight and input gradients of eq. (13) as large matrix products after the loop.

What is saved for the backward is exactly what the derivation needs: the carried states and
``z, r, h_tilde`` (and ``u_h`` for reset="after"), O(T·B·H). With ``recompute=True`` only the
states are saved and the gates are recomputed in the backward (one more recurrent GEMM per step).

Kernels rewrite ``h = (1 - z) h_prev + z h_tilde`` as ``h_prev + z (h_tilde - h_prev)`` (one FMA).
float32 uses the vectorised activations of :mod:`grulab.engine._jitmath`; float64 uses libm.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import numba
import numpy as np
import torch
from numba.extending import overload
from torch import Tensor

from grulab.engine._jitmath import (
    FLAGS,
    FTZ_DAZ,
    SLOT,
    STEP,
    barrier,
    copy_row,
    load_acquire,
    matmul_t,
    mxcsr,
    no_panels,
    pack_panels,
    panels_at,
    panels_if,
    reads_panels,
    sigmoid32,
    sigmoid64,
    store_release,
    tanh32,
    tanh64,
    wait_spins,
    wait_until,
)
from grulab.engine._pool import chunks, cpus_available, run_chunks, submit_helper, threads
from grulab.engine._scratch import give_back, lend_pages, pages_empty, scratch


def sigmoid(x):  # noqa: ANN001, ANN201  (Python body: used only when NUMBA_DISABLE_JIT=1)
    return 1.0 / (1.0 + np.exp(-x))


def tanh(x):  # noqa: ANN001, ANN201
    return np.tanh(x)


@overload(sigmoid)
def _sigmoid_impl(x):  # noqa: ANN001, ANN202
    return (lambda x: sigmoid32(x)) if x.bitwidth == 32 else (lambda x: sigmoid64(x))


@overload(tanh)
def _tanh_impl(x):  # noqa: ANN001, ANN202
    return (lambda x: tanh32(x)) if x.bitwidth == 32 else (lambda x: tanh64(x))


@numba.njit(**{**FLAGS, "inline": "always"})
def _store_rows(t, b, k0, h_row, z_row, r_row, ht_row, uh_row, out, save_states, save_gates):  # noqa: ANN001, ANN202
    """Write one row's new state (as output and, when asked, as carried state) and its gates at
    units ``k0 : k0 + len(h_row)``. ``out = (y, states, z_s, r_s, ht_s, uh_s)``. Whole-row copies
    keep the unit loops that compute them free of stores to six arrays (which did not vectorise)."""
    y, states, z_s, r_s, ht_s, uh_s = out
    copy_row(h_row, y[t, b], k0)
    if save_states:
        copy_row(h_row, states[t, b], k0)
    if save_gates:
        copy_row(z_row, z_s[t, b], k0)
        copy_row(r_row, r_s[t, b], k0)
        copy_row(ht_row, ht_s[t, b], k0)
        copy_row(uh_row, uh_s[t, b], k0)


@numba.njit(**{**FLAGS, "inline": "always"})
def _store_skipped(t, b, k0, h_row, out, save_states, save_gates):  # noqa: ANN001, ANN202
    """A step past the row's length: the state passes through, the output is zero, and the gates
    are zero as the reference records them (``0 * garbage`` is not 0)."""
    y, states, z_s, r_s, ht_s, uh_s = out
    k1 = k0 + h_row.shape[0]
    y[t, b, k0:k1] = 0.0
    if save_states:
        copy_row(h_row, states[t, b], k0)
    if save_gates:
        z_s[t, b, k0:k1] = 0.0
        r_s[t, b, k0:k1] = 0.0
        ht_s[t, b, k0:k1] = 0.0
        uh_s[t, b, k0:k1] = 0.0


@numba.njit(**{**FLAGS, "inline": "always"})
def _gates_row(x_t, u_row, b_U, H, k0, nk, nkmax, z_row, r_row):  # noqa: ANN001, ANN202
    """Eqs. (1)-(2) for units ``k0 : k0 + nk``: ``u_row`` holds their recurrent pre-activations
    in blocks ``[z | r | ...]`` of ``nkmax``. Every operand is sliced first and indexed by ``j``
    alone: with offsets such as ``x_t[k0 + j]`` in the loop the vectoriser gave up (3.4x slower)."""
    xz, xr = x_t[k0 : k0 + nk], x_t[H + k0 : H + k0 + nk]
    uz, ur = u_row[:nk], u_row[nkmax : nkmax + nk]
    bz, br = b_U[k0 : k0 + nk], b_U[H + k0 : H + k0 + nk]
    for j in range(nk):
        z_row[j] = sigmoid(xz[j] + uz[j] + bz[j])  # (eq. 1)
    for j in range(nk):
        r_row[j] = sigmoid(xr[j] + ur[j] + br[j])  # (eq. 2)


@numba.njit(**{**FLAGS, "inline": "always"})
def _update_row(x_t, H, k0, nk, after, b_U, z_row, r_row, uh_row, hp_row, hn_row, ht_row):  # noqa: ANN001, ANN202
    """Eqs. (3)-(4) for units ``k0 : k0 + nk``; ``uh_row`` holds ``U_h h_prev`` (after, bias
    added) or ``U_h (r * h_prev)`` (before, bias added here). ``hn_row`` should not be ``hp_row``:
    an in-place update runs scalar (the vectorised loop's runtime alias check fails)."""
    xh = x_t[2 * H + k0 : 2 * H + k0 + nk]
    if after:
        for j in range(nk):
            a = tanh(xh[j] + r_row[j] * uh_row[j])  # (eq. 3a)
            ht_row[j] = a
            hn_row[j] = hp_row[j] + z_row[j] * (a - hp_row[j])  # (eq. 4), rewritten
    else:
        bh = b_U[2 * H + k0 : 2 * H + k0 + nk]
        for j in range(nk):
            v = uh_row[j] + bh[j]
            uh_row[j] = v
            a = tanh(xh[j] + v)  # (eq. 3b)
            ht_row[j] = a
            hn_row[j] = hp_row[j] + z_row[j] * (a - hp_row[j])  # (eq. 4), rewritten


# ----------------------------------------------------------------------------------- forward
@numba.njit(**FLAGS)
def _gru_fwd_rows(c, n, fuse, x, W, b_W, xp, h0, U, b_U, lengths, reverse, after, save_states, save_gates, y,
                  states, z_s, r_s, ht_s, uh_s, h_n, pk):  # noqa: ANN001, ANN201
    """Recurrent loop of eqs. (1)-(4) for chunk ``c`` of ``n`` of the batch rows; writes ``y``, ``h_n`` and,
    when asked, ``states`` (the carried state) and the gates. The input side ``W x_t + b_W`` is either
    read from ``xp`` (T, B, 3H), computed beforehand for all steps, or, with ``fuse``, computed here
    step by step from ``x`` (T, B, I), ``W`` and ``b_W`` for this chunk's rows (``xp`` unused): the
    same products without a T·B·3H buffer written to memory and read back. ``pk`` holds the panels
    of ``W``, ``U``, ``U_zr`` and ``U_h`` (:func:`_panels`; empty ones: ``gemm_nt`` on the matrix)."""
    T, B = y.shape[0], y.shape[1]
    H = h0.shape[1]
    b0, b1 = c * B // n, (c + 1) * B // n
    nb = b1 - b0
    out = (y, states, z_s, r_s, ht_s, uh_s)
    hb = np.empty((2, nb, H), h0.dtype)  # the carried state, alternating: the update writes a row other than
    hb[0] = h0[b0:b1]  # the one it reads (an in-place update defeated the vectoriser's alias check)
    u = np.empty((nb, 3 * H if after else 2 * H), h0.dtype)  # recurrent pre-activations
    z = np.empty((nb, H), h0.dtype)
    r = np.empty((nb, H), h0.dtype)
    rh = np.zeros((nb, H), h0.dtype)
    uh = np.empty((nb, H), h0.dtype)
    ht = np.empty((nb, H), h0.dtype)
    xw = np.empty((nb if fuse else 1, 3 * H), h0.dtype)  # W x_t + b_W of this chunk's rows (fuse)
    U_zr = U[: 2 * H]
    U_h = U[2 * H :]
    for s in range(T):
        t = T - 1 - s if reverse else s
        h, h_next = hb[s % 2], hb[(s + 1) % 2]
        if fuse:
            matmul_t(x[t, b0:b1], W, pk[0], xw)  # (nb, 3H) = x_t W^T
            for bb in range(nb):
                xw_row = xw[bb]
                for q in range(3 * H):
                    xw_row[q] += b_W[q]
        if after:
            matmul_t(h, U, pk[1], u)  # (nb, 3H) = h_prev U^T
        else:
            matmul_t(h, U_zr, pk[2], u)  # (nb, 2H) = h_prev U_zr^T
        for bb in range(nb):
            if t >= lengths[b0 + bb]:
                continue
            x_t = xw[bb] if fuse else xp[t, b0 + bb]
            _gates_row(x_t, u[bb], b_U, H, 0, H, H, z[bb], r[bb])
            if after:
                uh_row, u_row, bh = uh[bb], u[bb, 2 * H :], b_U[2 * H :]
                for k in range(H):
                    uh_row[k] = u_row[k] + bh[k]  # (eq. 3a) U_h h_prev + b_Uh
            else:
                rh_row, r_row, h_row = rh[bb], r[bb], h[bb]
                for k in range(H):
                    rh_row[k] = r_row[k] * h_row[k]
        if not after:
            matmul_t(rh, U_h, pk[3], uh)  # (eq. 3b) U_h (r * h_prev)
        for bb in range(nb):
            b = b0 + bb
            if t >= lengths[b]:  # skipped step: the state passes through, the output is zero
                copy_row(h[bb], h_next[bb], 0)
                _store_skipped(t, b, 0, h[bb], out, save_states, save_gates)
                continue
            _update_row(xw[bb] if fuse else xp[t, b], H, 0, H, after, b_U, z[bb], r[bb], uh[bb], h[bb], h_next[bb],
                        ht[bb])
            _store_rows(t, b, 0, h_next[bb], z[bb], r[bb], ht[bb], uh[bb], out, save_states, save_gates)
    h_n[b0:b1] = hb[T % 2]


# ---------------------------------------------------- forward, small batch: units split over threads
# Worker 0 copies its rows of the weights, then waits for worker 1 to signal that it runs, for at
# most ``flags[_PATIENCE]`` spins (negative: without limit); both then start at step 0. A helper
# thread can take from tens of microseconds to milliseconds to get a core (a virtual machine's idle
# vCPU wakes slowly), which is the whole run of a short sequence, so a late worker 1 joins late:
# worker 0 runs alone on all the units until it arrives, and from the next block of input products
# on (INPUT_BLOCK steps) each owns half of the units. Slots of ``flags`` (each ``SLOT`` apart):
# barrier phases of workers 0 and 1; 1 once worker 1 runs; the join step; 1 when worker 1 is done;
# earliest join; patience
_P0, _P1, _ARRIVE, _JOIN, _DONE, _EARLIEST, _PATIENCE = (i * SLOT for i in range(7))


@numba.njit(**{**FLAGS, "inline": "always"})
def _units_inputs(s, T, nblk, reverse, k0, nk, nkmax, x, Ww, Ww_p, b_W, xw, xf):  # noqa: ANN001, ANN202
    """The input side ``W x_t + b_W`` of units ``k0 : k0 + nk`` for the block of (up to) ``nblk``
    steps that starts at loop step ``s``: one small GEMM over the block's rows (``Ww``: these units'
    rows of W, gate blocks of ``nkmax``), written to ``xf[t - t_lo, b]`` at the full layout's
    positions. Returns ``t_lo``, the block's first time index."""
    n = min(nblk, T - s)
    B, I = x.shape[1], x.shape[2]
    H = b_W.shape[0] // 3
    t_lo = T - s - n if reverse else s
    matmul_t(x[t_lo : t_lo + n].reshape(n * B, I), Ww, Ww_p, xw[: n * B])  # these units' rows of W x_t
    for i in range(n):
        for b in range(B):
            for g in range(3):  # sliced operands, indexed by j alone (see _gates_row)
                src, dst = xw[i * B + b, g * nkmax : g * nkmax + nk], xf[i, b, g * H + k0 : g * H + k0 + nk]
                bias = b_W[g * H + k0 : g * H + k0 + nk]
                for j in range(nk):
                    dst[j] = src[j] + bias[j]
    return t_lo


@numba.njit(**{**STEP, "inline": "always"})
def _units_step(t, w, split, k0, nk, nkmax, xin, Uw, Uzr_w, Uh_w, Up, b_U, lengths, after, save_states, save_gates,
                out, hin, hout, rhbuf, u, uh, z, r, ht, flags, phase):  # noqa: ANN001, ANN202
    """One step of eqs. (1)-(4) for units ``k0 : k0 + nk`` of every row, with their rows of U
    (``Uw``, or ``Uzr_w`` and ``Uh_w``; gate blocks of ``nkmax`` rows; ``Up`` the panels of the
    three, see :func:`_panels`) and their input side in
    ``xin`` (B, 3H). Reads the full previous state ``hin``, writes these units of ``hout``.
    ``split``: meet the partner at a barrier when the step is done (and, for reset="before", once
    ``r * h_prev`` is complete). Returns the phase."""
    B, H = hin.shape
    if after:
        matmul_t(hin, Uw, Up[0], u)  # own rows of U h_prev
    else:
        matmul_t(hin, Uzr_w, Up[1], u)
    for b in range(B):
        _gates_row(xin[b], u[b], b_U, H, k0, nk, nkmax, z[b], r[b])
        if after:
            uh_row, u_row, bh = uh[b], u[b, 2 * nkmax :], b_U[2 * H + k0 :]
            for j in range(nk):
                uh_row[j] = u_row[j] + bh[j]  # (eq. 3a) U_h h_prev + b_Uh
        else:
            rh_row, r_row, h_row = rhbuf[b, k0:], r[b], hin[b, k0:]
            for j in range(nk):
                rh_row[j] = r_row[j] * h_row[j]
    if not after:
        if split:
            phase += 1
            barrier(flags, w, 2, phase)  # every unit of r * h_prev is written
        matmul_t(rhbuf, Uh_w, Up[2], uh)  # (eq. 3b) own rows of U_h (r * h_prev)
    for b in range(B):
        hp_row = hin[b, k0 : k0 + nk]
        hn_row = hout[b, k0 : k0 + nk]
        if t >= lengths[b]:  # the state passes through, the output is zero
            copy_row(hp_row, hn_row, 0)
            _store_skipped(t, b, k0, hp_row, out, save_states, save_gates)
            continue
        _update_row(xin[b], H, k0, nk, after, b_U, z[b], r[b], uh[b], hp_row, hn_row, ht[b])
        _store_rows(t, b, k0, hn_row, z[b, :nk], r[b, :nk], ht[b, :nk], uh[b, :nk], out, save_states, save_gates)
    if split:
        phase += 1
        barrier(flags, w, 2, phase)  # the new state is complete
    return phase


@numba.njit(**STEP)
def _units_run(w, s0, s1, watch, split, k0, nk, nkmax, nblk, reverse, x, W, W_p, b_W, xw, xf, U, U_zr, U_h, Up, b_U,
               lengths, after, save_states, save_gates, out, hbuf, u, uh, z, r, ht, flags, phase):  # noqa: ANN001, ANN201
    """Loop steps ``s0 : s1`` of worker ``w`` on units ``k0 : k0 + nk`` (see :func:`_units_step`;
    ``s0`` starts a block of input products), in one function compiled without reference counts:
    the step inlined, no call and no count per step (a call per step, its ~30 arrays passed one
    field at a time, cost 0.13-0.25 us of a 1.2-3 us step on one thread). With ``watch`` (worker 0
    alone), stop at the first block start from which worker 1 may join and has arrived. Returns
    the step reached and the barrier phase."""
    T = x.shape[0]
    t_lo = 0
    for s in range(s0, s1):
        t = T - 1 - s if reverse else s
        if s % nblk == 0:
            if watch and s >= flags[_EARLIEST] and load_acquire(flags, _ARRIVE) != 0:
                return s, phase
            t_lo = _units_inputs(s, T, nblk, reverse, k0, nk, nkmax, x, W, W_p, b_W, xw, xf)
        phase = _units_step(t, w, split, k0, nk, nkmax, xf[t - t_lo], U, U_zr, U_h, Up, b_U, lengths, after,
                            save_states, save_gates, out, hbuf[s % 2], hbuf[(s + 1) % 2], hbuf[2], u, uh, z, r, ht,
                            flags, phase)
    return s1, phase


@numba.njit(**{**FLAGS, "inline": "always"})
def _arena_size(n):  # noqa: ANN001, ANN202
    """Elements that ``n`` elements take in an arena: rounded up to 16, so the next block starts on
    a 64-byte boundary (float32; 128 bytes for float64)."""
    return -(-n // 16) * 16


@numba.njit(**FLAGS)
def _unit_rows(M, H, k0, nk, g0, ng, arena, off):  # noqa: ANN001, ANN201
    """Rows ``k0 : k0 + nk`` of gate blocks ``g0 .. g0 + ng - 1`` of ``M`` (3H rows), in blocks of
    ``nk`` rows: one worker's rows of W or U, contiguous for one product. Written into
    ``arena[off:]`` when it has room (see :func:`_lend_arena`), else into a new array; returns
    the rows and the next 64-byte-aligned offset into the arena."""
    K = M.shape[1]
    n = ng * nk * K
    if off + n <= arena.shape[0]:
        out = arena[off : off + n].reshape(ng * nk, K)
        off += _arena_size(n)
    else:
        out = np.empty((ng * nk, K), M.dtype)
    flat = out.reshape(-1)
    for i in range(ng):  # a gate block's rows are contiguous: one flat copy each (no slice assignment)
        g = g0 + i
        copy_row(M[g * H + k0 : g * H + k0 + nk].reshape(-1), flat, i * nk * K)
    return out, off


@numba.njit(**FLAGS)
def _gru_fwd_units_worker(w, nblk, solo, use_panels, x, W, b_W, h0, U, b_U, lengths, reverse, after, save_states,
                          save_gates, y, states, z_s, r_s, ht_s, uh_s, h_n, hbuf, arena, flags):  # noqa: ANN001, ANN201
    """:func:`_units_worker` with flush-to-zero on in float32 (see ``_pool.flushing_call``), switched
    here rather than by two more compiled calls around it: after an idle spell each call from
    Python cost tens of microseconds. As in the stream step, an operation the compiler moved
    across the switch would only round values below 1.2e-38 differently."""
    mode = mxcsr(-1) if h0.itemsize == 4 else -1
    if mode >= 0:
        mxcsr(mode | FTZ_DAZ)
    _units_worker(w, nblk, solo, use_panels, x, W, b_W, h0, U, b_U, lengths, reverse, after, save_states, save_gates,
                  y, states, z_s, r_s, ht_s, uh_s, h_n, hbuf, arena, flags)
    if mode >= 0:
        mxcsr(mode)


@numba.njit(**{**FLAGS, "inline": "always"})
def _helper_arrives(flags):  # noqa: ANN001, ANN202
    """Whether worker 1 signals that it runs within ``flags[_PATIENCE]`` spins (negative: wait for it)."""
    patience = flags[_PATIENCE]
    if patience < 0:
        wait_until(flags, _ARRIVE, 1)
        return True
    return wait_spins(flags, _ARRIVE, patience)


@numba.njit(**FLAGS)
def _units_worker(w, nblk, solo, use_panels, x, W, b_W, h0, U, b_U, lengths, reverse, after, save_states,
                  save_gates, y, states, z_s, r_s, ht_s, uh_s, h_n, hbuf, arena, flags):  # noqa: ANN001, ANN201
    """Worker ``w`` (0 or 1) of the unit split (see above). Each worker first copies its units' rows
    of W and U (gate blocks of as many rows as it has units) and packs them into panels where
    ``use_panels`` and :func:`_jitmath.matmul_t` would read them; worker 1 then signals that it has
    arrived. Worker 0 waits for that (``flags[_PATIENCE]`` spins, ``ARRIVAL_SPINS`` by default:
    ~0.2 ms here), and both run every step on their halves (units ``0 : H//2`` and ``H//2 : H``).
    A helper that has not arrived by then (a busy machine: woken from sleep it took up to 2.8 ms to
    run) joins late: worker 0 runs the steps alone (all units, ``W``, ``U``) until it arrives, and
    worker 1 does nothing if worker 0 finished first. ``solo`` (no helper will come) runs alone
    from the start and packs the full matrices so. Steps go in blocks of ``nblk``: at the start of
    a block each worker computes its units' input side for the whole block (one small GEMM; a
    T·B·3H product beforehand would need the framework's thread pool, whose spinning threads then
    compete with worker 1 for the second core), and a late worker 1 can join only there. The state
    alternates between ``hbuf[0]`` (``h0`` copied in by worker 0) and ``hbuf[1]``; ``hbuf[2]``
    holds ``r * h_prev`` (reset="before"). Worker ``w`` copies its rows into half ``w`` of ``arena``
    (:func:`_lend_arena`; each half is written and read by one worker only)."""
    T, B = x.shape[0], x.shape[1]
    H = h0.shape[1]
    out = (y, states, z_s, r_s, ht_s, uh_s)
    u = np.empty((B, 3 * H), h0.dtype)  # scratch for either mode ([z | r | h] blocks of nkmax)
    xw = np.empty((nblk * B, 3 * H), h0.dtype)
    xf = np.empty((nblk, B, 3 * H), h0.dtype)
    uh = np.empty((B, H), h0.dtype)
    z = np.empty((B, H), h0.dtype)
    r = np.empty((B, H), h0.dtype)
    ht = np.empty((B, H), h0.dtype)
    k0, nk = (0, H // 2) if w == 0 else (H // 2, H - H // 2)  # this worker's units once split
    U_zr, U_h = U[: 2 * H], U[2 * H :]
    none = U[:0]  # a matrix the candidate does not use
    if w == 0:
        for b in range(B):  # the initial state (worker 1 reads the state only after the join)
            copy_row(h0[b], hbuf[0, b], 0)
        use_full = use_panels and solo
        W_p = panels_if(W, use_full, nblk * B)
        Up = (panels_if(U if after else none, use_full, B), panels_if(none if after else U_zr, use_full, B),
              panels_if(none if after else U_h, use_full, B))
        if solo:
            _units_run(0, 0, T, False, False, 0, H, H, nblk, reverse, x, W, W_p, b_W, xw, xf, U, U_zr, U_h, Up, b_U,
                       lengths, after, save_states, save_gates, out, hbuf, u, uh, z, r, ht, flags, 0)
            h_n[:, :] = hbuf[T % 2]
            return
        W_w, U_w, U_zr_w, U_h_w, W_wp, Up_w = _own_rows(W, U, H, k0, nk, after, use_panels, nblk * B, B,
                                                        arena[: arena.shape[0] // 2])
        join, phase = 0, 0
        if flags[_EARLIEST] > 0 or not _helper_arrives(flags):
            join, phase = _units_run(0, 0, T, True, False, 0, H, H, nblk, reverse, x, W, W_p, b_W, xw, xf, U, U_zr,
                                     U_h, Up, b_U, lengths, after, save_states, save_gates, out, hbuf, u, uh, z, r, ht,
                                     flags, 0)
        if join >= T:
            store_release(flags, _JOIN, T)  # too late: worker 1 returns as soon as it runs
            h_n[:, :] = hbuf[T % 2]
            return
        store_release(flags, _JOIN, join)  # publishes the state of step join - 1 with it
        _units_run(0, join, T, False, True, k0, nk, nk, nblk, reverse, x, W_w, W_wp, b_W, xw, xf, U_w, U_zr_w, U_h_w,
                   Up_w, b_U, lengths, after, save_states, save_gates, out, hbuf, u, uh, z, r, ht, flags, phase)
        h_n[:, k0 : k0 + nk] = hbuf[T % 2][:, k0 : k0 + nk]
        wait_until(flags, _DONE, 1)  # worker 1 has written its part of h_n
        return
    if load_acquire(flags, _JOIN) >= T:  # started after worker 0 finished: nothing to copy or do
        return
    W, U, U_zr, U_h, W_p, Up = _own_rows(W, U, H, k0, nk, after, use_panels, nblk * B, B,
                                         arena[arena.shape[0] // 2 :])
    store_release(flags, _ARRIVE, 1)
    join = wait_until(flags, _JOIN, 0)
    if join >= T:
        return
    _units_run(1, join, T, False, True, k0, nk, nk, nblk, reverse, x, W, W_p, b_W, xw, xf, U, U_zr, U_h, Up, b_U,
               lengths, after, save_states, save_gates, out, hbuf, u, uh, z, r, ht, flags, 0)
    h_n[:, k0 : k0 + nk] = hbuf[T % 2][:, k0 : k0 + nk]
    store_release(flags, _DONE, 1)


@numba.njit(**{**FLAGS, "inline": "always"})
def _own_rows(W, U, H, k0, nk, after, use_panels, rows_w, rows_u, arena):  # noqa: ANN001, ANN202
    """A worker's rows of ``W`` and ``U`` (``U`` whole for reset="after", else its ``U_zr`` and
    ``U_h`` parts) for units ``k0 : k0 + nk``, and their panels (see :func:`_unit_rows`). The
    rows of U go first into ``arena`` (this worker's part of it), then the panels of W (the two
    that the steps read, contiguous in physical memory when the arena has huge pages: no L2 set
    holds more of them than of any other), then the rows of W (read only to pack them)."""
    U_w, off = _unit_rows(U, H, k0, nk, 0, 3 if after else 0, arena, 0)
    U_zr_w, off = _unit_rows(U, H, k0, nk, 0, 0 if after else 2, arena, off)
    U_h_w, off = _unit_rows(U, H, k0, nk, 2, 0 if after else 1, arena, off)
    NR = 128 // W.itemsize  # columns of a panel (_jitmath.panel_width)
    W_w, _ = _unit_rows(W, H, k0, nk, 0, 3, arena, off + _arena_size(-(-3 * nk // NR) * NR * W.shape[1]))
    W_p = panels_at(W_w, use_panels, rows_w, arena, off)
    Up = (panels_if(U_w, use_panels, rows_u), panels_if(U_zr_w, use_panels, rows_u),
          panels_if(U_h_w, use_panels, rows_u))
    return W_w, U_w, U_zr_w, U_h_w, W_p, Up


def _unit_split_eligible(B: int, T: int, H: int, n: int | None = None) -> bool:
    """Whether the small-batch paths (the unit split and the single thread, each with its own input
    products) are worth measuring against the rows path: called for batches whose chunks are too
    small to fuse their input products (``FUSE_MIN_ROWS``), where the rows path needs one framework
    product beforehand (waking the framework's thread pool). Up to B=4 rows cannot keep two threads
    busy; from 8 to 24 rows the unit split was 1.4-3x faster than the rows path after an idle spell
    (B=16, H=256, T=256: 16.1 against 30.4 ms). A step also needs enough work for a barrier.
    ``n``: the thread count, if the caller has it."""
    return (not numba.config.DISABLE_JIT and (threads() if n is None else n) >= 2 and B * H >= UNIT_SPLIT_MIN_WORK
            and T >= 8)


class PathTuner:
    """Chooses among implementations of the same call by measured speed.

    Keeps, per key (shape, candidate, dtype, range of lengths), the last few seconds-per-step
    samples of each path, runs the one with the lower median, and every ``explore``-th call turns
    to another path in turn, so the choice follows the machine: a spin barrier is fast on an idle
    machine and slow on a busy one, where its partner thread waits for a time slice. A turn
    re-measures a path whose median is up to twice the best's; one ``rho`` times slower is
    re-measured at one of every ``rho - 1`` of its turns, so no path costs the calls more than
    ``1 / (explore * (paths - 1))`` of their time however slow it is (at B=1, H=64 the rows path ran
    11.5 ms against 1.8 for the best: re-measured at every turn, it added 17% to the average
    call). The first call of each path is not a measurement (it compiled or loaded the kernel and
    touched fresh memory: seconds, against microseconds per step) and is dropped; the median
    shrugs off one outlier (a burst of load). A path re-measured on its turn keeps only that
    sample: its earlier ones are dozens of calls old, and with them a path that measured slow in a
    burst of load needed two good turns (64 calls) to win again. For the first ``2 * explore``
    calls the turns come every ``explore // 2`` calls, so a choice made on one sample per path in
    a noisy moment is checked soon (a bench case times ~30 calls: a wrong first choice held all of
    them, 3.3 against 2.5 us per step at H=128 in one run; turns every 4th call put a quarter of
    them on slower paths)."""

    def __init__(self, explore: int = 16, window: int = 3) -> None:
        self.explore, self.window = explore, window
        self.samples: dict[tuple, dict[str, list[float]]] = {}
        self.medians: dict[tuple, dict[str, float]] = {}  # of the samples, kept by record()
        self.calls: dict[tuple, int] = {}
        self.skipped: dict[tuple, dict[str, int]] = {}  # turns each slow path was passed over since measured
        self.turns: dict[tuple, int] = {}
        self.warm: set[tuple] = set()  # (key, path) pairs whose first call is behind them

    def estimate(self, key: tuple, path: str) -> float | None:
        return self.medians.get(key, {}).get(path)

    def choose(self, key: tuple, paths: tuple[str, ...]) -> str:
        """The path to run now. Reads the medians kept by :meth:`record` (a call's own Python runs
        cold after an idle spell, tens of microseconds per distinct operation)."""
        n = self.calls.get(key, 0)
        self.calls[key] = n + 1
        est = self.medians.get(key, {})
        for p in paths:
            if p not in est:
                return p
        ranked = sorted(paths, key=est.__getitem__)
        every = self.explore if n >= 2 * self.explore else max(2, self.explore // 2)
        if n % every == every - 1:  # re-measure the others in turn, a slow one less often
            turn = self.turns.get(key, 0)
            self.turns[key] = turn + 1
            p = ranked[1 + turn % (len(ranked) - 1)]
            skipped = self.skipped.setdefault(key, {})
            k = skipped.get(p, 0) + 1
            if k >= est[p] / est[ranked[0]] - 1:
                skipped[p] = 0
                return p
            skipped[p] = k
        return ranked[0]

    def record(self, key: tuple, path: str, seconds_per_step: float) -> None:
        if (key, path) not in self.warm:
            self.warm.add((key, path))
            return
        s = self.samples.setdefault(key, {}).setdefault(path, [])
        medians = self.medians.setdefault(key, {})
        if s and medians and path != min(medians, key=medians.__getitem__):  # a turn: older samples are stale
            s.clear()
        s.append(seconds_per_step)
        del s[: -self.window]
        medians[path] = statistics.median(s)


UNIT_SPLIT_MIN_WORK = 32  # B * H below which one thread is faster than two plus a barrier per step
UNIT_SPLIT_MIN_STEPS = 32  # below this the helper thread's start (0.3-0.45 ms with the copies) is rarely repaid
TUNER = PathTuner()
ARRIVAL_SPINS = 8000  # spins (26 ns each here) that worker 0, its rows copied, waits for worker 1 before it goes alone
EARLIEST_JOIN = 0  # the first step at which worker 1 may join (tests move it to check a join mid-sequence)
INPUT_BLOCK = 18  # steps whose input products the unit split computes together (and where worker 1 may join)
SOLO_INPUT_BLOCK = 16  # the same for one thread alone ("solo")
# At B=1 a block's rows go through the panel GEMM in blocks of 6: 18 steps make three full ones
# where 16 left a 4-row block. The split's calls ran 1-3% faster with 18 (1000 steps after 100 ms
# idle, 31 alternating rounds each, us per step: H=256 7.11/7.13/6.73 against 6.93/7.01/6.66,
# H=128 2.47 against 2.39, H=512 equal); one thread alone at H=64 did not (1.32 against 1.37/1.34).


PANEL_MIN_ROWS_STEPS = 128  # batch rows x steps from which packing the weights into panels is repaid


def _panels_repaid(T: int, B: int) -> bool:
    """Whether a call is long enough to repay packing its weights for :func:`_jitmath.gemm_nn`
    (packing U costs about eight batch-1 steps' worth of reading it: 17 us at H=128, 74 at 256)."""
    return T * B >= PANEL_MIN_ROWS_STEPS and not numba.config.DISABLE_JIT


def _u_panels_used(use: bool, rows: int, U: np.ndarray) -> bool:
    """Whether a kernel's product with (its part of) ``U`` reads panels: :func:`_jitmath.matmul_t`
    gives a single row ``gemm_nt`` while ``U`` fits in L2, so none are packed for it then."""
    return use and bool(reads_panels(rows, U.nbytes))


def _panels(use: bool, dtype: np.dtype, *mats: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The panels (:func:`_jitmath.pack_panels`) of each matrix a kernel multiplies by, or empty
    panels (the kernel then runs ``gemm_nt`` on the matrix itself) where ``use`` is false or the
    call does not use the matrix (``None``)."""
    return tuple(pack_panels(m) if use and m is not None else no_panels(dtype) for m in mats)


def _lend_arena(I: int, H: int, dtype: np.dtype) -> np.ndarray:
    """A buffer for the two workers' copies of their rows of ``U`` and ``W`` and the panels of
    ``W`` (one half each), kept between calls in huge pages (``_scratch.lend_pages``). The
    matrix-vector product of each batch-1 step reads its half of ``U`` from L2; from 4 KB pages
    scattered over physical memory part of it conflicted in L2's sets and came from L3 (in a hot
    loop on this machine, half of U at H=256, 384 KB: 4.6-5.3 against 3.7-4.3 us from a huge
    page). Lent to one call at a time and given back by it. Half 1 is written by worker 1 only,
    and worker 1 always runs on the one helper thread, in the order of the calls: a late helper
    still copying into it after its call has returned finishes before the next call's helper
    starts."""
    nk = H - H // 2  # the most units a worker has
    NR = 128 // dtype.itemsize
    half = 3 * nk * H + 2 * (3 * nk + NR) * I + 4 * 16  # one worker's rows of U, panels and rows of W, aligned
    return lend_pages("gru.units", 2 * half, dtype)


def _fwd_unit_split(x, W, b_W, h0, U, b_U, lengths, reverse, after, save_states, save_gates, y, states, z, r,
                    h_tilde, u_h, h_n, helper: bool = True, patience: int = ARRIVAL_SPINS) -> None:  # noqa: ANN001
    """Run the unit split: worker 0 here, worker 1 on the pool's helper thread. Without
    ``helper``, worker 0 runs alone ("solo"): one thread, its own input products, no framework
    thread pool woken (which, after an idle spell, cost milliseconds per call). The workers copy
    and pack their weights themselves (:func:`_gru_fwd_units_worker`). ``patience``: spins that
    worker 0 waits for the helper before it starts alone (negative: it waits for it, so the
    split starts at step 0 and the result does not depend on when the helper got a core)."""
    hbuf = np.empty((3, *h0.shape), h0.dtype)  # worker 0 writes h0 into hbuf[0]
    flags = np.zeros(7 * SLOT, np.int64)
    flags[_JOIN] = -1
    flags[_EARLIEST] = EARLIEST_JOIN
    flags[_PATIENCE] = patience
    arena = _lend_arena(x.shape[2], h0.shape[1], h0.dtype) if helper else np.empty(0, h0.dtype)
    nblk = INPUT_BLOCK if helper else SOLO_INPUT_BLOCK
    args = (nblk, not helper, _panels_repaid(x.shape[0], x.shape[1]), x, W, b_W, h0, U, b_U, lengths,
            reverse, after, save_states, save_gates, y, states, z, r, h_tilde, u_h, h_n, hbuf, arena, flags)
    try:
        if helper:
            submit_helper(_gru_fwd_units_worker, 1, *args)
        _gru_fwd_units_worker(0, *args)  # (it sets flush-to-zero itself)
    finally:
        if helper:
            give_back("gru.units", arena)  # (see _lend_arena)
    # No wait for the helper's future: worker 0 returns after worker 1 has set its done flag (its
    # part of the outputs is written), or after telling it not to join (it then touches nothing).
    # Waiting for the future to complete cost a thread wake-up per call (18 us after an idle spell).


# ---------------------------------------------------------------------------------- backward
@numba.njit(**FLAGS)
def _gru_bwd_rows(c, n, dy, dh_n, h0, states, z_s, r_s, ht_s, uh_s, UT, UT_zr, UT_h, lengths, reverse, after,
                  da, du_h, dh0, pk):  # noqa: ANN001, ANN201
    """Recurrent loop of eqs. (5)-(12) for chunk ``c`` of ``n`` of the batch rows, from the last processed step to the
    first. Writes the gate pre-activation gradients ``da`` (T, B, 3H) = [da_z, da_r, da_h],
    ``du_h`` (reset="after") and ``dh0``. ``UT`` is U^T (H, 3H); ``UT_zr``, ``UT_h`` its blocks;
    ``pk`` their panels (:func:`_panels`)."""
    T, B = dy.shape[0], dy.shape[1]
    H = h0.shape[1]
    b0, b1 = c * B // n, (c + 1) * B // n
    nb = b1 - b0
    carry = dh_n[b0:b1].copy()  # dL/dh flowing back into the current step
    g = np.zeros((nb, 3 * H if after else 2 * H), carry.dtype)  # recurrent-side gradients
    dh_prev = np.empty((nb, H), carry.dtype)
    tmp = np.empty((nb, H), carry.dtype)
    dah = np.zeros((nb, H), carry.dtype)
    drh = np.empty((nb, H), carry.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t + 1 if reverse else t - 1  # the step that produced h_prev
        for bb in range(nb):
            b = b0 + bb
            da_z, da_r, da_h = da[t, b, :H], da[t, b, H : 2 * H], da[t, b, 2 * H :]
            if t >= lengths[b]:  # skipped: identity on the state, no parameter gradient
                g[bb] = 0.0
                copy_row(carry[bb], dh_prev[bb], 0)
                da[t, b] = 0.0
                dah[bb] = 0.0
                if after:
                    du_h[t, b] = 0.0
                continue
            hp = states[tp, b] if 0 <= tp < T else h0[b]
            z, r, h_tilde = z_s[t, b], r_s[t, b], ht_s[t, b]
            c_row, y_row, dp_row, g_row = carry[bb], dy[t, b], dh_prev[bb], g[bb]
            g_z, g_r, g_h = g_row[:H], g_row[H : 2 * H], g_row[2 * H :]  # slices: see _gates_row
            for k in range(H):
                dh = c_row[k] + y_row[k]
                zk = z[k]
                dz = dh * (h_tilde[k] - hp[k])  # (eq. 6)
                dp_row[k] = dh * (1.0 - zk)  # (eq. 7)
                a_h = dh * zk * (1.0 - h_tilde[k] * h_tilde[k])  # (eqs. 5, 8)
                a_z = dz * zk * (1.0 - zk)  # (eq. 9)
                da_z[k] = a_z
                da_h[k] = a_h
                g_z[k] = a_z
            if after:
                uh, du = uh_s[t, b], du_h[t, b]
                for k in range(H):
                    rk = r[k]
                    d_uh = da_h[k] * rk  # (eq. 10a)
                    a_r = da_h[k] * uh[k] * rk * (1.0 - rk)  # (eqs. 10a, 11)
                    du[k] = d_uh
                    da_r[k] = a_r
                    g_h[k] = d_uh
                    g_r[k] = a_r
            else:
                copy_row(da_h, dah[bb], 0)  # (eq. 10b) du_h = da_h
        if after:
            matmul_t(g, UT, pk[0], tmp)  # (eqs. 10a, 12) U^T [da_z; da_r; du_h]
        else:
            matmul_t(dah, UT_h, pk[2], drh)  # (eq. 10b) d(r*h) = U_h^T da_h
            for bb in range(nb):
                b = b0 + bb
                if t >= lengths[b]:
                    continue
                hp = states[tp, b] if 0 <= tp < T else h0[b]
                r, da_r = r_s[t, b], da[t, b, H : 2 * H]
                d_row, dp_row, g_r = drh[bb], dh_prev[bb], g[bb, H : 2 * H]
                for k in range(H):
                    rk = r[k]
                    dp_row[k] += d_row[k] * rk  # (eq. 10b)
                    a_r = d_row[k] * hp[k] * rk * (1.0 - rk)  # (eqs. 10b, 11)
                    da_r[k] = a_r
                    g_r[k] = a_r
            matmul_t(g, UT_zr, pk[1], tmp)  # (eq. 12) U_z^T da_z + U_r^T da_r
        for bb in range(nb):
            c_row, dp_row, t_row = carry[bb], dh_prev[bb], tmp[bb]
            for k in range(H):
                c_row[k] = dp_row[k] + t_row[k]  # (eq. 12)
    dh0[b0:b1] = carry


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _lengths_np(lengths: Tensor | None, B: int, T: int) -> np.ndarray:
    return np.full(B, T, np.int64) if lengths is None else lengths.to(torch.int64).contiguous().numpy()


_UNUSED: dict[np.dtype, np.ndarray] = {}


def _unused(dtype: np.dtype) -> np.ndarray:
    """A (1, 1, 1) array standing for a kernel output the call does not write (never written: the
    kernels check their ``save_*`` flags), shared instead of allocated per call."""
    if dtype not in _UNUSED:
        _UNUSED[dtype] = np.zeros((1, 1, 1), dtype)
    return _UNUSED[dtype]


def _empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=like.dtype)


SKINNY_INPUT = 16  # input features up to which the input-weight gradient is formed as (x^T D)^T


def input_weight_grad(D: Tensor, x2: Tensor) -> Tensor:
    """``D^T x2`` (gate gradients (N, K) by inputs (N, I), summed over the N = T·B rows): eq. (13)'s
    ``dW``. With few input features (an adding or copy task), ``D^T x2`` as PyTorch's CPU product
    ran 4-7x slower than ``(x2^T D)^T`` (measured: N=12800, K=1428, I=2: 117 ms against 17 ms)."""
    if x2.shape[1] <= SKINNY_INPUT:
        return (x2.t() @ D).t().contiguous()
    return D.t() @ x2


def _outer_sum_prev(G: Tensor, states: Tensor, h0: Tensor, reverse: bool, out: Tensor,
                    gate: Tensor | None = None) -> None:
    """``out = sum_t G_t^T s_t`` with ``s_t = h_prev`` of step t (times ``gate_t`` if given), without
    building the shifted state sequence: one product for the step that starts from ``h0`` and one
    over the views of the others (their ``h_prev`` is the state of the neighbouring step)."""
    T, B, K = G.shape
    H = states.shape[2]
    first, rest, prev = (T - 1, slice(0, T - 1), states[1:]) if reverse else (0, slice(1, T), states[: T - 1])
    s_first = h0 if gate is None else gate[first] * h0
    torch.mm(G[first].t(), s_first, out=out)
    if T > 1:
        s_rest = prev if gate is None else gate[rest] * prev
        out.addmm_(G[rest].reshape((T - 1) * B, K).t(), s_rest.reshape((T - 1) * B, H))


FUSE_MIN_ROWS = 16  # rows per chunk from which the input products run step by step inside the kernel


def _fuse_input(B: int, n: int | None = None) -> bool:
    """Whether each chunk computes ``W x_t`` itself: with enough rows per chunk its per-step GEMM
    is as efficient as one large product, and the T·B·3H buffer (larger than the caches) goes.
    ``n``: the thread count, if the caller has it (:func:`chunks`)."""
    return B // chunks(B, n_threads=n) >= FUSE_MIN_ROWS


def _run_forward(x: np.ndarray, W: np.ndarray, b_W: np.ndarray, rest: tuple, reset: str) -> None:
    """The forward kernels for validated C-contiguous ``x (T, B, I)``, ``W``, ``b_W`` and the rest of
    the kernel arguments (``h0`` on, see :func:`_gru_fwd_rows`). Rows over threads, with the input
    products inside the loop (``FUSE_MIN_ROWS``) or as one product beforehand; or, for a small
    batch, the unit split where that measures faster for the shape (:class:`PathTuner`; with
    deterministic algorithms on, :func:`_fixed_path`, the split's helper waited for)."""
    T, B, I = x.shape
    H = rest[0].shape[1]
    n = threads()
    fuse = _fuse_input(B, n)
    tuned = not fuse and _unit_split_eligible(B, T, H, n)
    key = (B, H, reset, x.dtype, T.bit_length())  # lengths within a factor of two share their measurements
    fixed = tuned and torch.are_deterministic_algorithms_enabled()
    if fixed:  # one path per shape, and the helper waited for: the same values on every call
        path = _fixed_path(B, T, H)
        tuned = False
    elif tuned:
        path = TUNER.choose(key, _paths(T))
    else:
        path = "solo" if not fuse and _short_call(T, B, I, H) else "rows"
    t0 = time.perf_counter()
    if path != "rows":
        _fwd_unit_split(x, W, b_W, *rest, helper=path == "units", patience=-1 if fixed else ARRIVAL_SPINS)
    else:
        U, after = rest[1], rest[5]
        use = _panels_repaid(T, B)
        use_u = _u_panels_used(use, B, U)
        pk = (*_panels(use, x.dtype, W if fuse else None),
              *_panels(use_u, x.dtype, U if after else None, None if after else U[: 2 * H],
                       None if after else U[2 * H :]))
        if fuse:
            run_chunks(_gru_fwd_rows, chunks(B), True, x, W, b_W, _unused(x.dtype), *rest, pk)
        else:
            bias = torch.from_numpy(b_W)
            with scratch("gru.xp", (T * B, 3 * H), bias.dtype) as xp:  # consumed by the loop below
                torch.addmm(bias, torch.from_numpy(x).view(T * B, I), torch.from_numpy(W).t(), out=xp)
                run_chunks(_gru_fwd_rows, chunks(B), False, x[:1, :1], W[:1], b_W[:1],
                           xp.numpy().reshape(T, B, 3 * H), *rest, pk)
    if tuned:
        TUNER.record(key, path, (time.perf_counter() - t0) / T)


SHORT_CALL_STEPS = 8  # calls shorter than this (not tuned: see _unit_split_eligible) may run "solo"
SHORT_CALL_FLOPS = 3e7  # ... when their products are at most this many FLOPs


def _short_call(T: int, B: int, I: int, H: int) -> bool:
    """Whether a call of a few steps on a small batch runs on one thread with its own input
    products (the "solo" path) rather than the rows path, whose framework product and thread pool
    cost more after an idle spell than the whole call's work: a one-step call at B=1, H=128 ran
    0.26-0.29 ms against 0.57 on the rows path (median of cold calls). Up to ``SHORT_CALL_FLOPS``
    (one thread at ~50 GFLOP/s against two plus ~0.3 ms of start-up); always the same path for a
    shape, so such calls give the same values with and without autograd, bit for bit."""
    return T < SHORT_CALL_STEPS and not numba.config.DISABLE_JIT and 6 * T * B * H * (I + H) <= SHORT_CALL_FLOPS


_PATHS_LONG, _PATHS_SHORT = ("units", "solo", "rows"), ("solo", "rows")


def _paths(T: int) -> tuple[str, ...]:
    """The small-batch paths worth measuring for ``T`` steps: the unit split only from
    ``UNIT_SPLIT_MIN_STEPS`` on, and only when this thread may run on two CPUs (pinned to one, its
    helper would share that CPU and every barrier would wait for a time slice: 55 us per step
    against 3.3 for one thread, measured at H=128). Where the split repays its helper's start
    depends on the step's work: at B=1, after 100 ms idle, with both workers starting at step 0,
    it ran 32 steps at H=256 in 0.67 ms against 0.75 alone (16 steps: 0.59 against 0.55), and at
    H=512 16 steps in 1.44 against 1.70 ms; at H=128 64 steps took 0.54 against 0.43. The tuner
    measures it from 32 steps on, per range of lengths (its key)."""
    return _PATHS_LONG if T >= UNIT_SPLIT_MIN_STEPS and cpus_available() >= 2 else _PATHS_SHORT


def _fixed_path(B: int, T: int, H: int) -> str:
    """The path of a tuned shape under deterministic algorithms (no tuner): the unit split where it
    measured faster than one thread at B=1 after idle (from 32 steps at H=256 and above, from 256
    steps at H=128, never at H=64; see :func:`_paths`), counting ``B * H`` as the step's work."""
    work = B * H
    if "units" in _paths(T) and (work >= 256 or (work >= 128 and T >= 256)):
        return "units"
    return "solo"


def _array(t: Tensor) -> np.ndarray:
    """The C-contiguous array of ``t``'s values (its own memory when ``t`` is contiguous)."""
    return t.detach().contiguous().numpy()


def forward_arrays(x: np.ndarray, h0: np.ndarray, W: np.ndarray, U: np.ndarray, b_W: np.ndarray | None,
                   b_U: np.ndarray | None, reset: str, reverse: bool, h_n: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One direction's forward on validated C-contiguous arrays, nothing saved for a backward:
    ``(y (T, B, H), h_n (B, H))``, ``h_n`` written into the given array if any. The same kernels
    and arguments as :func:`gru_fwd` (so the same values, bit for bit), without its tensor
    conversions: the path of inference calls (``GRU`` under ``torch.no_grad``)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    if b_W is None or b_U is None:
        b_W = b_U = np.zeros(3 * H, x.dtype)
    y = np.empty((T, B, H), x.dtype)
    if h_n is None:
        h_n = np.empty((B, H), x.dtype)
    unused = _unused(x.dtype)
    lengths = np.empty(B, np.int64)
    lengths.fill(T)
    rest = (h0, U, b_U, lengths, reverse, reset == "after", False, False, y, unused, unused, unused, unused, unused,
            h_n)
    _run_forward(x, W, b_W, rest, reset)
    return y, h_n


def gru_fwd(x: Tensor, h0: Tensor, W: Tensor, U: Tensor, b_W: Tensor | None, b_U: Tensor | None, reset: str,
            lengths: Tensor | None, reverse: bool, training: bool, recompute: bool = False
            ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Forward launcher: validated CPU tensors in, ``(y, h_n, saved)`` out (see module docstring).
    Each tensor is converted once: a batch-1 call of a few steps is dominated by this launcher."""
    T, B, I = x.shape
    H = h0.shape[1]
    dtype = x.dtype
    if b_W is None or b_U is None:
        b_W = b_U = torch.zeros(3 * H, dtype=dtype)
    y = torch.empty((T, B, H), dtype=dtype)
    h_n = torch.empty((B, H), dtype=dtype)
    y_np = y.numpy()
    unused = _unused(y_np.dtype)  # for the outputs a call does not write
    # without lengths no step is skipped and the carried states are the outputs themselves
    save_states = training and lengths is not None
    save_gates = training and not recompute
    states = pages_empty((T, B, H), dtype) if save_states else None  # (saved arrays: see pages_empty)
    gates = tuple(pages_empty((T, B, H), dtype) for _ in range(4)) if save_gates else (None,) * 4
    rest = (_array(h0), _array(U), _array(b_U), _lengths_np(lengths, B, T), reverse, reset == "after",
            save_states, save_gates, y_np, unused if states is None else states.numpy(),
            *(unused if g is None else g.numpy() for g in gates), h_n.numpy())
    _run_forward(_array(x), _array(W), _array(b_W), rest, reset)
    if not training:
        return y, h_n, ()
    if not save_states:
        states = y
    if recompute:
        return y, h_n, (states,)
    return y, h_n, (states, *gates)


def gru_bwd(dy: Tensor, dh_n: Tensor, x: Tensor, h0: Tensor, W: Tensor, U: Tensor, b_W: Tensor | None,
            b_U: Tensor | None, reset: str, lengths: Tensor | None, reverse: bool, saved: tuple[Tensor, ...],
            needs: tuple[bool, ...] = (True,) * 6) -> tuple[Tensor | None, ...]:
    """Backward launcher: the recurrent loop in compiled code, then eq. (13) as matrix products."""
    T, B, I = x.shape
    H = h0.shape[1]
    after = reset == "after"
    if len(saved) == 1:  # recompute mode: run the forward again, keeping the gates this time
        _, _, saved = gru_fwd(x, h0, W, U, b_W, b_U, reset, lengths, reverse, training=True)
    states, z, r, h_tilde, u_h = saved
    Ud = U.detach()
    UT = Ud.t().contiguous()  # (H, 3H)
    dummy = np.empty((1, 1), UT.numpy().dtype)
    dh0 = _empty((B, H), x)
    UT_np = _np(UT)
    UT_zr = dummy if after else _np(UT[:, : 2 * H].contiguous())
    UT_h = dummy if after else _np(UT[:, 2 * H :].contiguous())
    pk = _panels(_panels_repaid(T, B), UT_np.dtype, UT_np if after else None, None if after else UT_zr,
                 None if after else UT_h)
    # da and du_h live only in this call (nothing returned aliases them): scratch kept between calls
    # (and a dense copy of dy when the loss made it a broadcast view: y.sum() gives expanded ones)
    dense = dy.is_contiguous()
    with scratch("gru.da", (T, B, 3 * H), x.dtype) as da, \
            scratch("gru.du_h", (T, B, H) if after else (1, 1, 1), x.dtype) as du_h, \
            (nullcontext(dy) if dense else scratch("gru.dy", tuple(dy.shape), x.dtype)) as dy_c:
        if not dense:
            dy_c.copy_(dy)
        run_chunks(_gru_bwd_rows, chunks(B), _np(dy_c), _np(dh_n.contiguous()),
                   _np(h0.detach().contiguous()), _np(states), _np(z), _np(r), _np(h_tilde), _np(u_h), UT_np, UT_zr,
                   UT_h, _lengths_np(lengths, B, T), reverse, after, _np(da), _np(du_h), _np(dh0), pk)
        D = da.view(T * B, 3 * H)  # (T·B, 3H)
        dx = (D @ W.detach()).view(T, B, I) if needs[0] else None  # (eq. 13)
        dW = input_weight_grad(D, x.detach().reshape(T * B, I)) if needs[2] else None  # (eq. 13)
        dU = db_W = db_U = None
        if needs[3]:
            h0d = h0.detach()
            dU = torch.empty_like(Ud)
            _outer_sum_prev(da[..., : 2 * H], states, h0d, reverse, dU[: 2 * H])  # (eq. 13) dU_z, dU_r
            if after:
                _outer_sum_prev(du_h, states, h0d, reverse, dU[2 * H :])  # dU_h = sum du_h^T h_prev
            else:  # dU_h = sum da_h^T (r * h_prev)
                _outer_sum_prev(da[..., 2 * H :], states, h0d, reverse, dU[2 * H :], gate=r)
        if b_W is not None:
            db_W = D.sum(0)
            db_U = torch.cat([db_W[: 2 * H], du_h.view(T * B, H).sum(0)]) if after else db_W.clone()
    return dx, dh0, dW, dU, db_W, db_U
