"""The fused CPU engine for minGRU: whole-sequence forward and hand-derived backward (Numba).

minGRU's gates see only the input (:mod:`grulab.cells.mingru`, (M1)-(M3)), so after one large
product ``a = x W^T + b_W`` (all steps at once, torch, all threads) the recurrence
``h_t = (1 - z_t) h_{t-1} + z_t h̃_t`` is element-wise: every unit of every row evolves alone.
The kernels split the (row, block of units) tiles over threads (:mod:`grulab.engine._pool`, no
synchronisation) and each tile runs its loop over time on a contiguous block of units, which LLVM vectorises
(float32 uses the vectorised activations of :mod:`grulab.engine._jitmath`).

forward
    ``_mingru_fwd_tile``: (M1)-(M3) over time for one tile; writes ``y``, ``h_n`` and, with
    lengths in training, the carried ``states``.
backward (``docs/derivation.md``, section 7, (M6)-(M10))
    ``_mingru_bwd_tile``: the loop from the last processed step to the first, writing the
    pre-activation gradients ``da = [da_z, da_h]`` and ``dh0``; then ``dx``, ``dW``, ``db_W``
    of (M10) as large matrix products.

Saved for the backward: the pre-activations ``a`` (the forward computed them anyway) and the
states; ``z`` and ``h̃`` are recomputed from ``a`` (cheaper than writing and reading two more
``(T, B, H)`` arrays in a memory-bound loop, and exact at the branch point of ``g``).
The kernels rewrite (M3) as ``h_prev + z (h̃ - h_prev)`` (one FMA).
"""

from __future__ import annotations

import numba
import torch
from torch import Tensor

from grulab.engine._jitmath import FLAGS
from grulab.engine._pool import run_chunks, threads
from grulab.engine.cpu import _lengths_np, _np, sigmoid

MIN_TILE_UNITS = 16  # a thread's block of units: below this the loop overhead outweighs the split


# ----------------------------------------------------------------------------------- forward
@numba.njit(**FLAGS)
def _mingru_fwd_tile(b, k0, k1, a, h0, lengths, reverse, save_states, y, states, h_n):  # noqa: ANN001, ANN201
    """(M1)-(M3) over time for row ``b``, units ``k0:k1``. ``a`` (T, B, 2H) holds ``[a_z, a_h]``."""
    T = a.shape[0]
    H = h0.shape[1]
    half = h0.dtype.type(0.5)
    h = h0[b, k0:k1].copy()  # carried state of this tile
    n = k1 - k0
    for s in range(T):
        t = T - 1 - s if reverse else s
        y_t = y[t, b]
        if t >= lengths[b]:  # skipped step: the state passes through, the output is zero
            for j in range(n):
                y_t[k0 + j] = 0.0
            if save_states:
                for j in range(n):
                    states[t, b, k0 + j] = h[j]
            continue
        a_t = a[t, b]
        for j in range(n):
            k = k0 + j
            z = sigmoid(a_t[k])  # (M1)
            a_h = a_t[H + k]
            s_h = sigmoid(a_h)  # both branches of g computed, so the select vectorises
            h_tilde = a_h + half if a_h >= 0 else s_h  # (M2)
            h_new = h[j] + z * (h_tilde - h[j])  # (M3), rewritten
            h[j] = h_new
            y_t[k] = h_new
        if save_states:
            for j in range(n):
                states[t, b, k0 + j] = h[j]
    for j in range(n):
        h_n[b, k0 + j] = h[j]


