"""Bad input gets a clear error naming the argument and the expected form."""

import math

import pytest
import torch

import grulab


@pytest.fixture
def gru():
    return grulab.GRU(3, 4, num_layers=2, check_finite=True)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m: m(torch.randn(5, 2, 3, 1)), ValueError, r"input must be 3-D \(time, batch, input_size\)"),
        (lambda m: m(torch.randn(5)), ValueError, "input must be 3-D"),
        (lambda m: m(torch.randn(5, 2, 7)), ValueError, "input_size=3"),
        (lambda m: m(torch.ones(5, 2, 3, dtype=torch.int64)), TypeError, "floating-point"),
        (lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64)), TypeError, "dtype torch.float64"),
        (lambda m: m([[1.0, 2.0, 3.0]]), TypeError, "Tensor or PackedSequence"),
        (lambda m: m(torch.randn(0, 2, 3)), ValueError, "at least one time step"),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 4)), ValueError, r"hx must have shape.*\(2, 2, 4\)"),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 3, 4)), ValueError, "hx must have shape"),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4).double()), TypeError, "hx has dtype"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([6, 1])), ValueError, r"lengths must lie in \[0, T\]"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([-1, 1])), ValueError, "lengths must lie"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([1, 2, 3])), ValueError, r"shape \(batch,\) = \(2,\)"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([[1, 2]])), ValueError, "lengths must have shape"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([1.5, 2.0])), TypeError, "lengths must hold integers"),
        (lambda m: m(torch.full((5, 2, 3), math.nan)), ValueError, "input contains NaN or Inf"),
        (lambda m: m(torch.randn(5, 2, 3), torch.full((2, 2, 4), math.inf)), ValueError, "hx contains NaN"),
    ],
)
def test_layer_errors(gru, call, exc, match):
    with pytest.raises(exc, match=match):
        call(gru)


def test_unbatched_hx_shape_is_checked(gru):
    with pytest.raises(ValueError, match=r"\(num_layers \* num_directions, hidden_size\)"):
        gru(torch.randn(5, 3), torch.randn(2, 1, 4))


def test_packed_input_with_lengths_is_rejected(gru):
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="lengths must be None"):
        gru(packed, lengths=torch.tensor([5, 3]))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(reset="sideways"), ValueError, "reset must be one of"),
        (dict(hidden_size=0), ValueError, "hidden_size must be a positive int"),
        (dict(num_layers=0), ValueError, "num_layers must be a positive int"),
        (dict(dropout=1.0), ValueError, r"dropout must be a float in \[0, 1\)"),
        (dict(bias="yes"), TypeError, "bias must be a bool"),
        (dict(init="xavier"), ValueError, "init must be one of"),
        (dict(init="chrono"), ValueError, "needs chrono_horizon"),
        (dict(init="chrono", chrono_horizon=100, bias=False), ValueError, "needs bias=True"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
        (dict(dtype=torch.int32), TypeError, "dtype must be a floating-point dtype"),
    ],
)
def test_config_errors(kwargs, exc, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        grulab.GRU(**args)


def test_rnn_has_no_chrono_and_cell_errors():
    with pytest.raises(ValueError, match="no gates"):
        grulab.RNN(3, 4, init="chrono", chrono_horizon=10)
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        grulab.RNN(3, 4, nonlinearity="sigmoid")
    lstm = grulab.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
        lstm(torch.randn(2, 1, 3), torch.zeros(1, 1, 4))
    cell = grulab.GRUCell(3, 4, check_finite=True)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 4\)"):
        cell(torch.randn(2, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="x contains NaN"):
        cell(torch.full((2, 3), math.nan))


def test_interop_type_errors():
    with pytest.raises(TypeError, match="torch.nn.GRU"):
        grulab.GRU.from_torch(torch.nn.LSTM(3, 4))
    with pytest.raises(TypeError, match="must be a torch.nn.GRU, GRUCell, RNN or LSTM"):
        grulab.GRU.from_torch(torch.nn.Linear(3, 4))
