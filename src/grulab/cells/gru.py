"""The GRU step, exactly as the seed writes it, with its hand-derived backward and step Jacobian.

Symbols follow ``docs/derivation.md`` (equation numbers in comments). Dimension letters:
``B`` batch, ``I`` input features, ``H`` hidden units. Packed parameters use the gate order
``[z, r, h]`` (see ``docs/conventions.md``):

* ``W``   (3H, I): rows ``[W_z; W_r; W_h]``, the input weights;
* ``U``   (3H, H): rows ``[U_z; U_r; U_h]``, the recurrent weights;
* ``b_W`` (3H,):   input-side biases ``[b_Wz; b_Wr; b_Wh]`` (``None`` without bias);
* ``b_U`` (3H,):   recurrent-side biases ``[b_Uz; b_Ur; b_Uh]`` (``None`` without bias).

``z`` is the *write* gate: ``h = (1 - z) * h_prev + z * h_tilde``. Two biases per gate exist
because the ``reset="after"`` candidate keeps ``b_Uh`` inside the reset product; for ``z``, ``r``
and the ``reset="before"`` candidate they simply add (``b_z = b_Wz + b_Uz``).

This module is the specification: one equation per line, no algebraic rewrites.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

RESETS = ("before", "after")


class GRUStep(NamedTuple):
    """Everything one step computes. Shapes are (B, H)."""

    h: Tensor  # new state
    z: Tensor  # update (write) gate
    r: Tensor  # reset gate
    h_tilde: Tensor  # candidate state
    u_h: Tensor  # recurrent candidate term: U_h h_prev + b_Uh ("after") or U_h (r*h_prev) + b_Uh ("before")


class GRUStepGrads(NamedTuple):
    """Gradients of one step. ``da_x`` is the gradient of the input-side pre-activations
    ``W x + b_W`` (B, 3H) and ``da_u`` that of the recurrent-side ones ``U s + b_U`` (B, 3H),
    where ``s`` is ``h_prev`` for z and r, and ``h_prev`` ("after") or ``r * h_prev`` ("before")
    for the candidate. Every weight gradient is an outer product of these with the step's inputs."""

    dh_prev: Tensor  # (B, H)
    da_x: Tensor  # (B, 3H)
    da_u: Tensor  # (B, 3H)


def check_reset(reset: str) -> str:
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS!r}, got {reset!r}")
    return reset


def _split(p: Tensor | None) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
    if p is None:
        return 0.0, 0.0, 0.0
    return p.chunk(3, dim=0)  # type: ignore[return-value]


def d_sigmoid(s: Tensor) -> Tensor:
    """σ'(a) from the activation's output s = σ(a)."""
    return s * (1 - s)


def d_tanh(t: Tensor) -> Tensor:
    """tanh'(a) from the activation's output t = tanh(a)."""
    return 1 - t**2


def gru_cell(
    x: Tensor,
    h_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    reset: str = "after",
) -> GRUStep:
    """One GRU step.

    Args:
        x: input ``(B, I)``.
        h_prev: previous state ``(B, H)``.
        W, U, b_W, b_U: packed parameters, gate order ``[z, r, h]`` (module docstring).
        reset: ``"after"`` (cuDNN/PyTorch/Keras) or ``"before"`` (Cho et al. 2014).

    Returns:
        :class:`GRUStep` with ``h, z, r, h_tilde, u_h``, each ``(B, H)``.

    Example:
        >>> B, I, H = 2, 3, 4
        >>> W, U = torch.randn(3 * H, I), torch.randn(3 * H, H)
        >>> step = gru_cell(torch.randn(B, I), torch.zeros(B, H), W, U, None, None)
        >>> step.h.shape
        torch.Size([2, 4])
    """
    W_z, W_r, W_h = W.chunk(3, dim=0)  # (H, I) each
    U_z, U_r, U_h = U.chunk(3, dim=0)  # (H, H) each
    b_Wz, b_Wr, b_Wh = _split(b_W)  # (H,) each
    b_Uz, b_Ur, b_Uh = _split(b_U)  # (H,) each

    a_z = x @ W_z.T + b_Wz + h_prev @ U_z.T + b_Uz  # (eq. 1) (B, H)
    z = torch.sigmoid(a_z)  # (eq. 1) (B, H)
    a_r = x @ W_r.T + b_Wr + h_prev @ U_r.T + b_Ur  # (eq. 2) (B, H)
    r = torch.sigmoid(a_r)  # (eq. 2) (B, H)
    if check_reset(reset) == "before":
        u_h = (r * h_prev) @ U_h.T + b_Uh  # (eq. 3b) (B, H)
        a_h = x @ W_h.T + b_Wh + u_h  # (eq. 3b) (B, H)
    else:
        u_h = h_prev @ U_h.T + b_Uh  # (eq. 3a) (B, H)
        a_h = x @ W_h.T + b_Wh + r * u_h  # (eq. 3a) (B, H)
    h_tilde = torch.tanh(a_h)  # (eq. 3) (B, H)
    h = (1 - z) * h_prev + z * h_tilde  # (eq. 4) (B, H)
    return GRUStep(h, z, r, h_tilde, u_h)


