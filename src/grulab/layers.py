"""``nn.Module`` layers: GRU (both candidates), and the tanh RNN and LSTM baselines.

Drop-in for ``torch.nn.GRU/RNN/LSTM``: same constructor arguments, shapes, ``batch_first``,
unbatched 2-D input, ``PackedSequence`` input, ``(output, h_n)``. Beyond PyTorch: ``lengths``
on padded input, the seed's gate convention (``z`` writes), both GRU candidates, initialisation
schemes, ``check_finite``, and a choice of engine.

Parameters per layer ``k`` and direction (suffix ``_reverse`` for the backward direction) are
named after the equations: ``W_l{k}`` (G*H, I_k), ``U_l{k}`` (G*H, H), ``b_W_l{k}``, ``b_U_l{k}``
(G*H,), with G gates packed in the order of ``docs/conventions.md``.
"""

from __future__ import annotations

import operator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from grulab.cells.gru import check_reset, gru_cell, gru_step_jacobian
from grulab.cells.lstm import lstm_step_jacobian
from grulab.cells.rnn import check_nonlinearity, rnn_step_jacobian
from grulab.engine.dispatch import BACKENDS, grad_needed, gru_sequence
from grulab.engine.native import native_run
from grulab.engine.reference import lstm_ref, rnn_ref
from grulab.init import check_init, init_direction_
from grulab.io import register
from grulab.runtime import float32_under_autocast, warn_traced_loop

State = tuple[Tensor, ...]
_ARRAY_BACKENDS = ("auto", "cpu", "cpu_recompute")  # the GRU backends whose CPU inference runs on arrays
_CPU_ENGINE: list[Any] = []  # grulab.engine.cpu once imported (see _cpu_engine)


def _cpu_engine() -> Any:
    """``grulab.engine.cpu``, imported at first use (it loads Numba) and kept: an ``import``
    statement on the inference path cost ~50 us per call after an idle spell."""
    if not _CPU_ENGINE:
        from grulab.engine import cpu

        _CPU_ENGINE.append(cpu)
    return _CPU_ENGINE[0]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_finite_tensor(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(bad)}); "
                         f"pass finite values or construct with check_finite=False")


def _check_dtype(name: str, t: Tensor, expected: torch.dtype) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of dtype {expected}, got {t.dtype}")
    if t.dtype != expected:
        raise TypeError(f"{name} has dtype {t.dtype} but the module's parameters are {expected}; "
                        f"convert one of them (e.g. module.to({expected}) or {name}.to({expected}))")


def check_lengths(lengths: Any, B: int, T: int) -> Tensor:
    """Validate ``lengths``: 1-D, one integer per sequence, each in ``[0, T]``. Returns CPU int64."""
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"lengths must be a 1-D tensor or sequence of ints, got {type(lengths)}") from e
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must have shape (batch,) = ({B},), got {tuple(lengths.shape)}")
    lengths = lengths.to(device="cpu", dtype=torch.int64)
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got min {int(lengths.min())} "
                         f"and max {int(lengths.max())}")
    return lengths


