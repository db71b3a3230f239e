"""Synthetic memory tasks. Each generator is a pure function of its arguments and a
``torch.Generator``, returns time-major tensors, and documents its target and baseline."""

from __future__ import annotations

import torch
from torch import Tensor

ADDING_BASELINE_MSE = 1.0 / 6.0  # predicting the mean sum 1 has MSE Var(U1 + U2) = 2/12


def adding_problem(
    batch: int, T: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015 form).

    Input ``(T, batch, 2)``: channel 0 holds values from U[0, 1], channel 1 a mask with exactly
    two ones, one in each half of the sequence. Target ``(batch,)``: the sum of the two marked
    values. Predicting the constant 1 scores MSE 1/6 (``ADDING_BASELINE_MSE``).
    """
    if batch < 1 or T < 2:
        raise ValueError(f"adding_problem needs batch >= 1 and T >= 2, got batch={batch}, T={T}")
    values = torch.rand(T, batch, generator=generator, dtype=dtype)
    half = T // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, T, (batch,), generator=generator)
    mask = torch.zeros(T, batch, dtype=dtype)
    cols = torch.arange(batch)
    mask[first, cols] = 1.0
    mask[second, cols] = 1.0
    x = torch.stack([values, mask], dim=-1)  # (T, batch, 2)
    y = values[first, cols] + values[second, cols]  # (batch,)
    return x, y
