"""grulab modules under PyTorch's program transformations: autocast, ``torch.jit.trace`` and
``torch.compile``.

* **autocast**: the recurrence runs in the parameters' dtype (float32) with autocast switched off
  inside the layer; a bfloat16/float16 input or state is cast up first, and outputs and the state
  are float32. Rounding the carried state to bfloat16's 8-bit mantissa at every step would
  compound over the sequence, and the fused engines are float32 kernels; the layers around a GRU
  (embeddings, heads) still run in bfloat16. ``torch.nn.GRU`` also stays float32 under CPU
  autocast for float32 input.
* **torch.jit.trace**: a trace records tensor operations, so a Python loop over time would be
  unrolled and frozen at the example's length. Under tracing the GRU runs :func:`gru_scripted`, a
  TorchScript loop that the trace keeps as a loop: the traced module accepts any length and can
  be saved with ``torch.jit.save`` and run without Python (libtorch). RNN and LSTM run PyTorch's
  kernel, which a trace also keeps at any length; the per-step loops that remain (the variants'
  reference, MinGRU's sequential engine, RNN/LSTM with ``backend="reference"`` or a zero length)
  warn that the traced graph is frozen at the example's length (:func:`warn_traced_loop`).
* **torch.compile**: the recurrence is opaque to the compiler (``torch.compiler.disable``): it
  already runs as one fused kernel per layer and direction, while tracing it would unroll the
  reference loop and recompile for every new length. Everything around it is compiled. The
  same holds for PyTorch's own kernel behind RNN, LSTM and the GRU on CUDA (``native_run``),
  which AOT autograd would otherwise decompose into a loop, once per length.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])
_LOW = (torch.bfloat16, torch.float16)


def opaque_to_compiler(fn: F) -> F:
    """``torch.compiler.disable(fn)`` for dynamo, ``fn`` itself otherwise. The disabled wrapper
    runs dynamo's frame checks on every call, even in eager mode: 6 us per call with warm caches,
    about 160 us after an idle spell (a batch-1 forward of 8 steps: 615 against 452 us). Under
    ``torch.compile`` the check below reads True and the call goes through the disabled wrapper,
    so the compiled graph still treats ``fn`` as one opaque call."""
    disabled = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _up(t: Any, dtype: torch.dtype) -> Any:
    """Cast low-precision floating tensors (inside tuples and PackedSequences too) to ``dtype``."""
    if isinstance(t, torch.nn.utils.rnn.PackedSequence):
        return t._replace(data=_up(t.data, dtype))
    if isinstance(t, Tensor) and t.dtype in _LOW:
        return t.to(dtype)
    if isinstance(t, tuple):
        return tuple(_up(s, dtype) for s in t)
    return t


def _device_type(values: Any) -> str:
    for v in values:
        data = v.data if isinstance(v, torch.nn.utils.rnn.PackedSequence) else v
        if isinstance(data, Tensor):
            return data.device.type
    return "cpu"


def _any_autocast_fallback() -> bool:
    return any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", _any_autocast_fallback)


def float32_under_autocast(forward: F) -> F:
    """Decorate a layer's ``forward``: under autocast, switch autocast off for the layer and cast
    low-precision floating arguments (input, states) up to the parameters' dtype."""

    @functools.wraps(forward)
    def wrapper(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not _any_autocast():  # one call, not a device lookup and a query (tens of us each after idle)
            return forward(self, *args, **kwargs)
        device = _device_type([*args, *kwargs.values()])
        if not torch.is_autocast_enabled(device):
            return forward(self, *args, **kwargs)
        dtype = next(self.parameters()).dtype
        args = tuple(_up(a, dtype) for a in args)
        kwargs = {k: _up(v, dtype) for k, v in kwargs.items()}
        with torch.autocast(device_type=device, enabled=False):
            return forward(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _gru_loop(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    reset_after: bool,
    reverse: bool,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The loop :func:`gru_scripted` compiles (TorchScript subset of Python)."""
    T = x.size(0)
    H = h0.size(1)
    a_x = torch.matmul(x, W.t())  # (T, B, 3H) input side of every step at once
    if b_W is not None:
        a_x = a_x + b_W
    U_z, U_r, U_h = U[:H], U[H : 2 * H], U[2 * H :]
    b_Uz, b_Ur, b_Uh = torch.zeros(3 * H, dtype=x.dtype, device=x.device).chunk(3)
    if b_U is not None:
        b_Uz, b_Ur, b_Uh = b_U[:H], b_U[H : 2 * H], b_U[2 * H :]
    h = h0
    ys = []
    for i in range(T):
        t = T - 1 - i if reverse else i
        a_xz, a_xr, a_xh = a_x[t, :, :H], a_x[t, :, H : 2 * H], a_x[t, :, 2 * H :]
        z = torch.sigmoid(a_xz + torch.matmul(h, U_z.t()) + b_Uz)  # (eq. 1)
        r = torch.sigmoid(a_xr + torch.matmul(h, U_r.t()) + b_Ur)  # (eq. 2)
        if reset_after:
            h_tilde = torch.tanh(a_xh + r * (torch.matmul(h, U_h.t()) + b_Uh))  # (eq. 3a)
        else:
            h_tilde = torch.tanh(a_xh + torch.matmul(r * h, U_h.t()) + b_Uh)  # (eq. 3b)
        h_new = (1 - z) * h + z * h_tilde  # (eq. 4)
        if lengths is not None:
            m = (lengths.to(x.device) > t).unsqueeze(1)
            h = torch.where(m, h_new, h)
            ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        else:
            h = h_new
            ys.append(h_new)
    if reverse:
        ys.reverse()
    return torch.stack(ys), h


@functools.cache
def _compiled_loop() -> Callable[..., tuple[Tensor, Tensor]]:
    # compiled on first use, not at import; torch marks TorchScript deprecated, but it remains
    # the format a trace records a loop in, and the one libtorch runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_gru_loop)


def gru_scripted(
    x: Tensor,
    h0: Tensor,
    W: Tensor,
    U: Tensor,
    b_W: Tensor | None,
    b_U: Tensor | None,
    reset_after: bool,
    reverse: bool,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One GRU direction as a TorchScript loop (eqs. 1-4), same contract as ``gru_ref``:
    ``x (T, B, I)``, ``h0 (B, H)``; returns ``(y (T, B, H), h_n (B, H))``. Called inside
    ``torch.jit.trace``, the trace records the loop itself, not its unrolled steps."""
    return _compiled_loop()(x, h0, W, U, b_W, b_U, reset_after, reverse, lengths)


_TRACE_HINT = "Trace grulab.GRU (kept as a loop) or export a plain GRU with grulab.export_onnx for variable lengths."


def warn_traced_loop(name: str, T: int, hint: str = _TRACE_HINT) -> None:
    """For layers whose reference loop a trace unrolls: say the graph is fixed to this length."""
    if torch.jit.is_tracing():
        warnings.warn(f"torch.jit.trace unrolls {name}'s per-step loop: the traced graph only accepts "
                      f"sequences of length {T}. {hint}", stacklevel=3)
