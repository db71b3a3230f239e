"""Layer-normalised GRU: the cell against torch's own layer_norm written out gate by gate, Ba et
al.'s invariances, the layer against a loop over that independent cell, and its interface."""

import pytest
import torch
import torch.nn.functional as F

import grulab
from grulab import io
from grulab.cells.lngru import layer_norm, lngru_cell
from grulab.models import SequenceModel
from grulab.variants.regularized import LayerNormGRU
from tests.tolerances import assert_close


def independent_lngru_step(x, h, W, U, b_W, b_U, g_W, g_U, reset, eps):
    """(N3)-(N6) from torch.nn.functional.layer_norm and separate per-gate matrices."""
    H = h.shape[-1]
    Wz, Wr, Wh = W.chunk(3)
    Uz, Ur, Uh = U.chunk(3)
    gWz, gWr, gWh = g_W.chunk(3)
    gUz, gUr, gUh = g_U.chunk(3)
    bWz, bWr, bWh = b_W.chunk(3) if b_W is not None else (None,) * 3
    bUz, bUr, bUh = b_U.chunk(3) if b_U is not None else (None,) * 3
    ln = lambda a, g, b: F.layer_norm(a, (H,), g, b, eps)
    z = torch.sigmoid(ln(F.linear(x, Wz), gWz, bWz) + ln(F.linear(h, Uz), gUz, bUz))
    r = torch.sigmoid(ln(F.linear(x, Wr), gWr, bWr) + ln(F.linear(h, Ur), gUr, bUr))
    if reset == "after":
        cand = torch.tanh(ln(F.linear(x, Wh), gWh, bWh) + r * ln(F.linear(h, Uh), gUh, bUh))
    else:
        cand = torch.tanh(ln(F.linear(x, Wh), gWh, bWh) + ln(F.linear(r * h, Uh), gUh, bUh))
    return (1 - z) * h + z * cand


def _params(I, H, bias=True, dtype=torch.float64):
    W, U = torch.randn(3 * H, I, dtype=dtype), torch.randn(3 * H, H, dtype=dtype)
    b_W = torch.randn(3 * H, dtype=dtype) if bias else None
    b_U = torch.randn(3 * H, dtype=dtype) if bias else None
    return W, U, b_W, b_U, torch.rand(3 * H, dtype=dtype) + 0.5, torch.rand(3 * H, dtype=dtype) + 0.5


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch_layer_norm_gate_by_gate(reset, bias):
    torch.manual_seed(0)
    params = _params(4, 6, bias)
    x, h = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    ours = lngru_cell(x, h, *params, reset=reset, eps=1e-5).h
    assert_close("LN-GRU step", ours, independent_lngru_step(x, h, *params, reset, 1e-5), 1e-14)


def test_layer_norm_normalises():
    a = torch.randn(5, 40, dtype=torch.float64) * 7 + 3
    n = layer_norm(a, torch.ones(40, dtype=torch.float64), 0.0, eps=0.0)
    assert_close("mean", n.mean(-1), torch.zeros(5, dtype=torch.float64), 1e-14)
    assert_close("variance", n.var(-1, unbiased=False), torch.ones(5, dtype=torch.float64), 1e-13)


def test_ba_et_al_invariances():
    # Ba et al. 2016 (Table 1): layer norm is invariant to re-scaling a weight matrix and to
    # re-scaling the input; the LN-GRU inherits both (up to eps, taken tiny here)
    torch.manual_seed(1)
    m = LayerNormGRU(3, 5, eps=1e-12).double()
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    y = m(x)[0]
    assert_close("input x 10", m(10 * x)[0], y, 1e-9)
    with torch.no_grad():
        m.W_l0.mul_(3.0)
        m.U_l0.mul_(0.2)
    assert_close("W x 3, U x 0.2", m(x)[0], y, 1e-9)
    plain = grulab.GRU(3, 5).double()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("g_")})
    assert (plain(10 * x)[0] - plain(x)[0]).abs().max() > 1e-2  # the plain GRU is not invariant


@pytest.mark.parametrize("reset", ["after", "before"])
def test_layer_equals_a_loop_over_the_independent_cell(reset):
    torch.manual_seed(2)
    m = LayerNormGRU(3, 4, num_layers=2, bidirectional=True, reset=reset, init="orthogonal").double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64)
    y, h_n = m(x, h0)
    layer_in, finals = x, []
    for layer in range(2):
        outs = []
        for d in range(2):
            params = m.direction_parameters(layer, d)
            h, ys = h0[2 * layer + d], [None] * 6
            for t in (range(5, -1, -1) if d else range(6)):
                h = independent_lngru_step(layer_in[t], h, *params, reset, m.eps)
                ys[t] = h
            outs.append(torch.stack(ys))
            finals.append(h)
        layer_in = torch.cat(outs, -1)
    assert_close("output", y, layer_in, 1e-13)
    assert_close("h_n", h_n, torch.stack(finals), 1e-13)


def test_gradcheck_and_lengths():
    torch.manual_seed(3)
    m = LayerNormGRU(2, 3, reset="before").double()
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 2])
    assert torch.autograd.gradcheck(lambda x, *p: m(x, lengths=lengths)[0], (x, *m.parameters()))
    y, h_n = m(x, lengths=lengths)
    for b in range(3):
        yb, hb = m(x[: lengths[b], b])
        assert_close("alone", yb, y[: lengths[b], b], 1e-13)
        assert_close("alone h_n", hb, h_n[:, b], 1e-13)
    assert (y[1:, 1] == 0).all()


def test_parameters_io_sequence_model_and_export_refusal(tmp_path):
    m = LayerNormGRU(3, 4, num_layers=2, zoneout=0.1, eps=1e-3)
    names = [n for n, _ in m.named_parameters()]
    assert {"g_W_l0", "g_U_l0", "g_W_l1", "g_U_l1"} <= set(names) and len(names) == 12
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in m.named_parameters() if n.startswith("g_"))
    with torch.no_grad():
        m.g_W_l1.mul_(2)
    back = io.load(io.save(m, tmp_path / "ln.safetensors"))
    assert type(back) is LayerNormGRU and back.config() == m.config() and back.eps == 1e-3
    x = torch.randn(5, 2, 3)
    assert torch.equal(back.eval()(x)[0], m.eval()(x)[0])
    s = SequenceModel("lngru", 3, 8, 2)
    assert isinstance(s.rnn, LayerNormGRU) and s(x).shape == (2, 2)
    with pytest.raises(TypeError, match="layer normalisation .* no ONNX GRU operator equivalent"):
        grulab.export_onnx(m, tmp_path / "ln.onnx")
    with pytest.raises(ValueError, match="eps must be a positive float"):
        LayerNormGRU(3, 4, eps=0)
