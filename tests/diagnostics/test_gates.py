"""Traces, saturation and memory horizons against hand-computed cases."""

import math

import pytest
import torch

from grulab import GRU, LSTM, RNN, GRUCell
from grulab.diagnostics import memory_horizon, saturation, trace
from grulab.models import SequenceModel

D = torch.float64


@pytest.mark.parametrize("cell", ["gru", "gru_before", "rnn", "lstm"])
def test_trace_top_layer_is_the_model_output(cell):
    torch.manual_seed(0)
    m = SequenceModel(cell, 3, 5, 2, num_layers=2, bidirectional=True, readout="all").double()
    x = torch.randn(9, 4, 3, dtype=D)
    lengths = torch.tensor([9, 4, 1, 7])
    tr = trace(m, x, lengths)
    y, _ = m.rnn(x, lengths=lengths)
    mask = tr.layers[0].mask[..., None]
    top = torch.cat([lt["h"] for lt in tr.top], dim=-1) * mask
    torch.testing.assert_close(top, y, atol=1e-12, rtol=0)
    assert [(lt.layer, lt.direction) for lt in tr.layers] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_trace_batch_first_and_cell():
    gru = GRU(2, 3, batch_first=True).double()
    x = torch.randn(4, 6, 2, dtype=D)  # (B, T, I)
    tr = trace(gru, x)
    torch.testing.assert_close(tr.layer(0)["h"].transpose(0, 1), gru(x)[0], atol=1e-12, rtol=0)
    cell = GRUCell(2, 3).double()
    tr = trace(cell, x[0])  # unbatched (T, I) through the one-step module
    h = torch.zeros(3, dtype=D)
    for t in range(6):
        h = cell(x[0, t], h)
    torch.testing.assert_close(tr.layer(0)["h"][-1, 0], h, atol=1e-12, rtol=0)
    with pytest.raises(TypeError, match="grulab GRU"):
        trace(torch.nn.GRU(2, 3), x)


def constant_gate_gru(z, H=4, T=50):
    """A GRU with W = U = 0 and biases such that z_t = z at every step (r = 1/2)."""
    gru = GRU(1, H).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.b_W_l0[:H] = math.log(z / (1 - z))
    return gru, torch.randn(T, 3, 1, dtype=D)


def test_half_life_of_a_constant_gate():
    gru, x = constant_gate_gru(0.1)
    h = memory_horizon(trace(gru, x))[0]
    expect = math.log(2) / -math.log(0.9)  # (1 - z)^k = 1/2
    print("half-life", h.half_life, "expected", expect)
    torch.testing.assert_close(h.half_life, torch.full((4,), expect, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(h.retention, torch.full((4,), 0.9, dtype=D), atol=1e-14, rtol=0)


def test_half_life_closed_gate_is_infinite_and_lstm_uses_f():
    gru, x = constant_gate_gru(0.5)
    with torch.no_grad():
        gru.b_W_l0[:4] = -1e4
    assert bool(torch.isinf(memory_horizon(trace(gru, x))[0].half_life).all())
    lstm = LSTM(1, 2).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.b_W_l0[2:4] = math.log(0.75 / 0.25)  # f = 3/4
    h = memory_horizon(trace(lstm, x))[0]
    torch.testing.assert_close(h.half_life, torch.full((2,), math.log(2) / -math.log(0.75), dtype=D))


def test_rnn_horizon_is_the_jacobian_diagonal():
    rnn = RNN(1, 2).double()
    with torch.no_grad():
        for p in rnn.parameters():
            p.zero_()
        rnn.U_l0.copy_(torch.tensor([[0.5, 0.3], [0.0, -0.25]]))
    h = memory_horizon(trace(rnn, torch.zeros(5, 1, 1, dtype=D)))[0]  # h stays 0: tanh' = 1
    torch.testing.assert_close(h.retention, torch.tensor([0.5, 0.25], dtype=D))
    torch.testing.assert_close(h.half_life, torch.tensor([1.0, 0.5], dtype=D))


@pytest.mark.parametrize("bias,saturated", [(5.0, True), (-5.0, True), (4.0, False), (0.0, False)])
def test_saturation_threshold(bias, saturated):
    # σ'(±5) = 0.0066 < 0.01, σ'(±4) = 0.0177 > 0.01
    gru, x = constant_gate_gru(0.5, H=3, T=10)
    with torch.no_grad():
        gru.b_W_l0[:3] = bias
    sats = {s.gate: s for s in saturation(trace(gru, x))}
    assert sats["z"].share == float(saturated)
    assert sats["r"].share == 0.0  # r = 1/2, σ' = 1/4
    assert torch.equal(sats["z"].per_step, torch.full((10,), float(saturated), dtype=D))
    assert torch.equal(sats["z"].per_unit, torch.full((3,), float(saturated), dtype=D))


def test_saturation_per_unit_and_skipped_steps():
    gru, x = constant_gate_gru(0.5, H=2, T=6)
    with torch.no_grad():
        gru.b_W_l0[0] = 8.0  # unit 0 saturated, unit 1 not
    tr = trace(gru, x, lengths=torch.tensor([6, 2, 3]))
    z = {s.gate: s for s in saturation(tr)}["z"]
    assert z.per_unit.tolist() == [1.0, 0.0] and z.share == 0.5
    assert z.per_step.tolist() == [0.5] * 6  # skipped steps (zero gates) are not counted
    with pytest.raises(ValueError, match="threshold"):
        saturation(tr, threshold=0.3)
