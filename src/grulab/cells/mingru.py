"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): the step, its log-space form, and the
parallel scan over time.

minGRU drops the GRU's dependence of the gates and the candidate on the previous state and its
reset gate. What remains is a *linear* recurrence in ``h``, so a whole sequence can be computed
by a scan instead of a loop. With the seed's symbols (``z`` writes, as in the paper):

.. code-block:: text

    (M1) z_t = σ(W_z x_t + b_z)                          write gate, from the input only
    (M2) h̃_t = g(W_h x_t + b_h)                          candidate, from the input only
    (M3) h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t
         g(a) = a + 1/2 (a >= 0),  σ(a) (a < 0)          keeps h̃ > 0 so it has a logarithm

(M3) is ``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t = 1 - z_t`` and ``b_t = z_t ⊙ h̃_t > 0``, whose
solution is ``h_t = A_t ⊙ h_0 + Σ_{k<=t} (A_t / A_k) ⊙ b_k`` with ``A_t = Π_{j<=t} a_j``. In log
space (Heinsen 2023; the paper's Appendix) the sum is one cumulative log-sum-exp:

.. code-block:: text

    (M4) a*_t = Σ_{j<=t} log(1 - z_j)                   log(1 - z) = -softplus(W_z x + b_z)
    (M5) h_t = exp(a*_t) ⊙ h_0 + exp(a*_t + logcumsumexp_{k<=t}(log b_k - a*_k))
         log b_k = log z_k + log h̃_k,  log z = -softplus(-(W_z x + b_z)),  log h̃ = log_g(W_h x + b_h)

The paper folds ``h_0`` into the log-sum-exp, which needs ``h_0 > 0``; (M5) keeps its term apart,
so any initial state (a carried stream state, a user's ``hx``) is exact. Packed parameters:
``W (2H, I)`` rows ``[W_z; W_h]``, ``b_W (2H,)`` rows ``[b_z; b_h]`` (``None`` without bias).
Since neither gate sees ``h_{t-1}``, the step Jacobian is exactly ``diag(1 - z_t)``: the seed's
approximation ``∂h_t/∂h_{t-1} ≈ 1 - z_t`` holds with equality.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# log b at a skipped (padded) step: exp of it underflows to exactly 0 in float32 and float64, and
# unlike -inf it keeps the log-sum-exp's gradient finite when a whole prefix is skipped.
_SKIPPED_LOG = -1.0e4


def softplus(a: Tensor) -> Tensor:
    """``log(1 + e^a)``. torch's default switches to ``a`` above 20, an error of ``e^-20 ≈ 2e-9``
    that float64 would see; above 50 the switch is exact in both float32 and float64."""
    return F.softplus(a, threshold=50.0)


class MinGRUStep(NamedTuple):
    """One minGRU step, each (B, H)."""

    h: Tensor  # new state
    z: Tensor  # write gate
    h_tilde: Tensor  # candidate (positive)


def g(a: Tensor) -> Tensor:
    """The paper's positive activation: ``a + 1/2`` for ``a >= 0``, ``σ(a)`` below (continuous at 0)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def log_g(a: Tensor) -> Tensor:
    """``log g(a)`` computed without forming ``g(a)`` (``log σ(a) = -softplus(-a)``)."""
    return torch.where(a >= 0, torch.log(F.relu(a) + 0.5), -softplus(-a))


def _project(x: Tensor, W: Tensor, b_W: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(W_z x + b_z, W_h x + b_h)``, the two pre-activations, each (..., H)."""
    a = x @ W.T if b_W is None else x @ W.T + b_W  # (..., 2H)
    a_z, a_h = a.chunk(2, dim=-1)
    return a_z, a_h


def mingru_cell(x: Tensor, h_prev: Tensor, W: Tensor, b_W: Tensor | None) -> MinGRUStep:
    """One minGRU step, (M1)-(M3).

    Args:
        x: input ``(B, I)``; h_prev: previous state ``(B, H)``.
        W: ``(2H, I)`` rows ``[W_z; W_h]``; b_W: ``(2H,)`` or ``None``.

    Returns:
        :class:`MinGRUStep` ``(h, z, h_tilde)``, each ``(B, H)``.

    Example:
        >>> W = torch.randn(8, 3)
        >>> mingru_cell(torch.randn(2, 3), torch.zeros(2, 4), W, None).h.shape
        torch.Size([2, 4])
    """
    a_z, a_h = _project(x, W, b_W)  # (B, H) each
    z = torch.sigmoid(a_z)  # (M1) (B, H)
    h_tilde = g(a_h)  # (M2) (B, H)
    h = (1 - z) * h_prev + z * h_tilde  # (M3) (B, H)
    return MinGRUStep(h, z, h_tilde)


def mingru_step_jacobian(x: Tensor, h_prev: Tensor, W: Tensor, b_W: Tensor | None) -> Tensor:
    """``∂h_t/∂h_{t-1} = diag(1 - z_t)`` exactly, ``(B, H, H)`` (no gate sees ``h_{t-1}``)."""
    z = mingru_cell(x, h_prev, W, b_W).z
    return torch.diag_embed(1 - z)


def mingru_scan(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    b_W: Tensor | None,
    *,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Every state of a forward minGRU pass at once, by the log-space scan (M4)-(M5).

    Args:
        x: ``(T, B, I)``; h0: ``(B, H)``; W, b_W: as :func:`mingru_cell`.
        mask: ``(T, B, 1)`` bool, False at skipped steps (the state passes through unchanged).

    Returns:
        ``(states (T, B, H), z (T, B, H))``; ``states[t]`` is the carried state after step t.
    """
    a_z, a_h = _project(x, W, b_W)  # (T, B, H) each
    log_keep = -softplus(a_z)  # (M4) log(1 - z) (T, B, H)
    log_b = -softplus(-a_z) + log_g(a_h)  # (M5) log z + log h̃ (T, B, H)
    if mask is not None:  # a skipped step is h_t = h_{t-1}: a_t = 1, b_t = 0
        log_keep = torch.where(mask, log_keep, torch.zeros_like(log_keep))
        log_b = torch.where(mask, log_b, torch.full_like(log_b, _SKIPPED_LOG))
    a_star = torch.cumsum(log_keep, dim=0)  # (M4) (T, B, H)
    states = torch.exp(a_star) * h0 + torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=0))  # (M5)
    return states, torch.sigmoid(a_z)
