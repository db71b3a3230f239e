"""The fused CPU engine for the GRU variants: zoneout, variational dropout and layer norm (Numba).

One kernel pair runs every combination :func:`grulab.variants.regularized.variant_gru_ref` does,
with the structure of :mod:`grulab.engine.cpu` (chunks of batch rows on threads, a small GEMM per
step fused with the gate math, weight gradients as large matrix products after the loop; the
chunks run on :mod:`grulab.engine._pool`). The masks are inputs, drawn by the layer with torch's
generator exactly as the reference draws them.

forward
    1. ``x̂ = m_x ⊙ x`` (V1) and ``p = x̂ W^T`` for all steps at once (torch); with layer norm,
       the input side ``LN(p_g; γ_Wg, b_Wg)`` of every gate and step (N1)-(N2) in one compiled
       pass over the rows (``_ln_rows_fwd``).
    2. ``_variant_fwd_rows``: the recurrent loop. Per step ``q = ĥ U^T`` with ``ĥ = m_h ⊙ h_prev``
       (V1), per row and gate ``u = LN(q)`` (or ``q + b_U``), the gates (1)-(3)/(N3)-(N5), and
       the update with zoneout's keep coefficient ``c`` (V3), (Z1)-(Z2):
       ``h = h_prev + c z (h̃ - h_prev)`` with ``c = 1 - d_t`` (training) or ``1 - p``
       (evaluation): zoneout only rescales the write gate, ``docs/derivation.md`` (V4).
backward (``docs/derivation.md``, section 8, (V4)-(V8) and (N7)-(N8))
    3. ``_variant_bwd_rows``: the loop from the last processed step to the first, writing the
       input-side pre-activation gradients ``da = [da_z, da_r, da_h]``, the recurrent-side
       gradients before the layer norm ``dq`` with the inputs they multiply (``ĥ``, and
       ``r ⊙ ĥ`` for reset="before"), and summing the bias and gain gradients (N8) per thread.
    4. The input layer norm's backward (N7) in one compiled pass (``_ln_rows_bwd``), then the
       weight and input gradients (V8) as large matrix products.

Saved for the backward: the carried states (with lengths), ``z, r, h̃``, ``u_h`` (reset="after"),
and with layer norm the normalised terms ``n`` and their ``1/σ`` on both sides: O(T·B·H),
nothing recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from grulab.cells.lngru import DEFAULT_EPS
from grulab.engine._jitmath import FLAGS, matmul_t
from grulab.engine._pool import chunks, run_chunks
from grulab.engine._scratch import pages_empty, scratch
from grulab.engine.cpu import _lengths_np, _np, _panels, _panels_repaid, input_weight_grad, sigmoid, tanh
from grulab.engine.dispatch import grad_needed
from grulab.runtime import opaque_to_compiler

LN_ROWS_PER_CHUNK = 256  # the input side's layer norm is a few passes over 3H numbers per row


# ------------------------------------------------------------------------ per-row layer norm
@numba.njit(**FLAGS)
def _ln_fwd(q, gain, shift, eps, n, u):  # noqa: ANN001, ANN201
    """(N1)-(N2) over one gate of one row: ``n = (q - μ)/sqrt(σ² + ε)``, ``u = gain n + shift``.
    Returns ``1/sqrt(σ² + ε)``."""
    H = q.shape[0]
    mu = q.dtype.type(0)
    for k in range(H):
        mu += q[k]
    mu /= H  # (N1)
    var = q.dtype.type(0)
    for k in range(H):
        var += (q[k] - mu) * (q[k] - mu)
    rstd = 1 / np.sqrt(var / H + eps)  # (N1)
    for k in range(H):
        n[k] = (q[k] - mu) * rstd
        u[k] = gain[k] * n[k] + shift[k]  # (N2)
    return rstd


@numba.njit(**FLAGS)
def _ln_bwd(du, gain, n, rstd, dq):  # noqa: ANN001, ANN201
    """(N7) over one gate of one row: ``dq = (dn - mean(dn) - n mean(dn ⊙ n)) / σ``, ``dn = du ⊙ gain``."""
    H = du.shape[0]
    s1 = du.dtype.type(0)
    s2 = du.dtype.type(0)
    for k in range(H):
        dn = du[k] * gain[k]
        s1 += dn
        s2 += dn * n[k]
    s1 /= H
    s2 /= H
    for k in range(H):
        dq[k] = (du[k] * gain[k] - s1 - n[k] * s2) * rstd  # (N7)


@numba.njit(**FLAGS)
def _recurrent_term(q, ln, gain, shift, eps, n, u):  # noqa: ANN001, ANN201
    """One gate block of one row's recurrent term: ``u = LN(q)`` (N3)-(N5) or ``q + shift``
    (1)-(3); returns the block's ``1/σ`` (layer norm) or 1."""
    if ln:
        return _ln_fwd(q, gain, shift, eps, n, u)
    for k in range(q.shape[0]):
        u[k] = q[k] + shift[k]
    return q.dtype.type(1)


