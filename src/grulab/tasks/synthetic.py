"""Synthetic memory tasks. Each generator is a pure function of its arguments and a
``torch.Generator``, returns time-major tensors, and documents its target and baseline.

Targets that are class indices use ``IGNORE`` (-100, the default ``ignore_index`` of
``torch.nn.functional.cross_entropy``) at steps that carry no target.

=====================  ==========================================  ==============================================
generator              tests (``docs/claims.md``)                  baseline ("solved" needs a number)
=====================  ==========================================  ==============================================
``adding_problem``     gradient collapse (C2), saturation (L2)     MSE 1/6 of predicting the mean sum 1
``copy_task``          memory overwrite (C1), identity (C4)        cross-entropy ``10 ln 8 / (T + 20)``
``rare_event_task``    short-term bias (C3)                        balanced accuracy 1/2
``echo_recall_task``   memory entangled with output (L1)           accuracy ``1 / n_symbols`` for each output
``anbn_strings``       one memory stream: counting (L3)            none: acceptance of a^n b^n and near misses
``fast_slow_task``     one memory stream: two time scales (L3)     accuracy 1/2
=====================  ==========================================  ==============================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # target at steps without one (cross_entropy's default ignore_index)
ADDING_BASELINE_MSE = 1.0 / 6.0  # predicting the mean sum 1 has MSE Var(U1 + U2) = 2/12


def _check_sizes(name: str, **sizes: int) -> None:
    for arg, (value, low) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: {arg} must be an int >= {low}, got {value!r}")


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


# --- copy (Arjovsky, Shah & Bengio 2016) ------------------------------------------------------
COPY_BLANK = 0  # class 0 is the blank, 1..n_symbols the symbols, n_symbols + 1 the delimiter


def copy_task(
    batch: int,
    T: int,
    *,
    n_symbols: int = 8,
    length: int = 10,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The copy task in the form of Arjovsky, Shah & Bengio (2016).

    A sequence of ``T + 2 * length`` steps: ``length`` symbols drawn uniformly from
    ``1..n_symbols``, then ``T - 1`` blanks, one delimiter (class ``n_symbols + 1``), then
    ``length`` blanks during which the symbols must be reproduced in order. ``T`` is the delay
    between reading a symbol and writing it back.

    Returns:
        ``x (T + 2 length, batch, n_symbols + 2)`` one-hot inputs and
        ``y (T + 2 length, batch)`` int64 targets: blank (0) everywhere except the last
        ``length`` steps, which hold the symbols. A memoryless model that outputs blank and then
        a uniform guess scores :func:`copy_baseline` in cross-entropy per step.
    """
    _check_sizes("copy_task", batch=(batch, 1), T=(T, 1), n_symbols=(n_symbols, 2), length=(length, 1))
    symbols = torch.randint(1, n_symbols + 1, (length, batch), generator=generator)
    n_steps = T + 2 * length
    tokens = torch.full((n_steps, batch), COPY_BLANK, dtype=torch.int64)
    tokens[:length] = symbols
    tokens[length + T - 1] = n_symbols + 1  # the delimiter, after T - 1 blanks
    y = torch.full((n_steps, batch), COPY_BLANK, dtype=torch.int64)
    y[-length:] = symbols
    x = F.one_hot(tokens, n_symbols + 2).to(dtype)
    return x, y


def copy_baseline(T: int, n_symbols: int = 8, length: int = 10) -> float:
    """Cross-entropy per step (nats) of the memoryless strategy on :func:`copy_task`: certain
    blanks for ``T + length`` steps, then a uniform guess: ``length ln(n_symbols) / (T + 2 length)``."""
    return length * math.log(n_symbols) / (T + 2 * length)


