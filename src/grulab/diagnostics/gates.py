"""Gate saturation and memory horizons, read off a :class:`~grulab.diagnostics.trace.Trace`.

* Saturation: a sigmoid gate ``s = σ(a)`` is *saturated* where ``σ'(a) = s (1 − s)`` is below a
  threshold: its pre-activation then barely moves the gate and barely receives gradient (the
  seed's limit 2). For the tanh RNN the analogue is a unit whose ``tanh' = 1 − h²`` is below it.
* Memory horizon: a value written into GRU unit ``i`` at step ``t₀`` is still present after ``k``
  steps with weight ``∏ (1 − z_{t,i})`` over those steps (the direct path of eq. 4). Its per-step
  geometric mean ``ρ_i = exp(mean log(1 − z_i))`` gives a half-life ``ln 2 / (−ln ρ_i)`` in steps.
  Analogues: the LSTM's forget gate ``f`` (``c = f c_prev + ...``) and, for the tanh RNN, the
  diagonal of its step Jacobian ``|(1 − h_i²) U_ii|`` (how much of unit ``i`` feeds itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from grulab.cells.gru import d_sigmoid, d_tanh
from grulab.diagnostics.trace import LayerTrace, Trace

DEFAULT_THRESHOLD = 0.01  # σ' < 0.01 ⇔ the gate is outside (0.0102, 0.9898)


@dataclass
class Saturation:
    """Saturated share of one gate of one layer direction.

    Attributes:
        gate: the gate's name (``"z"``, ``"r"``; LSTM ``"i"``, ``"f"``, ``"o"``; RNN ``"h"``).
        per_step: share of units (and sequences) saturated at each step ``(T,)``.
        per_unit: share of steps (and sequences) each unit is saturated ``(H,)``.
        share: overall share, a float in [0, 1].
    """

    layer: int
    direction: int
    gate: str
    per_step: Tensor
    per_unit: Tensor
    share: float


def _derivative(lt: LayerTrace, gate: str) -> Tensor:
    v = lt[gate]
    return d_tanh(v) if lt.family == "rnn" else d_sigmoid(v)


def _valid(lt: LayerTrace) -> Tensor:
    """(T, B, 1) weights: 1 inside each sequence, 0 past its length."""
    T, B = lt.x.shape[:2]
    m = torch.ones(T, B, dtype=lt.x.dtype) if lt.mask is None else lt.mask.to(lt.x.dtype)
    return m[..., None]


def saturation(tr: Trace, threshold: float = DEFAULT_THRESHOLD) -> list[Saturation]:
    """The share of gate units whose derivative is below ``threshold``, per step and per unit.

    Args:
        tr: a trace (:func:`grulab.diagnostics.trace`).
        threshold: ``σ'`` (RNN: ``tanh'``) below which a unit counts as saturated, in (0, 0.25].

    Returns:
        One :class:`Saturation` per layer, direction and gate. Steps past a sequence's length
        are left out.
    """
    if not 0.0 < threshold <= 0.25:
        raise ValueError(f"threshold must be in (0, 0.25] (σ' is at most 1/4), got {threshold!r}")
    out = []
    for lt in tr.layers:
        w = _valid(lt)
        for gate in lt.gates:
            sat = (_derivative(lt, gate) < threshold).to(w.dtype) * w  # (T, B, H)
            H = sat.shape[-1]
            per_step = sat.sum(dim=(1, 2)) / (w.sum(dim=(1, 2)) * H).clamp_min(1)
            per_unit = sat.sum(dim=(0, 1)) / w.sum().clamp_min(1)
            share = float(sat.sum() / (w.sum() * H).clamp_min(1))
            out.append(Saturation(lt.layer, lt.direction, gate, per_step, per_unit, share))
    return out


@dataclass
class Horizon:
    """Memory horizon of each unit of one layer direction.

    Attributes:
        retention: per-step geometric-mean retention ``ρ_i`` ``(H,)`` in [0, 1] (RNN: may exceed 1).
        half_life: ``ln 2 / (−ln ρ_i)`` steps ``(H,)``; ``inf`` where nothing decays.
    """

    layer: int
    direction: int
    family: str
    retention: Tensor
    half_life: Tensor


def _retention(lt: LayerTrace) -> Tensor:
    """Per-step retention of each unit's own value ``(T, B, H)`` (module docstring)."""
    if lt.family == "gru":
        return 1 - lt["z"]
    if lt.family == "lstm":
        return lt["f"]
    U = lt.params[1]
    return d_tanh(lt["h"]) * torch.diagonal(U).abs()


def memory_horizon(tr: Trace) -> list[Horizon]:
    """Half-lives in steps of a value written into each unit (GRU: ``∏(1 − z)``; LSTM: ``∏ f``;
    tanh RNN: the diagonal of its step Jacobian). One :class:`Horizon` per layer and direction."""
    out = []
    for lt in tr.layers:
        w = _valid(lt)
        log_r = torch.where(w > 0, torch.log(_retention(lt)), torch.zeros(()))  # skipped steps count 0
        log_rho = log_r.sum(dim=(0, 1)) / w.sum().clamp_min(1)  # (H,)
        rho = torch.exp(log_rho)
        half = torch.where(log_rho < 0, math.log(2.0) / -log_rho, torch.full_like(log_rho, math.inf))
        out.append(Horizon(lt.layer, lt.direction, lt.family, rho, half))
    return out
