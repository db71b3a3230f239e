"""Synthetic task generators: every target checked against the inputs it must be computed from."""

import math

import pytest
import torch

from grulab.tasks.synthetic import (
    ADDING_BASELINE_MSE,
    IGNORE,
    adding_problem,
    anbn_strings,
    balanced_accuracy,
    copy_baseline,
    copy_task,
    echo_recall_task,
    fast_slow_task,
    rare_event_task,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_adding_targets_and_baseline():
    x, y = adding_problem(4000, 30, generator=gen())
    assert x.shape == (30, 4000, 2) and y.shape == (4000,)
    mask = x[..., 1]
    assert torch.equal(mask.sum(0), torch.full((4000,), 2.0))
    assert torch.equal(mask[:15].sum(0), torch.ones(4000))  # one mark in each half
    assert torch.allclose((x[..., 0] * mask).sum(0), y)
    mse = ((y - 1.0) ** 2).mean().item()
    print("adding: MSE of predicting 1:", mse)
    assert abs(mse - ADDING_BASELINE_MSE) < 0.01


@pytest.mark.parametrize("T", [1, 5, 50])
def test_copy_layout(T):
    x, y = copy_task(16, T, generator=gen(T))
    tokens = x.argmax(-1)
    assert x.shape == (T + 20, 16, 10) and y.shape == (T + 20, 16)
    assert torch.equal(x.sum(-1), torch.ones(T + 20, 16))  # one-hot
    symbols = tokens[:10]
    assert bool(((symbols >= 1) & (symbols <= 8)).all())
    assert bool((tokens[10:T + 9] == 0).all())  # T - 1 blanks
    assert bool((tokens[T + 9] == 9).all())  # delimiter
    assert bool((tokens[T + 10:] == 0).all())  # 10 blanks while writing back
    assert bool((y[:T + 10] == 0).all())
    assert torch.equal(y[T + 10:], symbols)  # the symbols come back T + 10 steps after they were read


def test_copy_baseline_is_the_memoryless_cross_entropy():
    T = 40
    _, y = copy_task(256, T, generator=gen())
    probs = torch.zeros(T + 20, 10)
    probs[: T + 10, 0] = 1.0  # blank with certainty while nothing is due
    probs[T + 10:, 1:9] = 1.0 / 8  # then a uniform guess over the 8 symbols
    ce = -torch.log(probs[torch.arange(T + 20)[:, None], y]).mean().item()
    assert math.isclose(ce, copy_baseline(T), rel_tol=1e-6)
    assert math.isclose(copy_baseline(T), 10 * math.log(8) / (T + 20))


def test_rare_event_labels():
    T, B = 40, 5000
    x, y = rare_event_task(B, T, rarity=0.1, window=5, generator=gen())
    assert x.shape == (T, B, 5) and y.shape == (B,)
    event = x[..., 0]
    assert torch.equal(event.sum(0), y)  # at most one event, exactly when the label is 1
    assert bool((event[5:] == 0).all())  # only inside the window
    assert torch.equal(x[..., 1:].sum(-1), torch.ones(T, B))  # one distractor per step
    print("rare event: share of positives", y.mean().item())
    assert abs(y.mean().item() - 0.1) < 0.015


def test_balanced_accuracy_by_hand():
    y = torch.tensor([1.0, 0, 0, 0])
    assert balanced_accuracy(torch.tensor([0, 0, 0, 0]), y) == 0.5  # a constant predictor
    assert balanced_accuracy(torch.tensor([1, 0, 0, 1]), y) == pytest.approx((1.0 + 2 / 3) / 2)
    assert balanced_accuracy(torch.tensor([1, 1]), torch.tensor([1.0, 1.0])) == 1.0


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_echo_recall_targets(delay):
    T = 12
    x, echo, recall = echo_recall_task(32, T, n_symbols=5, echo_delay=delay, generator=gen(delay))
    assert x.shape == (T + 1, 32, 6)
    tokens = x[:T].argmax(-1)
    assert bool((x[:T, :, 5] == 0).all()) and bool((x[T, :, 5] == 1).all())  # the query marker
    assert torch.equal(recall, tokens[0])
    assert bool((echo[:delay] == IGNORE).all()) and bool((echo[T] == IGNORE).all())
    assert torch.equal(echo[delay:T], tokens[: T - delay])


def test_anbn_by_hand():
    x, y, lengths = anbn_strings([2, 1], [2, 2])
    # a a b b: <s> a a b b -> targets a a b b </s>;  a b b: <s> a b b -> a b b </s>
    assert lengths.tolist() == [5, 4]
    assert x.argmax(-1)[:, 0].tolist() == [0, 1, 1, 2, 2]
    assert y[:, 0].tolist() == [0, 0, 1, 1, 2]
    assert x.argmax(-1)[:4, 1].tolist() == [0, 1, 2, 2]
    assert y[:, 1].tolist() == [0, 1, 1, 2, IGNORE]
    assert bool((x[4, 1] == 0).all())  # padding is zero input
    with pytest.raises(ValueError, match="counts must be >= 0"):
        anbn_strings([-1])


@pytest.mark.parametrize("mode", ["both", "fast", "slow"])
def test_fast_slow_targets(mode):
    T, lag = 20, 3
    x, y = fast_slow_task(64, T, lag=lag, mode=mode, generator=gen())
    bits = (x[..., 0] > 0).long()
    assert bool((x[0, :, 1] == 1).all()) and bool((x[1:, :, 1] == 0).all())
    assert bool((y[:lag] == IGNORE).all())
    expect = {"both": bits[:-lag] ^ bits[0], "fast": bits[:-lag], "slow": bits[0].expand(T - lag, 64)}[mode]
    assert torch.equal(y[lag:], expect)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="T must be an int >= 1"):
        copy_task(2, 0)
    with pytest.raises(ValueError, match="rarity must be a probability"):
        rare_event_task(2, 10, rarity=0.0)
    with pytest.raises(ValueError, match="window must be <= T"):
        rare_event_task(2, 3, rarity=0.5, window=5)
    with pytest.raises(ValueError, match="echo_delay must be < T"):
        echo_recall_task(2, 4, echo_delay=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        fast_slow_task(2, 10, mode="medium")