class _Recurrent(nn.Module):
    """Shared machinery of the recurrent layers; subclasses give the family and its step."""

    family: ClassVar[str]
    gates: ClassVar[int]
    state_parts: ClassVar[int] = 1
    backends: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        init: str = "pytorch",
        chrono_horizon: float | None = None,
        check_finite: bool = False,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = _check_positive_int("input_size", input_size)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.num_layers = _check_positive_int("num_layers", num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        for name, flag in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        check_init(init, chrono_horizon, self.family)
        if backend not in self.backends:
            raise ValueError(f"backend must be one of {self.backends!r}, got {backend!r}")
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.init = init
        self.chrono_horizon = chrono_horizon
        self.check_finite = check_finite
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        G, H = self.gates, hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else H * self.num_directions
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                self.register_parameter(f"W{sfx}", nn.Parameter(torch.empty(G * H, layer_in, **factory)))
                self.register_parameter(f"U{sfx}", nn.Parameter(torch.empty(G * H, H, **factory)))
                if bias:
                    self.register_parameter(f"b_W{sfx}", nn.Parameter(torch.empty(G * H, **factory)))
                    self.register_parameter(f"b_U{sfx}", nn.Parameter(torch.empty(G * H, **factory)))
        self.reset_parameters()

    # --- parameters -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    def direction_parameters(
        self, layer: int, direction: int = 0
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(W, U, b_W, b_U)`` of one layer and direction (0 forward, 1 reverse)."""
        if not 0 <= layer < self.num_layers or not 0 <= direction < self.num_directions:
            raise ValueError(f"layer must be in [0, {self.num_layers}) and direction in "
                             f"[0, {self.num_directions}), got layer={layer}, direction={direction}")
        sfx = self._suffix(layer, direction)
        return (getattr(self, f"W{sfx}"), getattr(self, f"U{sfx}"),
                getattr(self, f"b_W{sfx}", None), getattr(self, f"b_U{sfx}", None))

    def reset_parameters(self) -> None:
        """Re-initialise with the scheme given at construction (``grulab.init``)."""
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                init_direction_(*self.direction_parameters(layer, d), gates=self.gates, init=self.init,
                                family=self.family, chrono_horizon=self.chrono_horizon)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this module's architecture."""
        names = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "init", "chrono_horizon", "check_finite", "backend", *self._family_config]
        return {n: getattr(self, n) for n in names}

    _family_config: ClassVar[tuple[str, ...]] = ()

    def flatten_parameters(self) -> None:
        """No-op, for drop-in compatibility with ``torch.nn.RNNBase``: the layout is already flat."""

    @property
    def _dtype(self) -> torch.dtype:
        return self.W_l0.dtype

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + self._extra_repr_family()

    def _extra_repr_family(self) -> str:
        return ""

    # --- validation ---------------------------------------------------------------------------
    def _check_input(self, input: Any) -> tuple[Tensor, bool]:
        """Returns time-major (T, B, I) input and whether it was batched."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
        _check_dtype("input", input, self._dtype)
        layout = "(batch, time, input_size)" if self.batch_first else "(time, batch, input_size)"
        if input.dim() not in (2, 3):
            raise ValueError(f"input must be 3-D {layout} or 2-D unbatched (time, input_size), "
                             f"got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input must have input_size={self.input_size} features in its last "
                             f"dimension, got shape {tuple(input.shape)}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[0] == 0:
            raise ValueError(f"input must have at least one time step, got shape {tuple(input.shape)}")
        if self.check_finite:
            check_finite_tensor("input", input)
        return x, batched

    def _check_state(self, name: str, h: Any, B: int, batched: bool, x: Tensor) -> Tensor:
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        expected = (LD, B, H) if batched else (LD, H)
        if not isinstance(h, Tensor):
            raise TypeError(f"{name} must be a Tensor of shape {expected}, got {type(h).__name__}")
        _check_dtype(name, h, self._dtype)
        if tuple(h.shape) != expected:
            form = "(num_layers * num_directions, batch, hidden_size)" if batched else \
                "(num_layers * num_directions, hidden_size) for unbatched input"
            raise ValueError(f"{name} must have shape {form} = {expected}, got {tuple(h.shape)}")
        if h.device != x.device:
            raise ValueError(f"{name} is on {h.device} but input is on {x.device}")
        if self.check_finite:
            check_finite_tensor(name, h)
        return h if batched else h.unsqueeze(1)

    def _zero_state(self, x: Tensor) -> State:
        """The initial state when ``hx`` is not given (made only by a path that needs a tensor)."""
        z = torch.zeros(self.num_layers * self.num_directions, x.shape[1], self.hidden_size, dtype=x.dtype,
                        device=x.device)
        return (z,) * self.state_parts

    def _check_hx(self, hx: Any, B: int, batched: bool, x: Tensor) -> State | None:
        if hx is None:
            return None  # zeros: see _zero_state
        if self.state_parts == 1:
            return (self._check_state("hx", hx, B, batched, x),)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx must be a tuple (h_0, c_0) for {type(self).__name__}, got {type(hx).__name__}")
        return tuple(self._check_state(n, h, B, batched, x) for n, h in zip(("h_0", "c_0"), hx, strict=True))

    # --- forward ------------------------------------------------------------------------------
    @float32_under_autocast
    def forward(self, input: Tensor | PackedSequence, hx: Any = None, lengths: Any = None) -> tuple[Any, Any]:
        """Run the stack over a sequence.

        Args:
            input: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a
                ``PackedSequence``.
            hx: initial state ``(L*D, B, H)`` (``(L*D, H)`` unbatched); zeros when ``None``.
                LSTM: a tuple ``(h_0, c_0)``.
            lengths: optional ``(B,)`` true lengths (any order) for padded input; outputs past a
                length are zero and the final state is the state at the last valid step.

        Returns:
            ``(output, h_n)``: output ``(T, B, D*H)`` (batch-first or packed like the input) and
            ``h_n (L*D, B, H)``; LSTM returns ``(output, (h_n, c_n))``.
        """
        fast = self._fast_forward(input, hx, lengths)
        if fast is not None:
            return fast
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths must be None when input is a PackedSequence (it carries them)")
            _check_dtype("input", packed.data, self._dtype)
            if packed.data.dim() != 2 or packed.data.shape[-1] != self.input_size:
                raise ValueError(f"PackedSequence data must have shape (sum of lengths, {self.input_size}), "
                                 f"got {tuple(packed.data.shape)}")
            if self.check_finite:
                check_finite_tensor("input", packed.data)
            x, lengths = pad_packed_sequence(packed)
            batched = True
        else:
            x, batched = self._check_input(input)
        T, B = x.shape[0], x.shape[1]
        if lengths is not None:
            if not batched:
                lengths = torch.as_tensor(lengths).reshape(-1)
            lengths = check_lengths(lengths, B, T)
            if bool((lengths == T).all()):
                lengths = None  # nothing to skip
        state = self._check_hx(hx, B, batched, x)
        y, finals = self._run(x, state, lengths)
        if packed is not None:
            y = self._repack(y, packed)
        elif not batched:
            y = y.squeeze(1)
            finals = tuple(f.squeeze(1) for f in finals)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, (finals[0] if self.state_parts == 1 else finals)

    @staticmethod
    def _repack(y: Tensor, packed: PackedSequence) -> PackedSequence:
        order = packed.sorted_indices
        lengths = torch.zeros(y.shape[1], dtype=torch.int64)
        for bs in packed.batch_sizes.tolist():
            lengths[:bs] += 1  # lengths in sorted order
        y_sorted = y if order is None else y.index_select(1, order)
        data = pack_padded_sequence(y_sorted, lengths, enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)

    def _fast_forward(self, input: Any, hx: Any, lengths: Any) -> tuple[Any, Any] | None:
        """The result of a call in a common form that a subclass runs with less per-call overhead,
        or ``None``: the general path below validates and runs the call."""
        return None

    def _run(self, x: Tensor, state: State | None, lengths: Tensor | None) -> tuple[Tensor, State]:
        if state is None:
            state = self._zero_state(x)
        D = self.num_directions
        layer_input = x
        finals: list[State] = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                y, final = self._direction(layer_input, tuple(s[idx] for s in state),
                                           self.direction_parameters(layer, d), lengths, bool(d))
                outs.append(y)
                finals.append(final)
            layer_input = torch.cat(outs, dim=-1) if D == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        if len(finals) == 1:  # one layer, one direction: a view, not a copy (torch.stack of one)
            return layer_input, tuple(f.unsqueeze(0) for f in finals[0])
        return layer_input, tuple(torch.stack([f[k] for f in finals]) for k in range(self.state_parts))

    def _direction(self, x: Tensor, state0: State, params: tuple, lengths: Tensor | None,
                   reverse: bool) -> tuple[Tensor, State]:
        raise NotImplementedError

    # --- interop ------------------------------------------------------------------------------
    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> _Recurrent:
        """An exact copy of a ``torch.nn`` recurrent module (see :mod:`grulab.interop`)."""
        from grulab.interop import from_torch

        return from_torch(module, cls, **kwargs)

    def to_torch(self) -> nn.Module:
        """An exact ``torch.nn`` equivalent of this module (see :mod:`grulab.interop`)."""
        from grulab.interop import to_torch

        return to_torch(self)


@register
class GRU(_Recurrent):
    r"""Gated Recurrent Unit, exactly as the seed writes it.

    .. math::
        z_t = σ(W_z x_t + b_{Wz} + U_z h_{t-1} + b_{Uz}) \quad\text{(write gate)}\\
        r_t = σ(W_r x_t + b_{Wr} + U_r h_{t-1} + b_{Ur})\\
        \tilde h_t = \tanh(W_h x_t + b_{Wh} + r_t ⊙ (U_h h_{t-1} + b_{Uh})) \quad\text{reset="after"}\\
        \tilde h_t = \tanh(W_h x_t + b_{Wh} + U_h (r_t ⊙ h_{t-1}) + b_{Uh}) \quad\text{reset="before"}\\
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as
            ``torch.nn.GRU``.
        reset: ``"after"`` (cuDNN/PyTorch/Keras, convertible to ``torch.nn.GRU``) or ``"before"``
            (Cho et al. 2014).
        init: ``"pytorch"``, ``"orthogonal"`` or ``"chrono"`` (needs ``chrono_horizon``).
        check_finite: raise ``ValueError`` on NaN/Inf in ``input`` or ``hx``.
        backend: ``"auto"`` (fused CPU engine when available), ``"reference"`` or ``"cpu"``.

    Example:
        >>> gru = GRU(8, 16, num_layers=2, batch_first=True)
        >>> out, h_n = gru(torch.randn(4, 10, 8), lengths=torch.tensor([10, 3, 7, 1]))
        >>> out.shape, h_n.shape
        (torch.Size([4, 10, 16]), torch.Size([2, 4, 16]))
    """

    family = "gru"
    gates = 3
    backends = (*BACKENDS, "native")
    _family_config = ("reset",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset: str = "after", **kwargs: Any) -> None:
        self.reset = check_reset(reset)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         **kwargs)
        if self.backend == "native" and self.reset != "after":
            raise ValueError("backend='native' runs PyTorch's kernel, which only has the reset='after' candidate")

    def _extra_repr_family(self) -> str:
        return f", reset={self.reset!r}"

    def stream(self, batch_size: int = 1) -> Any:
        """A :class:`grulab.engine.stream.GRUStream` for step-by-step inference (weights copied now)."""
        from grulab.engine.stream import GRUStream

        return GRUStream(self, batch_size)

    def _native(self, x: Tensor, lengths: Tensor | None) -> bool:
        """PyTorch's fused kernel (cuDNN on CUDA) through the exact conversion of grulab.interop."""
        if lengths is not None and bool((lengths == 0).any()):
            return False  # PyTorch cannot pack an empty sequence
        if self.backend == "native":
            return True
        return self.backend == "auto" and x.device.type == "cuda" and self.reset == "after"

    def _fast_forward(self, input: Any, hx: Any, lengths: Any) -> tuple[Tensor, Tensor] | None:
        """Inference on a batched CPU tensor without ``lengths`` under ``torch.no_grad`` (or
        ``inference_mode``): the array path of :meth:`_run_arrays` reached with the fewest
        framework calls. After an idle spell each distinct one cost 20-90 us on this machine, so
        the input's shape, dtype and device are read off its NumPy view (one call) rather than
        asked of the tensor (three). Anything else, including every input the general path would
        reject, returns ``None``."""
        if lengths is not None or type(input) is not Tensor or torch.is_grad_enabled():
            return None
        arrays = self._param_arrays()
        if arrays is None or self.check_finite or not self._arrays_allowed():
            return None
        try:
            x = input.numpy()  # its memory; raises for another device or a dtype NumPy lacks
        except (RuntimeError, TypeError):
            return None
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.input_size or shape[0] == 0 or shape[1] == 0 or x.dtype != arrays[0]:
            return None
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        h0 = None if hx is None else self._check_hx(hx, x.shape[1], True, input)[0]
        y, (h_n,) = self._run_arrays(x, h0, arrays[1])
        return (y.transpose(0, 1) if self.batch_first else y), h_n

    def _param_arrays(self) -> tuple[np.dtype, list[tuple]] | None:
        """``(dtype, [(W, U, b_W, b_U) per layer and direction])``: NumPy views of the parameters
        (their memory: in-place updates show), kept while every parameter is the same object at
        the same address; ``None`` unless all are contiguous CPU float32 or float64 tensors."""
        params = self._parameters
        cached = self.__dict__.get("_arrays_cache")
        if cached is not None:
            key, kept, result = cached
            if len(kept) == len(params) and all(map(operator.is_, kept, params.values())) and key == tuple(
                    map(Tensor.data_ptr, kept)):
                return result
        kept = tuple(params.values())
        per = 4 if self.bias else 2
        if len(kept) != per * self.num_layers * self.num_directions or any(p is None for p in kept):
            return None  # (a subclass that registered parameters of its own takes the general path)
        dtype = kept[0].dtype
        if dtype not in (torch.float32, torch.float64) or any(not p.is_cpu or p.dtype != dtype for p in kept):
            return None
        views = [p.detach().numpy() for p in kept]
        if not all(v.flags.c_contiguous for v in views):
            return None  # (parameters given strided memory: the general path copies them for the kernels)
        groups = [(*views[i : i + 2], *(views[i + 2 : i + 4] if self.bias else (None, None)))
                  for i in range(0, len(views), per)]
        result = (views[0].dtype, groups)
        self.__dict__["_arrays_cache"] = (tuple(p.data_ptr() for p in kept), kept, result)
        return result

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_arrays_cache", None)  # views of the parameters: rebuilt on first use
        return state

    def _run(self, x: Tensor, state: State | None, lengths: Tensor | None) -> tuple[Tensor, State]:
        h0 = None if state is None else state[0]
        if lengths is None and self._inference_only(x, h0):
            arrays = self._param_arrays()
            if arrays is not None:
                return self._run_arrays(_cpu_engine()._array(x), h0, arrays[1])
        if state is None:
            state = self._zero_state(x)
        if not self._native(x, lengths):
            return super()._run(x, state, lengths)
        from grulab.interop import gru_to_torch_layout

        weights = [gru_to_torch_layout(p) for layer in range(self.num_layers) for d in range(self.num_directions)
                   for p in self.direction_parameters(layer, d) if p is not None]
        return native_run("gru", x, state, weights, bias=self.bias, num_layers=self.num_layers,
                          dropout=self.dropout, training=self.training, bidirectional=self.bidirectional,
                          lengths=lengths)

    def _inference_only(self, x: Tensor, h0: Tensor | None) -> bool:
        """Whether this call can take the array path: the fused CPU engine would run, no backward
        can follow (grad mode off, or nothing requires a gradient), no dropout is drawn, and no
        tracer or compiler is recording the call."""
        if not self._arrays_allowed() or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return False
        params = self._parameters.values() if not self._modules else self.parameters()  # no generator walk
        return not grad_needed(x, h0, *params)

    def _arrays_allowed(self) -> bool:
        """What the array path needs of the module and the moment: a backend that runs the fused
        CPU engine, no dropout to draw, no tracer or compiler recording the call."""
        return (self.backend in _ARRAY_BACKENDS and not (self.dropout and self.training and self.num_layers > 1)
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def _run_arrays(self, x: np.ndarray, h0: Tensor | None, params: list[tuple]) -> tuple[Tensor, State]:
        """Inference on arrays: every layer and direction through ``engine.cpu.forward_arrays``,
        the same kernels and values as the autograd path without its per-call tensor plumbing (on
        this 2-vCPU machine, after an idle spell, that plumbing cost about as much as a 10-step
        batch-1 forward's kernel; see docs/performance.md). ``x``: the validated ``(T, B, I)``
        input's values; ``params``: :meth:`_param_arrays`."""
        cpu = _cpu_engine()
        D = self.num_directions
        layer_input = np.ascontiguousarray(x)
        if h0 is None:  # zero state and final state in one allocation
            h0_all, h_n = np.zeros((2, self.num_layers * D, layer_input.shape[1], self.hidden_size), layer_input.dtype)
        else:
            h0_all = cpu._array(h0)
            h_n = np.empty_like(h0_all)
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                y, _ = cpu.forward_arrays(layer_input, h0_all[idx], *params[idx], self.reset, bool(d), h_n[idx])
                outs.append(y)
            layer_input = np.concatenate(outs, axis=-1) if D == 2 else outs[0]
        return torch.from_numpy(layer_input), (torch.from_numpy(h_n),)

    def _direction(self, x, state0, params, lengths, reverse):  # noqa: ANN001
        backend = "auto" if self.backend == "native" else self.backend
        y, h_n = gru_sequence(x, state0[0], *params, reset=self.reset, lengths=lengths, reverse=reverse,
                              backend=backend)
        return y, (h_n,)


# the per-step loop runs for backend="reference" and for lengths with a zero (PyTorch's kernel needs >= 1)
_NATIVE_TRACE_HINT = "Trace with backend='auto' and every length >= 1: PyTorch's kernel is kept at any length."


class _NativeStack(_Recurrent):
    """RNN and LSTM: ``backend="auto"`` runs PyTorch's fused kernels on our parameters (same
    layout), ``"reference"`` the per-step loop of :mod:`grulab.engine.reference`."""

    backends = ("auto", "reference", "native")
    native_mode: ClassVar[str]

    def _run(self, x: Tensor, state: State | None, lengths: Tensor | None) -> tuple[Tensor, State]:
        if state is None:
            state = self._zero_state(x)
        if self.backend == "reference" or (lengths is not None and bool((lengths == 0).any())):
            return super()._run(x, state, lengths)
        weights = [p for layer in range(self.num_layers) for d in range(self.num_directions)
                   for p in self.direction_parameters(layer, d) if p is not None]
        return native_run(self.native_mode, x, state, weights, bias=self.bias, num_layers=self.num_layers,
                          dropout=self.dropout, training=self.training, bidirectional=self.bidirectional,
                          lengths=lengths)


@register
class RNN(_NativeStack):
    """The Elman RNN the seed says GRUs fix: ``h_t = tanh(W x_t + b_W + U h_{t-1} + b_U)``.

    Same arguments as ``torch.nn.RNN`` (``nonlinearity="tanh"|"relu"``) plus ``init``,
    ``check_finite`` and ``backend`` (``"auto"``/``"native"``: PyTorch's fused kernel;
    ``"reference"``: the per-step loop).
    """

    family = "rnn"
    gates = 1
    _family_config = ("nonlinearity",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, **kwargs: Any) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         **kwargs)

    @property
    def native_mode(self) -> str:  # type: ignore[override]
        return f"rnn_{self.nonlinearity}"

    def _extra_repr_family(self) -> str:
        return "" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity!r}"

    def _direction(self, x, state0, params, lengths, reverse):  # noqa: ANN001
        warn_traced_loop("RNN (backend='reference' or a zero length)", x.shape[0], _NATIVE_TRACE_HINT)
        y, h_n, _ = rnn_ref(x, state0[0], *params, nonlinearity=self.nonlinearity, lengths=lengths,
                            reverse=reverse)
        return y, (h_n,)


