"""Initialisation schemes: PyTorch's range, orthogonal recurrent blocks, chrono biases."""

import math

import pytest
import torch

import grulab


def test_pytorch_default_range():
    gru = grulab.GRU(5, 16)
    k = 1 / math.sqrt(16)
    for p in gru.parameters():
        assert p.abs().max() <= k


@pytest.mark.parametrize("cls, gates", [(grulab.GRU, 3), (grulab.LSTM, 4), (grulab.RNN, 1)])
def test_orthogonal_recurrent_blocks(cls, gates):
    m = cls(5, 8, init="orthogonal", bidirectional=True)
    for d in (0, 1):
        W, U, b_W, b_U = m.direction_parameters(0, d)
        for g in range(gates):
            block = U[g * 8:(g + 1) * 8]
            assert torch.allclose(block @ block.T, torch.eye(8), atol=1e-5)
        assert torch.count_nonzero(b_W) == 0 and torch.count_nonzero(b_U) == 0


def test_chrono_gru_write_gate_bias():
    T_max = 200
    gru = grulab.GRU(5, 64, init="chrono", chrono_horizon=T_max, num_layers=2)
    for layer in range(2):
        _, _, b_W, b_U = gru.direction_parameters(layer)
        b_z = b_W[:64] + b_U[:64]
        # z = sigmoid(-log u) = 1/(1+u) with u in [1, T_max - 1]
        z = torch.sigmoid(b_z)
        assert (z <= 0.5 + 1e-6).all() and (z >= 1 / T_max - 1e-6).all()
        assert torch.count_nonzero(b_W[64:]) == 0
    # an all-zero input keeps a written value for ~(1+u) steps: the horizon spans [2, T_max]
    horizons = 1 / torch.sigmoid(gru.b_W_l0[:64])
    assert horizons.max() > T_max / 2


def test_chrono_lstm_forget_and_input_biases():
    lstm = grulab.LSTM(5, 32, init="chrono", chrono_horizon=50)
    b = lstm.b_W_l0
    b_i, b_f = b[:32], b[32:64]
    assert torch.allclose(b_i, -b_f)
    assert (b_f >= 0).all() and (b_f <= math.log(49) + 1e-6).all()