# --- rare event (short-term bias) -------------------------------------------------------------
def rare_event_task(
    batch: int,
    T: int,
    *,
    rarity: float,
    n_distractors: int = 4,
    window: int = 5,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """A rare event early in a long sequence decides the label.

    Every step shows one of ``n_distractors`` symbols drawn uniformly (one-hot, channels
    ``1..n_distractors``), which carry no information. With probability ``rarity`` a sequence also
    holds an event (channel 0 set to 1) at a step drawn uniformly from the first ``window``
    steps; the label is whether the event occurred, read after step ``T``, so the event lies
    ``T - window`` to ``T`` steps before the decision.

    Returns:
        ``x (T, batch, 1 + n_distractors)`` and ``y (batch,)`` float labels in {0, 1}.
        Balanced accuracy (mean of the true-positive and true-negative rates) of any
        constant predictor is 1/2.
    """
    _check_sizes("rare_event_task", batch=(batch, 1), T=(T, 1), n_distractors=(n_distractors, 1),
                 window=(window, 1))
    if not 0.0 < rarity <= 1.0:
        raise ValueError(f"rare_event_task: rarity must be a probability in (0, 1], got {rarity!r}")
    if window > T:
        raise ValueError(f"rare_event_task: window must be <= T, got window={window}, T={T}")
    distractors = torch.randint(0, n_distractors, (T, batch), generator=generator)
    x = torch.zeros(T, batch, 1 + n_distractors, dtype=dtype)
    x[..., 1:] = F.one_hot(distractors, n_distractors).to(dtype)
    y = (torch.rand(batch, generator=generator) < rarity).to(dtype)
    when = torch.randint(0, window, (batch,), generator=generator)
    has = y.bool()
    x[when[has], torch.arange(batch)[has], 0] = 1.0
    return x, y


def balanced_accuracy(predicted: Tensor, y: Tensor) -> float:
    """Mean of the true-positive and true-negative rates of boolean ``predicted`` against 0/1
    labels ``y``; a class absent from ``y`` is left out of the mean."""
    y = y.bool()
    rates = [(predicted[y] == 1).float().mean().item() if y.any() else None,
             (predicted[~y] == 0).float().mean().item() if (~y).any() else None]
    present = [r for r in rates if r is not None]
    if not present:
        raise ValueError("balanced_accuracy needs at least one label")
    return sum(present) / len(present)


# --- echo while remembering (memory entangled with output) -----------------------------------
def echo_recall_task(
    batch: int,
    T: int,
    *,
    n_symbols: int = 8,
    echo_delay: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Emit a per-step output unrelated to a long-held memory.

    Steps ``0..T-1`` show random symbols (one-hot, channels ``0..n_symbols-1``); step ``T`` shows
    the query marker (channel ``n_symbols``). At every step ``t`` in ``echo_delay..T-1`` the model
    must echo the symbol it saw ``echo_delay`` steps earlier; at the query step it must recall the
    symbol of step 0. The echo forces the state to be rewritten every step while the first symbol
    must survive ``T`` steps in the same state.

    Returns:
        ``x (T + 1, batch, n_symbols + 1)``, ``echo (T + 1, batch)`` int64 targets (``IGNORE``
        where there is none, including the query step) and ``recall (batch,)`` int64. Chance is
        ``1 / n_symbols`` for both.
    """
    _check_sizes("echo_recall_task", batch=(batch, 1), T=(T, 2), n_symbols=(n_symbols, 2),
                 echo_delay=(echo_delay, 0))
    if echo_delay >= T:
        raise ValueError(f"echo_recall_task: echo_delay must be < T, got echo_delay={echo_delay}, T={T}")
    symbols = torch.randint(0, n_symbols, (T, batch), generator=generator)
    x = torch.zeros(T + 1, batch, n_symbols + 1, dtype=dtype)
    x[:T] = F.one_hot(symbols, n_symbols + 1).to(dtype)
    x[T, :, n_symbols] = 1.0
    echo = torch.full((T + 1, batch), IGNORE, dtype=torch.int64)
    echo[echo_delay:T] = symbols[: T - echo_delay]
    return x, echo, symbols[0].clone()


# --- counting: a^n b^n (Weiss, Goldberg & Yahav 2018) -----------------------------------------
ANBN_INPUTS = ("<s>", "a", "b")  # input alphabet: start marker, a, b
ANBN_OUTPUTS = ("a", "b", "</s>")  # next-symbol classes


def anbn_strings(
    n_a: Sequence[int] | Tensor, n_b: Sequence[int] | Tensor | None = None, *, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """Strings ``a^{n_a} b^{n_b}`` (``n_b = n_a`` by default) for next-symbol prediction.

    Each string is fed as ``<s> a ... a b ... b`` (one-hot over ``ANBN_INPUTS``); the target at
    each position is the next symbol (index into ``ANBN_OUTPUTS``), the last one ``</s>``.
    Sequences are padded to the longest; targets are ``IGNORE`` on padding.

    Returns:
        ``x (L, B, 3)``, ``y (L, B)`` int64 and ``lengths (B,)`` with ``L = max(n_a + n_b) + 1``.
    """
    n_a = torch.as_tensor(n_a, dtype=torch.int64).reshape(-1)
    n_b = n_a.clone() if n_b is None else torch.as_tensor(n_b, dtype=torch.int64).reshape(-1)
    if n_a.shape != n_b.shape or n_a.numel() == 0:
        raise ValueError(f"anbn_strings: n_a and n_b must be non-empty and of equal length, "
                         f"got {tuple(n_a.shape)} and {tuple(n_b.shape)}")
    if bool((n_a < 0).any()) or bool((n_b < 0).any()):
        raise ValueError("anbn_strings: counts must be >= 0")
    lengths = n_a + n_b + 1
    L = int(lengths.max())
    pos = torch.arange(L)[:, None]  # (L, 1)
    # input token at position p: <s> at 0, a for 1..n_a, b for n_a+1..n_a+n_b
    tokens = torch.where(pos == 0, 0, torch.where(pos <= n_a[None], 1, 2))  # (L, B)
    # target at p: the token at p + 1 (a -> 0, b -> 1), </s> (2) at the last position
    nxt = pos + 1
    y = torch.where(nxt <= n_a[None], 0, torch.where(nxt <= (n_a + n_b)[None], 1, 2))
    valid = pos < lengths[None]
    y = torch.where(valid, y, torch.full_like(y, IGNORE))
    x = F.one_hot(tokens, 3).to(dtype) * valid[..., None].to(dtype)
    return x, y, lengths


# --- two time scales in one state ------------------------------------------------------------
FAST_SLOW_MODES = ("both", "fast", "slow")


def fast_slow_task(
    batch: int,
    T: int,
    *,
    lag: int = 2,
    mode: str = "both",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """A fast and a slow dependency that one output needs at once.

    Every step shows a random bit ``b_t`` (channel 0, as ±1); step 0 also sets channel 1 (a key
    flag), so ``b_0`` is the *key*. The target at step ``t >= lag`` is, by ``mode``:
    ``"both"``: ``b_{t-lag} XOR b_0`` (neither dependency alone beats chance),
    ``"fast"``: ``b_{t-lag}``, ``"slow"``: ``b_0``; ``IGNORE`` before ``lag``.

    Returns:
        ``x (T, batch, 2)`` and ``y (T, batch)`` int64 in {0, 1} (or ``IGNORE``). Chance is 1/2.
    """
    _check_sizes("fast_slow_task", batch=(batch, 1), T=(T, 2), lag=(lag, 1))
    if mode not in FAST_SLOW_MODES:
        raise ValueError(f"fast_slow_task: mode must be one of {FAST_SLOW_MODES!r}, got {mode!r}")
    if lag >= T:
        raise ValueError(f"fast_slow_task: lag must be < T, got lag={lag}, T={T}")
    bits = torch.randint(0, 2, (T, batch), generator=generator)
    x = torch.zeros(T, batch, 2, dtype=dtype)
    x[..., 0] = 2.0 * bits.to(dtype) - 1.0
    x[0, :, 1] = 1.0
    y = torch.full((T, batch), IGNORE, dtype=torch.int64)
    fast, slow = bits[: T - lag], bits[0][None].expand(T - lag, batch)
    y[lag:] = {"both": fast ^ slow, "fast": fast, "slow": slow}[mode]
    return x, y
