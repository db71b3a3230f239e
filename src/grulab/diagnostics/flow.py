"""Gradient flow through time, from the hand-derived backward and the exact step Jacobians.

Two measurements per layer and direction:

* ``‖∂L/∂h_t‖`` for every step ``t``: the total gradient reaching the state, by the hand BPTT of
  ``grulab.cells`` (``gru_cell_backward``, ``rnn_cell_backward``, ``lstm_cell_backward``; the
  readout's gradient alone comes from autograd, it is not recurrent);
* ``‖∂h_T/∂h_{T−k}‖`` for every distance ``k``: the spectral norm of the product of the exact step
  Jacobians (``docs/derivation.md`` eq. 14, R3, L5) over the last ``k`` steps.

and, for the seed's approximation ``∂h_t/∂h_{t−1} ≈ diag(1 − z_t)``, the gap between the exact
step Jacobian and that diagonal, step by step and over spans (:func:`approximation_gap`).

For the LSTM the state is ``[h; c]`` (``2H`` numbers): its gradient and Jacobians are those of
the full state, and the seed's "additive path" is the block ``∂c_t/∂c_{t−1} = diag(f_t)``.
Products of many Jacobians are carried with a running scale, so norms far below the float range
are still measured (as ``log10``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grulab.cells.gru import GRUStep, d_tanh, gru_cell_backward, gru_step_jacobian
from grulab.cells.lstm import LSTMStep, lstm_cell_backward, lstm_step_jacobian
from grulab.cells.rnn import RNNStep, rnn_cell_backward, rnn_step_jacobian
from grulab.diagnostics.trace import LayerTrace, Trace, recurrent_module, trace

LN10 = math.log(10.0)


@dataclass
class GradientFlow:
    """Gradient flow of one layer and direction.

    Attributes:
        layer, direction, family: which layer.
        dL_dstate: ``∂L/∂state_t`` ``(T, B, S)`` in time order (``S = H``; LSTM ``2H``: ``[h; c]``).
        span_log10: ``log10 ‖∂state_T/∂state_{T−k}‖₂`` ``(T + 1, B)`` for ``k = 0 .. T`` (``T`` the
            last step processed; ``k = 0`` is the identity, norm 1).
    """

    layer: int
    direction: int
    family: str
    dL_dstate: Tensor
    span_log10: Tensor

    @property
    def grad_norm(self) -> Tensor:
        """``‖∂L/∂state_t‖`` over batch and units, ``(T,)`` in time order."""
        return self.dL_dstate.flatten(1).norm(dim=1)

    @property
    def grad_norm_by_distance(self) -> Tensor:
        """``grad_norm`` indexed by distance from the last processed step, ``(T,)``."""
        return self.grad_norm if self.direction == 1 else self.grad_norm.flip(0)

    @property
    def span_norm(self) -> Tensor:
        """Geometric mean over the batch of ``‖∂state_T/∂state_{T−k}‖₂``, ``(T + 1,)`` (may underflow
        to 0 far below 1e-308; ``span_log10`` does not)."""
        return 10.0 ** self.span_log10.mean(dim=1)


@dataclass
class ApproximationGap:
    """How well ``∂h_t/∂h_{t−1} ≈ diag(1 − z_t)`` holds (LSTM: ``∂[h;c]_t/∂[h;c]_{t−1} ≈`` the
    additive path ``diag(f_t)`` alone), for one layer and direction.

    Attributes:
        step_gap: ``‖J_t − A_t‖₂`` ``(T, B)`` in time order, ``J_t`` exact, ``A_t`` the approximation.
        step_norm: ``‖J_t‖₂`` ``(T, B)``.
        span_exact_log10, span_approx_log10: ``log10`` of the spectral norms of the products over
            the last ``k`` steps, ``(T + 1, B)``: the highway the approximation predicts and the real one.
    """

    layer: int
    direction: int
    family: str
    step_gap: Tensor
    step_norm: Tensor
    span_exact_log10: Tensor
    span_approx_log10: Tensor

    @property
    def relative_gap(self) -> Tensor:
        """``‖J_t − A_t‖₂ / ‖J_t‖₂`` ``(T, B)``."""
        return self.step_gap / self.step_norm.clamp_min(torch.finfo(self.step_norm.dtype).tiny)


# --- step Jacobians ---------------------------------------------------------------------------
def _step_jacobians(lt: LayerTrace) -> Iterator[tuple[int, Tensor]]:
    """``(t, ∂state_t/∂state_{t−1})`` ``(B, S, S)`` from the last processed step back to the first.
    Steps past a sequence's length are the identity (the state passes through)."""
    W, U, b_W, b_U = lt.params
    h_prev = lt.h_prev()
    c_prev = lt.c_prev() if lt.family == "lstm" else None
    for t in reversed(lt.order()):
        if lt.family == "gru":
            J = gru_step_jacobian(lt.x[t], h_prev[t], W, U, b_W, b_U, lt.reset)
        elif lt.family == "rnn":
            J = rnn_step_jacobian(lt.x[t], h_prev[t], W, U, b_W, b_U, lt.nonlinearity)
        else:
            J = lstm_step_jacobian(lt.x[t], h_prev[t], c_prev[t], W, U, b_W, b_U)  # type: ignore[index]
        if lt.mask is not None:
            eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device).expand_as(J)
            J = torch.where(lt.mask[t][:, None, None], J, eye)
        yield t, J


