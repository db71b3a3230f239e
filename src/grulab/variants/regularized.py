"""GRU layers with zoneout, variational dropout and layer normalisation.

* :class:`RegularizedGRU`: the seed's GRU plus ``zoneout`` (Krueger et al. 2017) and variational
  ``input_dropout``/``recurrent_dropout`` (Gal & Ghahramani 2016). It has exactly the GRU's
  parameters, so what it learns is a GRU: in evaluation with ``zoneout=0`` it *is*
  :class:`grulab.GRU` (same engine, :meth:`RegularizedGRU.as_gru` for export).
* :class:`LayerNormGRU`: the layer-normalised GRU (Ba et al. 2016), with the same three options.

Both take :class:`grulab.GRU`'s arguments and interface. While a regulariser is active (training
with any of them, or evaluation with ``zoneout > 0``, whose expectation form (Z2) differs from the
GRU), and always for the layer norm, they run :func:`variant_gru_cpu` (fused kernels with the
hand-derived backward, :mod:`grulab.engine.variants_cpu`) on float32/float64 CPU tensors and
:func:`variant_gru_ref`, the per-step reference loop with autograd, elsewhere or with
``backend="reference"``. The step equations are in :mod:`grulab.cells.lngru` and
:mod:`grulab.cells.regularize`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from grulab.cells.gru import check_reset, gru_cell
from grulab.cells.lngru import DEFAULT_EPS, lngru_cell
from grulab.cells.regularize import (
    check_probability,
    dropout_mask,
    variational_update,
    zoneout,
    zoneout_expectation,
    zoneout_mask,
)
from grulab.engine.dispatch import gru_sequence, resolve_backend
from grulab.engine.reference import scan
from grulab.init import init_direction_
from grulab.io import register
from grulab.layers import GRU, _Recurrent
from grulab.runtime import warn_traced_loop


@torch.compiler.disable  # a per-step loop: compiling it would unroll T steps and recompile per length
def variant_gru_ref(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    *,
    reset: str = "after",
    g_W: Tensor | None = None,
    g_U: Tensor | None = None,
    eps: float = DEFAULT_EPS,
    m_x: Tensor | None = None,
    m_h: Tensor | None = None,
    zoneout_masks: Tensor | None = None,
    zoneout_p: float = 0.0,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One direction of a GRU variant over a sequence, step by step (the reference).

    Args:
        x ``(T, B, I)``, h0 ``(B, H)``, W, U, b_W, b_U: as :func:`grulab.engine.reference.gru_ref`.
        g_W, g_U: layer-norm gains ``(3H,)`` for the layer-normalised GRU (N3)-(N6); ``None``
            for the seed's GRU (1)-(4).
        m_x ``(B, I)``, m_h ``(B, H)``: variational dropout masks (V1), or ``None``.
        zoneout_masks ``(T, B, H)``: zoneout's ``d_t`` (Z1) in training, or ``None``; then
            ``zoneout_p > 0`` applies the evaluation form (Z2).
        lengths, reverse: padding and direction, as ``gru_ref``.

    Returns:
        ``(y (T, B, H), h_n (B, H))``.
    """
    check_reset(reset)
    warn_traced_loop("this GRU variant", x.shape[0])
    if (g_W is None) != (g_U is None):
        raise ValueError("g_W and g_U must be given together (layer normalisation) or both be None")
    I = x.shape[-1]
    if m_x is not None:
        x = m_x * x  # (V1) (T, B, I) one mask for every step of a sequence
    if zoneout_masks is not None:  # carried beside x so that each step gets its own d_t
        x = torch.cat([x, zoneout_masks], dim=-1)  # (T, B, I + H)

    def cell(x_t: Tensor, h_rec: Tensor):  # noqa: ANN202
        if g_W is None:
            return gru_cell(x_t, h_rec, W, U, b_W, b_U, reset)  # (1)-(4)
        return lngru_cell(x_t, h_rec, W, U, b_W, b_U, g_W, g_U, reset, eps)  # type: ignore[arg-type]  # (N3)-(N6)

    def step(xd_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        x_t, d_t = xd_t[:, :I], xd_t[:, I:]
        h_prev = state[0]  # (B, H)
        if m_h is None:
            h = cell(x_t, h_prev).h  # (B, H)
        else:
            h = variational_update(cell(x_t, m_h * h_prev), h_prev)  # (V1)-(V3) (B, H)
        if zoneout_masks is not None:
            h = zoneout(h_prev, h, d_t)  # (Z1) (B, H)
        elif zoneout_p:
            h = zoneout_expectation(h_prev, h, zoneout_p)  # (Z2) (B, H)
        return (h,), ()

    y, (h_n,), _ = scan(step, x, (h0,), lengths, reverse)
    return y, h_n


def variant_gru_cpu(x: Tensor, h0: Tensor, W: Tensor, U: Tensor, b_W: Tensor | None, b_U: Tensor | None,
                    **kwargs: Any) -> tuple[Tensor, Tensor]:
    """:func:`variant_gru_ref` in the fused CPU kernels, same arguments
    (:func:`grulab.engine.variants_cpu.variant_gru_cpu`, imported on first use so that
    ``import grulab`` does not load Numba)."""
    from grulab.engine.variants_cpu import variant_gru_cpu as fused

    return fused(x, h0, W, U, b_W, b_U, **kwargs)


@register
class RegularizedGRU(_Recurrent):
    r"""The seed's GRU with zoneout and variational (per-sequence) dropout.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, reset,
            init, chrono_horizon, check_finite, backend: as :class:`grulab.GRU` (``dropout`` is
            PyTorch's: between layers, a fresh mask per element and step).
        zoneout: probability that a unit keeps its previous value at a step (Krueger et al. 2017);
            evaluation uses the expectation ``h_t = p h_{t-1} + (1 - p) f(x_t, h_{t-1})``.
        input_dropout: variational dropout on each layer's input, one mask per sequence.
        recurrent_dropout: variational dropout on the state the recurrent weights read, one mask
            per sequence (Gal & Ghahramani 2016); the update keeps the undropped state.

    Masks are drawn per layer and direction from torch's global generator, only in training.

    Example:
        >>> gru = RegularizedGRU(8, 32, num_layers=2, zoneout=0.1, recurrent_dropout=0.25)
        >>> out, h_n = gru(torch.randn(50, 4, 8))        # training: masks applied
        >>> gru.eval()(torch.randn(50, 4, 8))[0].shape    # evaluation: zoneout's expectation
        torch.Size([50, 4, 32])
        >>> RegularizedGRU(8, 32, recurrent_dropout=0.25).as_gru()   # a plain GRU, for export
        GRU(8, 32, reset='after')
    """

    family = "gru"
    gates = 3
    backends = ("auto", "reference", "cpu")
    _family_config = ("reset", "zoneout", "input_dropout", "recurrent_dropout")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset: str = "after", *, zoneout: float = 0.0, input_dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, **kwargs: Any) -> None:
        self.reset = check_reset(reset)
        self.zoneout = check_probability("zoneout", zoneout)
        self.input_dropout = check_probability("input_dropout", input_dropout)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         **kwargs)

    def _extra_repr_family(self) -> str:
        s = f", reset={self.reset!r}"
        for name in ("zoneout", "input_dropout", "recurrent_dropout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        return s

    def _regularising(self) -> bool:
        """Whether this call differs from the plain GRU on the same parameters."""
        return bool(self.zoneout) or (self.training and bool(self.input_dropout or self.recurrent_dropout))

    def _variant_kwargs(self, params: tuple) -> dict[str, Any]:
        return {}

    def _direction(self, x, state0, params, lengths, reverse):  # noqa: ANN001
        W, U, b_W, b_U = params[:4]
        if not self._regularising() and not self._variant_kwargs(params):
            y, h_n = gru_sequence(x, state0[0], W, U, b_W, b_U, reset=self.reset, lengths=lengths,
                                  reverse=reverse, backend=self.backend)
            return y, (h_n,)
        T, B, H = x.shape[0], x.shape[1], self.hidden_size
        kw: dict[str, Any] = self._variant_kwargs(params)
        if self.training:
            if self.input_dropout:
                kw["m_x"] = dropout_mask((B, x.shape[-1]), self.input_dropout, x)
            if self.recurrent_dropout:
                kw["m_h"] = dropout_mask((B, H), self.recurrent_dropout, x)
            if self.zoneout:
                kw["zoneout_masks"] = zoneout_mask((T, B, H), self.zoneout, x)
        else:
            kw["zoneout_p"] = self.zoneout
        fused = resolve_backend(self.backend, x) == "cpu" and not torch.jit.is_tracing()
        run = variant_gru_cpu if fused else variant_gru_ref
        y, h_n = run(x, state0[0], W, U, b_W, b_U, reset=self.reset, lengths=lengths, reverse=reverse, **kw)
        return y, (h_n,)

    @property
    def onnx_unsupported(self) -> str | None:
        """Why the ONNX ``GRU`` operator cannot run this module in evaluation, or ``None``."""
        if self.zoneout:
            return (f"zoneout={self.zoneout} changes the evaluation update to "
                    f"p·h_prev + (1-p)·h_GRU, which the operator cannot express")
        return None

    def as_gru(self) -> GRU:
        """The :class:`grulab.GRU` this module is in evaluation (same parameters, copied).

        Dropout only acts in training, so any ``input_dropout``/``recurrent_dropout`` gives a
        plain GRU; ``zoneout > 0`` does not (its evaluation form mixes in the previous state).
        """
        why = self.onnx_unsupported
        if why:
            raise ValueError(f"this {type(self).__name__} has no plain-GRU equivalent: {why}")
        config = {k: v for k, v in self.config().items() if k not in ("zoneout", "input_dropout",
                                                                       "recurrent_dropout")}
        gru = GRU(**config, device=self.W_l0.device, dtype=self.W_l0.dtype)
        gru.load_state_dict(self.state_dict())
        return gru.train(self.training)

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> RegularizedGRU:
        """A copy of a ``torch.nn.GRU``'s weights (exact, :mod:`grulab.interop`) with the
        regularisers given in ``kwargs`` (``zoneout=``, ``recurrent_dropout=``, ...)."""
        gru = GRU.from_torch(module)
        ref = gru.W_l0
        out = cls(**{**gru.config(), **kwargs}, device=ref.device, dtype=ref.dtype)
        out.load_state_dict(gru.state_dict())
        return out

    def to_torch(self) -> nn.Module:
        """The ``torch.nn.GRU`` of :meth:`as_gru` (evaluation form; zoneout must be 0)."""
        return self.as_gru().to_torch()


@register
class LayerNormGRU(RegularizedGRU):
    r"""The layer-normalised GRU (Ba, Kiros & Hinton 2016), optionally with zoneout and
    variational dropout.

    Each gate's input and recurrent pre-activations are normalised over the ``H`` units
    separately, with a gain per unit and the GRU's biases as shifts (:mod:`grulab.cells.lngru`,
    (N3)-(N6)). On top of the GRU's parameters, per layer and direction: ``g_W_l{k}`` and
    ``g_U_l{k}``, ``(3H,)`` gains in gate order ``[z, r, h]``, initialised to one.
    ``direction_parameters(layer, d)`` returns ``(W, U, b_W, b_U, g_W, g_U)``.

    Args:
        as :class:`RegularizedGRU`, plus ``eps`` (added to the variance, default ``1e-5``).

    On float32/float64 CPU tensors the fused kernels run it (input-side norms for all steps at
    once, recurrent-side norms per step inside the loop, hand-derived backward).

    Example:
        >>> ln = LayerNormGRU(8, 32, batch_first=True, zoneout=0.1)
        >>> out, h_n = ln(torch.randn(4, 50, 8))
        >>> out.shape, h_n.shape
        (torch.Size([4, 50, 32]), torch.Size([1, 4, 32]))
    """

    _family_config = ("reset", "zoneout", "input_dropout", "recurrent_dropout", "eps")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset: str = "after", *, eps: float = DEFAULT_EPS, **kwargs: Any) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        self.eps = float(eps)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, reset,
                         **kwargs)
        W = self.W_l0
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                for name in ("g_W", "g_U"):
                    self.register_parameter(f"{name}{sfx}", nn.Parameter(
                        torch.ones(3 * hidden_size, device=W.device, dtype=W.dtype)))

    def direction_parameters(self, layer: int, direction: int = 0) -> tuple:  # type: ignore[override]
        """``(W, U, b_W, b_U, g_W, g_U)`` of one layer and direction."""
        W, U, b_W, b_U = super().direction_parameters(layer, direction)
        sfx = self._suffix(layer, direction)
        return W, U, b_W, b_U, getattr(self, f"g_W{sfx}", None), getattr(self, f"g_U{sfx}", None)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The GRU's scheme for ``W, U, b_W, b_U``; gains to one."""
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                W, U, b_W, b_U, g_W, g_U = self.direction_parameters(layer, d)
                init_direction_(W, U, b_W, b_U, gates=3, init=self.init, family="gru",
                                chrono_horizon=self.chrono_horizon)
                for g in (g_W, g_U):
                    if g is not None:  # absent while the base constructor runs
                        g.fill_(1.0)

    def _variant_kwargs(self, params: tuple) -> dict[str, Any]:
        return {"g_W": params[4], "g_U": params[5], "eps": self.eps}

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> LayerNormGRU:
        raise TypeError("a LayerNormGRU has no torch.nn equivalent (torch.nn.GRU has no layer normalisation)")

    @property
    def onnx_unsupported(self) -> str | None:
        return "layer normalisation of the gate pre-activations has no ONNX GRU operator equivalent"
