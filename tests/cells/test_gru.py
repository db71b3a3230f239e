"""The GRU cell: the seed's equations, the hand backward and the exact step Jacobian."""

import pytest
import torch
from torch.autograd.functional import jacobian

from grulab.cells.gru import gru_cell, gru_cell_backward, gru_recurrent_input, gru_step_jacobian
from tests.tolerances import assert_close

D = torch.float64


def params(I, H, bias=True, scale=1.0):
    p = [torch.randn(3 * H, I, dtype=D) * scale, torch.randn(3 * H, H, dtype=D) * scale]
    p += [torch.randn(3 * H, dtype=D), torch.randn(3 * H, dtype=D)] if bias else [None, None]
    return p


@pytest.mark.parametrize("reset", ["before", "after"])
def test_cell_matches_the_seed_equations_written_out(reset):
    B, I, H = 3, 4, 5
    x, h_prev = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    W, U, b_W, b_U = params(I, H)
    s = gru_cell(x, h_prev, W, U, b_W, b_U, reset)
    Wz, Wr, Wh = W[:H], W[H:2 * H], W[2 * H:]
    Uz, Ur, Uh = U[:H], U[H:2 * H], U[2 * H:]
    z = torch.sigmoid(x @ Wz.T + h_prev @ Uz.T + b_W[:H] + b_U[:H])
    r = torch.sigmoid(x @ Wr.T + h_prev @ Ur.T + b_W[H:2 * H] + b_U[H:2 * H])
    if reset == "before":
        h_tilde = torch.tanh(x @ Wh.T + (r * h_prev) @ Uh.T + b_W[2 * H:] + b_U[2 * H:])
    else:
        h_tilde = torch.tanh(x @ Wh.T + b_W[2 * H:] + r * (h_prev @ Uh.T + b_U[2 * H:]))
    h = (1 - z) * h_prev + z * h_tilde
    for name, a, b in (("z", s.z, z), ("r", s.r, r), ("h_tilde", s.h_tilde, h_tilde), ("h", s.h, h)):
        assert_close(name, a, b, 1e-14)


def test_z_is_the_write_gate():
    """Forcing z = 0 (huge negative bias) keeps the state; z = 1 writes the candidate."""
    B, I, H = 2, 3, 4
    x, h_prev = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    W, U, b_W, b_U = params(I, H)
    b_W[:H] = -1e4
    s = gru_cell(x, h_prev, W, U, b_W, b_U)
    assert torch.equal(s.h, h_prev)
    b_W[:H] = 1e4
    s = gru_cell(x, h_prev, W, U, b_W, b_U)
    assert_close("h = h_tilde", s.h, s.h_tilde, 1e-15)


@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("bias", [True, False])
def test_hand_backward_matches_autograd(reset, bias):
    B, I, H = 3, 4, 5
    x = torch.randn(B, I, dtype=D, requires_grad=True)
    h_prev = torch.randn(B, H, dtype=D, requires_grad=True)
    W, U, b_W, b_U = (p.requires_grad_() if p is not None else None for p in params(I, H, bias))
    s = gru_cell(x, h_prev, W, U, b_W, b_U, reset)
    dh = torch.randn(B, H, dtype=D)
    leaves = [t for t in (x, h_prev, W, U, b_W, b_U) if t is not None]
    auto = dict(zip(["x", "h_prev", "W", "U", "b_W", "b_U"], torch.autograd.grad(s.h, leaves, dh), strict=False))
    g = gru_cell_backward(dh, h_prev.detach(), s, U.detach(), reset)
    assert_close("dh_prev", g.dh_prev, auto["h_prev"], 1e-13)
    assert_close("dx", g.da_x @ W.detach(), auto["x"], 1e-13)
    assert_close("dW", g.da_x.T @ x.detach(), auto["W"], 1e-13)
    stacked = gru_recurrent_input(h_prev.detach(), s, reset)
    dU = torch.einsum("bgi,bgj->gij", g.da_u.view(B, 3, H), stacked).reshape(3 * H, H)
    assert_close("dU", dU, auto["U"], 1e-13)
    if bias:
        assert_close("db_W", g.da_x.sum(0), auto["b_W"], 1e-13)
        assert_close("db_U", g.da_u.sum(0), auto["b_U"], 1e-13)


@pytest.mark.parametrize("reset", ["before", "after"])
def test_step_jacobian_is_exact_and_its_diagonal_part_is_one_minus_z(reset):
    B, I, H = 2, 3, 6
    x, h_prev = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    W, U, b_W, b_U = params(I, H)
    J = gru_step_jacobian(x, h_prev, W, U, b_W, b_U, reset)
    for b in range(B):
        x_b = x[b:b + 1]
        auto = jacobian(lambda h, x_b=x_b: gru_cell(x_b, h[None], W, U, b_W, b_U, reset).h[0], h_prev[b])
        assert_close(f"J[{b}]", J[b], auto, 1e-13)
    # with every recurrent weight zero, only the direct path remains: diag(1 - z)
    Z = torch.zeros_like(U)
    J0 = gru_step_jacobian(x, h_prev, W, Z, b_W, b_U, reset)
    z = gru_cell(x, h_prev, W, Z, b_W, b_U, reset).z
    assert_close("J0 = diag(1-z)", J0, torch.diag_embed(1 - z), 1e-15)
