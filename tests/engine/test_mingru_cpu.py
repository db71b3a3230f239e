"""minGRU's fused CPU kernels against the sequential reference: outputs, final state and every
gradient (autograd of :func:`mingru_ref`), float32 and float64, lengths, directions, layers."""

from contextlib import nullcontext

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grulab.engine.mingru_cpu import mingru_cpu
from grulab.variants.mingru import MinGRU, mingru_ref, resolve_backend
from tests.engine.test_cpu import ENGINE_MATCH
from tests.engine.test_variants_cpu import one_thread
from tests.tolerances import assert_close


def make_args(T, B, I, H, dtype, bias=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    return [mk(T, B, I), mk(B, H), mk(2 * H, I), mk(2 * H) if bias else None]


def compare(args, lengths, reverse, dtype):
    leaves = [a for a in args if a is not None]
    g = torch.Generator().manual_seed(7)
    with one_thread():
        y_ref, h_ref = mingru_ref(*args, lengths=lengths, reverse=reverse)
        dy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64).to(dtype)
        dh = torch.randn(h_ref.shape, generator=g, dtype=torch.float64).to(dtype)
        ref = torch.autograd.grad((y_ref, h_ref), leaves, (dy, dh))
    y, h = mingru_cpu(*args, lengths=lengths, reverse=reverse)
    tol = ENGINE_MATCH[dtype]
    assert_close("y", y, y_ref, tol, relative=True)
    assert_close("h_n", h, h_ref, tol, relative=True)
    got = torch.autograd.grad((y, h), leaves, (dy, dh))
    for name, a, b in zip(["dx", "dh0", "dW", "db_W"], got, ref, strict=False):
        assert_close(name, a, b, tol, relative=True)


@given(
    T=st.integers(1, 9), B=st.integers(1, 11), I=st.integers(1, 7), H=st.integers(1, 40),
    reverse=st.booleans(), with_lengths=st.booleans(), bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
)
def test_kernels_match_reference(T, B, I, H, reverse, with_lengths, bias, dtype, seed):
    args = make_args(T, B, I, H, dtype, bias, seed)
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(seed)) if with_lengths else None
    compare(args, lengths, reverse, dtype)


@pytest.mark.parametrize("B, H", [(37, 45), (1, 70)])
def test_realistic_sizes_threads_and_unit_blocks(B, H):
    """Many rows over threads, and one row whose units are split into blocks over threads."""
    lengths = torch.randint(1, 24, (B,), generator=torch.Generator().manual_seed(2))
    compare(make_args(23, B, 19, H, torch.float32, seed=1), lengths, True, torch.float32)
    compare(make_args(23, B, 19, H, torch.float64, seed=1), None, False, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_with_fused_kernels_matches_sequential(dtype):
    """The module end to end: stacked, bidirectional, lengths and an initial state."""
    torch.manual_seed(0)
    m = MinGRU(3, 6, num_layers=2, bidirectional=True).to(dtype)
    x = torch.randn(11, 5, 3, dtype=dtype) * 2
    hx = torch.randn(4, 5, 6, dtype=dtype)
    lengths = torch.tensor([11, 0, 4, 7, 1])
    results = {}
    for backend in ("cpu", "sequential"):
        m.backend = backend
        xb, hb = x.clone().requires_grad_(), hx.clone().requires_grad_()
        with one_thread() if backend == "sequential" else nullcontext():
            y, h_n = m(xb, hb, lengths=lengths)
            w = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
            grads = torch.autograd.grad((y * w).sum() + h_n.square().sum(), [xb, hb, *m.parameters()])
        results[backend] = (y, h_n, grads)
    tol = ENGINE_MATCH[dtype]
    (y, h_n, grads), (y_s, h_s, grads_s) = results["cpu"], results["sequential"]
    assert_close("output", y, y_s, tol, relative=True)
    assert_close("h_n", h_n, h_s, tol, relative=True)
    for k, (a, b) in enumerate(zip(grads, grads_s, strict=True)):
        assert_close(f"grad {k}", a, b, tol, relative=True)


def test_auto_picks_the_fused_kernels_on_cpu(monkeypatch):
    assert resolve_backend("auto", torch.zeros(5, 1, 1)) == "cpu"
    assert resolve_backend("auto", torch.zeros(5, 1, 1, dtype=torch.float64)) == "cpu"
    assert resolve_backend("auto", torch.zeros(5, 1, 1, dtype=torch.bfloat16)) == "parallel"
    assert resolve_backend("auto", torch.zeros(1, 1, 1, dtype=torch.bfloat16)) == "sequential"
    with pytest.raises(ValueError, match="backend 'cpu' runs float32/float64 CPU tensors"):
        resolve_backend("cpu", torch.zeros(1, dtype=torch.float16))
    import grulab.engine.mingru_cpu as fused

    calls = []
    real = fused.MinGRUFunction.apply
    monkeypatch.setattr(fused.MinGRUFunction, "apply", lambda *a: calls.append(1) or real(*a))
    MinGRU(2, 3, bidirectional=True)(torch.randn(4, 2, 2))
    assert len(calls) == 2  # one fused call per direction


def test_only_requested_gradients_are_computed():
    x, h0, W, b_W = make_args(5, 4, 3, 6, torch.float64)
    x.requires_grad_(False)
    y, h = mingru_cpu(x, h0, W, b_W)
    grads = torch.autograd.grad(y.sum() + h.sum(), [h0, W, b_W])
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():  # inference: nothing saved, same values
        y2, _ = mingru_cpu(x, h0, W, b_W)
    assert torch.equal(y2, y)


def test_long_sequence_float32_tracks_float64():
    """20,000 steps with long memories: the float32 kernels stay within 1e-4 of float64."""
    m = MinGRU(2, 8, init="chrono", chrono_horizon=3000).double()
    x = torch.randn(20_000, 2, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        y64, _ = m(x)
        y32, _ = m.float()(x.float())
    err = (y32.double() - y64).abs().max().item()
    print(f"max |y32 - y64| over 20,000 steps = {err:.2e}")
    assert err < 1e-4


@pytest.mark.nojit
def test_small_case_for_the_uncompiled_kernels():
    """Run under NUMBA_DISABLE_JIT=1 by `make test`: the kernel bodies execute as Python."""
    lengths = torch.tensor([3, 0, 2, 1, 3])
    for reverse in (False, True):
        compare(make_args(3, 5, 2, 3, torch.float64, seed=3), lengths, reverse, torch.float64)
