"""Traces: every gate, candidate and state of every layer and step of a recurrent model.

A trace is computed by the reference engine (``grulab.engine.reference``), layer by layer, in
evaluation mode (no dropout between layers), by default in float64 so the diagnostics built on it
(gradient flow, step Jacobians) are exact to rounding. Dimension letters: ``T`` steps, ``B``
batch, ``I`` the layer's input features, ``H`` hidden units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from grulab.engine.reference import (
    _carry_states,
    gru_ref,
    lstm_ref,
    previous_states,
    rnn_ref,
    step_mask,
    time_order,
)

FAMILIES = ("gru", "rnn", "lstm")
# the gate-like quantities of each family whose derivative can vanish (the RNN's are its tanh units)
GATES = {"gru": ("z", "r"), "lstm": ("i", "f", "o"), "rnn": ("h",)}


@dataclass
class LayerTrace:
    """One layer and direction of a trace.

    Attributes:
        family: ``"gru"``, ``"rnn"`` or ``"lstm"``.
        layer, direction: position in the stack (direction 1 runs backwards in time).
        x: the layer's input ``(T, B, I)`` (the previous layer's output for ``layer > 0``).
        h0: the initial state ``(B, H)``; ``c0`` the LSTM's initial memory.
        values: ``(T, B, H)`` per name, in time order. GRU: ``z`` (write gate), ``r``, ``h_tilde``,
            ``u_h`` and ``h`` (the carried state); RNN: ``h``; LSTM: ``i``, ``f``, ``g``, ``o``, ``c``,
            ``h``. Gates are zero at steps past a sequence's length (see ``mask``).
        params: ``(W, U, b_W, b_U)`` in the trace's dtype.
        mask: ``(T, B)`` True where a step lies inside its sequence, ``None`` without lengths.
        reset, nonlinearity: the GRU candidate form and the RNN nonlinearity.
    """

    family: str
    layer: int
    direction: int
    x: Tensor
    h0: Tensor
    values: dict[str, Tensor]
    params: tuple[Tensor, Tensor, Tensor | None, Tensor | None]
    mask: Tensor | None = None
    c0: Tensor | None = None
    reset: str = "after"
    nonlinearity: str = "tanh"

    def __getitem__(self, name: str) -> Tensor:
        return self.values[name]

    @property
    def reverse(self) -> bool:
        return self.direction == 1

    @property
    def gates(self) -> tuple[str, ...]:
        return GATES[self.family]

    @property
    def T(self) -> int:
        return self.x.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.h0.shape[-1]

    def order(self) -> list[int]:
        """Steps in processing order (``T-1 .. 0`` for the reverse direction)."""
        return list(time_order(self.T, self.reverse))

    def h_prev(self) -> Tensor:
        """The state entering each step ``(T, B, H)``."""
        return previous_states(self.values["h"], self.h0, self.reverse)

    def c_prev(self) -> Tensor:
        """The LSTM memory entering each step ``(T, B, H)``, with skipped steps carrying it."""
        if self.family != "lstm" or self.c0 is None:
            raise ValueError("c_prev exists only for LSTM traces")
        return previous_states(self.values["c"], self.c0, self.reverse)


@dataclass
class Trace:
    """Per-layer traces of a model on one input; ``layers`` in stack order (forward direction first)."""

    family: str
    layers: list[LayerTrace] = field(default_factory=list)

    def layer(self, layer: int = 0, direction: int = 0) -> LayerTrace:
        for lt in self.layers:
            if lt.layer == layer and lt.direction == direction:
                return lt
        raise ValueError(f"no layer {layer}, direction {direction} in this trace "
                         f"({len(self.layers)} layer-directions)")

    @property
    def top(self) -> list[LayerTrace]:
        """The last layer's directions (what a readout sees)."""
        last = max(lt.layer for lt in self.layers)
        return [lt for lt in self.layers if lt.layer == last]


def recurrent_module(model: nn.Module) -> nn.Module:
    """The grulab recurrent layer inside ``model`` (``SequenceModel.rnn``) or ``model`` itself."""
    inner = getattr(model, "rnn", model)
    if getattr(inner, "family", None) not in FAMILIES or not hasattr(inner, "direction_parameters"):
        raise TypeError(f"model must be a grulab GRU, GRUCell, RNN or LSTM, or a SequenceModel holding one; "
                        f"got {type(model).__name__}")
    return inner


