"""The fused CPU engine for minGRU: whole-sequence forward and hand-derived backward (Numba).

minGRU's gates see only the input (:mod:`grulab.cells.mingru`, (M1)-(M3)), so after one large
product ``a = x W^T + b_W`` (all steps at once, torch, all threads) the recurrence
``h_t = (1 - z_t) h_{t-1} + z_t h̃_t`` is element-wise: every unit of every row evolves alone.
The kernels cut the batch into blocks of rows and, when rows are fewer than threads, blocks of
units; each block runs on its own thread (:mod:`grulab.engine._pool`, no synchronisation). As in
:mod:`grulab.engine.cpu` the loop over time is outermost, so each step reads the block's rows of
``a`` as contiguous runs; the loop over units works through small buffers, which lets LLVM
vectorise it (float32 uses the vectorised activations of :mod:`grulab.engine._jitmath`).

forward
    ``_mingru_fwd_block``: (M1)-(M3) over time; writes ``y``, ``h_n`` and, with lengths in
    training, the carried ``states``.
backward (``docs/derivation.md``, section 7, (M6)-(M10))
    ``_mingru_bwd_block``: the loop from the last processed step to the first, writing the
    pre-activation gradients ``da = [da_z, da_h]`` and ``dh0``; then ``dx``, ``dW``, ``db_W``
    of (M10) as large matrix products.

Saved for the backward: the pre-activations ``a`` (the forward computed them anyway) and the
states; ``z`` and ``h̃`` are recomputed from ``a`` (cheaper than writing and reading two more
``(T, B, H)`` arrays in a memory-bound loop, and exact at the branch point of ``g``).
The kernels rewrite (M3) as ``h_prev + z (h̃ - h_prev)`` (one FMA).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from grulab.engine._jitmath import FLAGS, copy_row
from grulab.engine._pool import run_chunks, threads
from grulab.engine._scratch import scratch
from grulab.engine.cpu import _lengths_np, _np, input_weight_grad, sigmoid
from grulab.engine.dispatch import grad_needed
from grulab.runtime import opaque_to_compiler

MIN_BLOCK_UNITS = 16  # a thread's block of units: below this the loop overhead outweighs the split


@numba.njit(**FLAGS)
def _block(c, nchunks, nk, B, H):  # noqa: ANN001, ANN201
    """Rows ``b0:b1`` and units ``k0:k1`` of block ``c``: ``nchunks / nk`` row blocks times ``nk``."""
    nr = nchunks // nk
    cr, cu = c // nk, c % nk
    return cr * B // nr, (cr + 1) * B // nr, cu * H // nk, (cu + 1) * H // nk


# ----------------------------------------------------------------------------------- forward
@numba.njit(**FLAGS)
def _mingru_fwd_block(c, nchunks, nk, a, h0, lengths, reverse, save_states, y, states,
                      h_n):  # noqa: ANN001, ANN201
    """(M1)-(M3) over time for block ``c`` (:func:`_block`). ``a`` (T, B, 2H) holds ``[a_z, a_h]``."""
    T = a.shape[0]
    B, H = h0.shape
    b0, b1, k0, k1 = _block(c, nchunks, nk, B, H)
    half = h0.dtype.type(0.5)
    h = h0[b0:b1, k0:k1].copy()  # (nb, nk) carried state of this block
    for s in range(T):
        t = T - 1 - s if reverse else s
        for bb in range(b1 - b0):
            b = b0 + bb
            h_b = h[bb]
            if t >= lengths[b]:  # skipped step: the state passes through, the output is zero
                y[t, b, k0:k1] = 0.0
            else:
                a_z = a[t, b, k0:k1]
                a_hv = a[t, b, H + k0 : H + k1]
                for j in range(k1 - k0):
                    z = sigmoid(a_z[j])  # (M1)
                    a_h = a_hv[j]
                    s_h = sigmoid(a_h)  # both branches of g computed, so the select vectorises
                    h_tilde = a_h + half if a_h >= 0 else s_h  # (M2)
                    h_b[j] = h_b[j] + z * (h_tilde - h_b[j])  # (M3), rewritten
                copy_row(h_b, y[t, b], k0)
            if save_states:
                copy_row(h_b, states[t, b], k0)
    h_n[b0:b1, k0:k1] = h


# ---------------------------------------------------------------------------------- backward
@numba.njit(**FLAGS)
def _mingru_bwd_block(c, nchunks, nk, dy, dh_n, a, h0, states, lengths, reverse, da,
                      dh0):  # noqa: ANN001, ANN201
    """(M6)-(M9) for block ``c`` (:func:`_block`), from the last processed step to the first.
    Writes ``da`` (T, B, 2H) = ``[da_z, da_h]`` and ``dh0``; ``states`` gives each step's h_prev."""
    T = a.shape[0]
    B, H = h0.shape
    b0, b1, k0, k1 = _block(c, nchunks, nk, B, H)
    one = h0.dtype.type(1)
    half = h0.dtype.type(0.5)
    carry = dh_n[b0:b1, k0:k1].copy()  # dL/dh flowing back into the current step
    da_z = np.empty(k1 - k0, carry.dtype)  # a step's gradients, buffered so the loop vectorises
    da_h = np.empty(k1 - k0, carry.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t + 1 if reverse else t - 1  # the step that produced h_prev
        for bb in range(b1 - b0):
            b = b0 + bb
            if t >= lengths[b]:  # skipped: identity on the state, no parameter gradient
                da[t, b, k0:k1] = 0.0
                da[t, b, H + k0 : H + k1] = 0.0
                continue
            c_b = carry[bb]
            a_z = a[t, b, k0:k1]
            a_hv = a[t, b, H + k0 : H + k1]
            dy_t = dy[t, b, k0:k1]
            h_prev = states[tp, b, k0:k1] if 0 <= tp < T else h0[b, k0:k1]
            for j in range(k1 - k0):
                z = sigmoid(a_z[j])  # (M1), recomputed
                a_h = a_hv[j]
                s_h = sigmoid(a_h)
                pos = a_h >= 0
                h_tilde = a_h + half if pos else s_h  # (M2), recomputed
                dg = one if pos else s_h * (one - s_h)  # g'(a_h)
                dh = c_b[j] + dy_t[j]  # (M6)
                da_z[j] = dh * (h_tilde - h_prev[j]) * z * (one - z)  # (M7)
                da_h[j] = dh * z * dg  # (M8)
                c_b[j] = dh * (one - z)  # (M9)
            da[t, b, k0:k1] = da_z
            da[t, b, H + k0 : H + k1] = da_h
    dh0[b0:b1, k0:k1] = carry


# ---------------------------------------------------------------------------------- launchers
def _tiling(B: int, H: int) -> tuple[int, int]:
    """``(nk, nchunks)``: blocks of rows, one per thread when there are enough rows; otherwise
    each row's units are split into ``nk`` blocks too."""
    n = threads()
    if B >= n:
        return 1, n
    nk = max(1, min(-(-n // B), H // MIN_BLOCK_UNITS))
    return nk, B * nk


def mingru_fwd(x: Tensor, h0: Tensor, W: Tensor, b_W: Tensor | None, lengths: Tensor | None, reverse: bool,
               training: bool) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Forward launcher: validated CPU tensors in, ``(y, h_n, saved)`` out (see module docstring)."""
    T, B, I = x.shape
    H = h0.shape[1]
    x2 = x.detach().reshape(T * B, I)
    Wd = W.detach()
    a = (torch.addmm(b_W.detach(), x2, Wd.t()) if b_W is not None else x2 @ Wd.t()).view(T, B, 2 * H)
    y = torch.empty((T, B, H), dtype=x.dtype)
    h_n = torch.empty((B, H), dtype=x.dtype)
    # without lengths no step is skipped and the carried states are the outputs themselves
    save_states = training and lengths is not None
    states = torch.empty((T, B, H) if save_states else (1, 1, 1), dtype=x.dtype)
    nk, n = _tiling(B, H)
    run_chunks(_mingru_fwd_block, n, nk, _np(a), _np(h0.detach().contiguous()),
               _lengths_np(lengths, B, T), reverse, save_states, _np(y), _np(states), _np(h_n))
    if not training:
        return y, h_n, ()
    return y, h_n, (a, states if save_states else y)


def mingru_bwd(dy: Tensor, dh_n: Tensor, x: Tensor, h0: Tensor, W: Tensor, b_W: Tensor | None,
               lengths: Tensor | None, reverse: bool, saved: tuple[Tensor, ...],
               needs: tuple[bool, ...] = (True,) * 4) -> tuple[Tensor | None, ...]:
    """Backward launcher: the loop (M6)-(M9) in compiled code, then (M10) as matrix products.
    Returns ``(dx, dh0, dW, db_W)`` (``None`` where ``needs`` says it is not wanted)."""
    T, B, I = x.shape
    H = h0.shape[1]
    a, states = saved
    dh0 = torch.empty((B, H), dtype=x.dtype)
    nk, n = _tiling(B, H)
    with scratch("mingru.da", (T, B, 2 * H), x.dtype) as da:  # call-local: nothing returned aliases it
        run_chunks(_mingru_bwd_block, n, nk, _np(dy.contiguous()), _np(dh_n.contiguous()),
                   _np(a), _np(h0.detach().contiguous()), _np(states), _lengths_np(lengths, B, T), reverse, _np(da),
                   _np(dh0))
        D = da.view(T * B, 2 * H)
        dx = (D @ W.detach()).view(T, B, I) if needs[0] else None  # (M10)
        dW = input_weight_grad(D, x.detach().reshape(T * B, I)) if needs[2] else None  # (M10)
        db_W = D.sum(0) if b_W is not None and needs[3] else None  # (M10)
    return dx, dh0, dW, db_W


class MinGRUFunction(torch.autograd.Function):
    """One minGRU direction over a sequence; backward is the hand derivation (M6)-(M10)."""

    @staticmethod
    def forward(ctx, x, h0, W, b_W, lengths, reverse):  # noqa: ANN001, ANN205
        training = any(ctx.needs_input_grad[:4])
        y, h_n, saved = mingru_fwd(x, h0, W, b_W, lengths, reverse, training)
        ctx.reverse = reverse
        ctx.save_for_backward(x, h0, W, b_W, lengths, *saved)
        return y, h_n

    @staticmethod
    def backward(ctx, dy, dh_n):  # noqa: ANN001, ANN205
        x, h0, W, b_W, lengths, *saved = ctx.saved_tensors
        dx, dh0, dW, db_W = mingru_bwd(dy, dh_n, x, h0, W, b_W, lengths, ctx.reverse, tuple(saved),
                                       ctx.needs_input_grad[:4])
        return dx, dh0, dW, db_W, None, None


@opaque_to_compiler  # one fused kernel per call: torch.compile leaves it opaque (grulab.runtime)
def mingru_cpu(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    b_W: Tensor | None,
    *,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`grulab.variants.mingru.mingru_ref` in the fused CPU kernels (float32/float64 CPU
    tensors, validated by the layer). Returns ``(y (T, B, H), h_n (B, H))``; differentiable
    through the hand-derived backward (``docs/derivation.md``, (M6)-(M10))."""
    if not grad_needed(x, h0, W, b_W):
        y, h_n, _ = mingru_fwd(x, h0, W, b_W, lengths, reverse, False)
        return y, h_n
    return MinGRUFunction.apply(x, h0, W, b_W, lengths, reverse)
