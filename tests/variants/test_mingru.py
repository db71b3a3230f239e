"""minGRU: the parallel log-space scan against the sequential reference (float64, values and
gradients), both against the paper's published code written out independently, and the module's
GRU-like interface."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grulab
from grulab import io
from grulab.cells.mingru import g, log_g, mingru_cell, mingru_step_jacobian
from grulab.models import CELLS, SequenceModel, count_parameters, hidden_for_budget
from grulab.variants.mingru import MinGRU, mingru_parallel, mingru_ref, training_step
from tests.tolerances import assert_close

F64 = 1e-10  # parallel scan against the step loop, float64 (same math, different summation)


def _grads(model, x, hx, lengths, backend):
    model.backend = backend
    x = x.detach().requires_grad_()
    hx = None if hx is None else hx.detach().requires_grad_()
    y, h_n = model(x, hx, lengths=lengths)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    loss = (y * w).sum() + (h_n * h_n).sum()
    inputs = [x, *model.parameters()] + ([hx] if hx is not None else [])
    return y, h_n, torch.autograd.grad(loss, inputs)


@given(T=st.integers(1, 12), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 6),
       layers=st.integers(1, 3), bidirectional=st.booleans(), bias=st.booleans(), use_lengths=st.booleans(),
       use_hx=st.booleans())
def test_parallel_scan_equals_step_loop_values_and_gradients(T, B, I, H, layers, bidirectional, bias,
                                                           use_lengths, use_hx):
    torch.manual_seed(T * 100 + B * 10 + H)
    m = MinGRU(I, H, num_layers=layers, bidirectional=bidirectional, bias=bias).double()
    x = torch.randn(T, B, I, dtype=torch.float64) * 2
    hx = torch.randn(layers * m.num_directions, B, H, dtype=torch.float64) if use_hx else None
    lengths = torch.randint(0, T + 1, (B,)) if use_lengths else None
    y_s, h_s, g_s = _grads(m, x, hx, lengths, "sequential")
    y_p, h_p, g_p = _grads(m, x, hx, lengths, "parallel")
    assert_close("output", y_p, y_s, F64)
    assert_close("h_n", h_p, h_s, F64)
    for k, (a, b) in enumerate(zip(g_p, g_s, strict=True)):
        assert torch.isfinite(a).all()
        assert_close(f"grad {k}", a, b, F64, relative=True)


def test_gradcheck_of_the_scan_with_skipped_steps():
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 2, 3
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    W = torch.randn(2 * H, I, dtype=torch.float64, requires_grad=True)
    b_W = torch.randn(2 * H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 0, 2])
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda *a, rev=reverse: mingru_parallel(*a, lengths=lengths, reverse=rev), (x, h0, W, b_W))


def _paper_sequential(x, h0, W_z, b_z, W_h, b_h):
    """The paper's Appendix minGRU (sequential mode), written out with separate matrices."""
    h, out = h0, []
    for x_t in x:
        z = torch.sigmoid(F.linear(x_t, W_z, b_z))
        h_tilde = g(F.linear(x_t, W_h, b_h))
        h = (1 - z) * h + z * h_tilde
        out.append(h)
    return torch.stack(out)


def _paper_log_space(x, h0, W_z, b_z, W_h, b_h):
    """The paper's Appendix minGRU (parallel mode): h_0 folded into the log-sum-exp (needs h_0 > 0),
    batch-first as published; a different arrangement from grulab's (M5), same function."""
    xb = x.transpose(0, 1)  # (B, T, I)
    k = F.linear(xb, W_z, b_z)
    log_z, log_coeffs = -F.softplus(-k), -F.softplus(k)
    log_values = torch.cat([torch.log(h0)[:, None], log_z + log_g(F.linear(xb, W_h, b_h))], dim=1)
    a_star = F.pad(torch.cumsum(log_coeffs, dim=1), (0, 0, 1, 0))
    log_h = a_star + torch.logcumsumexp(log_values - a_star, dim=1)
    return torch.exp(log_h)[:, 1:].transpose(0, 1)


def test_against_the_published_equations():
    torch.manual_seed(1)
    T, B, I, H = 30, 3, 4, 5
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.rand(B, H, dtype=torch.float64) + 0.1  # positive, as the paper's log-space form needs
    W_z, W_h = torch.randn(H, I, dtype=torch.float64), torch.randn(H, I, dtype=torch.float64)
    b_z, b_h = torch.randn(H, dtype=torch.float64), torch.randn(H, dtype=torch.float64)
    W, b_W = torch.cat([W_z, W_h]), torch.cat([b_z, b_h])
    paper_seq = _paper_sequential(x, h0, W_z, b_z, W_h, b_h)
    assert_close("paper sequential vs paper log-space", _paper_log_space(x, h0, W_z, b_z, W_h, b_h), paper_seq, F64)
    assert_close("mingru_ref vs paper", mingru_ref(x, h0, W, b_W)[0], paper_seq, 1e-14)
    assert_close("mingru_parallel vs paper", mingru_parallel(x, h0, W, b_W)[0], paper_seq, F64)
    # g is continuous at 0, positive, and its log matches
    a = torch.linspace(-45, 45, 1001, dtype=torch.float64)
    assert (g(a) > 0).all() and abs(g(torch.tensor(0.0)) - 0.5) < 1e-15
    assert_close("log_g", log_g(a), torch.log(g(a)), 1e-13)