def _as_time_major(module: nn.Module, x: Any) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point Tensor, got {type(x).__name__}")
    if x.dim() == 2:  # unbatched (T, I)
        x = x[:, None]
    elif x.dim() == 3 and getattr(module, "batch_first", False):
        x = x.transpose(0, 1)
    if x.dim() != 3 or x.shape[-1] != module.input_size or x.shape[0] == 0:
        raise ValueError(f"x must have shape (T, B, {module.input_size}) (batch-first if the layer is), "
                         f"with T >= 1, got {tuple(x.shape)}")
    return x


@torch.no_grad()
def trace(
    model: nn.Module,
    x: Tensor,
    lengths: Tensor | None = None,
    *,
    hx: Tensor | tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> Trace:
    """Record gates, candidates and states of every layer and step.

    Args:
        model: a grulab ``GRU``, ``GRUCell``, ``RNN`` or ``LSTM``, or a ``SequenceModel``.
        x: input ``(T, B, I)`` time-major (``(B, T, I)`` for a ``batch_first`` layer), or ``(T, I)``.
        lengths: optional ``(B,)`` true lengths, as in :class:`grulab.GRU`.
        hx: optional initial state ``(L*D, B, H)`` (LSTM: ``(h_0, c_0)``); zeros when ``None``.
        dtype: the precision of the computation (float64 by default; ``None`` keeps the model's).

    Returns:
        :class:`Trace` with one :class:`LayerTrace` per layer and direction.

    Example:
        >>> from grulab import GRU
        >>> tr = trace(GRU(3, 8), torch.randn(20, 4, 3))
        >>> tr.layer(0)["z"].shape
        torch.Size([20, 4, 8])
    """
    module = recurrent_module(model)
    x = _as_time_major(module, x)
    dtype = dtype or module.direction_parameters(0, 0)[0].dtype
    x = x.to(dtype)
    T, B = x.shape[:2]
    H = module.hidden_size
    layers = getattr(module, "num_layers", 1)
    D = 2 if getattr(module, "bidirectional", False) else 1
    if lengths is not None:
        from grulab.layers import check_lengths

        lengths = check_lengths(lengths, B, T)
    mask = step_mask(lengths, T, x.device)
    parts = 2 if module.family == "lstm" else 1
    if hx is None:
        state0 = tuple(torch.zeros(layers * D, B, H, dtype=dtype, device=x.device) for _ in range(parts))
    else:
        state0 = tuple(s.to(dtype).reshape(layers * D, B, H) for s in (hx if parts == 2 else (hx,)))
    out = Trace(module.family)
    layer_input = x
    for k in range(layers):
        outs = []
        for d in range(D):
            params = tuple(None if p is None else p.detach().to(dtype) for p in module.direction_parameters(k, d))
            lt = _trace_direction(module, k, d, layer_input, tuple(s[k * D + d] for s in state0), params, lengths)
            lt.mask = None if mask is None else mask[..., 0]
            out.layers.append(lt)
            y = lt.values["h"] if mask is None else lt.values["h"] * mask  # the layer output is zero past a length
            outs.append(y)
        layer_input = torch.cat(outs, dim=-1)
    return out


def _trace_direction(module: nn.Module, k: int, d: int, x: Tensor, state0: tuple[Tensor, ...],
                     params: tuple, lengths: Tensor | None) -> LayerTrace:
    family, reverse = module.family, bool(d)
    if family == "gru":
        _, _, tr = gru_ref(x, state0[0], *params, reset=module.reset, lengths=lengths, reverse=reverse)
        values = {"z": tr.z, "r": tr.r, "h_tilde": tr.h_tilde, "u_h": tr.u_h, "h": tr.states}
        return LayerTrace(family, k, d, x, state0[0], values, params, reset=module.reset)
    if family == "rnn":
        _, _, states = rnn_ref(x, state0[0], *params, nonlinearity=module.nonlinearity, lengths=lengths,
                               reverse=reverse)
        values = {"h": _carried(states, state0[0], lengths, reverse)}
        return LayerTrace(family, k, d, x, state0[0], values, params, nonlinearity=module.nonlinearity)
    _, _, tr = lstm_ref(x, state0, *params, lengths=lengths, reverse=reverse)
    values = {"i": tr.i, "f": tr.f, "g": tr.g, "o": tr.o, "c": _carried(tr.c, state0[1], lengths, reverse),
              "h": _carried(tr.h, state0[0], lengths, reverse)}
    return LayerTrace(family, k, d, x, state0[0], values, params, c0=state0[1])



def _carried(states: Tensor, s0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """States recorded as zero at skipped steps, filled with the state carried through them."""
    return states if lengths is None else _carry_states(states, s0, lengths, reverse)
