"""Initialisation schemes for the recurrent layers.

* ``"pytorch"``: every parameter ~ U(-1/√H, 1/√H), as ``torch.nn.GRU/RNN/LSTM``.
* ``"orthogonal"``: each gate's input block Glorot-uniform, each gate's recurrent block (H, H)
  orthogonal, biases zero (the Keras recipe).
* ``"chrono"``: ``"orthogonal"`` plus the chrono gate biases of Tallec & Ollivier (2018) for a
  memory horizon ``T_max``: with ``u ~ U(1, T_max - 1)`` per unit, a GRU's write-gate bias is
  ``b_z = -log(u)`` (so ``z ≈ 1/(1 + u)``: a value survives about ``1 + u`` steps), an LSTM's
  forget bias ``b_f = log(u)`` and input bias ``b_i = -log(u)``. The bias sits in ``b_W``; the
  matching ``b_U`` entries are zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INITS = ("pytorch", "orthogonal", "chrono")


def check_init(init: str, chrono_horizon: float | None, family: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS!r}, got {init!r}")
    if init == "chrono":
        if family == "rnn":
            raise ValueError("init='chrono' sets gate biases; the tanh RNN has no gates")
        if chrono_horizon is None or not chrono_horizon >= 2:
            raise ValueError(
                f"init='chrono' needs chrono_horizon, the longest dependency in steps (>= 2), "
                f"got {chrono_horizon!r}"
            )


@torch.no_grad()
def init_direction_(
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    *,
    gates: int,
    init: str,
    family: str,
    chrono_horizon: float | None = None,
) -> None:
    """Initialise one direction of one layer in place (packed gate blocks of size H)."""
    H = U.shape[1]
    if init == "pytorch":
        k = 1.0 / math.sqrt(H)
        for p in (W, U, b_W, b_U):
            if p is not None:
                p.uniform_(-k, k)
        return
    for g in range(gates):
        nn.init.xavier_uniform_(W[g * H : (g + 1) * H])
        nn.init.orthogonal_(U[g * H : (g + 1) * H])
    for p in (b_W, b_U):
        if p is not None:
            p.zero_()
    if init == "chrono":
        if b_W is None:
            raise ValueError("init='chrono' sets gate biases; it needs bias=True")
        assert chrono_horizon is not None
        u = torch.empty(H, dtype=b_W.dtype, device=b_W.device).uniform_(1.0, chrono_horizon - 1.0)
        if family == "gru":  # gate order [z, r, h]
            b_W[0:H] = -torch.log(u)
        elif family == "lstm":  # gate order [i, f, g, o]
            b_W[H : 2 * H] = torch.log(u)
            b_W[0:H] = -torch.log(u)
