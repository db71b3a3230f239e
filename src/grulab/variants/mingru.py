"""``grulab.MinGRU``: the minGRU of Feng et al. (2024) as a drop-in recurrent layer.

Two engines compute the same thing (equations in :mod:`grulab.cells.mingru`):

* ``"sequential"``: :func:`mingru_ref`, the per-step loop over :func:`mingru_cell` (M1)-(M3), the
  truth, and what streaming inference runs (one step costs O(B·H·I), no scan);
* ``"parallel"``: :func:`mingru_parallel`, the log-space scan (M4)-(M5) over the whole sequence,
  with no Python loop over time: how minGRU trains on any device. Its gradient is autograd's.
* ``"cpu"``: :func:`grulab.engine.mingru_cpu.mingru_cpu`, fused Numba kernels for the element-wise
  recurrence after one input product, with the hand-derived backward (M6)-(M10).

``backend="auto"`` takes the fused kernels for float32/float64 CPU tensors; elsewhere (and while
``torch.jit.trace`` records) the scan for sequences longer than one step and the step for ``T = 1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from grulab.cells.mingru import mingru_cell, mingru_scan
from grulab.engine.reference import scan, step_mask
from grulab.init import check_init
from grulab.io import register
from grulab.layers import _Recurrent
from grulab.runtime import warn_traced_loop

BACKENDS = ("auto", "cpu", "parallel", "sequential")


def mingru_ref(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    b_W: Tensor | None,
    *,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One minGRU direction, step by step (the reference). Returns ``(y (T, B, H), h_n (B, H))``.

    ``x (T, B, I)``, ``h0 (B, H)``, ``W (2H, I)``, ``b_W (2H,)``; steps past ``lengths[b]`` are
    skipped (state unchanged, output zero); the reverse direction starts at each sequence's own
    last valid step, as :func:`grulab.engine.reference.gru_ref`.
    """

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        return (mingru_cell(x_t, state[0], W, b_W).h,), ()

    y, (h_n,), _ = scan(step, x, (h0,), lengths, reverse)
    return y, h_n


