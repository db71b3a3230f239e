"""The fused variant kernels (zoneout, variational dropout, layer norm) against the reference loop
:func:`variant_gru_ref` on the same masks: outputs, final state and every gradient."""

from contextlib import contextmanager, nullcontext

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grulab.cells.regularize import dropout_mask, zoneout_mask
from grulab.engine.variants_cpu import variant_gru_cpu
from grulab.variants.regularized import LayerNormGRU, RegularizedGRU, variant_gru_ref
from tests.engine.test_cpu import ENGINE_MATCH
from tests.tolerances import assert_close

ZONEOUT = ("none", "masks", "evaluation")


@contextmanager
def one_thread():
    """Run the per-step reference loops on one intra-op thread. They issue many tiny torch ops, and
    with two threads on a busy machine each op can wait a scheduler time slice for a descheduled
    partner (measured here: 7 s instead of 20 ms for one realistic-size case). Same results."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def make_case(T, B, I, H, *, bias, ln, m_x, m_h, zoneout, seed, dtype=torch.float64, init_scale=True):
    """Parameters (leaves), masks and keyword arguments of one variant direction, drawn in float64
    (PyTorch's initial range for the weights, gains near one) and cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    k = 1 / H**0.5 if init_scale else 0.5
    uni = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * k
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, H, generator=g, dtype=torch.float64)
    params = [uni(3 * H, I), uni(3 * H, H)] + ([uni(3 * H), uni(3 * H)] if bias else [None, None])
    kw = {}
    if ln:
        kw["g_W"] = 1 + 0.2 * torch.randn(3 * H, generator=g, dtype=torch.float64)
        kw["g_U"] = 1 + 0.2 * torch.randn(3 * H, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)  # the masks come from torch's generator, as the layers draw them
    if m_x:
        kw["m_x"] = dropout_mask((B, I), 0.3, x)
    if m_h:
        kw["m_h"] = dropout_mask((B, H), 0.4, x)
    if zoneout == "masks":
        kw["zoneout_masks"] = zoneout_mask((T, B, H), 0.3, x)
    elif zoneout == "evaluation":
        kw["zoneout_p"] = 0.3
    cast = lambda t: t if t is None or not isinstance(t, torch.Tensor) else t.to(dtype)
    tensors = [cast(t) for t in [x, h0, *params]]
    kw = {n: cast(v) for n, v in kw.items()}
    leaves = [t for t in tensors if t is not None] + [kw[n] for n in ("g_W", "g_U") if n in kw]
    for t in leaves:
        t.requires_grad_()
    return tensors, kw, leaves


def run(fn, tensors, kw, leaves, reset, lengths, reverse):
    """Outputs and the gradients of a fixed random cotangent with respect to every leaf."""
    with one_thread() if fn is variant_gru_ref else nullcontext():
        y, h_n = fn(*tensors, reset=reset, lengths=lengths, reverse=reverse, **kw)
        g = torch.Generator().manual_seed(7)
        dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
        dh = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(y.dtype)
        return [y, h_n, *torch.autograd.grad((y, h_n), leaves, (dy, dh))]


def names(kw, bias):
    return ["y", "h_n", "dx", "dh0", "dW", "dU"] + (["db_W", "db_U"] if bias else []) + \
        (["dg_W", "dg_U"] if "g_W" in kw else [])


def compare(case, reset, lengths, reverse, tol, bias):
    tensors, kw, leaves = case
    ref = run(variant_gru_ref, tensors, kw, leaves, reset, lengths, reverse)
    got = run(variant_gru_cpu, tensors, kw, leaves, reset, lengths, reverse)
    for name, a, b in zip(names(kw, bias), got, ref, strict=True):
        assert_close(name, a, b, tol, relative=True)


shapes = dict(T=st.integers(1, 8), B=st.integers(1, 9), I=st.integers(1, 6), H=st.integers(1, 9))
options = dict(reset=st.sampled_from(["before", "after"]), reverse=st.booleans(), with_lengths=st.booleans(),
               bias=st.booleans(), m_x=st.booleans(), m_h=st.booleans(), zoneout=st.sampled_from(ZONEOUT),
               seed=st.integers(0, 2**16))


def _lengths(with_lengths, T, B, seed):
    return torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(seed)) if with_lengths else None


@given(ln=st.booleans(), panels=st.booleans(), **shapes, **options)
def test_float64_matches_reference(ln, panels, T, B, I, H, reset, reverse, with_lengths, bias, m_x, m_h, zoneout,
                                   seed):
    """Random shapes; with ``panels`` the recurrent products go through packed panels (``gemm_nn``)
    even for these short calls."""
    from grulab.engine import cpu

    case = make_case(T, B, I, H, bias=bias, ln=ln, m_x=m_x, m_h=m_h, zoneout=zoneout, seed=seed,
                     init_scale=seed % 2 == 0)
    saved = cpu.PANEL_MIN_ROWS_STEPS
    cpu.PANEL_MIN_ROWS_STEPS = 1 if panels else 10**9
    try:
        compare(case, reset, _lengths(with_lengths, T, B, seed), reverse, ENGINE_MATCH[torch.float64], bias)
    finally:
        cpu.PANEL_MIN_ROWS_STEPS = saved