def gru_cell_backward(
    dh: Tensor,
    h_prev: Tensor,
    step: GRUStep,
    U: Tensor,
    reset: str = "after",
) -> GRUStepGrads:
    """Backward of one step by the hand derivation (``docs/derivation.md``, eqs. 5-12).

    Args:
        dh: ``∂L/∂h`` for this step's output state, all paths summed ``(B, H)``.
        h_prev: the step's input state ``(B, H)``.
        step: the forward values of this step.
        U: packed recurrent weights ``(3H, H)``.
        reset: the candidate form used in the forward.

    Returns:
        :class:`GRUStepGrads`: ``dh_prev (B, H)``, ``da_x (B, 3H)``, ``da_u (B, 3H)``.
    """
    z, r, h_tilde, u_h = step.z, step.r, step.h_tilde, step.u_h
    U_z, U_r, U_h = U.chunk(3, dim=0)  # (H, H) each

    dh_tilde = dh * z  # (eq. 5) (B, H)
    dz = dh * (h_tilde - h_prev)  # (eq. 6) (B, H)
    dh_prev = dh * (1 - z)  # (eq. 7) (B, H)  the direct path: the diagonal 1 - z
    da_h = dh_tilde * d_tanh(h_tilde)  # (eq. 8) (B, H)
    da_z = dz * d_sigmoid(z)  # (eq. 9) (B, H)
    if check_reset(reset) == "before":
        du_h = da_h  # (eq. 10b) (B, H)  u_h enters a_h additively
        d_rh = du_h @ U_h  # (eq. 10b) (B, H)  gradient of r * h_prev
        dr = d_rh * h_prev  # (eq. 10b) (B, H)
        dh_prev = dh_prev + d_rh * r  # (eq. 10b) (B, H)
    else:
        dr = da_h * u_h  # (eq. 10a) (B, H)
        du_h = da_h * r  # (eq. 10a) (B, H)
        dh_prev = dh_prev + du_h @ U_h  # (eq. 10a) (B, H)
    da_r = dr * d_sigmoid(r)  # (eq. 11) (B, H)
    dh_prev = dh_prev + da_z @ U_z + da_r @ U_r  # (eq. 12) (B, H)
    da_x = torch.cat([da_z, da_r, da_h], dim=-1)  # (B, 3H)
    da_u = torch.cat([da_z, da_r, du_h], dim=-1)  # (B, 3H)
    return GRUStepGrads(dh_prev, da_x, da_u)


def gru_recurrent_input(h_prev: Tensor, step: GRUStep, reset: str) -> Tensor:
    """The vector each recurrent block multiplies, stacked ``(B, 3, H)``: ``h_prev`` for z and r,
    and ``h_prev`` ("after") or ``r * h_prev`` ("before") for the candidate (eq. 13)."""
    s_h = step.r * h_prev if check_reset(reset) == "before" else h_prev
    return torch.stack([h_prev, h_prev, s_h], dim=1)


def gru_step_jacobian(
    x: Tensor,
    h_prev: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    reset: str = "after",
) -> Tensor:
    """The exact step Jacobian ``∂h_t/∂h_{t-1}`` (eq. 14), ``(B, H, H)``, rows index ``h_t``.

    ``diag(1 - z_t)`` is its direct part; the rest flows through ``z_t``, ``r_t`` and ``h̃_t``.
    """
    step = gru_cell(x, h_prev, W, U, b_W, b_U, reset)
    z, r, h_tilde, u_h = step.z, step.r, step.h_tilde, step.u_h
    U_z, U_r, U_h = U.chunk(3, dim=0)  # (H, H) each
    eye = torch.eye(h_prev.shape[-1], dtype=h_prev.dtype, device=h_prev.device)

    direct = eye * (1 - z)[:, None, :]  # (B, H, H) diag(1 - z)
    through_z = ((h_tilde - h_prev) * d_sigmoid(z))[:, :, None] * U_z  # (B, H, H)
    dr_dh = d_sigmoid(r)[:, :, None] * U_r  # (B, H, H)  ∂r/∂h_prev
    if check_reset(reset) == "before":
        # ∂(r*h_prev)/∂h_prev = diag(r) + diag(h_prev) ∂r/∂h_prev
        d_rh = eye * r[:, None, :] + h_prev[:, :, None] * dr_dh  # (B, H, H)
        da_h_dh = U_h @ d_rh  # (B, H, H)
    else:
        da_h_dh = u_h[:, :, None] * dr_dh + r[:, :, None] * U_h  # (B, H, H)
    through_h = (z * d_tanh(h_tilde))[:, :, None] * da_h_dh  # (B, H, H)
    return direct + through_z + through_h
