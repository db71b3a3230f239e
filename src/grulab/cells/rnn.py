"""The Elman RNN step the seed says GRUs fix: ``h = φ(W x + b_W + U h_prev + b_U)``.

Parameters are single-gate: ``W (H, I)``, ``U (H, H)``, ``b_W, b_U (H,)``. ``φ`` is tanh (the
seed's model) or ReLU (for parity with ``torch.nn.RNN``). Equation numbers refer to
``docs/derivation.md`` section "Baselines".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

NONLINEARITIES = ("tanh", "relu")


class RNNStep(NamedTuple):
    h: Tensor  # (B, H)


def check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES!r}, got {nonlinearity!r}")
    return nonlinearity


def _phi(a: Tensor, nonlinearity: str) -> Tensor:
    return torch.tanh(a) if check_nonlinearity(nonlinearity) == "tanh" else torch.relu(a)


def _d_phi(h: Tensor, nonlinearity: str) -> Tensor:
    """φ'(a) from the output h = φ(a)."""
    return 1 - h**2 if nonlinearity == "tanh" else (h > 0).to(h.dtype)


def rnn_cell(
    x: Tensor,
    h_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    nonlinearity: str = "tanh",
) -> RNNStep:
    """One Elman step (eq. R1). ``x (B, I)``, ``h_prev (B, H)`` → ``RNNStep(h (B, H))``."""
    a = x @ W.T + h_prev @ U.T  # (eq. R1) (B, H)
    if b_W is not None:
        a = a + b_W + b_U
    h = _phi(a, nonlinearity)  # (eq. R1) (B, H)
    return RNNStep(h)


def rnn_cell_backward(
    dh: Tensor, h_prev: Tensor, step: RNNStep, U: Tensor, nonlinearity: str = "tanh"
) -> tuple[Tensor, Tensor]:
    """Hand backward (eq. R2): returns ``(dh_prev (B, H), da (B, H))``; ``dW = da^T x`` and
    ``dU = da^T h_prev``."""
    da = dh * _d_phi(step.h, nonlinearity)  # (eq. R2) (B, H)
    dh_prev = da @ U  # (eq. R2) (B, H)
    return dh_prev, da


def rnn_step_jacobian(
    x: Tensor,
    h_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """``∂h_t/∂h_{t-1} = diag(φ'(a_t)) U`` (eq. R3), ``(B, H, H)``: the repeated product the
    seed blames for gradient collapse."""
    h = rnn_cell(x, h_prev, W, U, b_W, b_U, nonlinearity).h
    return _d_phi(h, nonlinearity)[:, :, None] * U
