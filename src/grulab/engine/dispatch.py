"""Backend choice and the autograd.Function whose backward is the hand derivation.

An *engine* runs one direction of one GRU layer over a whole sequence and provides::

    forward(x, h0, W, U, b_W, b_U, reset, lengths, reverse, training) -> (y, h_n, saved)
    backward(dy, dh_n, x, h0, W, U, b_W, b_U, reset, lengths, reverse, y, h_n, saved, needs)
        -> (dx, dh0, dW, dU, db_W, db_U)

with the shapes of :mod:`grulab.engine.reference`. ``saved`` is a tuple of tensors the engine
chooses (what its backward needs, nothing more); ``needs`` says which of the six gradients are
wanted (an engine may return ``None`` for the others). Engines register in ``ENGINES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from grulab.engine.reference import GRUTrace, gru_ref, gru_ref_backward
from grulab.runtime import opaque_to_compiler

BACKENDS = ("auto", "reference", "cpu", "cpu_recompute")


class Engine(Protocol):
    def forward(self, *args: Any) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]: ...

    def backward(self, *args: Any) -> tuple[Tensor | None, ...]: ...


@dataclass(frozen=True)
class ReferenceEngine:
    """The per-step torch loop with the hand-derived backward."""

    name: str = "reference"

    def forward(self, x, h0, W, U, b_W, b_U, reset, lengths, reverse, training):  # noqa: ANN001
        y, h_n, trace = gru_ref(x, h0, W, U, b_W, b_U, reset=reset, lengths=lengths, reverse=reverse)
        return y, h_n, tuple(trace) if training else ()

    def backward(self, dy, dh_n, x, h0, W, U, b_W, b_U, reset, lengths, reverse, y, h_n, saved, needs):  # noqa: ANN001
        return gru_ref_backward(
            dy, dh_n, x, h0, W, U, GRUTrace(*saved), reset=reset, lengths=lengths, reverse=reverse
        )


@dataclass(frozen=True)
class CPUEngine:
    """The fused Numba kernels of :mod:`grulab.engine.cpu` (float32/float64 CPU tensors)."""

    name: str = "cpu"
    recompute: bool = False

    def forward(self, x, h0, W, U, b_W, b_U, reset, lengths, reverse, training):  # noqa: ANN001
        from grulab.engine.cpu import gru_fwd

        return gru_fwd(x, h0, W, U, b_W, b_U, reset, lengths, reverse, training, self.recompute)

    def backward(self, dy, dh_n, x, h0, W, U, b_W, b_U, reset, lengths, reverse, y, h_n, saved, needs):  # noqa: ANN001
        from grulab.engine.cpu import gru_bwd

        return gru_bwd(dy, dh_n, x, h0, W, U, b_W, b_U, reset, lengths, reverse, saved, needs)


ENGINES: dict[str, Engine] = {"reference": ReferenceEngine(), "cpu": CPUEngine(),
                              "cpu_recompute": CPUEngine("cpu_recompute", recompute=True)}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS!r}, got {backend!r}")
    return backend


def resolve_backend(backend: str, x: Tensor) -> str:
    """The engine that will run: ``auto`` picks the fused CPU engine when it can run."""
    check_backend(backend)
    if backend == "auto":
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            return "cpu"
        return "reference"
    if backend.startswith("cpu") and (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)):
        raise ValueError(f"backend {backend!r} runs float32/float64 CPU tensors, got {x.dtype} on {x.device}")
    return backend


def grad_needed(*tensors: Tensor | None) -> bool:
    """Whether a backward can follow: grad mode on and some input requiring a gradient. When not
    (``torch.no_grad``, ``inference_mode``, frozen inputs), callers run the forward alone: through
    an autograd Function it would still save every gate for a backward that never comes (the
    Function sees ``requires_grad``, not the grad mode)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class GRUFunction(torch.autograd.Function):
    """One GRU direction over a sequence; backward is the hand-derived BPTT of the engine."""

    @staticmethod
    def forward(ctx, x, h0, W, U, b_W, b_U, reset, lengths, reverse, engine_name):  # noqa: ANN001
        engine = ENGINES[engine_name]
        training = any(ctx.needs_input_grad[:6])
        y, h_n, saved = engine.forward(x, h0, W, U, b_W, b_U, reset, lengths, reverse, training)
        ctx.reset, ctx.reverse, ctx.engine_name = reset, reverse, engine_name
        ctx.save_for_backward(x, h0, W, U, b_W, b_U, lengths, y, h_n, *saved)
        return y, h_n

    @staticmethod
    def backward(ctx, dy, dh_n):  # noqa: ANN001
        x, h0, W, U, b_W, b_U, lengths, y, h_n, *saved = ctx.saved_tensors
        engine = ENGINES[ctx.engine_name]
        dx, dh0, dW, dU, db_W, db_U = engine.backward(
            dy, dh_n, x, h0, W, U, b_W, b_U, ctx.reset, lengths, ctx.reverse, y, h_n, tuple(saved),
            ctx.needs_input_grad[:6]
        )
        if b_W is None:
            db_W = db_U = None
        return dx, dh0, dW, dU, db_W, db_U, None, None, None, None


@opaque_to_compiler  # one fused kernel per call: torch.compile leaves it opaque (grulab.runtime)
def gru_sequence(
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
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """One GRU direction over a validated sequence: ``(y (T, B, H), h_n (B, H))``.

    Differentiable through the hand-derived backward of the chosen engine. Inputs must already
    be validated (shapes, dtypes, lengths in ``[0, T]``): the layers do that.
    """
    if torch.jit.is_tracing():  # a TorchScript loop, so the trace keeps the loop over time
        from grulab.runtime import gru_scripted

        return gru_scripted(x, h0, W, U, b_W, b_U, reset == "after", reverse, lengths)
    engine = resolve_backend(backend, x)
    if not grad_needed(x, h0, W, U, b_W, b_U):
        y, h_n, _ = ENGINES[engine].forward(x, h0, W, U, b_W, b_U, reset, lengths, reverse, False)
        return y, h_n
    return GRUFunction.apply(x, h0, W, U, b_W, b_U, reset, lengths, reverse, engine)