def test_step_jacobian_is_exactly_one_minus_z():
    torch.manual_seed(2)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    W, b_W = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    J = mingru_step_jacobian(x, h, W, b_W)
    for b in range(2):
        step = lambda hp, b=b: mingru_cell(x[b:b + 1], hp[None], W, b_W).h[0]
        J_auto = torch.autograd.functional.jacobian(step, h[b])
        assert_close("jacobian", J[b], J_auto, 1e-14)
    assert_close("diag 1 - z", J.diagonal(dim1=1, dim2=2), 1 - mingru_cell(x, h, W, b_W).z, 0.0)


def test_long_sequence_in_float32_stays_finite_and_close():
    # log space is the point of the scan: z products over thousands of steps neither under- nor overflow
    torch.manual_seed(3)
    m = MinGRU(2, 8, init="chrono", chrono_horizon=3000)
    x = torch.randn(3000, 2, 2) * 3
    y_p, h_p, grads = _grads(m, x, None, torch.tensor([3000, 1700]), "parallel")
    ref = MinGRU(2, 8).double()
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    ref.backend = "sequential"
    y_s, h_s = ref(x.double(), lengths=torch.tensor([3000, 1700]))
    assert all(torch.isfinite(t).all() for t in grads)
    # the scan's float32 error grows like |a*_T|·eps (log-space sums), a few times the loop's own:
    # measured 8e-6 of max |y| here (the float32 loop: 7e-7)
    assert_close("float32 scan vs float64 loop, T=3000", y_p.double(), y_s, 2e-5, relative=True)


def test_step_by_step_inference_equals_the_parallel_forward():
    torch.manual_seed(4)
    m = MinGRU(3, 6, num_layers=2, batch_first=True)
    x = torch.randn(2, 20, 3)
    with torch.no_grad():
        y, h_n = m(x)  # parallel (auto, T > 1)
        h, ys = None, []
        for t in range(20):
            y_t, h = m.step(x[:, t], h)
            ys.append(y_t)
    assert_close("streamed steps vs scan", torch.stack(ys, dim=1), y, 1e-5)
    assert_close("final state", h, h_n, 1e-5)
    y1, h1 = m.step(x[0, 0])  # unbatched
    assert y1.shape == (6,) and h1.shape == (2, 6)


def test_gru_interface_packed_unbatched_and_batch_first():
    torch.manual_seed(5)
    m = MinGRU(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 5])
    y, h = m(x, lengths=lengths)
    assert y.shape == (7, 3, 8) and h.shape == (4, 3, 4)
    assert (y[2:, 1] == 0).all()
    yp, hp = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert_close("packed", pad_packed_sequence(yp, total_length=7)[0], y, 1e-14)
    assert_close("packed h_n", hp, h, 1e-14)
    for b in range(3):  # each sequence alone gives the same
        yb, hb = m(x[: lengths[b], b])
        assert_close("alone", yb, y[: lengths[b], b], 1e-12)
        assert_close("alone h_n", hb, h[:, b], 1e-12)
    mb = MinGRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    mb.load_state_dict(m.state_dict())
    assert_close("batch_first", mb(x.transpose(0, 1))[0].transpose(0, 1), m(x)[0], 1e-14)


def test_parameters_io_and_sequence_model(tmp_path):
    m = MinGRU(5, 7, num_layers=2, init="orthogonal")
    assert [n for n, _ in m.named_parameters()] == ["W_l0", "b_W_l0", "W_l1", "b_W_l1"]
    assert count_parameters(m) == 2 * 7 * (5 + 1) + 2 * 7 * (7 + 1)
    back = io.load(io.save(m, tmp_path / "m.safetensors"))
    x = torch.randn(6, 2, 5)
    assert type(back) is MinGRU and torch.equal(back(x)[0], m(x)[0])
    assert "mingru" in CELLS
    model = SequenceModel("mingru", 2, 16, 1, num_layers=2, init="chrono", chrono_horizon=50)
    assert model(torch.randn(50, 4, 2)).shape == (4, 1)
    again = io.load(io.save(model, tmp_path / "s.safetensors"))
    assert torch.equal(again(x[:, :, :2]), model(x[:, :, :2]))
    H = hidden_for_budget("mingru", 2, 1, 20_000)
    assert abs(count_parameters(SequenceModel("mingru", 2, H, 1)) - 20_000) < 0.05 * 20_000
    assert H > hidden_for_budget("gru", 2, 1, 20_000)  # no recurrent weights: more units per parameter
    chrono = MinGRU(1, 500, init="chrono", chrono_horizon=100)
    b_z = chrono.b_W_l0[:500]
    assert (b_z <= 0).all() and (b_z >= -torch.log(torch.tensor(99.0)) - 1e-6).all()


def test_training_step_for_the_bench():
    m = grulab.MinGRU(3, 8)
    loss = training_step(m, torch.randn(40, 2, 3))
    assert loss > 0 and all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        MinGRU(2, 3, backend="gpu")
    with pytest.raises(ValueError, match="step\\(\\) needs a unidirectional MinGRU"):
        MinGRU(2, 3, bidirectional=True).step(torch.randn(1, 2))
    with pytest.raises(ValueError, match="input_size=2 features"):
        MinGRU(2, 3)(torch.randn(4, 1, 5))
    with pytest.raises(ValueError, match="chrono_horizon"):
        MinGRU(2, 3, init="chrono")
    with pytest.raises(ValueError, match="needs bias=True"):
        MinGRU(2, 3, init="chrono", chrono_horizon=10, bias=False)
