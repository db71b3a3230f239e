"""grulab on a CUDA device against the CPU reference: skipped where no GPU is present.

On CUDA, ``backend="auto"`` runs reset="after" through PyTorch's cuDNN kernel after the exact
weight conversion and everything else through the reference loop (any device); these tests hold
both to the CPU truth in float64, forward and every gradient.
"""

import copy
import warnings

import pytest
import torch

import grulab
from tests.tolerances import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL64 = 1e-10  # relative to the largest magnitude of each compared quantity


def _run(model, x, hx, lengths, device):
    m = copy.deepcopy(model).to(device)
    xd = x.detach().to(device).requires_grad_()
    hd = None if hx is None else hx.detach().to(device).requires_grad_()
    y, h_n = m(xd, hd, lengths=lengths)
    h_n = h_n[0] if isinstance(h_n, tuple) else h_n
    g = torch.Generator().manual_seed(5)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype).to(device)
    dh = torch.randn(h_n.shape, generator=g, dtype=h_n.dtype).to(device)
    torch.autograd.backward((y, h_n), (dy, dh))
    grads = {"dx": xd.grad} | ({} if hd is None else {"dhx": hd.grad})
    grads |= {f"d{n}": p.grad for n, p in m.named_parameters()}
    return y, h_n, {k: v.cpu() for k, v in grads.items()}


def _compare(model, x, hx=None, lengths=None):
    y0, h0, g0 = _run(model, x, hx, lengths, "cpu")
    y1, h1, g1 = _run(model, x, hx, lengths, "cuda")
    assert_close("y", y1.cpu(), y0, TOL64, relative=True)
    assert_close("h_n", h1.cpu(), h0, TOL64, relative=True)
    assert g0.keys() == g1.keys()
    for k in g0:
        assert_close(k, g1[k], g0[k], TOL64, relative=True)


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_gru_on_cuda_matches_the_cpu(reset, with_lengths):
    torch.manual_seed(0)
    model = grulab.GRU(5, 7, num_layers=2, bidirectional=True, reset=reset).double()
    x = torch.randn(9, 4, 5, dtype=torch.float64)
    hx = torch.randn(4, 4, 7, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 6, 1]) if with_lengths else None
    _compare(model, x, hx, lengths)


def test_auto_on_cuda_runs_cudnn_for_reset_after(monkeypatch):
    import grulab.layers as layers

    calls = []
    real = layers.native_run
    monkeypatch.setattr(layers, "native_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for reset in ("after", "before"):
            model = grulab.GRU(3, 4, reset=reset).cuda()
            y, _ = model(torch.randn(5, 2, 3, device="cuda"), lengths=torch.tensor([5, 2]))
            y.sum().backward()
            assert y.device.type == "cuda"
    assert calls == [1]  # reset="after" only: cuDNN has no reset="before" candidate
    # cuDNN copies grulab's converted weights into its buffer on every call, by design: no warning about it
    assert not [w for w in caught if "contiguous chunk" in str(w.message)]


def test_float32_on_cuda_is_close_to_float64():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(1)
    model = grulab.GRU(16, 32, num_layers=2)
    x = torch.randn(50, 8, 16)
    y32, _ = model.cuda()(x.cuda())
    y64, _ = model.double().cpu()(x.double())
    assert_close("y", y32.double().cpu(), y64, 1e-5, relative=True)


@pytest.mark.parametrize("cls", [grulab.RNN, grulab.LSTM, grulab.MinGRU, grulab.LayerNormGRU])
def test_baselines_and_variants_on_cuda_match_the_cpu(cls):
    torch.manual_seed(2)
    model = cls(4, 6, num_layers=2).double()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    _compare(model, x, lengths=torch.tensor([7, 2, 5]))


@pytest.mark.parametrize("zoneout", [0.1, 0.0])
def test_regularized_gru_trains_on_cuda(zoneout):
    torch.manual_seed(3)
    model = grulab.RegularizedGRU(4, 8, zoneout=zoneout, input_dropout=0.1, recurrent_dropout=0.1).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target = torch.randn(20, 6, 4, device="cuda"), torch.rand(20, 6, 8, device="cuda")
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (model(x)[0] - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    if zoneout:  # zoneout's evaluation update has no plain-GRU equivalent (as_gru refuses it)
        return
    model.eval()
    y, _ = model(x)
    y_plain, _ = model.as_gru()(x)
    assert_close("eval = as_gru()", y, y_plain, 1e-5, relative=True)