@numba.njit(**FLAGS)
def _accumulate(acc, du, n, da, ln):  # noqa: ANN001, ANN201
    """One row's terms of the sums (N8): ``acc`` (3, 3H) += ``[du, du ⊙ n, da]``."""
    for q in range(du.shape[0]):
        acc[0, q] += du[q]
        if ln:
            acc[1, q] += du[q] * n[q]
        acc[2, q] += da[q]


@numba.njit(**FLAGS)
def _ln_rows_fwd(c, nchunks, P, gain, shift, eps, out, n, rstd):  # noqa: ANN001, ANN201
    """(N1)-(N2) of the three gate blocks of rows chunk ``c`` of ``P`` (N, 3H): the input side of
    every step at once. Writes ``out = gain n + shift``, ``n`` and ``rstd`` (N, 3)."""
    N = P.shape[0]
    H = P.shape[1] // 3
    for i in range(c * N // nchunks, (c + 1) * N // nchunks):
        for g in range(3):
            blk = slice(g * H, (g + 1) * H)
            rstd[i, g] = _ln_fwd(P[i, blk], gain[blk], shift[blk], eps, n[i, blk], out[i, blk])


@numba.njit(**FLAGS)
def _ln_rows_bwd(c, nchunks, D, gain, n, rstd, dP, sums):  # noqa: ANN001, ANN201
    """(N7) of rows chunk ``c`` of ``D`` (N, 3H) into ``dP``; adds ``Σ D ⊙ n`` (N8) to ``sums[c]``."""
    N = D.shape[0]
    H = D.shape[1] // 3
    acc = sums[c]
    for i in range(c * N // nchunks, (c + 1) * N // nchunks):
        for g in range(3):
            blk = slice(g * H, (g + 1) * H)
            _ln_bwd(D[i, blk], gain[blk], n[i, blk], rstd[i, g], dP[i, blk])
        for q in range(3 * H):
            acc[q] += D[i, q] * n[i, q]


@numba.njit(**FLAGS)
def _keep(zmode, zd, zp, t, b, k):  # noqa: ANN001, ANN201
    """Zoneout's coefficient ``c`` on the write gate: 1, ``1 - d_t`` (Z1) or ``1 - p`` (Z2)."""
    one = zd.dtype.type(1)
    if zmode == 1:
        return one - zd[t, b, k]
    if zmode == 2:
        return one - zd.dtype.type(zp)
    return one


# ----------------------------------------------------------------------------------- forward
@numba.njit(**FLAGS)
def _variant_fwd_rows(c, nchunks, xp, h0, U, b_U, g_U, eps, ln, m_h, use_mh, zd, zmode, zp, lengths, reverse,
                      after, save_states, save_gates, y, states, z_s, r_s, ht_s, uh_s, n_s, rstd_s,
                      h_n, pk):  # noqa: ANN001, ANN201
    """Recurrent loop of (V1)-(V3), (Z1)-(Z2), (N3)-(N6) for chunk ``c`` of ``nchunks`` of the batch
    rows. ``xp`` (T, B, 3H) holds the input side of every gate; writes ``y``, ``h_n`` and, when
    asked, the states, the gates and (layer norm) the normalised recurrent terms ``n_s`` (T, B, 3H)
    with their ``1/σ`` in ``rstd_s`` (T, B, 3)."""
    T, B = xp.shape[0], xp.shape[1]
    H = h0.shape[1]
    b0, b1 = c * B // nchunks, (c + 1) * B // nchunks
    nb = b1 - b0
    one = h0.dtype.type(1)
    h = h0[b0:b1].copy()  # (nb, H) carried state
    hm = np.empty((nb, H), h.dtype)  # ĥ = m_h ⊙ h_prev, the state the recurrent weights read (V1)
    q = np.empty((nb, 3 * H if after else 2 * H), h.dtype)  # recurrent products ĥ U^T
    qh = np.empty((nb, H), h.dtype)  # reset="before": U_h (r ⊙ ĥ)
    u = np.empty((nb, 3 * H), h.dtype)  # recurrent terms after layer norm / bias
    z = np.empty((nb, H), h.dtype)
    r = np.empty((nb, H), h.dtype)
    rh = np.empty((nb, H), h.dtype)
    n_tmp = np.empty(3 * H, h.dtype)  # normalised terms of a step that is not saved
    rstd_tmp = np.empty(3, h.dtype)
    U_zr = U[: 2 * H]
    U_h = U[2 * H :]
    for s in range(T):
        t = T - 1 - s if reverse else s
        for bb in range(nb):
            for k in range(H):
                hm[bb, k] = h[bb, k] * m_h[b0 + bb, k] if use_mh else h[bb, k]  # (V1)
        if after:
            matmul_t(hm, U, pk[0], q)  # (nb, 3H) = ĥ U^T
        else:
            matmul_t(hm, U_zr, pk[1], q)  # (nb, 2H)
        for bb in range(nb):
            b = b0 + bb
            if t >= lengths[b]:
                continue
            n_row = n_s[t, b] if save_gates and ln else n_tmp
            rstd_row = rstd_s[t, b] if save_gates and ln else rstd_tmp
            for g in range(3 if after else 2):
                blk = slice(g * H, (g + 1) * H)
                rstd_row[g] = _recurrent_term(q[bb, blk], ln, g_U[blk] if ln else g_U, b_U[blk], eps, n_row[blk],
                                              u[bb, blk])
            x_t = xp[t, b]
            for k in range(H):
                z[bb, k] = sigmoid(x_t[k] + u[bb, k])  # (eq. 1), (N3)
                r[bb, k] = sigmoid(x_t[H + k] + u[bb, H + k])  # (eq. 2), (N4)
                if not after:
                    rh[bb, k] = r[bb, k] * hm[bb, k]
        if not after:
            matmul_t(rh, U_h, pk[2], qh)  # (eq. 3b), (N5b) U_h (r ⊙ ĥ)
            for bb in range(nb):
                b = b0 + bb
                if t >= lengths[b]:
                    continue
                n_row = n_s[t, b] if save_gates and ln else n_tmp
                rstd_row = rstd_s[t, b] if save_gates and ln else rstd_tmp
                rstd_row[2] = _recurrent_term(qh[bb], ln, g_U[2 * H :] if ln else g_U, b_U[2 * H :], eps,
                                              n_row[2 * H :], u[bb, 2 * H :])
        for bb in range(nb):
            b = b0 + bb
            x_t = xp[t, b]
            if t >= lengths[b]:  # skipped step: the state passes through, the output is zero
                for k in range(H):
                    y[t, b, k] = 0.0
                if save_states:
                    for k in range(H):
                        states[t, b, k] = h[bb, k]
                if save_gates:  # zero, as the reference records them (and 0 * garbage is not 0)
                    for k in range(H):
                        z_s[t, b, k] = 0.0
                        r_s[t, b, k] = 0.0
                        ht_s[t, b, k] = 0.0
                        uh_s[t, b, k] = 0.0
                if save_gates and ln:  # the gains' gradient sums du ⊙ n over every step
                    for q3 in range(3 * H):
                        n_s[t, b, q3] = 0.0
                    for g in range(3):
                        rstd_s[t, b, g] = 0.0
                continue
            for k in range(H):
                u_h = u[bb, 2 * H + k]
                a_h = x_t[2 * H + k] + (r[bb, k] * u_h if after else u_h)  # (eq. 3a/3b), (N5a/N5b)
                h_tilde = tanh(a_h)  # (eq. 3), (N6)
                c = _keep(zmode, zd, zp, t, b, k) if zmode != 0 else one
                # (V3) then (Z1)/(Z2), rewritten: h_prev + c z (h̃ - h_prev) (V4)
                h_new = h[bb, k] + c * z[bb, k] * (h_tilde - h[bb, k])
                h[bb, k] = h_new
                y[t, b, k] = h_new
                if save_states:
                    states[t, b, k] = h_new
                if save_gates:
                    z_s[t, b, k] = z[bb, k]
                    r_s[t, b, k] = r[bb, k]
                    ht_s[t, b, k] = h_tilde
                    uh_s[t, b, k] = u_h
    for bb in range(nb):
        for k in range(H):
            h_n[b0 + bb, k] = h[bb, k]


# ---------------------------------------------------------------------------------- backward
@numba.njit(**FLAGS)
def _variant_bwd_rows(c, nchunks, dy, dh_n, h0, states, z_s, r_s, ht_s, uh_s, n_s, rstd_s, g_U, ln, m_h, use_mh,
                      zd, zmode, zp, UT, UT_zr, UT_h, lengths, reverse, after, da, dq, srec, pk,
                      sums):  # noqa: ANN001, ANN201
    """Recurrent loop of (V5)-(V7), (N7) for chunk ``c`` of ``nchunks`` of the batch rows, from the
    last processed step to the first. Writes ``da`` (T, B, 3H) = ``[da_z, da_r, da_h]`` (input
    side), ``dq`` (T, B, 3H) (recurrent side, before the layer norm), the recurrent inputs of (V8)
    ``srec`` (T, B, H|2H) = ``[ĥ; r ⊙ ĥ (reset="before")]``, ``dh0`` into ``dh_n``'s rows, and adds
    the chunk's sums of (N8) to ``sums[c]`` = ``[Σ du, Σ du ⊙ n_U, Σ da]`` (3, 3H).
    ``UT`` is U^T (H, 3H); ``UT_zr``, ``UT_h`` its blocks."""
    T, B = dy.shape[0], dy.shape[1]
    H = h0.shape[1]
    b0, b1 = c * B // nchunks, (c + 1) * B // nchunks
    nb = b1 - b0
    acc = sums[c]
    one = h0.dtype.type(1)
    carry = dh_n[b0:b1].copy()  # dL/dh flowing back into the current step
    gu = np.zeros((nb, 3 * H), carry.dtype)  # gradients of the recurrent terms u (after the norm)
    gq = np.zeros((nb, 3 * H if after else 2 * H), carry.dtype)  # ... and of q = ĥ U^T (before it)
    dqh = np.zeros((nb, H), carry.dtype)  # reset="before": the candidate's block of dq
    dh_prev = np.empty((nb, H), carry.dtype)  # direct path (V5)
    dhm = np.empty((nb, H), carry.dtype)  # dL/dĥ through U
    drh = np.empty((nb, H), carry.dtype)  # reset="before": dL/d(r ⊙ ĥ)
    dhr = np.zeros((nb, H), carry.dtype)  # reset="before": dL/dĥ through r ⊙ ĥ
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t + 1 if reverse else t - 1  # the step that produced h_prev
        for bb in range(nb):
            b = b0 + bb
            if t >= lengths[b]:  # skipped: identity on the state, no parameter gradient
                for k in range(H):
                    dh_prev[bb, k] = carry[bb, k]
                    dqh[bb, k] = 0.0
                    dhr[bb, k] = 0.0
                for q in range(3 * H):
                    da[t, b, q] = 0.0
                    dq[t, b, q] = 0.0
                for q in range(srec.shape[2]):  # finite, so the products of (V8) ignore the step
                    srec[t, b, q] = 0.0
                for q in range(gq.shape[1]):
                    gq[bb, q] = 0.0
                continue
            for k in range(H):
                h_prev = states[tp, b, k] if 0 <= tp < T else h0[b, k]
                srec[t, b, k] = h_prev * m_h[b, k] if use_mh else h_prev  # (V1) ĥ
                z = z_s[t, b, k]
                r = r_s[t, b, k]
                h_tilde = ht_s[t, b, k]
                c = _keep(zmode, zd, zp, t, b, k) if zmode != 0 else one
                dh = carry[bb, k] + dy[t, b, k]
                dh_tilde = dh * c * z  # (V5)
                dz = dh * c * (h_tilde - h_prev)  # (V5)
                dh_prev[bb, k] = dh * (one - c * z)  # (V5)
                da_h = dh_tilde * (one - h_tilde * h_tilde)  # (eq. 8)
                da_z = dz * z * (one - z)  # (eq. 9)
                da[t, b, k] = da_z
                da[t, b, 2 * H + k] = da_h
                gu[bb, k] = da_z
                if after:
                    u_h = uh_s[t, b, k]
                    da_r = da_h * u_h * r * (one - r)  # (eqs. 10a, 11)
                    da[t, b, H + k] = da_r
                    gu[bb, H + k] = da_r
                    gu[bb, 2 * H + k] = da_h * r  # (eq. 10a) du_h
                else:
                    gu[bb, 2 * H + k] = da_h  # (eq. 10b) du_h = da_h
            for g in range(3):
                if g == 1 and not after:
                    continue  # reset="before": da_r needs U_h^T dq_h first
                dst = gq[bb, g * H : (g + 1) * H] if (after or g == 0) else dqh[bb]
                if ln:
                    _ln_bwd(gu[bb, g * H : (g + 1) * H], g_U[g * H : (g + 1) * H], n_s[t, b, g * H : (g + 1) * H],
                            rstd_s[t, b, g], dst)  # (N7)
                else:
                    for k in range(H):
                        dst[k] = gu[bb, g * H + k]
            if after:
                for q in range(3 * H):
                    dq[t, b, q] = gq[bb, q]
                _accumulate(acc, gu[bb], n_s[t, b] if ln else n_s[0, 0], da[t, b], ln)
        if after:
            matmul_t(gq, UT, pk[0], dhm)  # (V6) U^T dq
        else:
            matmul_t(dqh, UT_h, pk[2], drh)  # (eq. 10b) d(r ⊙ ĥ) = U_h^T dq_h
            for bb in range(nb):
                b = b0 + bb
                if t >= lengths[b]:
                    continue
                for k in range(H):
                    hm = srec[t, b, k]  # (V1) ĥ
                    r = r_s[t, b, k]
                    srec[t, b, H + k] = r * hm
                    da_r = drh[bb, k] * hm * r * (one - r)  # (eqs. 10b, 11)
                    da[t, b, H + k] = da_r
                    gu[bb, H + k] = da_r
                    dhr[bb, k] = drh[bb, k] * r  # (eq. 10b)
                if ln:
                    _ln_bwd(gu[bb, H : 2 * H], g_U[H : 2 * H], n_s[t, b, H : 2 * H], rstd_s[t, b, 1],
                            gq[bb, H:])  # (N7)
                else:
                    for k in range(H):
                        gq[bb, H + k] = gu[bb, H + k]
                for q in range(2 * H):
                    dq[t, b, q] = gq[bb, q]
                for k in range(H):
                    dq[t, b, 2 * H + k] = dqh[bb, k]
                _accumulate(acc, gu[bb], n_s[t, b] if ln else n_s[0, 0], da[t, b], ln)
            matmul_t(gq, UT_zr, pk[1], dhm)  # (eq. 12) U_z^T dq_z + U_r^T dq_r
            for bb in range(nb):
                for k in range(H):
                    dhm[bb, k] += dhr[bb, k]
        for bb in range(nb):
            for k in range(H):
                back = dhm[bb, k] * m_h[b0 + bb, k] if use_mh else dhm[bb, k]  # (V6)
                carry[bb, k] = dh_prev[bb, k] + back  # (V7)
    for bb in range(nb):
        for k in range(H):
            dh_n[b0 + bb, k] = carry[bb, k]


# ---------------------------------------------------------------------------------- launchers
@dataclass(frozen=True)
class VariantOptions:
    """The non-tensor arguments of one variant direction."""

    reset: str = "after"
    eps: float = DEFAULT_EPS
    zoneout_p: float = 0.0  # evaluation form (Z2) when no masks are given
    reverse: bool = False


def _dummy(dtype: torch.dtype, dims: int = 3) -> Tensor:
    return torch.zeros((1,) * dims, dtype=dtype)


def _masks(m_h: Tensor | None, d: Tensor | None, opts: VariantOptions, dt: torch.dtype) -> tuple:
    """Kernel arguments of the masks: ``m_h, use_mh, d, zmode, p``."""
    zmode = 1 if d is not None else (2 if opts.zoneout_p else 0)
    return (_np(m_h.detach().contiguous() if m_h is not None else _dummy(dt, 2)), m_h is not None,
            _np(d.detach().contiguous() if d is not None else _dummy(dt)), zmode, float(opts.zoneout_p))


def variant_fwd(x: Tensor, h0: Tensor, W: Tensor, U: Tensor, b_W: Tensor | None, b_U: Tensor | None,
                g_W: Tensor | None, g_U: Tensor | None, m_x: Tensor | None, m_h: Tensor | None, d: Tensor | None,
                lengths: Tensor | None, opts: VariantOptions, training: bool
                ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Forward launcher: validated CPU tensors in, ``(y, h_n, saved)`` out (see module docstring)."""
    T, B, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    ln = g_W is not None
    xd = x.detach() if m_x is None else x.detach() * m_x  # (V1) x̂ (T, B, I)
    x2 = xd.reshape(T * B, I)
    Wd = W.detach()
    n_W = rstd_W = _dummy(dt, 2)
    if ln:  # (N1)-(N2) of the input side of every step, in compiled code
        P = x2 @ Wd.t()  # (T·B, 3H)
        xp, n_W, rstd_W = torch.empty_like(P), torch.empty_like(P), torch.empty((T * B, 3), dtype=dt)
        shift = b_W.detach().contiguous() if b_W is not None else torch.zeros(3 * H, dtype=dt)
        run_chunks(_ln_rows_fwd, chunks(T * B, LN_ROWS_PER_CHUNK), _np(P), _np(g_W.detach().contiguous()),
                     _np(shift), float(opts.eps), _np(xp), _np(n_W), _np(rstd_W))
    else:
        xp = torch.addmm(b_W.detach(), x2, Wd.t()) if b_W is not None else x2 @ Wd.t()
    b_U_ = b_U.detach().contiguous() if b_U is not None else torch.zeros(3 * H, dtype=dt)
    g_U_ = g_U.detach().contiguous() if ln else _dummy(dt, 1)
    y = torch.empty((T, B, H), dtype=dt)
    h_n = torch.empty((B, H), dtype=dt)
    save_states = training and lengths is not None  # otherwise the carried states are the outputs
    states = pages_empty((T, B, H) if save_states else (1, 1, 1), dt)  # saved arrays: see pages_empty
    gate_shape = (T, B, H) if training else (1, 1, 1)
    z, r, h_tilde, u_h = (pages_empty(gate_shape, dt) for _ in range(4))
    n_U = pages_empty((T, B, 3 * H) if training and ln else (1, 1, 1), dt)
    rstd_U = torch.empty((T, B, 3) if training and ln else (1, 1, 1), dtype=dt)
    U_np = _np(U.detach().contiguous())
    after = opts.reset == "after"
    pk = _panels(_panels_repaid(T, B), U_np.dtype, U_np if after else None, None if after else U_np[: 2 * H],
                 None if after else U_np[2 * H :])
    run_chunks(_variant_fwd_rows, chunks(B), _np(xp.view(T, B, 3 * H)),
                 _np(h0.detach().contiguous()), U_np, _np(b_U_), _np(g_U_), float(opts.eps),
                 ln, *_masks(m_h, d, opts, dt), _lengths_np(lengths, B, T), opts.reverse, after,
                 save_states, training, _np(y), _np(states), _np(z), _np(r), _np(h_tilde), _np(u_h), _np(n_U),
                 _np(rstd_U), _np(h_n), pk)
    if not training:
        return y, h_n, ()
    return y, h_n, (states if save_states else y, z, r, h_tilde, u_h, n_U, rstd_U, n_W, rstd_W)


def variant_bwd(dy: Tensor, dh_n: Tensor, x: Tensor, h0: Tensor, W: Tensor, U: Tensor, b_W: Tensor | None,
                b_U: Tensor | None, g_W: Tensor | None, g_U: Tensor | None, m_x: Tensor | None, m_h: Tensor | None,
                d: Tensor | None, lengths: Tensor | None, opts: VariantOptions, saved: tuple[Tensor, ...]
                ) -> tuple[Tensor | None, ...]:
    """Backward launcher: the loop in compiled code, then (N7), (V8), (N8) as matrix products.
    Returns ``(dx, dh0, dW, dU, db_W, db_U, dg_W, dg_U)``."""
    T, B, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    after = opts.reset == "after"
    ln = g_W is not None
    states, z, r, h_tilde, u_h, n_U, rstd_U, n_W, rstd_W = saved
    UT = U.detach().t().contiguous()  # (H, 3H)
    dummy = np.empty((1, 1), UT.numpy().dtype)
    dh0 = dh_n.detach().clone().contiguous()  # the kernel turns it into dh0 in place
    n = chunks(B)
    sums = torch.zeros((n, 3, 3 * H), dtype=dt)  # per chunk: Σ du, Σ du ⊙ n_U, Σ da
    UT_np = _np(UT)
    UT_zr = dummy if after else _np(UT[:, : 2 * H].contiguous())
    UT_h = dummy if after else _np(UT[:, 2 * H :].contiguous())
    pk = _panels(_panels_repaid(T, B), UT_np.dtype, UT_np if after else None, None if after else UT_zr,
                 None if after else UT_h)
    # da, dq and srec live only in this call (nothing returned aliases them): kept between calls
    with scratch("variant.da", (T, B, 3 * H), dt) as da, scratch("variant.dq", (T, B, 3 * H), dt) as dq, \
            scratch("variant.srec", (T, B, H if after else 2 * H), dt) as srec:
        run_chunks(_variant_bwd_rows, n, _np(dy.contiguous()), _np(dh0),
                     _np(h0.detach().contiguous()), _np(states), _np(z), _np(r), _np(h_tilde), _np(u_h), _np(n_U),
                     _np(rstd_U), _np(g_U.detach().contiguous() if ln else _dummy(dt, 1)), ln,
                     *_masks(m_h, d, opts, dt), UT_np, UT_zr, UT_h, _lengths_np(lengths, B, T), opts.reverse,
                     after, _np(da), _np(dq), _np(srec), pk, _np(sums))
        sum_du, sum_du_n, sum_da = sums.sum(0)
        D = da.view(T * B, 3 * H)  # input side [da_z, da_r, da_h]
        db_W = sum_da if b_W is not None else None  # (V8), (N8)
        db_U = sum_du if b_U is not None else None  # (V8), (N8)
        dg_W = dg_U = None
        if ln:
            dg_U = sum_du_n  # (N8)
            nr = chunks(T * B, LN_ROWS_PER_CHUNK)
            dP, dg = torch.empty_like(D), torch.zeros((nr, 3 * H), dtype=dt)
            run_chunks(_ln_rows_bwd, nr, _np(D), _np(g_W.detach().contiguous()), _np(n_W),
                         _np(rstd_W), _np(dP), _np(dg))  # (N7) gradient of p = x̂ W^T
            D, dg_W = dP, dg.sum(0)  # (N8)
        xd = x.detach() if m_x is None else x.detach() * m_x  # (V1)
        dx = (D @ W.detach()).view(T, B, I)  # (V8)
        if m_x is not None:
            dx = dx * m_x  # (V8) through x̂ = m_x ⊙ x
        dW = input_weight_grad(D, xd.reshape(T * B, I))  # (V8)
        Q = dq.view(T * B, 3 * H)
        S = srec.view(T * B, srec.shape[2])
        dU = torch.empty_like(U.detach())
        torch.mm(Q[:, : 2 * H].t(), S[:, :H], out=dU[: 2 * H])  # (V8) dU_z, dU_r
        torch.mm(Q[:, 2 * H :].t(), S[:, :H] if after else S[:, H:], out=dU[2 * H :])  # (V8) dU_h
    return dx, dh0, dW, dU, db_W, db_U, dg_W, dg_U


class VariantGRUFunction(torch.autograd.Function):
    """One direction of a GRU variant over a sequence; backward is the hand derivation of
    ``docs/derivation.md`` section 8. The masks are inputs (no gradient)."""

    @staticmethod
    def forward(ctx, x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, d, lengths, opts):  # noqa: ANN001, ANN205
        training = any(ctx.needs_input_grad[:8])
        y, h_n, saved = variant_fwd(x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, d, lengths, opts, training)
        ctx.opts = opts
        ctx.save_for_backward(x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, d, lengths, *saved)
        return y, h_n

    @staticmethod
    def backward(ctx, dy, dh_n):  # noqa: ANN001, ANN205
        x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, d, lengths, *saved = ctx.saved_tensors
        grads = variant_bwd(dy, dh_n, x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, d, lengths, ctx.opts, tuple(saved))
        return (*grads, None, None, None, None, None)


@opaque_to_compiler  # one fused kernel per call: torch.compile leaves it opaque (grulab.runtime)
def variant_gru_cpu(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    *,
    reset: str = "after",
    g_W: Tensor | None = None,
    g_U: Tensor | None = None,
    eps: float = DEFAULT_EPS,
    m_x: Tensor | None = None,
    m_h: Tensor | None = None,
    zoneout_masks: Tensor | None = None,
    zoneout_p: float = 0.0,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`grulab.variants.regularized.variant_gru_ref` in the fused CPU kernels, same
    arguments (float32/float64 CPU tensors, validated by the layer). Returns
    ``(y (T, B, H), h_n (B, H))``; differentiable through the hand-derived backward."""
    if (g_W is None) != (g_U is None):
        raise ValueError("g_W and g_U must be given together (layer normalisation) or both be None")
    opts = VariantOptions(reset, float(eps), float(zoneout_p) if zoneout_masks is None else 0.0, reverse)
    if not grad_needed(x, h0, W, U, b_W, b_U, g_W, g_U):
        y, h_n, _ = variant_fwd(x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, zoneout_masks, lengths, opts, False)
        return y, h_n
    return VariantGRUFunction.apply(x, h0, W, U, b_W, b_U, g_W, g_U, m_x, m_h, zoneout_masks, lengths, opts)
