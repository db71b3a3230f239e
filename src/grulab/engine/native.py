"""PyTorch's own fused recurrent kernels (``torch._VF``), called with grulab's parameters.

Used where PyTorch's layout and ours agree exactly: the RNN and LSTM baselines (same gate order),
and the GRU after the exact weight conversion of :mod:`grulab.interop` (cuDNN on CUDA).
Lengths go through a PackedSequence so PyTorch skips the padded steps as grulab's engines do.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")


@contextlib.contextmanager
def _weights_copied_by_cudnn() -> Iterator[None]:
    """Silence cuDNN's note that the weights are not one contiguous chunk. They cannot be: grulab
    owns its parameters in its own layout (and the GRU's are converted on every call), so cuDNN
    copies them into its buffer each call, which is the expected cost of this path (the size of
    the weights, small next to a sequence's work), not a mistake for the user to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        yield


@torch.compiler.disable  # PyTorch's fused kernel, opaque: AOT autograd would unroll it and recompile per length
def native_run(
    mode: str,
    x: Tensor,
    hx: tuple[Tensor, ...],
    flat_weights: list[Tensor],
    *,
    bias: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run a whole stack through ``torch._VF``.

    Args:
        mode: one of ``MODES``. x: (T, B, I) time-major. hx: states, each (L*D, B, H).
        flat_weights: per layer and direction ``[W, U, b_W, b_U]`` in PyTorch's gate order.
        lengths: (B,) int64 on the CPU, every entry >= 1, or ``None``.

    Returns:
        ``(y (T, B, D*H), final states)``; ``y`` is zero past each length.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES!r}, got {mode!r}")
    fn = {"rnn_tanh": torch._VF.rnn_tanh, "rnn_relu": torch._VF.rnn_relu,
          "lstm": torch._VF.lstm, "gru": torch._VF.gru}[mode]
    state = hx if mode == "lstm" else hx[0]
    if lengths is None:
        with _weights_copied_by_cudnn():
            out = fn(x, state, flat_weights, bias, num_layers, dropout, training, bidirectional, False)
        y, finals = out[0], tuple(out[1:])
        return y, finals
    T = x.shape[0]
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    state = tuple(s.index_select(1, order) for s in hx) if mode == "lstm" else hx[0].index_select(1, order)
    with _weights_copied_by_cudnn():
        out = fn(packed.data, packed.batch_sizes, state, flat_weights, bias, num_layers, dropout, training,
                 bidirectional)
    y_packed = torch.nn.utils.rnn.PackedSequence(out[0], packed.batch_sizes, order, unorder)
    y, _ = pad_packed_sequence(y_packed, total_length=T)
    finals = tuple(s.index_select(1, unorder) for s in out[1:])
    return y, finals
