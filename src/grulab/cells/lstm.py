"""The LSTM step, the cell-memory model the seed says comes after the GRU.

Gate order ``[i, f, g, o]`` (as ``torch.nn.LSTM``): ``W (4H, I)``, ``U (4H, H)``, ``b_W, b_U (4H,)``.
The memory ``c`` is updated additively, ``c = f * c_prev + i * g``, and exposed through
``h = o * tanh(c)``. Equation numbers refer to ``docs/derivation.md`` section "Baselines".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from grulab.cells.gru import d_sigmoid, d_tanh


class LSTMStep(NamedTuple):
    h: Tensor  # (B, H)
    c: Tensor  # (B, H) memory cell
    i: Tensor  # input (write) gate
    f: Tensor  # forget (keep) gate
    g: Tensor  # candidate
    o: Tensor  # output (exposure) gate


def lstm_cell(
    x: Tensor,
    h_prev: Tensor,
    c_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
) -> LSTMStep:
    """One LSTM step (eqs. L1-L3). ``x (B, I)``, ``h_prev, c_prev (B, H)``."""
    a = x @ W.T + h_prev @ U.T  # (eq. L1) (B, 4H)
    if b_W is not None:
        a = a + b_W + b_U
    a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)  # (B, H) each
    i = torch.sigmoid(a_i)  # (eq. L1) (B, H)
    f = torch.sigmoid(a_f)  # (eq. L1) (B, H)
    g = torch.tanh(a_g)  # (eq. L1) (B, H)
    o = torch.sigmoid(a_o)  # (eq. L1) (B, H)
    c = f * c_prev + i * g  # (eq. L2) (B, H)
    h = o * torch.tanh(c)  # (eq. L3) (B, H)
    return LSTMStep(h, c, i, f, g, o)


def lstm_cell_backward(
    dh: Tensor, dc: Tensor, h_prev: Tensor, c_prev: Tensor, step: LSTMStep, U: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Hand backward (eq. L4). ``dh, dc``: gradients reaching this step's ``h`` and ``c``.
    Returns ``(dh_prev, dc_prev, da (B, 4H))``; ``dW = da^T x``, ``dU = da^T h_prev``."""
    tanh_c = torch.tanh(step.c)  # (B, H)
    dc = dc + dh * step.o * d_tanh(tanh_c)  # (eq. L4) (B, H)
    do = dh * tanh_c  # (eq. L4) (B, H)
    di = dc * step.g  # (eq. L4) (B, H)
    df = dc * c_prev  # (eq. L4) (B, H)
    dg = dc * step.i  # (eq. L4) (B, H)
    dc_prev = dc * step.f  # (eq. L4) (B, H)  the additive memory path
    da = torch.cat(
        [di * d_sigmoid(step.i), df * d_sigmoid(step.f), dg * d_tanh(step.g), do * d_sigmoid(step.o)],
        dim=-1,
    )  # (B, 4H)
    dh_prev = da @ U  # (B, H)
    return dh_prev, dc_prev, da


def lstm_step_jacobian(
    x: Tensor,
    h_prev: Tensor,
    c_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
) -> Tensor:
    """Jacobian of the full state ``[h_t; c_t]`` with respect to ``[h_{t-1}; c_{t-1}]`` (eq. L5),
    ``(B, 2H, 2H)``. Its ``c``-to-``c`` block is ``diag(f_t)``: the guaranteed additive path."""
    s = lstm_cell(x, h_prev, c_prev, W, U, b_W, b_U)
    H = h_prev.shape[-1]
    U_i, U_f, U_g, U_o = U.chunk(4, dim=0)  # (H, H) each
    eye = torch.eye(H, dtype=h_prev.dtype, device=h_prev.device)
    # ∂c/∂h_prev through the gates, ∂c/∂c_prev = diag(f)
    dc_dh = (
        (c_prev * d_sigmoid(s.f))[:, :, None] * U_f
        + (s.g * d_sigmoid(s.i))[:, :, None] * U_i
        + (s.i * d_tanh(s.g))[:, :, None] * U_g
    )  # (B, H, H)
    dc_dc = eye * s.f[:, None, :]  # (B, H, H)
    tanh_c = torch.tanh(s.c)
    dh_dc_t = (s.o * d_tanh(tanh_c))[:, :, None]  # (B, H, 1)
    dh_dh = (tanh_c * d_sigmoid(s.o))[:, :, None] * U_o + dh_dc_t * dc_dh  # (B, H, H)
    dh_dc = dh_dc_t * dc_dc  # (B, H, H)
    top = torch.cat([dh_dh, dh_dc], dim=-1)
    bottom = torch.cat([dc_dh, dc_dc], dim=-1)
    return torch.cat([top, bottom], dim=-2)
