"""The reference engine: per-step loops over ``grulab.cells`` in plain torch ops, on any device.

This is the truth every faster engine is tested against. One direction of one layer at a time:

* ``x``       (T, B, I) time-major input;
* ``h0``      (B, H) initial state (LSTM: ``(h0, c0)``);
* ``lengths`` (B,) int64 or ``None``: steps ``t >= lengths[b]`` are *skipped* for sequence ``b``:
  the state passes through unchanged and the output is zero. In the reverse direction the loop
  runs ``t = T-1 .. 0``, so each sequence starts at its own last valid step (PackedSequence
  semantics).

``gru_ref`` run with autograd enabled is the autograd oracle. ``gru_ref_backward`` is the
hand-derived backpropagation through time (``docs/derivation.md``, section 3), line for line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from grulab.cells.gru import GRUStep, gru_cell, gru_cell_backward, gru_recurrent_input
from grulab.cells.lstm import lstm_cell
from grulab.cells.rnn import rnn_cell


class GRUTrace(NamedTuple):
    """Per-step values of a GRU direction, each (T, B, H); zero at skipped steps (past a length).

    ``states`` is the carried state after each step (equal to the previous one at skipped steps),
    unlike the layer output, which is zero there."""

    states: Tensor
    z: Tensor
    r: Tensor
    h_tilde: Tensor
    u_h: Tensor


def step_mask(lengths: Tensor | None, T: int, device: torch.device) -> Tensor | None:
    """(T, B, 1) boolean: True where step t is inside sequence b."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device)[:, None]
    return (t < lengths.to(device)[None, :])[:, :, None]


def time_order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def scan(
    step_fn: Callable[[Tensor, tuple[Tensor, ...]], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]],
    x: Tensor,
    state0: tuple[Tensor, ...],
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...], list[Tensor]]:
    """Run ``step_fn(x_t, state) -> (new_state, record)`` over time with length masking.

    Returns ``(y (T, B, H), final_state, records)`` where ``y`` is the first state component
    (zero at skipped steps) and each record is stacked to (T, B, ...) (zero at skipped steps).
    """
    T = x.shape[0]
    mask = step_mask(lengths, T, x.device)
    state = state0
    ys: list[Tensor | None] = [None] * T
    recs: list[tuple[Tensor, ...] | None] = [None] * T
    for t in time_order(T, reverse):
        new_state, record = step_fn(x[t], state)
        if mask is not None:
            m = mask[t]
            new_state = tuple(torch.where(m, n, s) for n, s in zip(new_state, state, strict=True))
            record = tuple(torch.where(m, v, torch.zeros_like(v)) for v in record)
            ys[t] = torch.where(m, new_state[0], torch.zeros_like(new_state[0]))
        else:
            ys[t] = new_state[0]
        state = new_state
        recs[t] = record
    y = torch.stack(ys)  # type: ignore[arg-type]
    records = [torch.stack(vs) for vs in zip(*recs, strict=True)]  # type: ignore[misc]
    return y, state, records


def gru_ref(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    *,
    reset: str = "after",
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, GRUTrace]:
    """One GRU direction over a sequence. Returns ``(y (T, B, H), h_n (B, H), trace)``."""

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        s = gru_cell(x_t, state[0], W, U, b_W, b_U, reset)
        return (s.h,), (s.h, s.z, s.r, s.h_tilde, s.u_h)

    y, (h_n,), records = scan(step, x, (h0,), lengths, reverse)
    states, z, r, h_tilde, u_h = records
    if lengths is not None:  # carried state at skipped steps is the previous one, not zero
        states = _carry_states(states, h0, lengths, reverse)
    return y, h_n, GRUTrace(states, z, r, h_tilde, u_h)


def _carry_states(states: Tensor, h0: Tensor, lengths: Tensor, reverse: bool) -> Tensor:
    """Fill skipped steps with the state carried through them."""
    T = states.shape[0]
    mask = step_mask(lengths, T, states.device)
    out = []
    prev = h0
    for t in time_order(T, reverse):
        prev = torch.where(mask[t], states[t], prev)  # type: ignore[index]
        out.append(prev)
    if reverse:
        out.reverse()
    return torch.stack(out)


