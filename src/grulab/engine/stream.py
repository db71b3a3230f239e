"""Streaming inference: advance every layer of a GRU by one step per call, with no allocation.

``GRUStream`` packs the weights once (contiguous, per layer), keeps the state of every layer
in a preallocated buffer, and runs each step as one compiled call (``_stream_step``) that goes
through all layers: input product, recurrent product, gates, update. Built by
:meth:`grulab.GRU.stream`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

from grulab.engine._jitmath import FTZ_DAZ, STEP, matmul_t, mxcsr, no_panels, pack_panels
from grulab.engine.cpu import sigmoid, tanh


@numba.njit(**STEP)
def _stream_step(x, W0, W_rest, U, b_W, b_U, h, xp, u, rh, uh, after, W0_p, W_p, U_p, Uzr_p,
                 Uh_p):  # noqa: ANN001, ANN201
    """One step of an L-layer GRU. ``x (B, I)``; ``h (L, B, H)`` updated in place. In float32 the
    step runs with flush-to-zero on, as the whole-sequence kernels do (see ``_pool.flushing_call``),
    switched here inside the kernel: a call from Python around each step would cost more than the
    step. Operations the compiler might move across the switch only change how values below
    1.2e-38 round, never the result beyond that. ``W0_p`` ... ``Uh_p`` are the weights' panels
    (packed once by the stream) for :func:`grulab.engine._jitmath.matmul_t`."""
    L, B, H = h.shape
    mode = mxcsr(-1) if h.itemsize == 4 else -1
    if mode >= 0:
        mxcsr(mode | FTZ_DAZ)
    for layer in range(L):
        inp = x if layer == 0 else h[layer - 1]  # the layer below has already advanced
        if layer == 0:
            matmul_t(inp, W0, W0_p, xp)  # (B, 3H) W x
        else:
            matmul_t(inp, W_rest[layer - 1], W_p[layer - 1], xp)
        hl = h[layer]
        Ul = U[layer]
        if after:
            matmul_t(hl, Ul, U_p[layer], u)  # (B, 3H) U h_prev
        else:
            matmul_t(hl, Ul[: 2 * H], Uzr_p[layer], u)  # (B, 2H)
        bW = b_W[layer]
        bU = b_U[layer]
        for b in range(B):
            for k in range(H):
                z = sigmoid(xp[b, k] + bW[k] + u[b, k] + bU[k])  # (eq. 1)
                r = sigmoid(xp[b, H + k] + bW[H + k] + u[b, H + k] + bU[H + k])  # (eq. 2)
                u[b, k] = z  # keep z where its pre-activation was
                if after:
                    u[b, H + k] = r
                else:
                    rh[b, k] = r * hl[b, k]
        if not after:
            matmul_t(rh, Ul[2 * H :], Uh_p[layer], uh)  # (eq. 3b) U_h (r h_prev)
        for b in range(B):
            for k in range(H):
                if after:
                    a_h = xp[b, 2 * H + k] + bW[2 * H + k] + u[b, H + k] * (u[b, 2 * H + k] + bU[2 * H + k])
                else:
                    a_h = xp[b, 2 * H + k] + bW[2 * H + k] + uh[b, k] + bU[2 * H + k]
                h_tilde = tanh(a_h)  # (eq. 3)
                hl[b, k] = hl[b, k] + u[b, k] * (h_tilde - hl[b, k])  # (eq. 4), rewritten
    if mode >= 0:
        mxcsr(mode)


def _entry_point(kernel: Any, args: tuple) -> Any:
    """``kernel``'s compiled entry point for the types of ``args`` (compiled or loaded from the cache
    now), or the dispatcher itself where there is none (``NUMBA_DISABLE_JIT``). A call through the
    entry point skips the dispatcher's per-call type resolution: a batch-1 step at H=128 took
    ~1 us of its ~5 us there. The caller must pass arguments of exactly these types on every call
    (dtype, dimensions, C layout): the entry point unboxes them as such without checking."""
    compile_for = getattr(kernel, "compile", None)
    if numba.config.DISABLE_JIT or compile_for is None:
        return kernel
    return compile_for(tuple(numba.typeof(a) for a in args))


class GRUStream:
    """Step-by-step inference state for a unidirectional :class:`grulab.GRU` on the CPU.

    Args:
        model: the GRU (its weights are copied now: call ``model.stream()`` again after training).
        batch_size: number of independent streams advanced together.

    ``step(x_t)`` takes ``(B, I)`` (or ``(I,)`` when ``batch_size == 1``), as a tensor or NumPy array,
    and returns the last layer's new state ``(B, H)`` (``(H,)`` for 1-D input). The returned tensor
    is a view of the stream's state buffer, overwritten by the next step: copy it to keep it.

    Example:
        >>> gru = GRU(8, 32, num_layers=2)
        >>> s = gru.stream()
        >>> for x_t in torch.randn(100, 8):
        ...     y_t = s.step(x_t)          # (32,)
        >>> s.state.shape                   # (num_layers, batch, hidden)
        torch.Size([2, 1, 32])
    """

    def __init__(self, model: Any, batch_size: int = 1) -> None:
        if model.bidirectional:
            raise ValueError("stream() needs a unidirectional GRU: a reverse direction needs future inputs")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        dtype = model.W_l0.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"stream() runs float32/float64 models, got {dtype}")
        self.input_size, self.hidden_size, self.num_layers = model.input_size, model.hidden_size, model.num_layers
        self.batch_size, self.after = batch_size, model.reset == "after"
        self.dtype = dtype
        L, H, B = self.num_layers, self.hidden_size, batch_size
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        with torch.no_grad():
            params = [model.direction_parameters(layer) for layer in range(L)]
            as_np = lambda t: t.detach().to("cpu").contiguous().numpy().astype(np_dtype, copy=True)
            self._W0 = as_np(params[0][0])
            self._W_rest = (np.stack([as_np(p[0]) for p in params[1:]]) if L > 1
                            else np.zeros((1, 3 * H, H), np_dtype))
            self._U = np.stack([as_np(p[1]) for p in params])
            zeros = np.zeros(3 * H, np_dtype)
            self._b_W = np.stack([as_np(p[2]) if p[2] is not None else zeros for p in params])
            self._b_U = np.stack([as_np(p[3]) if p[3] is not None else zeros for p in params])
        # panels of every weight matrix, packed once here (per-call packing would cost a step's
        # worth); stacked per layer, or empty where a candidate does not use them
        def stack(mats: list[np.ndarray]) -> np.ndarray:
            if not mats:
                return np.zeros((1, *no_panels(np_dtype).shape), np_dtype)
            return np.stack([pack_panels(m) for m in mats])

        self._panels = (pack_panels(self._W0), stack(list(self._W_rest) if L > 1 else []),
                        stack(list(self._U) if self.after else []),
                        stack([] if self.after else [u[: 2 * H] for u in self._U]),
                        stack([] if self.after else [u[2 * H :] for u in self._U]))
        self._h = np.zeros((L, B, H), np_dtype)
        self._xp = np.empty((B, 3 * H), np_dtype)
        self._u = np.empty((B, 3 * H if self.after else 2 * H), np_dtype)
        self._rh = np.empty((B, H), np_dtype)
        self._uh = np.empty((B, H), np_dtype)
        self._x = np.empty((B, self.input_size), np_dtype)
        self._h_t = torch.from_numpy(self._h)  # shares memory with the state buffer
        # the views step() returns, made once (indexing a tensor costs about a microsecond per step)
        self._out, self._out_1d = self._h_t[-1], self._h_t[-1, 0]
        self._np_dtype = np_dtype
        self._shapes = ((B, self.input_size),) + (((self.input_size,),) if B == 1 else ())  # step()'s inputs
        # every argument but x is fixed for the stream's life: bound once, with the kernel's compiled
        # entry for their types (see _entry_point)
        self._args = (self._W0, self._W_rest, self._U, self._b_W, self._b_U, self._h, self._xp, self._u, self._rh,
                      self._uh, self.after, *self._panels)
        self._kernel = _entry_point(_stream_step, (self._x, *self._args))

    def step(self, x_t: Tensor | np.ndarray) -> Tensor:
        """Advance every layer by one step; returns the last layer's state (a view, see class doc)."""
        if isinstance(x_t, Tensor):  # any float dtype (bfloat16 under autocast): the state stays in the model's
            if x_t.dtype == self.dtype and x_t.is_cpu:  # already what the kernel reads: no conversion call
                arr = x_t.numpy() if not x_t.requires_grad else x_t.detach().numpy()  # detach: ~0.5 us
            else:
                arr = x_t.detach().to("cpu", self.dtype if x_t.is_floating_point() else x_t.dtype).numpy()
        else:
            arr = np.asarray(x_t)
        squeeze = arr.ndim == 1
        if arr.shape not in self._shapes:
            raise ValueError(f"x_t must have shape ({self.batch_size}, {self.input_size})"
                             + (f" or ({self.input_size},)" if self.batch_size == 1 else "")
                             + f", got {arr.shape}")
        if arr.dtype != self._np_dtype or not arr.flags.c_contiguous:
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"x_t must be floating point, got {arr.dtype}")
            self._x[...] = arr.reshape(self._x.shape)
            arr = self._x
        elif squeeze:
            arr = arr.reshape(1, self.input_size)
        self._kernel(arr, *self._args)  # arr: (B, I), C-contiguous, the model's dtype, like self._x
        return self._out_1d if squeeze else self._out

    @property
    def state(self) -> Tensor:
        """A copy of every layer's state, ``(num_layers, batch_size, hidden_size)``."""
        return self._h_t.clone()

    @state.setter
    def state(self, h: Tensor | np.ndarray) -> None:
        self.set_state(h)

    def set_state(self, h: Tensor | np.ndarray) -> None:
        """Set every layer's state from ``(num_layers, batch_size, hidden_size)``."""
        arr = h.detach().to("cpu").numpy() if isinstance(h, Tensor) else np.asarray(h)
        if arr.shape != self._h.shape:
            raise ValueError(f"state must have shape (num_layers, batch_size, hidden_size) = {self._h.shape}, "
                             f"got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("state contains NaN or Inf")
        self._h[...] = arr

    def reset(self) -> None:
        """Zero every layer's state."""
        self._h[...] = 0.0