@numba.njit(**FLAGS)
def _mingru_fwd_chunk(c, nchunks, nk, a, h0, lengths, reverse, save_states, y, states, h_n):  # noqa: ANN001, ANN201
    """Chunk ``c`` of ``nchunks`` of the (row, block of ``H / nk`` units) tiles."""
    B, H = h0.shape
    for i in range(c * B * nk // nchunks, (c + 1) * B * nk // nchunks):
        u = i % nk
        _mingru_fwd_tile(i // nk, u * H // nk, (u + 1) * H // nk, a, h0, lengths, reverse, save_states, y, states,
                         h_n)


# ---------------------------------------------------------------------------------- backward
@numba.njit(**FLAGS)
def _mingru_bwd_tile(b, k0, k1, dy, dh_n, a, h0, states, lengths, reverse, da, dh0):  # noqa: ANN001, ANN201
    """(M6)-(M9) for row ``b``, units ``k0:k1``, from the last processed step to the first.
    Writes ``da`` (T, B, 2H) = ``[da_z, da_h]`` and ``dh0``; ``states`` gives each step's h_prev."""
    T = a.shape[0]
    H = h0.shape[1]
    one = h0.dtype.type(1)
    half = h0.dtype.type(0.5)
    n = k1 - k0
    carry = dh_n[b, k0:k1].copy()  # dL/dh flowing back into the current step
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t + 1 if reverse else t - 1  # the step that produced h_prev
        da_t = da[t, b]
        if t >= lengths[b]:  # skipped: identity on the state, no parameter gradient
            for j in range(n):
                da_t[k0 + j] = 0.0
                da_t[H + k0 + j] = 0.0
            continue
        a_t = a[t, b]
        dy_t = dy[t, b]
        h_prev_t = states[tp, b] if 0 <= tp < T else h0[b]
        for j in range(n):
            k = k0 + j
            h_prev = h_prev_t[k]
            z = sigmoid(a_t[k])  # (M1), recomputed
            a_h = a_t[H + k]
            s_h = sigmoid(a_h)
            pos = a_h >= 0
            h_tilde = a_h + half if pos else s_h  # (M2), recomputed
            dg = one if pos else s_h * (one - s_h)  # g'(a_h)
            dh = carry[j] + dy_t[k]  # (M6)
            da_t[k] = dh * (h_tilde - h_prev) * z * (one - z)  # (M7)
            da_t[H + k] = dh * z * dg  # (M8)
            carry[j] = dh * (one - z)  # (M9)
    for j in range(n):
        dh0[b, k0 + j] = carry[j]


@numba.njit(**FLAGS)
def _mingru_bwd_chunk(c, nchunks, nk, dy, dh_n, a, h0, states, lengths, reverse, da, dh0):  # noqa: ANN001, ANN201
    """Chunk ``c`` of ``nchunks`` of the (row, block of ``H / nk`` units) tiles."""
    B, H = h0.shape
    for i in range(c * B * nk // nchunks, (c + 1) * B * nk // nchunks):
        u = i % nk
        _mingru_bwd_tile(i // nk, u * H // nk, (u + 1) * H // nk, dy, dh_n, a, h0, states, lengths, reverse, da,
                         dh0)


# ---------------------------------------------------------------------------------- launchers
def _tiling(B: int, H: int) -> tuple[int, int]:
    """``(nk, nchunks)``: whole rows when there are enough for every thread, otherwise rows split
    into ``nk`` blocks of units too; the tiles are cut into one chunk per thread."""
    n = threads()
    nk = max(1, min(-(-n // B), H // MIN_TILE_UNITS))
    return nk, min(n, B * nk)


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
    run_chunks(_mingru_fwd_chunk, n, nk, _np(a), _np(h0.detach().contiguous()),
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
    da = torch.empty((T, B, 2 * H), dtype=x.dtype)
    dh0 = torch.empty((B, H), dtype=x.dtype)
    nk, n = _tiling(B, H)
    run_chunks(_mingru_bwd_chunk, n, nk, _np(dy.contiguous()), _np(dh_n.contiguous()),
               _np(a), _np(h0.detach().contiguous()), _np(states), _lengths_np(lengths, B, T), reverse, _np(da),
               _np(dh0))
    D = da.view(T * B, 2 * H)
    dx = (D @ W.detach()).view(T, B, I) if needs[0] else None  # (M10)
    dW = D.t() @ x.detach().reshape(T * B, I) if needs[2] else None  # (M10)
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


@torch.compiler.disable  # one fused kernel per call: torch.compile leaves it opaque (grulab.runtime)
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
    return MinGRUFunction.apply(x, h0, W, b_W, lengths, reverse)