def _approximation(lt: LayerTrace, t: int) -> Tensor:
    """The diagonal the seed's approximation keeps at step ``t``, ``(B, S)``: ``1 − z_t`` (GRU),
    ``[0; f_t]`` (LSTM: only the additive memory path). 1 (identity) at skipped steps."""
    if lt.family == "gru":
        a = 1 - lt["z"][t]
    elif lt.family == "lstm":
        a = torch.cat([torch.zeros_like(lt["f"][t]), lt["f"][t]], dim=-1)
    else:
        raise ValueError("the tanh RNN has no gate: the approximation ∂h_t/∂h_(t-1) ≈ diag(1 - z_t) is a "
                         "statement about gated cells (GRU; LSTM analogue diag(f_t))")
    if lt.mask is not None:
        a = torch.where(lt.mask[t][:, None], a, torch.ones_like(a))
    return a


class _ScaledProduct:
    """Running product ``P_k = J_T J_{T−1} ... J_{T−k+1}`` (B, S, S) kept as ``scale · P̃`` so that
    its norm is measurable far below the float range; ``log10_norm()`` gives ``log10 ‖P_k‖₂``."""

    def __init__(self, B: int, S: int, dtype: torch.dtype, device: torch.device) -> None:
        self.P = torch.eye(S, dtype=dtype, device=device).expand(B, S, S).clone()
        self.log_scale = torch.zeros(B, dtype=dtype, device=device)

    def multiply(self, J: Tensor) -> None:
        self.P = self.P @ J
        s = self.P.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(self.P.dtype).tiny)
        self.P = self.P / s[:, None, None]
        self.log_scale = self.log_scale + torch.log(s)

    def log10_norm(self) -> Tensor:
        norm = torch.linalg.matrix_norm(self.P, ord=2).clamp_min(torch.finfo(self.P.dtype).tiny)
        return (self.log_scale + torch.log(norm)) / LN10


def _span_log10(lt: LayerTrace) -> Tensor:
    S = lt.hidden_size * (2 if lt.family == "lstm" else 1)
    B = lt.x.shape[1]
    prod = _ScaledProduct(B, S, lt.x.dtype, lt.x.device)
    logs = [prod.log10_norm()]
    for _, J in _step_jacobians(lt):
        prod.multiply(J)
        logs.append(prod.log10_norm())
    return torch.stack(logs)  # (T + 1, B)