def mingru_parallel(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    b_W: Tensor | None,
    *,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`mingru_ref` computed by the log-space parallel scan (no loop over time)."""
    T = x.shape[0]
    mask = step_mask(lengths, T, x.device)  # (T, B, 1) or None
    if reverse:  # the reverse direction is the forward scan over flipped time
        x = x.flip(0)
        mask = None if mask is None else mask.flip(0)
    states, _ = mingru_scan(x, h0, W, b_W, mask=mask)  # (T, B, H)
    h_n = states[-1]  # padded steps carry the state, so the last row is the state at each length
    y = states if mask is None else torch.where(mask, states, torch.zeros_like(states))
    return (y.flip(0) if reverse else y), h_n


def mingru_cpu(x: Tensor, h0: Tensor, W: Tensor, b_W: Tensor | None, *, lengths: Tensor | None = None,
               reverse: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`mingru_ref` in the fused CPU kernels (:mod:`grulab.engine.mingru_cpu`, imported on
    first use so that ``import grulab`` does not load Numba)."""
    from grulab.engine.mingru_cpu import mingru_cpu as fused

    return fused(x, h0, W, b_W, lengths=lengths, reverse=reverse)


ENGINES = {"sequential": mingru_ref, "parallel": mingru_parallel, "cpu": mingru_cpu}


def resolve_backend(backend: str, x: Tensor) -> str:
    """The engine that runs ``x``: ``auto`` picks the fused kernels for float32/float64 CPU tensors
    (except while tracing, which records torch ops), else the scan, or the step for ``T = 1``."""
    fused_ok = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    if backend == "auto":
        if fused_ok and not torch.jit.is_tracing():
            return "cpu"
        return "parallel" if x.shape[0] > 1 else "sequential"
    if backend == "cpu" and not fused_ok:
        raise ValueError(f"backend 'cpu' runs float32/float64 CPU tensors, got {x.dtype} on {x.device}")
    return backend


@register
class MinGRU(_Recurrent):
    r"""minGRU (Feng et al. 2024): gates and candidate from the input only, so the whole sequence
    is one input product and an element-wise recurrence (a parallel scan on accelerators, fused
    kernels on the CPU), run step by step for inference.

    .. math::
        z_t = σ(W_z x_t + b_z),\quad \tilde h_t = g(W_h x_t + b_h),\quad
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t

    with ``g(a) = a + 1/2`` for ``a >= 0`` and ``σ(a)`` below (:mod:`grulab.cells.mingru`).

    The interface is :class:`grulab.GRU`'s: ``forward(input, hx=None, lengths=None) -> (output,
    h_n)``, ``(T, B, I)`` or ``batch_first``, unbatched ``(T, I)``, ``PackedSequence``, stacked
    layers (``dropout`` between them), ``bidirectional``. Parameters per layer and direction:
    ``W_l{k}`` ``(2H, I_k)`` rows ``[W_z; W_h]`` and ``b_W_l{k}`` ``(2H,)``; there are no
    recurrent weights, so a layer has ``2H(I + 1)`` parameters against the GRU's ``3H(I + H + 2)``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as
            :class:`grulab.GRU`.
        init: ``"pytorch"`` (``U(-1/√H, 1/√H)``), ``"orthogonal"`` (Glorot-uniform blocks, zero
            biases) or ``"chrono"`` (plus ``b_z = -log u``, ``u ~ U(1, chrono_horizon - 1)``).
        backend: ``"auto"`` (the fused CPU kernels for float32/float64 CPU tensors; elsewhere the
            parallel scan for ``T > 1``, one step for ``T = 1``), ``"cpu"``, ``"parallel"`` or
            ``"sequential"``.

    Example:
        >>> m = MinGRU(8, 16, num_layers=2, batch_first=True)
        >>> out, h_n = m(torch.randn(4, 100, 8))               # whole sequence (CPU: fused kernels)
        >>> y_t, h = m.step(torch.randn(4, 8), h_n)             # inference: one step at a time
        >>> out.shape, h_n.shape, y_t.shape
        (torch.Size([4, 100, 16]), torch.Size([2, 4, 16]), torch.Size([4, 16]))
    """

    family = "mingru"
    gates = 2
    backends = BACKENDS

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         **kwargs)
        # the shared constructor makes recurrent blocks for every family; minGRU has none
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                delattr(self, f"U{sfx}")
                if bias:
                    delattr(self, f"b_U{sfx}")

    def direction_parameters(self, layer: int, direction: int = 0) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        """``(W, b_W)`` of one layer and direction: ``W (2H, I_k)`` rows ``[W_z; W_h]``."""
        if not 0 <= layer < self.num_layers or not 0 <= direction < self.num_directions:
            raise ValueError(f"layer must be in [0, {self.num_layers}) and direction in "
                             f"[0, {self.num_directions}), got layer={layer}, direction={direction}")
        sfx = self._suffix(layer, direction)
        return getattr(self, f"W{sfx}"), getattr(self, f"b_W{sfx}", None)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise with the scheme given at construction (see the class docstring)."""
        check_init(self.init, self.chrono_horizon, self.family)
        H = self.hidden_size
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                W, b_W = getattr(self, f"W{sfx}"), getattr(self, f"b_W{sfx}", None)
                if self.init == "pytorch":
                    k = 1.0 / math.sqrt(H)
                    for p in (W, b_W):
                        if p is not None:
                            p.uniform_(-k, k)
                    continue
                for g in range(2):
                    nn.init.xavier_uniform_(W[g * H : (g + 1) * H])
                if b_W is not None:
                    b_W.zero_()
                if self.init == "chrono":
                    if b_W is None:
                        raise ValueError("init='chrono' sets the write-gate bias; it needs bias=True")
                    u = torch.empty(H, dtype=b_W.dtype, device=b_W.device).uniform_(1.0, self.chrono_horizon - 1.0)
                    b_W[:H] = -torch.log(u)  # z ≈ 1 / (1 + u): a value survives about 1 + u steps

    def _direction(self, x, state0, params, lengths, reverse):  # noqa: ANN001
        backend = resolve_backend(self.backend, x)
        if backend == "sequential":
            warn_traced_loop("MinGRU (backend='sequential')", x.shape[0])
        y, h_n = ENGINES[backend](x, state0[0], *params, lengths=lengths, reverse=reverse)
        return y, (h_n,)

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> MinGRU:
        raise TypeError("MinGRU has no torch.nn equivalent to convert from")

    def to_torch(self) -> nn.Module:
        raise TypeError("MinGRU has no torch.nn equivalent to convert to")

    def step(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step for streaming inference: ``x (B, I)`` (or ``(I,)``), ``hx (L, B, H)``.

        Returns ``(y (B, H), h (L, B, H))``; feed ``h`` back as the next step's ``hx``.
        Unidirectional models only (a reverse direction needs the future).
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional MinGRU; a reverse direction reads the future")
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() not in (1, 2):
            raise ValueError(f"x must have shape (batch, {self.input_size}) or ({self.input_size},), "
                             f"got {tuple(x.shape)}")
        seq = x.unsqueeze(1) if self.batch_first and x.dim() == 2 else x.unsqueeze(0)
        y, h = self(seq, hx)
        return (y[:, 0] if self.batch_first and x.dim() == 2 else y[0]), h


def training_step(model: nn.Module, x: Tensor, lengths: Tensor | None = None) -> float:
    """One forward and backward pass over ``x`` (loss: mean square of the output), for timing.

    This is the unit ``grulab bench`` times for training cost against sequence length; it leaves
    the gradients in ``model``'s parameters and returns the loss.
    """
    out, _ = model(x, lengths=lengths)
    loss = out.square().mean()
    loss.backward()
    return float(loss.detach())
