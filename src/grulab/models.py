"""Sequence models built from the recurrent layers: a stack plus a linear readout.

This is the model the lab's experiments and ``grulab train`` use, so RNN, GRU and LSTM can be
compared with everything else held equal, including the parameter count
(:func:`hidden_for_budget`). Cells are looked up by name in ``CELLS``; a new variant registers a
factory there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from grulab.io import register
from grulab.layers import GRU, LSTM, RNN
from grulab.variants.mingru import MinGRU
from grulab.variants.regularized import LayerNormGRU

READOUTS = ("last", "all")


def _gru(reset: str) -> Callable[..., nn.Module]:
    return lambda I, H, **kw: GRU(I, H, reset=reset, **kw)


CELLS: dict[str, Callable[..., nn.Module]] = {
    "rnn": lambda I, H, **kw: RNN(I, H, **kw),
    "gru": _gru("after"),
    "gru_before": _gru("before"),
    "lstm": lambda I, H, **kw: LSTM(I, H, **kw),
    "mingru": lambda I, H, **kw: MinGRU(I, H, **kw),
    "lngru": lambda I, H, **kw: LayerNormGRU(I, H, **kw),
}


def check_cell(cell: str) -> str:
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)!r}, got {cell!r}")
    return cell


@register
class SequenceModel(nn.Module):
    """A recurrent stack with a linear readout.

    Args:
        cell: a name in ``CELLS`` (``"rnn"``, ``"gru"``, ``"gru_before"``, ``"lstm"``, ...).
        input_size, hidden_size, output_size: feature sizes.
        num_layers, dropout, bidirectional: passed to the recurrent layer.
        readout: ``"last"`` reads the final state of the last layer (``(B, O)``);
            ``"all"`` reads every step's output (``(T, B, O)``).
        init, chrono_horizon, backend: passed to the recurrent layer (see :class:`grulab.GRU`).

    Input is time-major ``(T, B, I)``; ``lengths`` marks padding as in :class:`grulab.GRU`.

    Example:
        >>> m = SequenceModel("gru", 2, 16, 1)
        >>> m(torch.randn(50, 8, 2)).shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_layers: int = 1,
        readout: str = "last",
        dropout: float = 0.0,
        bidirectional: bool = False,
        init: str = "pytorch",
        chrono_horizon: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.cell = check_cell(cell)
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS!r}, got {readout!r}")
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
            raise ValueError(f"output_size must be a positive int, got {output_size!r}")
        self._config = dict(cell=cell, input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                            num_layers=num_layers, readout=readout, dropout=dropout, bidirectional=bidirectional,
                            init=init, chrono_horizon=chrono_horizon, backend=backend)
        kw: dict[str, Any] = dict(num_layers=num_layers, dropout=dropout, bidirectional=bidirectional, init=init,
                                  chrono_horizon=chrono_horizon)
        if backend != "auto":
            kw["backend"] = backend
        self.rnn = CELLS[cell](input_size, hidden_size, **kw)
        self.readout = readout
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, x: Tensor, lengths: Tensor | None = None, hx: Any = None) -> Tensor:
        out, h_n = self.rnn(x, hx, lengths=lengths)
        if self.readout == "all":
            return self.head(out)
        h = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h_n, c_n)
        last = h[-2:] if self.rnn.bidirectional else h[-1:]  # final layer, both directions
        return self.head(torch.cat(list(last), dim=-1))

    def forward_with_state(self, x: Tensor, hx: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """Per-step readout and the final state, for truncated BPTT and generation (readout="all")."""
        out, h_n = self.rnn(x, hx, lengths=lengths)
        return self.head(out), h_n


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hidden_for_budget(cell: str, input_size: int, output_size: int, params: int, num_layers: int = 1,
                      bidirectional: bool = False) -> int:
    """The hidden size whose :class:`SequenceModel` parameter count is closest to ``params``.

    Used to compare cells at a matched parameter count (Chung et al. 2014 matched ~20k).
    """
    check_cell(cell)
    if params < 1:
        raise ValueError(f"params must be positive, got {params}")

    def count(H: int) -> int:
        with torch.device("meta"):
            return count_parameters(SequenceModel(cell, input_size, H, output_size, num_layers,
                                                  bidirectional=bidirectional))

    lo, hi = 1, 1
    while count(hi) < params:
        hi *= 2
    while lo < hi:  # smallest H with count(H) >= params
        mid = (lo + hi) // 2
        if count(mid) < params:
            lo = mid + 1
        else:
            hi = mid
    return min((h for h in (lo - 1, lo) if h >= 1), key=lambda h: abs(count(h) - params))
