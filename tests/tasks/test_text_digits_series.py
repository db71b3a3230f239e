"""The offline data sets: pydoc_data text, scikit-learn digits, statsmodels series. Each loads
without a network, has its fixed split, and its metric agrees with a baseline scored by hand."""

import math

import pytest
import torch
from torch import nn

from grulab.tasks.digits import SPLIT_SIZES, DigitsTask, load_digits_split
from grulab.tasks.registry import DATA, make_task
from grulab.tasks.text import TextTask, pydoc_text, split_text
from grulab.tasks.timeseries import ForecastTask, load_series, split_bounds
from tests.tasks.oracles import ConstantLogits

# --- text -------------------------------------------------------------------------------------


def test_pydoc_text_loads_offline_and_splits_90_5_5():
    text = pydoc_text()
    assert 300_000 < len(text) < 700_000 and "assert" in text
    parts = split_text(text)
    assert "".join(parts.values()) == text
    assert abs(len(parts["train"]) / len(text) - 0.9) < 1e-4 and abs(len(parts["test"]) / len(text) - 0.05) < 1e-4


def test_text_batches_and_unigram_oracle():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    task = TextTask(text, seq_len=10, eval_streams=3)
    b = task.batches(4, seed=0)(2)
    assert b.x.shape == (10, 4, task.input_size) and b.y.shape == (10, 4)
    assert torch.equal(b.x[1:].argmax(-1), b.y[:-1])  # the next window position is the target
    counts = torch.bincount(task.splits["train"], minlength=len(task.vocab)).double() + 1
    logp = (counts / counts.sum()).log()
    base = task.baselines()["unigram"]
    model = ConstantLogits(logp)
    for split in ("valid", "test"):
        got = task.evaluate(model, split)[f"{split}_bpc"]
        ids = task.splits[split]
        n = (len(ids) - 1) // 3
        by_hand = -logp[ids[1: 1 + 3 * n]].mean() / math.log(2)
        assert got == pytest.approx(float(by_hand), rel=1e-6) and got == pytest.approx(base[f"{split}_bpc"], rel=1e-6)


def test_text_stream_evaluation_carries_state():
    """A model that sees the previous character predicts it perfectly only if state is carried:
    with eval chunks of 1 the score must equal that of one long chunk."""
    text = "abcabcabcabc" * 30

    class Previous(nn.Module):  # predicts "the character after the one just read" using its input
        def __init__(self, table):
            super().__init__()
            self.table = nn.Parameter(table)

        def forward_with_state(self, x, hx=None):
            return x @ self.table, hx

    task_long = TextTask(text, seq_len=50, eval_streams=2)
    task_short = TextTask(text, seq_len=1, eval_streams=2)
    V = len(task_long.vocab)
    table = torch.full((V, V), -5.0)
    for a, b in ("ab", "bc", "ca"):
        table[task_long.index[a], task_long.index[b]] = 5.0
    model = Previous(table)
    long_ = task_long.evaluate(model, "test")["test_bpc"]
    assert long_ == pytest.approx(task_short.evaluate(model, "test")["test_bpc"], rel=1e-9)
    assert long_ < 0.01


# --- digits -----------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_digits_split(), load_digits_split()
    assert [a[s][1].shape[0] for s in ("train", "valid", "test")] == list(SPLIT_SIZES)
    for s in a:
        assert torch.equal(a[s][0], b[s][0]) and torch.equal(a[s][1], b[s][1])
    flat = {s: {tuple(x.flatten().tolist()) for x in a[s][0]} for s in a}
    assert 0.0 <= float(a["train"][0].min()) and float(a["train"][0].max()) <= 1.0
    assert len(flat["test"] & flat["train"]) < 5  # (a few duplicate images exist in the data itself)


@pytest.mark.parametrize("mode, T, I", [("pixel", 64, 1), ("row", 8, 8)])
def test_digits_sequences_and_prior_oracle(mode, T, I):
    task = DigitsTask(mode)
    x, y = task.data["test"]
    assert x.shape == (T, 360, I)
    images = load_digits_split()["test"][0]
    assert torch.equal(x[:, 5].reshape(8, 8), images[5])  # row-major reading
    b = task.batches(16, seed=0)(0)
    assert b.x.shape == (T, 16, I) and b.scale == pytest.approx(1 / 16)
    counts = torch.bincount(task.data["train"][1], minlength=10).double()
    model = ConstantLogits((counts / counts.sum()).log(), readout="last")
    got = task.evaluate(model, "test")
    base = task.baselines()
    assert got["test_nll"] == pytest.approx(base["class prior"]["test_nll"], rel=1e-6)
    assert got["test_accuracy"] == pytest.approx(base["majority class"]["test_accuracy"])


# --- time series ------------------------------------------------------------------------------


@pytest.mark.parametrize("series, n, season", [("co2", 526, 12), ("sunspots", 309, 11)])
def test_series_load_offline(series, n, season):
    raw = load_series(series)
    assert len(raw) == n and not (raw != raw).any()
    task = ForecastTask(series)
    assert task.season == season and task.horizon == season
    bounds = split_bounds(n)
    assert bounds["train"][0] == 0 and bounds["test"][1] == n and bounds["train"][1] == int(0.7 * n)


def test_last_value_oracle_scores_the_naive_baseline():
    task = ForecastTask("sunspots", horizon=3, window=20)

    class LastValue(nn.Module):
        def forward(self, x):
            return x.expand(-1, -1, 3)  # the last value read, for every horizon

    model = LastValue()
    model.register_parameter("unused", nn.Parameter(torch.zeros(1)))
    base = task.baselines()["last value"]
    for split in ("valid", "test"):
        got = task.evaluate(model, split)
        assert got[f"{split}_mse"] == pytest.approx(base[f"{split}_mse"], rel=1e-5)
    # the seasonal baseline by hand at one origin
    t, h = int(task.origins("test")[0]), 2
    assert float(task.raw[t + h - 11]) == float(task.raw[t + h - task.season * math.ceil(h / task.season)])


def test_forecast_batches_targets():
    task = ForecastTask("co2", horizon=4, window=10)
    b = task.batches(3, seed=1)(0)
    assert b.x.shape == (10, 3, 1) and b.y.shape == (10, 3, 4)
    # target row t holds the next 4 inputs
    assert torch.equal(b.y[0, :, 0], b.x[1, :, 0]) and torch.equal(b.y[5, :, 3], b.x[9, :, 0])


# --- the registry -----------------------------------------------------------------------------


def test_registry_builds_offline_tasks_and_rejects_bad_options():
    assert {"jsb", "chorales21", "text", "digits-pixel", "co2", "sunspots"} <= set(DATA)
    assert make_task("digits-row").input_size == 8
    with pytest.raises(ValueError, match="data must be one of"):
        make_task("mnist")
    with pytest.raises(ValueError, match="horizon applies"):
        make_task("text", horizon=3)
    with pytest.raises(ValueError, match="seq_len does not apply"):
        make_task("digits-row", seq_len=5)
    with pytest.raises(ValueError, match="data_path applies"):
        make_task("co2", data_path="/tmp")
