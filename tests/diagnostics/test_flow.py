"""Gradient flow and step-Jacobian spans: hand-derived values against autograd and hand-computed cases."""

import math

import pytest
import torch

from grulab import GRU, LSTM, RNN
from grulab.cells.gru import gru_cell
from grulab.cells.lstm import lstm_cell
from grulab.cells.rnn import rnn_cell
from grulab.diagnostics import approximation_gap, gradient_flow, trace
from grulab.models import SequenceModel
from tests.tolerances import GRAD_MATCH, assert_close

D = torch.float64
TOL = GRAD_MATCH[D]


def cell_step(module, x_t, state, layer, d):
    """One step of layer/direction with autograd: the oracle (the cells' forward, not their backward)."""
    W, U, b_W, b_U = module.direction_parameters(layer, d)
    if module.family == "gru":
        return (gru_cell(x_t, state[0], W, U, b_W, b_U, module.reset).h,)
    if module.family == "rnn":
        return (rnn_cell(x_t, state[0], W, U, b_W, b_U, module.nonlinearity).h,)
    s = lstm_cell(x_t, state[0], state[1], W, U, b_W, b_U)
    return (s.h, s.c)


def autograd_states(model, x):
    """Run the stack step by step with autograd; return the model's output and every state tensor."""
    module = model.rnn
    B, H = x.shape[1], module.hidden_size
    D_ = 2 if module.bidirectional else 1
    parts = 2 if module.family == "lstm" else 1
    states, finals = {}, []
    inp = x
    for k in range(module.num_layers):
        outs = []
        for d in range(D_):
            state = tuple(torch.zeros(B, H, dtype=D) for _ in range(parts))
            seq = [None] * x.shape[0]
            order = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
            for t in order:
                state = cell_step(module, inp[t], state, k, d)
                for s in state:
                    s.retain_grad()
                states[(k, d, t)] = state
                seq[t] = state[0]
            outs.append(torch.stack(seq))
            if k == module.num_layers - 1:
                finals.append(state[0])
        inp = torch.cat(outs, dim=-1)
    out = model.head(inp) if model.readout == "all" else model.head(torch.cat(finals, dim=-1))
    return out, states


@pytest.mark.parametrize("cell", ["gru", "gru_before", "rnn", "lstm"])
@pytest.mark.parametrize("readout", ["last", "all"])
def test_dL_dh_matches_autograd(cell, readout):
    torch.manual_seed(1)
    model = SequenceModel(cell, 3, 4, 2, num_layers=2, bidirectional=True, readout=readout).double()
    x = torch.randn(6, 3, 3, dtype=D)
    target = torch.randn(6, 3, 2, dtype=D) if readout == "all" else torch.randn(3, 2, dtype=D)
    loss = lambda out: ((out - target) ** 2).sum()
    out, states = autograd_states(model, x)
    assert_close("oracle forward = model forward", out, model(x), TOL)
    loss(out).backward()
    flows = gradient_flow(model, x, loss)
    assert len(flows) == 4
    for fl in flows:
        for t in range(6):
            st = states[(fl.layer, fl.direction, t)]
            expect = torch.cat([s.grad for s in st], dim=-1)
            assert_close(f"{cell} l{fl.layer} d{fl.direction} t{t} dL/dstate", fl.dL_dstate[t], expect, TOL,
                         relative=True)


@pytest.mark.parametrize("cell", ["gru", "rnn", "lstm"])
def test_span_norm_matches_autograd_jacobian(cell):
    torch.manual_seed(2)
    module = {"gru": GRU, "rnn": RNN, "lstm": LSTM}[cell](2, 3).double()
    x = torch.randn(7, 2, 2, dtype=D)
    fl = gradient_flow(module, x, lambda y: y[-1].sum())[0]
    tr = trace(module, x).layer(0)
    for k in (1, 3, 7):
        for b in range(2):
            start = 7 - k
            s0 = torch.cat([tr.h_prev()[start, b]] + ([tr.c_prev()[start, b]] if cell == "lstm" else []))

            def run(s, start=start, b=b):  # state_(T-k) -> state_T through the cells
                state = tuple(s.chunk(2)) if cell == "lstm" else (s,)
                state = tuple(p[None] for p in state)
                for t in range(start, 7):
                    state = cell_step(module, x[t, b:b + 1], state, 0, 0)
                return torch.cat([p[0] for p in state])

            J = torch.autograd.functional.jacobian(run, s0)
            expect = math.log10(torch.linalg.matrix_norm(J, ord=2).item())
            print(f"{cell} k={k} b={b}: log10 norm {fl.span_log10[k, b].item():.12f} vs {expect:.12f}")
            assert abs(fl.span_log10[k, b].item() - expect) < 1e-10
    assert torch.equal(fl.span_log10[0], torch.zeros(2))  # k = 0: the identity


