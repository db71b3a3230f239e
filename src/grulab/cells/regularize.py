"""Recurrent regularisers as step equations: variational dropout and zoneout.

**Variational dropout** (Gal & Ghahramani 2016, "A Theoretically Grounded Application of Dropout
in Recurrent Neural Networks"): one dropout mask per *sequence*, reused at every step, on the
input ``x_t`` and on the state the recurrent weights read. With masks ``m_x (B, I)`` and
``m_h (B, H)`` (Bernoulli(1 - p) / (1 - p), inverted dropout so that evaluation needs no
rescaling), the gates and the candidate see the dropped vectors and the update keeps the state:

.. code-block:: text

    (V1) x̂_t = m_x ⊙ x_t,   ĥ_{t-1} = m_h ⊙ h_{t-1}
    (V2) z_t, r_t, h̃_t = the cell's (1)-(3) (or (N3)-(N5)) on (x̂_t, ĥ_{t-1})
    (V3) h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

One mask serves all three gates (Gal & Ghahramani's "tied" variant, which keeps the packed
products); per-gate masks are their "untied" one.

**Zoneout** (Krueger et al. 2017, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
Activations"): each unit keeps its previous value with probability ``p``, a fresh mask per step;
at evaluation the mask is replaced by its expectation, as for dropout:

.. code-block:: text

    (Z1) training:   h_t = d_t ⊙ h_{t-1} + (1 - d_t) ⊙ f(x_t, h_{t-1}),   d_t ~ Bernoulli(p)
    (Z2) evaluation: h_t = p h_{t-1} + (1 - p) f(x_t, h_{t-1})

where ``f`` is the cell's update (3)/(V3). The zoned-out ``h_t`` is both the state carried on and
the layer's output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grulab.cells.gru import GRUStep


def check_probability(name: str, p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout mask: entries ``0`` with probability ``p``, else ``1 / (1 - p)``."""
    keep = torch.full(shape, 1.0 - p, dtype=like.dtype, device=like.device)
    return torch.bernoulli(keep) / (1.0 - p)


def zoneout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """(Z1) ``d``: ``1`` (keep the previous value) with probability ``p``, else ``0``."""
    return torch.bernoulli(torch.full(shape, p, dtype=like.dtype, device=like.device))


def variational_update(step: GRUStep, h_prev: Tensor) -> Tensor:
    """(V3): the cell's gates and candidate computed on the dropped state, applied to the true one."""
    return (1 - step.z) * h_prev + step.z * step.h_tilde  # (V3) (B, H)


def zoneout(h_prev: Tensor, h: Tensor, d: Tensor) -> Tensor:
    """(Z1): ``d ⊙ h_prev + (1 - d) ⊙ h`` with the step's 0/1 mask ``d (B, H)``."""
    return d * h_prev + (1 - d) * h  # (Z1) (B, H)


def zoneout_expectation(h_prev: Tensor, h: Tensor, p: float) -> Tensor:
    """(Z2): the evaluation form, the expectation of (Z1) over ``d``."""
    return p * h_prev + (1 - p) * h  # (Z2) (B, H)