@given(**shapes, **options)
def test_float32_regularized_matches_reference(T, B, I, H, reset, reverse, with_lengths, bias, m_x, m_h, zoneout,
                                               seed):
    case = make_case(T, B, I, H, bias=bias, ln=False, m_x=m_x, m_h=m_h, zoneout=zoneout, seed=seed,
                     dtype=torch.float32)
    compare(case, reset, _lengths(with_lengths, T, B, seed), reverse, ENGINE_MATCH[torch.float32], bias)


@given(**shapes, **options)
def test_float32_layer_norm_is_as_accurate_as_the_reference(T, B, I, H, reset, reverse, with_lengths, bias, m_x,
                                                            m_h, zoneout, seed):
    """Layer norm over a few units amplifies rounding by ``1/σ`` of tiny recurrent products: the
    float32 reference itself then strays up to ~1e-4 from float64. So on random small shapes the
    kernels' float32 error against the float64 truth must be within 1e-5 plus twice the float32
    reference's own (the direct 1e-5 comparison is below, at a realistic size)."""
    lengths = _lengths(with_lengths, T, B, seed)
    kw = dict(bias=bias, ln=True, m_x=m_x, m_h=m_h, zoneout=zoneout, seed=seed)
    truth = run(variant_gru_ref, *make_case(T, B, I, H, **kw), reset, lengths, reverse)
    results = {}
    for fn in (variant_gru_ref, variant_gru_cpu):
        results[fn] = run(fn, *make_case(T, B, I, H, **kw, dtype=torch.float32), reset, lengths, reverse)
    rel = lambda a, b: ((a.double() - b).abs().max() / max(1.0, b.abs().max().item())).item() if b.numel() else 0.0
    for i, name in enumerate(names({"g_W": None}, bias)):
        err_ref = rel(results[variant_gru_ref][i], truth[i])
        err = rel(results[variant_gru_cpu][i], truth[i])
        print(f"{name}: kernel {err:.1e}, float32 reference {err_ref:.1e} (against float64)")
        assert err <= 1e-5 + 2 * err_ref, name


@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("ln", [False, True])
def test_float32_at_a_realistic_size(reset, ln):
    """Shapes that exercise full GEMM tiles, several threads and remainders; 1e-5 directly."""
    case = make_case(23, 37, 19, 45, bias=True, ln=ln, m_x=True, m_h=True, zoneout="masks", seed=1,
                     dtype=torch.float32)
    lengths = torch.randint(1, 24, (37,), generator=torch.Generator().manual_seed(2))
    compare(case, reset, lengths, True, ENGINE_MATCH[torch.float32], True)


def _layer_grads(m, backend, x, lengths, seed):
    m.backend = backend
    torch.manual_seed(seed)  # the same masks on both backends
    xb = x.clone().requires_grad_()
    y, h_n = m(xb, lengths=lengths)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    return y, h_n, torch.autograd.grad((y * w).sum() + h_n.square().sum(), [xb, *m.parameters()])


@pytest.mark.parametrize("cls", [RegularizedGRU, LayerNormGRU])
@pytest.mark.parametrize("training", [True, False])
def test_layers_route_to_the_kernels_and_match_the_reference(cls, training, monkeypatch):
    """Stacked, bidirectional, lengths, every regulariser; the masks the layer draws are the same on
    both backends, and auto runs the fused kernels (never the reference loop)."""
    import grulab.variants.regularized as R

    torch.manual_seed(0)
    m = cls(3, 5, num_layers=2, bidirectional=True, reset="before", zoneout=0.2, input_dropout=0.3,
            recurrent_dropout=0.3).double().train(training)
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 0, 6])
    with one_thread():
        y_r, h_r, g_r = _layer_grads(m, "reference", x, lengths, seed=5)
    calls = []
    monkeypatch.setattr(R, "variant_gru_ref", lambda *a, **k: calls.append(1))
    y, h, grads = _layer_grads(m, "auto", x, lengths, seed=5)
    assert not calls
    tol = ENGINE_MATCH[torch.float64]
    assert_close("output", y, y_r, tol)
    assert_close("h_n", h, h_r, tol)
    for k, (a, b) in enumerate(zip(grads, g_r, strict=True)):
        assert_close(f"grad {k}", a, b, tol, relative=True)


def test_zoned_out_units_hold_their_value_exactly():
    """Zoneout keeps ``h_prev`` bit for bit (the kernel's ``h_prev + c z (h̃ - h_prev)`` with c = 0)."""
    case = make_case(6, 3, 2, 5, bias=True, ln=False, m_x=False, m_h=False, zoneout="masks", seed=4)
    tensors, kw, _ = case
    y, _ = variant_gru_cpu(*tensors, **kw)
    held = kw["zoneout_masks"][1:].bool()
    assert held.any() and torch.equal(y[1:][held], y[:-1][held])


@pytest.mark.nojit
def test_small_case_for_the_uncompiled_kernels():
    """Run under NUMBA_DISABLE_JIT=1 by `make test`: the kernel bodies execute as Python."""
    lengths = torch.tensor([3, 0, 2, 1])
    for reset in ("after", "before"):
        for ln in (False, True):
            case = make_case(3, 4, 2, 3, bias=True, ln=ln, m_x=True, m_h=True, zoneout="masks", seed=3)
            compare(case, reset, lengths, True, ENGINE_MATCH[torch.float64], True)