def closed_gru(T=30, B=2, H=3, z_bias=-1e4):
    """A GRU whose write gate is forced to 0 (z_bias -> -inf) or 1 (z_bias -> +inf)."""
    gru = GRU(2, H).double()
    with torch.no_grad():
        gru.b_W_l0[:H] = z_bias  # gate order [z, r, h]
    return gru, torch.randn(T, B, 2, dtype=D)


def test_closed_gate_keeps_h_exactly_and_the_jacobian_is_the_identity():
    gru, x = closed_gru()
    h0 = torch.randn(1, 2, 3, dtype=D)
    tr = trace(gru, x, hx=h0).layer(0)
    assert bool((tr["z"] == 0).all())
    assert torch.equal(tr["h"], h0[0].expand(30, 2, 3))  # nothing is ever written
    gap = approximation_gap(trace(gru, x, hx=h0))[0]
    assert bool((gap.step_gap == 0).all()) and bool((gap.step_norm == 1).all())  # J_t = I = diag(1 - 0)
    fl = gradient_flow(gru, x, lambda y: y[-1].sum())[0]
    assert bool((fl.span_log10 == 0).all())  # every span ∂h_T/∂h_(T-k) is the identity
    # ∂L/∂h_t is the same at every step: the gradient highway, unchanged over 30 steps
    assert torch.equal(fl.dL_dstate, torch.ones(30, 2, 3, dtype=D))


def test_open_gate_jacobian_has_no_direct_path():
    gru, x = closed_gru(z_bias=1e4)  # z = 1: h = h_tilde, the direct term diag(1 - z) vanishes
    tr = trace(gru, x)
    lt = tr.layer(0)
    assert torch.equal(lt["h"], lt["h_tilde"])
    gap = approximation_gap(tr)[0]
    assert torch.equal(gap.step_gap, gap.step_norm)  # J - diag(0) = J
    assert bool((gap.span_approx_log10[1:] == -math.inf).all())  # the approximation predicts no highway


def test_rnn_with_zero_recurrence_forgets_in_one_step():
    rnn = RNN(2, 3).double()
    with torch.no_grad():
        rnn.U_l0.zero_()
    fl = gradient_flow(rnn, torch.randn(5, 2, 2, dtype=D), lambda y: y[-1].sum())[0]
    assert bool((fl.span_log10[1:] < -300).all())  # ∂h_T/∂h_(T-k) = 0 for k >= 1
    assert bool((fl.dL_dstate[:-1] == 0).all()) and bool((fl.dL_dstate[-1] == 1).all())


def test_lstm_with_open_forget_and_closed_input_keeps_c():
    lstm = LSTM(2, 3).double()
    with torch.no_grad():
        lstm.b_W_l0[:3] = -1e4  # i = 0
        lstm.b_W_l0[3:6] = 1e4  # f = 1
    x = torch.randn(8, 2, 2, dtype=D)
    c0 = torch.randn(1, 2, 3, dtype=D)
    tr = trace(lstm, x, hx=(torch.zeros(1, 2, 3, dtype=D), c0))
    assert torch.equal(tr.layer(0)["c"], c0[0].expand(8, 2, 3))
    gap = approximation_gap(tr)[0]
    # the c -> c block is exactly diag(f) = I: the spans of the approximation stay at norm 1
    assert bool((gap.span_approx_log10 == 0).all())


def test_rnn_has_no_gate_to_approximate():
    with pytest.raises(ValueError, match="no gate"):
        approximation_gap(RNN(2, 3), torch.randn(4, 1, 2))
