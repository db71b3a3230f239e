"""The layer-normalised GRU step (Ba, Kiros & Hinton 2016, "Layer Normalization").

Layer normalisation rescales a pre-activation vector ``a`` of ``H`` units by its own statistics,
computed per example and per step, so it works the same in training and inference and for any
sequence length (Ba et al., eqs. 3-4):

.. code-block:: text

    (N1) μ = (1/H) Σ_i a_i,   σ² = (1/H) Σ_i (a_i - μ)²
    (N2) LN(a; γ, β) = γ ⊙ (a - μ) / sqrt(σ² + ε) + β

Ba et al. normalise the input and recurrent contributions of the gates separately, each with its
own gain, the bias acting as the shift (their LSTM: ``LN(W_h h) + LN(W_x x) + b``). grulab does
this per gate, so that both candidate forms work (in ``reset="before"`` the candidate's recurrent
term ``U_h (r ⊙ h_{t-1})`` is only known after ``r``), with the seed's symbols and the GRU's own
biases as the shifts:

.. code-block:: text

    (N3) a_z = LN(W_z x_t; γ_Wz, b_Wz) + LN(U_z h_{t-1}; γ_Uz, b_Uz)          z_t = σ(a_z)
    (N4) a_r = LN(W_r x_t; γ_Wr, b_Wr) + LN(U_r h_{t-1}; γ_Ur, b_Ur)          r_t = σ(a_r)
    (N5a) reset="after":  u_h = LN(U_h h_{t-1}; γ_Uh, b_Uh),         a_h = LN(W_h x_t; γ_Wh, b_Wh) + r_t ⊙ u_h
    (N5b) reset="before": u_h = LN(U_h (r_t ⊙ h_{t-1}); γ_Uh, b_Uh), a_h = LN(W_h x_t; γ_Wh, b_Wh) + u_h
    (N6) h̃_t = tanh(a_h),   h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

The gains ``g_W = [γ_Wz; γ_Wr; γ_Wh]`` and ``g_U = [γ_Uz; γ_Ur; γ_Uh]`` are ``(3H,)`` vectors in the
GRU's gate order; without bias the shifts are zero. With ``reset="after"`` this is the grouping of
the authors' own LN-GRU code (the candidate's recurrent term normalised before the reset gate
multiplies it), there with ``z`` and ``r`` normalised jointly over ``2H`` units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulab.cells.gru import GRUStep, _split, check_reset

DEFAULT_EPS = 1e-5


def layer_norm(a: Tensor, gain: Tensor, shift: Tensor | float, eps: float = DEFAULT_EPS) -> Tensor:
    """(N1)-(N2) over the last dimension: ``gain * (a - μ) / sqrt(σ² + eps) + shift``, shape of ``a``."""
    mu = a.mean(dim=-1, keepdim=True)  # (N1) (B, 1)
    var = ((a - mu) ** 2).mean(dim=-1, keepdim=True)  # (N1) (B, 1) biased, as Ba et al.
    return gain * (a - mu) / torch.sqrt(var + eps) + shift  # (N2) (B, H)


def lngru_cell(
    x: Tensor,
    h_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    g_W: Tensor,
    g_U: Tensor,
    reset: str = "after",
    eps: float = DEFAULT_EPS,
) -> GRUStep:
    """One layer-normalised GRU step, (N3)-(N6).

    Args:
        x: input ``(B, I)``; h_prev: previous state ``(B, H)``.
        W, U, b_W, b_U: the GRU's packed parameters (gate order ``[z, r, h]``); the biases are
            the layer-norm shifts.
        g_W, g_U: layer-norm gains ``(3H,)``, gate order ``[z, r, h]``.
        reset: ``"after"`` or ``"before"``; eps: added to the variance.

    Returns:
        :class:`grulab.cells.gru.GRUStep` ``(h, z, r, h_tilde, u_h)``, each ``(B, H)``.

    Example:
        >>> H = 4
        >>> W, U = torch.randn(3 * H, 3), torch.randn(3 * H, H)
        >>> step = lngru_cell(torch.randn(2, 3), torch.zeros(2, H), W, U, None, None,
        ...                   torch.ones(3 * H), torch.ones(3 * H))
        >>> step.h.shape
        torch.Size([2, 4])
    """
    W_z, W_r, W_h = W.chunk(3, dim=0)  # (H, I) each
    U_z, U_r, U_h = U.chunk(3, dim=0)  # (H, H) each
    b_Wz, b_Wr, b_Wh = _split(b_W)  # (H,) each
    b_Uz, b_Ur, b_Uh = _split(b_U)  # (H,) each
    g_Wz, g_Wr, g_Wh = g_W.chunk(3, dim=0)  # (H,) each
    g_Uz, g_Ur, g_Uh = g_U.chunk(3, dim=0)  # (H,) each

    a_z = layer_norm(x @ W_z.T, g_Wz, b_Wz, eps) + layer_norm(h_prev @ U_z.T, g_Uz, b_Uz, eps)  # (N3) (B, H)
    z = torch.sigmoid(a_z)  # (N3) (B, H)
    a_r = layer_norm(x @ W_r.T, g_Wr, b_Wr, eps) + layer_norm(h_prev @ U_r.T, g_Ur, b_Ur, eps)  # (N4) (B, H)
    r = torch.sigmoid(a_r)  # (N4) (B, H)
    if check_reset(reset) == "before":
        u_h = layer_norm((r * h_prev) @ U_h.T, g_Uh, b_Uh, eps)  # (N5b) (B, H)
        a_h = layer_norm(x @ W_h.T, g_Wh, b_Wh, eps) + u_h  # (N5b) (B, H)
    else:
        u_h = layer_norm(h_prev @ U_h.T, g_Uh, b_Uh, eps)  # (N5a) (B, H)
        a_h = layer_norm(x @ W_h.T, g_Wh, b_Wh, eps) + r * u_h  # (N5a) (B, H)
    h_tilde = torch.tanh(a_h)  # (N6) (B, H)
    h = (1 - z) * h_prev + z * h_tilde  # (N6) (B, H)
    return GRUStep(h, z, r, h_tilde, u_h)