# --- hand BPTT --------------------------------------------------------------------------------
def _backward_direction(lt: LayerTrace, dy: Tensor, dstate_n: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Hand BPTT through one layer direction. ``dy (T, B, H)`` gradient on its outputs, ``dstate_n``
    on its final ``(h, c)``. Returns ``(∂L/∂state_t (T, B, S), ∂L/∂x_t (T, B, I))``."""
    if lt.mask is not None:
        raise ValueError("gradient_flow needs equal-length sequences (trace without lengths)")
    W, U, _, _ = lt.params
    h_prev = lt.h_prev()
    c_prev = lt.c_prev() if lt.family == "lstm" else None
    carry_h = torch.zeros_like(lt.h0) if dstate_n is None else dstate_n[0]
    carry_c = torch.zeros_like(lt.h0) if dstate_n is None else dstate_n[1]
    dstate = [None] * lt.T
    dx = torch.zeros_like(lt.x)
    for t in reversed(lt.order()):
        dh = carry_h + dy[t]  # (B, H) ∂L/∂h_t, all paths
        if lt.family == "gru":
            step = GRUStep(lt["h"][t], lt["z"][t], lt["r"][t], lt["h_tilde"][t], lt["u_h"][t])
            g = gru_cell_backward(dh, h_prev[t], step, U, lt.reset)
            dstate[t], da, carry_h = dh, g.da_x, g.dh_prev
        elif lt.family == "rnn":
            carry_h, da = rnn_cell_backward(dh, h_prev[t], RNNStep(lt["h"][t]), U, lt.nonlinearity)
            dstate[t] = dh
        else:
            step = LSTMStep(*(lt[n][t] for n in ("h", "c", "i", "f", "g", "o")))
            # ∂L/∂c_t = the future's gradient plus the exposure path h = o tanh(c) (eq. L4)
            dc = carry_c + dh * step.o * d_tanh(torch.tanh(step.c))
            dstate[t] = torch.cat([dh, dc], dim=-1)
            carry_h, carry_c, da = lstm_cell_backward(dh, carry_c, h_prev[t], c_prev[t], step, U)  # type: ignore[index]
        dx[t] = da @ W  # (eq. 13 / R2 / L4) gradient on the layer input
    return torch.stack(dstate), dx  # type: ignore[arg-type]


def _readout_gradients(model: nn.Module, module: nn.Module, tr: Trace,
                       loss: Callable[[Tensor], Tensor]) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """Autograd through the (non-recurrent) readout only: ``∂L/∂y_top`` ``(T, B, D·H)`` and the
    gradient on each top direction's final ``(h, c)``."""
    top = tr.top
    y = torch.cat([lt["h"] for lt in top], dim=-1).detach().requires_grad_()
    finals = [(lt["h"][0 if lt.reverse else -1].detach().requires_grad_(),
               lt["c"][0 if lt.reverse else -1].detach().requires_grad_() if lt.family == "lstm" else None)
              for lt in top]
    if model is module:  # a bare layer: the loss sees its output, batch-first if the layer is
        out = y.transpose(0, 1) if getattr(module, "batch_first", False) else y
    else:  # a SequenceModel: its head on every step ("all") or on the top layer's final states ("last")
        head = _head_in(model, y.dtype)
        out = head(y) if model.readout == "all" else head(torch.cat([f[0] for f in finals], dim=-1))
    value = loss(out)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError("loss must return a scalar Tensor")
    leaves = [y] + [f[0] for f in finals]
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    dy = grads[0] if grads[0] is not None else torch.zeros_like(y)
    dfinal = {}
    for d, (lt, g) in enumerate(zip(top, grads[1:], strict=True)):
        dh_n = g if g is not None else torch.zeros_like(lt.h0)
        dfinal[d] = (dh_n, torch.zeros_like(lt.h0))
    return dy, dfinal


def _head_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    head = model.head
    if next(head.parameters()).dtype == dtype:
        return head
    import copy

    return copy.deepcopy(head).to(dtype)


def gradient_flow(
    model: nn.Module,
    x: Tensor,
    loss: Callable[[Tensor], Tensor],
    *,
    dtype: torch.dtype = torch.float64,
) -> list[GradientFlow]:
    """Gradient flow through time for every layer and direction.

    Args:
        model: a grulab ``GRU``/``RNN``/``LSTM``/``GRUCell`` or a ``SequenceModel``.
        x: input ``(T, B, I)`` (batch-first for a ``batch_first`` layer); equal lengths.
        loss: maps the model's output to a scalar: the ``SequenceModel``'s readout, or a bare
            layer's output sequence ``(T, B, D·H)``.
        dtype: precision (float64 by default).

    Returns:
        One :class:`GradientFlow` per layer and direction, in stack order.

    Example:
        >>> from grulab import GRU
        >>> flows = gradient_flow(GRU(2, 8), torch.randn(30, 4, 2), lambda y: y[-1].sum())
        >>> flows[0].grad_norm.shape, flows[0].span_log10.shape
        (torch.Size([30]), torch.Size([31, 4]))
    """
    module = recurrent_module(model)
    tr = trace(model, x, dtype=dtype)
    with torch.enable_grad():
        dy_top, dfinal = _readout_gradients(model, module, tr, loss)
    flows: dict[tuple[int, int], GradientFlow] = {}
    n_layers = max(lt.layer for lt in tr.layers) + 1
    dy = dy_top
    for k in reversed(range(n_layers)):
        directions = [lt for lt in tr.layers if lt.layer == k]
        H = directions[0].hidden_size
        dx_total = None
        for lt in directions:
            d = lt.direction
            dstate, dx = _backward_direction(lt, dy[..., d * H:(d + 1) * H],
                                             dfinal.get(d) if k == n_layers - 1 else None)
            flows[(k, d)] = GradientFlow(k, d, lt.family, dstate, _span_log10(lt))
            dx_total = dx if dx_total is None else dx_total + dx
        dy = dx_total  # type: ignore[assignment]
    return [flows[(lt.layer, lt.direction)] for lt in tr.layers]


@torch.no_grad()
def approximation_gap(model: nn.Module | Trace, x: Tensor | None = None, *,
                      dtype: torch.dtype = torch.float64) -> list[ApproximationGap]:
    """The gap between the exact step Jacobian and the seed's ``diag(1 − z_t)``, per layer.

    Args:
        model: a gated grulab layer or ``SequenceModel`` (with ``x``), or a :class:`Trace`.
        x: input ``(T, B, I)``, when ``model`` is a module.

    Returns:
        One :class:`ApproximationGap` per layer and direction. Raises ``ValueError`` for the tanh
        RNN, which has no gate.
    """
    if isinstance(model, Trace):
        tr = model
    else:
        recurrent_module(model)
        if x is None:
            raise ValueError("approximation_gap needs x when given a model")
        tr = trace(model, x, dtype=dtype)
    gaps = []
    for lt in tr.layers:
        T, B = lt.x.shape[:2]
        step_gap = torch.zeros(T, B, dtype=lt.x.dtype)
        step_norm = torch.zeros_like(step_gap)
        S = lt.hidden_size * (2 if lt.family == "lstm" else 1)
        exact = _ScaledProduct(B, S, lt.x.dtype, lt.x.device)
        approx_log = torch.zeros(B, S, dtype=lt.x.dtype)  # log of the running diagonal product
        exact_logs, approx_logs = [exact.log10_norm()], [torch.zeros(B, dtype=lt.x.dtype)]
        for t, J in _step_jacobians(lt):
            a = _approximation(lt, t)  # (B, S)
            step_gap[t] = torch.linalg.matrix_norm(J - torch.diag_embed(a), ord=2)
            step_norm[t] = torch.linalg.matrix_norm(J, ord=2)
            exact.multiply(J)
            exact_logs.append(exact.log10_norm())
            approx_log = approx_log + torch.log(a.abs())
            approx_logs.append(approx_log.amax(dim=-1) / LN10)  # a diagonal's norm is its largest entry
        gaps.append(ApproximationGap(lt.layer, lt.direction, lt.family, step_gap, step_norm,
                                     torch.stack(exact_logs), torch.stack(approx_logs)))
    return gaps