def previous_states(states: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """h_prev for every step (T, B, H): the carried state entering step t."""
    if reverse:
        return torch.cat([states[1:], h0[None]], dim=0)
    return torch.cat([h0[None], states[:-1]], dim=0)


def gru_ref_backward(
    dy: Tensor | None,
    dh_n: Tensor | None,
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    trace: GRUTrace,
    *,
    reset: str = "after",
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Hand-derived BPTT for one GRU direction (``docs/derivation.md``, eqs. 5-13).

    Args:
        dy: ``∂L/∂y`` (T, B, H) or ``None``; dh_n: ``∂L/∂h_n`` (B, H) or ``None``.
        x, h0, W, U: the forward's inputs; trace: the forward's :class:`GRUTrace`.

    Returns:
        ``(dx (T, B, I), dh0 (B, H), dW (3H, I), dU (3H, H), db_W (3H,), db_U (3H,))``.
    """
    T, B, _ = x.shape
    H = h0.shape[-1]
    mask = step_mask(lengths, T, x.device)
    h_prevs = previous_states(trace.states, h0, reverse)
    dx = torch.zeros_like(x)
    dW, dU = torch.zeros_like(W), torch.zeros_like(U)
    db_W = torch.zeros(3 * H, dtype=x.dtype, device=x.device)
    db_U = torch.zeros_like(db_W)
    dh_carry = torch.zeros_like(h0) if dh_n is None else dh_n
    for t in reversed(time_order(T, reverse)):
        m = mask[t] if mask is not None else None
        dh = dh_carry
        if dy is not None:
            dh = dh + (dy[t] if m is None else torch.where(m, dy[t], torch.zeros_like(dy[t])))
        h_prev = h_prevs[t]  # (B, H)
        step = GRUStep(trace.states[t], trace.z[t], trace.r[t], trace.h_tilde[t], trace.u_h[t])
        g = gru_cell_backward(dh, h_prev, step, U, reset)
        da_x, da_u, dh_prev = g.da_x, g.da_u, g.dh_prev
        if m is not None:  # a skipped step is the identity map on the state
            da_x = torch.where(m, da_x, torch.zeros_like(da_x))
            da_u = torch.where(m, da_u, torch.zeros_like(da_u))
            dh_prev = torch.where(m, dh_prev, dh)
        s = gru_recurrent_input(h_prev, step, reset)  # (B, 3, H)
        dx[t] = da_x @ W  # (eq. 13) (B, I)
        dW += da_x.T @ x[t]  # (eq. 13) (3H, I)
        dU += torch.einsum("bgi,bgj->gij", da_u.view(B, 3, H), s).reshape(3 * H, H)  # (eq. 13)
        db_W += da_x.sum(0)  # (eq. 13)
        db_U += da_u.sum(0)  # (eq. 13)
        dh_carry = dh_prev
    return dx, dh_carry, dW, dU, db_W, db_U


def rnn_ref(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    *,
    nonlinearity: str = "tanh",
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Elman RNN direction. Returns ``(y (T, B, H), h_n (B, H), states (T, B, H))``."""

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        h = rnn_cell(x_t, state[0], W, U, b_W, b_U, nonlinearity).h
        return (h,), (h,)

    y, (h_n,), (states,) = scan(step, x, (h0,), lengths, reverse)
    return y, h_n, states


class LSTMTrace(NamedTuple):
    """Per-step LSTM values, each (T, B, H), zero at skipped steps."""

    h: Tensor
    c: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


def lstm_ref(
    x: Tensor,
    state0: Sequence[Tensor],
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    *,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor], LSTMTrace]:
    """One LSTM direction. ``state0 = (h0, c0)``. Returns ``(y, (h_n, c_n), trace)``."""

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        s = lstm_cell(x_t, state[0], state[1], W, U, b_W, b_U)
        return (s.h, s.c), tuple(s)

    y, (h_n, c_n), records = scan(step, x, tuple(state0), lengths, reverse)
    return y, (h_n, c_n), LSTMTrace(*records)
