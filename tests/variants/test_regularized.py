"""Zoneout and variational dropout: the reference against the published equations written out with
separate matrices, mask statistics and scope (per step, per sequence), and the evaluation forms."""

import pytest
import torch
import torch.nn.functional as F

import grulab
from grulab import io
from grulab.cells import regularize
from grulab.engine.reference import gru_ref
from grulab.variants.regularized import LayerNormGRU, RegularizedGRU, variant_gru_ref
from tests.tolerances import assert_close


def _params(I, H, dtype=torch.float64):
    return (torch.randn(3 * H, I, dtype=dtype), torch.randn(3 * H, H, dtype=dtype),
            torch.randn(3 * H, dtype=dtype), torch.randn(3 * H, dtype=dtype))


def gal_gru(x, h, W, U, b_W, b_U, m_x, m_h, reset):
    """Gal & Ghahramani's GRU (tied masks), separate matrices, one loop."""
    Wz, Wr, Wh = W.chunk(3)
    Uz, Ur, Uh = U.chunk(3)
    bWz, bWr, bWh = b_W.chunk(3)
    bUz, bUr, bUh = b_U.chunk(3)
    out = []
    for x_t in x:
        xd, hd = x_t * m_x, h * m_h
        z = torch.sigmoid(F.linear(xd, Wz, bWz) + F.linear(hd, Uz, bUz))
        r = torch.sigmoid(F.linear(xd, Wr, bWr) + F.linear(hd, Ur, bUr))
        if reset == "after":
            cand = torch.tanh(F.linear(xd, Wh, bWh) + r * F.linear(hd, Uh, bUh))
        else:
            cand = torch.tanh(F.linear(xd, Wh, bWh) + F.linear(r * hd, Uh, bUh))
        h = (1 - z) * h + z * cand
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_variational_dropout_matches_gal_and_ghahramani(reset):
    torch.manual_seed(0)
    T, B, I, H = 7, 3, 4, 5
    params = _params(I, H)
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    m_x = regularize.dropout_mask((B, I), 0.4, x)
    m_h = regularize.dropout_mask((B, H), 0.3, x)
    y, h_n = variant_gru_ref(x, h0, *params, reset=reset, m_x=m_x, m_h=m_h)
    expected = gal_gru(x, h0, *params, m_x, m_h, reset)
    assert_close("Gal GRU", y, expected, 1e-14)
    assert_close("h_n", h_n, expected[-1], 1e-14)
    # all-ones masks and no zoneout: exactly the seed's GRU
    ones = variant_gru_ref(x, h0, *params, reset=reset, m_x=torch.ones(B, I, dtype=torch.float64),
                           m_h=torch.ones(B, H, dtype=torch.float64),
                           zoneout_masks=torch.zeros(T, B, H, dtype=torch.float64))
    assert_close("unit masks = GRU", ones[0], gru_ref(x, h0, *params, reset=reset)[0], 1e-15)


def test_zoneout_matches_krueger_et_al():
    torch.manual_seed(1)
    T, B, I, H = 9, 2, 3, 4
    params = _params(I, H)
    cell = grulab.GRUCell(I, H).double()
    with torch.no_grad():
        for p, q in zip((cell.W, cell.U, cell.b_W, cell.b_U), params, strict=True):
            p.copy_(q)
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    d = regularize.zoneout_mask((T, B, H), 0.3, x)
    y, _ = variant_gru_ref(x, h0, *params, zoneout_masks=d)
    y_eval, _ = variant_gru_ref(x, h0, *params, zoneout_p=0.3)
    h, h_e, train, evaluation = h0, h0, [], []
    for t in range(T):  # (Z1) and (Z2) with the GRU step as f
        h = d[t] * h + (1 - d[t]) * cell(x[t], h)
        h_e = 0.3 * h_e + 0.7 * cell(x[t], h_e)
        train.append(h)
        evaluation.append(h_e)
    assert_close("zoneout (Z1)", y, torch.stack(train), 1e-14)
    assert_close("zoneout evaluation (Z2)", y_eval, torch.stack(evaluation), 1e-14)
    frozen, _ = variant_gru_ref(x, h0, *params, zoneout_masks=torch.ones(T, B, H, dtype=torch.float64))
    assert torch.equal(frozen, h0.expand(T, B, H))  # every unit zoned out: the state never moves


def test_zoneout_keeps_the_fraction_p_of_units_per_step():
    torch.manual_seed(2)
    m = RegularizedGRU(3, 100, zoneout=0.3).train()
    y, _ = m(torch.randn(30, 8, 3))
    held = (y[1:] == y[:-1]).double().mean().item()  # a unit that zoned out repeats exactly
    print(f"fraction of units held: {held:.3f}")
    assert abs(held - 0.3) < 0.02


