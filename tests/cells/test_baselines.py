"""The RNN and LSTM cells: hand backward and step Jacobians against autograd."""

import pytest
import torch
from torch.autograd.functional import jacobian

from grulab.cells.lstm import lstm_cell, lstm_cell_backward, lstm_step_jacobian
from grulab.cells.rnn import rnn_cell, rnn_cell_backward, rnn_step_jacobian
from tests.tolerances import assert_close

D = torch.float64


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_backward_and_jacobian(nonlinearity):
    B, I, H = 3, 4, 5
    x, h_prev = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D, requires_grad=True)
    W, U = torch.randn(H, I, dtype=D), torch.randn(H, H, dtype=D, requires_grad=True)
    b_W, b_U = torch.randn(H, dtype=D), torch.randn(H, dtype=D)
    s = rnn_cell(x, h_prev, W, U, b_W, b_U, nonlinearity)
    dh = torch.randn(B, H, dtype=D)
    auto_h, auto_U = torch.autograd.grad(s.h, (h_prev, U), dh)
    dh_prev, da = rnn_cell_backward(dh, h_prev.detach(), s, U.detach(), nonlinearity)
    assert_close("dh_prev", dh_prev, auto_h, 1e-13)
    assert_close("dU", da.T @ h_prev.detach(), auto_U, 1e-13)
    J = rnn_step_jacobian(x, h_prev.detach(), W, U.detach(), b_W, b_U, nonlinearity)
    auto = jacobian(lambda h: rnn_cell(x[:1], h[None], W, U.detach(), b_W, b_U, nonlinearity).h[0],
                    h_prev.detach()[0])
    assert_close("J", J[0], auto, 1e-13)


def test_lstm_backward_and_jacobian():
    B, I, H = 3, 4, 5
    x = torch.randn(B, I, dtype=D)
    h_prev = torch.randn(B, H, dtype=D, requires_grad=True)
    c_prev = torch.randn(B, H, dtype=D, requires_grad=True)
    W, U = torch.randn(4 * H, I, dtype=D), torch.randn(4 * H, H, dtype=D, requires_grad=True)
    b_W, b_U = torch.randn(4 * H, dtype=D), torch.randn(4 * H, dtype=D)
    s = lstm_cell(x, h_prev, c_prev, W, U, b_W, b_U)
    dh, dc = torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D)
    auto_h, auto_c, auto_U = torch.autograd.grad((s.h, s.c), (h_prev, c_prev, U), (dh, dc))
    dh_prev, dc_prev, da = lstm_cell_backward(dh, dc, h_prev.detach(), c_prev.detach(), s, U.detach())
    assert_close("dh_prev", dh_prev, auto_h, 1e-13)
    assert_close("dc_prev", dc_prev, auto_c, 1e-13)
    assert_close("dU", da.T @ h_prev.detach(), auto_U, 1e-13)
    J = lstm_step_jacobian(x, h_prev.detach(), c_prev.detach(), W, U.detach(), b_W, b_U)

    def f(state):
        out = lstm_cell(x[:1], state[None, :H], state[None, H:], W, U.detach(), b_W, b_U)
        return torch.cat([out.h[0], out.c[0]])

    auto = jacobian(f, torch.cat([h_prev.detach()[0], c_prev.detach()[0]]))
    assert_close("J", J[0], auto, 1e-13)
    # the memory path c -> c is exactly diag(f)
    assert_close("dc/dc = diag(f)", J[0, H:, H:], torch.diag(s.f.detach()[0]), 1e-15)
