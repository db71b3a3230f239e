"""Exact conversion between grulab modules and ``torch.nn.GRU/GRUCell/RNN/LSTM``.

PyTorch names and conventions live only here. PyTorch packs GRU gates as ``[r, z, n]`` and its
``z`` means *keep*: ``h = (1 - z_pt) * n + z_pt * h_prev``. grulab packs ``[z, r, h]`` with ``z``
the *write* gate, so ``z = 1 - z_pt = σ(-a_pt)``: converting negates the ``z`` rows of every
weight and bias (exact in floating point) and reorders the blocks. PyTorch's candidate is the
``reset="after"`` form; ``reset="before"`` has no PyTorch equivalent. RNN and LSTM layouts
agree with PyTorch's (LSTM ``[i, f, g, o]``), so they convert by copy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def gru_from_torch_layout(p: Tensor) -> Tensor:
    """PyTorch ``[r, z_keep, n]`` rows → grulab ``[z_write, r, h]`` rows (weights or biases)."""
    r, z_keep, n = p.chunk(3, dim=0)
    return torch.cat([-z_keep, r, n], dim=0)


def gru_to_torch_layout(p: Tensor) -> Tensor:
    """grulab ``[z_write, r, h]`` rows → PyTorch ``[r, z_keep, n]`` rows (weights or biases)."""
    z, r, h = p.chunk(3, dim=0)
    return torch.cat([r, -z, h], dim=0)


_TORCH_TYPES = {"GRU": nn.GRU, "RNN": nn.RNN, "LSTM": nn.LSTM, "GRUCell": nn.GRUCell}


def _torch_names(cell: bool, layer: int, direction: int) -> tuple[str, str, str, str]:
    sfx = "" if cell else f"_l{layer}" + ("_reverse" if direction else "")
    return f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}"


def _directions(m: nn.Module) -> list[tuple[int, int]]:
    if isinstance(m, (nn.GRUCell,)) or type(m).__name__ == "GRUCell":
        return [(0, 0)]
    return [(layer, d) for layer in range(m.num_layers) for d in range(2 if m.bidirectional else 1)]


def from_torch(module: nn.Module, cls: type | None = None, **kwargs: Any) -> nn.Module:
    """Build the grulab module equivalent to a ``torch.nn`` GRU, GRUCell, RNN or LSTM, exactly.

    ``kwargs`` go to the grulab constructor (``backend=``, ``check_finite=``, ...).
    """
    import grulab.layers as L

    kinds = {nn.GRU: L.GRU, nn.GRUCell: L.GRUCell, nn.RNN: L.RNN, nn.LSTM: L.LSTM}
    target = next((g for t, g in kinds.items() if type(module) is t), None)
    if target is None:
        raise TypeError(f"module must be a torch.nn.GRU, GRUCell, RNN or LSTM, got {type(module).__name__}")
    if cls is not None and cls is not target:
        raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls.__name__}, got {type(module).__name__}")
    ref = next(iter(module.parameters()))
    factory = {"device": ref.device, "dtype": ref.dtype}
    if isinstance(module, nn.GRUCell):
        out = L.GRUCell(module.input_size, module.hidden_size, module.bias, reset="after", **factory, **kwargs)
    else:
        if getattr(module, "proj_size", 0):
            raise ValueError("LSTM with proj_size > 0 has no grulab equivalent")
        args = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                    dropout=module.dropout, bidirectional=module.bidirectional)
        if isinstance(module, nn.RNN):
            args["nonlinearity"] = module.nonlinearity
        out = target(module.input_size, module.hidden_size, **args, **factory, **kwargs)
    convert = gru_from_torch_layout if target in (L.GRU, L.GRUCell) else (lambda p: p)
    with torch.no_grad():
        for layer, d in _directions(module):
            ours = out.direction_parameters(layer, d)
            for dst, name in zip(ours, _torch_names(target is L.GRUCell, layer, d), strict=True):
                if dst is not None:
                    dst.copy_(convert(getattr(module, name)))
    return out


def to_torch(module: nn.Module) -> nn.Module:
    """The ``torch.nn`` module equivalent to a grulab GRU (``reset="after"``), GRUCell, RNN or LSTM."""
    import grulab.layers as L

    if isinstance(module, (L.GRU, L.GRUCell)) and module.reset != "after":
        raise ValueError("only reset='after' GRUs have a torch.nn equivalent; "
                         f"this module has reset={module.reset!r}")
    factory = {"device": module.W_l0.device if hasattr(module, "W_l0") else module.W.device,
               "dtype": module.W_l0.dtype if hasattr(module, "W_l0") else module.W.dtype}
    if isinstance(module, L.GRUCell):
        out: nn.Module = nn.GRUCell(module.input_size, module.hidden_size, module.bias, **factory)
    elif isinstance(module, (L.GRU, L.RNN, L.LSTM)):
        args = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                    dropout=module.dropout, bidirectional=module.bidirectional)
        if isinstance(module, L.RNN):
            args["nonlinearity"] = module.nonlinearity
        out = _TORCH_TYPES[type(module).__name__](module.input_size, module.hidden_size, **args, **factory)
    else:
        raise TypeError(f"module must be a grulab GRU, GRUCell, RNN or LSTM, got {type(module).__name__}")
    convert = gru_to_torch_layout if isinstance(module, (L.GRU, L.GRUCell)) else (lambda p: p)
    with torch.no_grad():
        for layer, d in _directions(module):
            ours = module.direction_parameters(layer, d)
            for src, name in zip(ours, _torch_names(isinstance(module, L.GRUCell), layer, d), strict=True):
                if src is not None:
                    getattr(out, name).copy_(convert(src))
    return out
