"""The hand-derived BPTT of the reference engine against gradcheck, autograd and finite differences."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grulab.engine.dispatch import GRUFunction
from grulab.engine.reference import gru_ref
from tests.tolerances import GRAD_MATCH, assert_close

D = torch.float64


def make_args(T, B, I, H, bias=True, dtype=D, scale=0.5):
    g = torch.Generator().manual_seed(T * 1000 + B * 100 + I * 10 + H)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()
    return [mk(T, B, I), mk(B, H), mk(3 * H, I), mk(3 * H, H)] + (
        [mk(3 * H), mk(3 * H)] if bias else [None, None])


def random_lengths(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, T + 1, (B,), generator=g)


@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(reset, reverse, with_lengths, bias):
    T, B, I, H = 5, 3, 2, 4
    args = make_args(T, B, I, H, bias)
    lengths = torch.tensor([5, 2, 0]) if with_lengths else None
    leaves = [a for a in args if a is not None]

    def f(*leaves):
        it = iter(leaves)
        full = [next(it) if a is not None else None for a in args]
        return GRUFunction.apply(*full, reset, lengths, reverse, "reference")

    assert torch.autograd.gradcheck(f, leaves)


@given(
    T=st.integers(1, 7), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 6),
    reset=st.sampled_from(["before", "after"]), reverse=st.booleans(), with_lengths=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_hand_bptt_matches_autograd_of_the_reference(T, B, I, H, reset, reverse, with_lengths, dtype):
    args = make_args(T, B, I, H, dtype=dtype)
    lengths = random_lengths(B, T, T + B) if with_lengths else None
    y_auto, h_auto, _ = gru_ref(*args, reset=reset, lengths=lengths, reverse=reverse)
    y_hand, h_hand = GRUFunction.apply(*args, reset, lengths, reverse, "reference")
    assert torch.equal(y_auto, y_hand) and torch.equal(h_auto, h_hand)
    g = torch.Generator().manual_seed(1)
    dy, dh = torch.randn(y_auto.shape, generator=g, dtype=dtype), torch.randn(h_auto.shape, generator=g, dtype=dtype)
    auto = torch.autograd.grad((y_auto, h_auto), args, (dy, dh))
    hand = torch.autograd.grad((y_hand, h_hand), args, (dy, dh))
    for name, a, b in zip(["dx", "dh0", "dW", "dU", "db_W", "db_U"], hand, auto, strict=True):
        assert_close(name, a, b, GRAD_MATCH[dtype], relative=True)


@pytest.mark.parametrize("reset", ["before", "after"])
def test_finite_differences_of_a_sequence_loss(reset):
    """Central differences on a scalar loss over a longer sequence, every parameter entry sampled."""
    T, B, I, H = 12, 2, 3, 4
    args = make_args(T, B, I, H)
    lengths = torch.tensor([12, 7])
    target = torch.randn(T, B, H, dtype=D)

    def loss(*a):
        y, h_n = GRUFunction.apply(*a, reset, lengths, False, "reference")
        return ((y - target) ** 2).sum() + h_n.sum()

    grads = torch.autograd.grad(loss(*args), args)
    eps = 1e-6
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k, (p, gp) in enumerate(zip(args, grads, strict=True)):
            for idx in torch.randint(0, p.numel(), (6,), generator=g).tolist():
                flat = p.view(-1)
                old = flat[idx].item()
                flat[idx] = old + eps
                up = loss(*args).item()
                flat[idx] = old - eps
                down = loss(*args).item()
                flat[idx] = old
                fd = (up - down) / (2 * eps)
                print(f"arg {k} [{idx}]: hand {gp.view(-1)[idx]:.8f} fd {fd:.8f}")
                assert abs(gp.view(-1)[idx].item() - fd) <= 1e-6 * max(1.0, abs(fd))


def test_skipped_steps_pass_state_and_gradient_through():
    T, B, I, H = 6, 2, 3, 4
    args = make_args(T, B, I, H)
    lengths = torch.tensor([6, 0])
    y, h_n = GRUFunction.apply(*args, "after", lengths, False, "reference")
    assert torch.equal(h_n[1], args[1][1])  # zero length: h_n = h0
    assert torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))
    dh0 = torch.autograd.grad(h_n[1].sum(), args[1])[0]
    assert torch.equal(dh0[1], torch.ones(H, dtype=D))