@register
class LSTM(_NativeStack):
    """The LSTM, the cell-memory model the seed says comes next (gate order ``[i, f, g, o]``).

    Same arguments as ``torch.nn.LSTM`` (without ``proj_size``) plus ``init`` (``"chrono"``
    sets forget/input biases), ``check_finite`` and ``backend``. ``hx`` is ``(h_0, c_0)`` and the
    result ``(output, (h_n, c_n))``.
    """

    family = "lstm"
    gates = 4
    state_parts = 2
    native_mode = "lstm"

    def _direction(self, x, state0, params, lengths, reverse):  # noqa: ANN001
        warn_traced_loop("LSTM (backend='reference' or a zero length)", x.shape[0], _NATIVE_TRACE_HINT)
        y, final, _ = lstm_ref(x, state0, *params, lengths=lengths, reverse=reverse)
        return y, final


@register
class GRUCell(nn.Module):
    """One GRU step as a module: ``forward(x, h=None) -> h``.

    Args:
        input_size, hidden_size, bias: as ``torch.nn.GRUCell``.
        reset: ``"after"`` or ``"before"`` (see :class:`GRU`).
        init, chrono_horizon, check_finite: as :class:`GRU`.

    Shapes: ``x (B, I)`` or ``(I,)``; ``h (B, H)`` or ``(H,)``, zeros when ``None``.

    Example:
        >>> cell = GRUCell(3, 5)
        >>> h = cell(torch.randn(2, 3))
        >>> h = cell(torch.randn(2, 3), h)
        >>> h.shape
        torch.Size([2, 5])
    """

    family = "gru"
    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset: str = "after", *,
                 init: str = "pytorch", chrono_horizon: float | None = None, check_finite: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.input_size = _check_positive_int("input_size", input_size)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.reset = check_reset(reset)
        check_init(init, chrono_horizon, "gru")
        self.bias, self.init, self.chrono_horizon, self.check_finite = bias, init, chrono_horizon, check_finite
        factory = {"device": device, "dtype": dtype}
        H = hidden_size
        self.W = nn.Parameter(torch.empty(3 * H, input_size, **factory))
        self.U = nn.Parameter(torch.empty(3 * H, H, **factory))
        self.b_W = nn.Parameter(torch.empty(3 * H, **factory)) if bias else None
        self.b_U = nn.Parameter(torch.empty(3 * H, **factory)) if bias else None
        self.reset_parameters()

    def config(self) -> dict[str, Any]:
        names = ["input_size", "hidden_size", "bias", "reset", "init", "chrono_horizon", "check_finite"]
        return {n: getattr(self, n) for n in names}

    def reset_parameters(self) -> None:
        init_direction_(self.W, self.U, self.b_W, self.b_U, gates=3, init=self.init, family="gru",
                        chrono_horizon=self.chrono_horizon)

    def direction_parameters(self, layer: int = 0, direction: int = 0) -> tuple:
        if layer != 0 or direction != 0:
            raise ValueError(f"a GRUCell has one layer and one direction, got layer={layer}, direction={direction}")
        return self.W, self.U, self.b_W, self.b_U

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, reset={self.reset!r}"

    @float32_under_autocast
    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        _check_dtype("x", x, self.W.dtype)
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (batch, {self.input_size}) or ({self.input_size},), "
                             f"got {tuple(x.shape)}")
        batched = x.dim() == 2
        xb = x if batched else x.unsqueeze(0)
        if h is None:
            hb = torch.zeros(xb.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            if not isinstance(h, Tensor):
                raise TypeError(f"h must be a Tensor, got {type(h).__name__}")
            _check_dtype("h", h, self.W.dtype)
            expected = (xb.shape[0], self.hidden_size) if batched else (self.hidden_size,)
            if tuple(h.shape) != expected:
                raise ValueError(f"h must have shape {expected}, got {tuple(h.shape)}")
            hb = h if batched else h.unsqueeze(0)
        if self.check_finite:
            check_finite_tensor("x", x)
            check_finite_tensor("h", hb)
        h_new = gru_cell(xb, hb, self.W, self.U, self.b_W, self.b_U, self.reset).h
        return h_new if batched else h_new.squeeze(0)

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> GRUCell:
        from grulab.interop import from_torch

        return from_torch(module, cls, **kwargs)

    def to_torch(self) -> nn.Module:
        from grulab.interop import to_torch

        return to_torch(self)


def step_jacobian(
    module: nn.Module,
    x: Tensor,
    h_prev: Tensor,
    *,
    c_prev: Tensor | None = None,
    layer: int = 0,
    direction: int = 0,
) -> Tensor:
    """The exact step Jacobian ``∂h_t/∂h_{t-1}`` of one layer and direction of a module.

    Args:
        module: :class:`GRU`, :class:`GRUCell`, :class:`RNN` or :class:`LSTM`.
        x: the step's input to that layer ``(B, I_layer)`` or ``(I_layer,)``.
        h_prev: the previous state ``(B, H)`` or ``(H,)``; for LSTM also ``c_prev``.

    Returns:
        ``(B, H, H)`` (``(H, H)`` unbatched); rows index ``h_t``, columns ``h_{t-1}``. For the GRU
        its diagonal direct part is ``1 - z_t``. For LSTM, the Jacobian of ``[h_t; c_t]`` with
        respect to ``[h_{t-1}; c_{t-1}]``, ``(B, 2H, 2H)``.
    """
    W, U, b_W, b_U = module.direction_parameters(layer, direction)  # type: ignore[operator]
    batched = x.dim() == 2
    for name, t, size in (("x", x, W.shape[1]), ("h_prev", h_prev, U.shape[1])):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor")
        _check_dtype(name, t, W.dtype)
        if t.dim() != (2 if batched else 1) or t.shape[-1] != size:
            raise ValueError(f"{name} must have shape (batch, {size}) or ({size},), got {tuple(t.shape)}")
    xb, hb = (x, h_prev) if batched else (x[None], h_prev[None])
    if isinstance(module, (GRU, GRUCell)):
        J = gru_step_jacobian(xb, hb, W, U, b_W, b_U, module.reset)
    elif isinstance(module, RNN):
        J = rnn_step_jacobian(xb, hb, W, U, b_W, b_U, module.nonlinearity)
    elif isinstance(module, LSTM):
        if c_prev is None or c_prev.shape != h_prev.shape:
            raise ValueError("LSTM step_jacobian needs c_prev with the shape of h_prev")
        J = lstm_step_jacobian(xb, hb, c_prev if batched else c_prev[None], W, U, b_W, b_U)
    else:
        raise TypeError(f"module must be a grulab GRU, GRUCell, RNN or LSTM, got {type(module).__name__}")
    return J if batched else J[0]