def test_variational_masks_are_drawn_once_per_sequence(monkeypatch):
    calls = []
    real = regularize.dropout_mask

    def spy(shape, p, like):
        calls.append((shape, p))
        return real(shape, p, like)

    import grulab.variants.regularized as R

    monkeypatch.setattr(R, "dropout_mask", spy)
    m = RegularizedGRU(3, 5, num_layers=2, bidirectional=True, input_dropout=0.2, recurrent_dropout=0.4)
    m(torch.randn(30, 4, 3))
    # per layer and direction one (B, I_k) input mask and one (B, H) recurrent mask, not one per step
    assert sorted(calls) == sorted([((4, 3), 0.2)] * 2 + [((4, 10), 0.2)] * 2 + [((4, 5), 0.4)] * 4)


def test_input_dropout_drops_the_same_features_at_every_step():
    torch.manual_seed(3)
    m = RegularizedGRU(40, 8, input_dropout=0.5).train()
    x = torch.randn(12, 3, 40, requires_grad=True)
    y, _ = m(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    dropped = (g == 0).all(dim=0, keepdim=True)  # (1, B, I)
    assert ((g == 0) == dropped).all()  # the same features are cut at all 12 steps
    frac = dropped.double().mean().item()
    print(f"fraction of input features dropped: {frac:.2f}")
    assert 0.3 < frac < 0.7


def test_evaluation_is_the_plain_gru_unless_zoneout(tmp_path):
    torch.manual_seed(4)
    m = RegularizedGRU(3, 5, num_layers=2, input_dropout=0.3, recurrent_dropout=0.3, reset="before")
    x = torch.randn(6, 2, 3)
    plain = m.as_gru()
    assert type(plain) is grulab.GRU and plain.reset == "before"
    m.eval()
    assert torch.equal(m(x)[0], plain(x)[0])
    path = io.save(m, tmp_path / "r.safetensors")
    assert torch.equal(io.load(path).eval()(x)[0], plain(x)[0])
    m.train()
    assert not torch.equal(m(x)[0], plain(x)[0])  # masks in training
    z = RegularizedGRU(3, 5, zoneout=0.2).eval()
    with pytest.raises(ValueError, match="no plain-GRU equivalent: zoneout=0.2"):
        z.as_gru()
    with pytest.raises(TypeError, match="cannot be exported to the ONNX GRU operator"):
        grulab.export_onnx(z, tmp_path / "z.onnx")


def test_export_of_a_dropout_trained_gru_runs_in_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    from grulab.export import run_onnx

    m = RegularizedGRU(3, 5, recurrent_dropout=0.5, bidirectional=True).eval()
    x = torch.randn(7, 2, 3)
    y_ort, h_ort = run_onnx(grulab.export_onnx(m, tmp_path / "r.onnx"), x.numpy())
    with torch.no_grad():
        y, h = m(x)
    assert_close("ORT", torch.from_numpy(y_ort), y, 1e-5)
    assert_close("ORT h_n", torch.from_numpy(h_ort), h, 1e-5)


@pytest.mark.parametrize("cls", [RegularizedGRU, LayerNormGRU])
def test_training_gradients_flow_with_every_regulariser(cls):
    torch.manual_seed(5)
    m = cls(3, 6, num_layers=2, zoneout=0.2, input_dropout=0.2, recurrent_dropout=0.2, dropout=0.1)
    y, h_n = m(torch.randn(10, 4, 3), lengths=torch.tensor([10, 4, 1, 7]))
    (y.square().mean() + h_n.square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_bad_probabilities():
    for name in ("zoneout", "input_dropout", "recurrent_dropout"):
        with pytest.raises(ValueError, match=f"{name} must be a probability in \\[0, 1\\)"):
            RegularizedGRU(2, 3, **{name: 1.0})
    with pytest.raises(ValueError, match="g_W and g_U must be given together"):
        variant_gru_ref(torch.zeros(2, 1, 2), torch.zeros(1, 3), *_params(2, 3), g_W=torch.ones(9))


def test_torch_interop():
    ref = torch.nn.GRU(3, 4, num_layers=2)
    m = RegularizedGRU.from_torch(ref, recurrent_dropout=0.2).eval()
    x = torch.randn(5, 2, 3)
    assert m.recurrent_dropout == 0.2
    assert_close("from torch.nn.GRU", m(x)[0], ref(x)[0], 1e-6)
    back = m.to_torch()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(TypeError, match="no torch.nn equivalent"):
        LayerNormGRU.from_torch(ref)
    with pytest.raises(ValueError, match="no plain-GRU equivalent"):
        LayerNormGRU(3, 4).to_torch()
    with pytest.raises(TypeError, match="no torch.nn equivalent"):
        grulab.MinGRU(3, 4).to_torch()
