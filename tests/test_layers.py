"""grulab.GRU/RNN/LSTM against torch.nn.GRU/RNN/LSTM after exact conversion, over every option."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.autograd.functional import jacobian
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grulab
from tests.tolerances import GRAD_MATCH, TORCH_MATCH, assert_close

KINDS = {"GRU": (nn.GRU, grulab.GRU), "RNN": (nn.RNN, grulab.RNN), "LSTM": (nn.LSTM, grulab.LSTM)}


def _states(h):
    return h if isinstance(h, tuple) else (h,)


def _rand_hx(kind, L, B, H, dtype, unbatched):
    shape = (L, H) if unbatched else (L, B, H)
    h = torch.randn(*shape, dtype=dtype) * 0.5
    return (h, torch.randn(*shape, dtype=dtype) * 0.5) if kind == "LSTM" else h


option_strategy = dict(
    kind=st.sampled_from(list(KINDS)),
    T=st.integers(1, 8), B=st.integers(1, 4), I=st.integers(1, 6), H=st.integers(1, 7),
    layers=st.integers(1, 3), bidirectional=st.booleans(), batch_first=st.booleans(), bias=st.booleans(),
    use_lengths=st.booleans(), use_hx=st.booleans(), unbatched=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]), backend=st.sampled_from(["auto", "reference"]),
)


@given(**option_strategy)
def test_matches_torch_forward_and_gradients(kind, T, B, I, H, layers, bidirectional, batch_first, bias,
                                             use_lengths, use_hx, unbatched, dtype, backend):
    torch_cls, ours_cls = KINDS[kind]
    ref = torch_cls(I, H, num_layers=layers, bias=bias, batch_first=batch_first,
                    bidirectional=bidirectional).to(dtype)
    ours = ours_cls.from_torch(ref, backend=backend)
    L = layers * (2 if bidirectional else 1)
    if unbatched:
        use_lengths, B = False, 1
    x = torch.randn((T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I)), dtype=dtype)
    hx = _rand_hx(kind, L, B, H, dtype, unbatched) if use_hx else None
    tol = TORCH_MATCH[dtype]
    if use_lengths:
        lengths = torch.randint(1, T + 1, (B,))
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        y_ref, h_ref = ref(packed, hx)
        y_ref, _ = pad_packed_sequence(y_ref, batch_first=batch_first, total_length=T)
        y, h = ours(x, hx, lengths=lengths)
    else:
        y_ref, h_ref = ref(x, hx)
        y, h = ours(x, hx)
    assert_close("output", y, y_ref, tol)
    for a, b in zip(_states(h), _states(h_ref), strict=True):
        assert_close("h_n", a, b, tol)
    # gradients of a random linear functional, with respect to the input and every parameter
    x.requires_grad_()
    wy = torch.randn_like(y_ref)
    outs = [ours(x, hx, lengths=lengths) if use_lengths else ours(x, hx)]
    if use_lengths:
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        yr, hr = ref(packed, hx)
        yr, _ = pad_packed_sequence(yr, batch_first=batch_first, total_length=T)
    else:
        yr, hr = ref(x, hx)
    y, h = outs[0]
    loss = (y * wy).sum() + sum(s.sum() for s in _states(h))
    loss_ref = (yr * wy).sum() + sum(s.sum() for s in _states(hr))
    g_ours = torch.autograd.grad(loss, [x] + list(ours.parameters()))
    g_ref = torch.autograd.grad(loss_ref, [x] + list(ref.parameters()))
    gtol = GRAD_MATCH[dtype]
    assert_close("dx", g_ours[0], g_ref[0], gtol, relative=True)
    torch_grads = dict(zip([n for n, _ in ref.named_parameters()], g_ref[1:], strict=True))
    back = type(ours).from_torch(ref)  # maps names; convert our grads to torch layout via to_torch
    for p, g in zip(back.parameters(), g_ours[1:], strict=True):
        p.data.copy_(g)
    converted = dict(back.to_torch().named_parameters())
    for name, g in torch_grads.items():
        assert_close(f"d{name}", converted[name], g, gtol, relative=True)


@pytest.mark.parametrize("reset", ["before", "after"])
def test_packed_sequence_in_packed_sequence_out(reset):
    gru = grulab.GRU(3, 5, num_layers=2, bidirectional=True, reset=reset)
    x = torch.randn(6, 4, 3)
    lengths = torch.tensor([2, 6, 4, 1])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_packed, h_packed = gru(packed)
    assert isinstance(y_packed, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(y_packed.sorted_indices, packed.sorted_indices)
    y_pad, h_pad = gru(x, lengths=lengths)
    y_unpacked, out_lengths = pad_packed_sequence(y_packed, total_length=6)
    assert torch.equal(out_lengths, lengths)
    assert torch.equal(y_unpacked, y_pad) and torch.equal(h_packed, h_pad)


@pytest.mark.parametrize("reset", ["before", "after"])
def test_lengths_equal_running_each_sequence_alone(reset):
    """The state at a sequence's last valid step is what running that sequence alone gives."""
    gru = grulab.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True, reset=reset).double()
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5])
    y, h = gru(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_b, h_b = gru(x[b:b + 1, :n])
        assert_close(f"y[{b}]", y[b, :n], y_b[0], 1e-14)
        assert torch.equal(y[b, n:], torch.zeros_like(y[b, n:]))
        assert_close(f"h[{b}]", h[:, b], h_b[:, 0], 1e-14)


def test_dropout_between_layers_only_in_training():
    gru = grulab.GRU(3, 8, num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 3)
    gru.train()
    assert not torch.equal(gru(x)[0], gru(x)[0])
    gru.eval()
    assert torch.equal(gru(x)[0], gru(x)[0])
    single = grulab.GRU(3, 8, num_layers=1, dropout=0.5)
    single.train()
    assert torch.equal(single(x)[0], single(x)[0])


def test_grucell_matches_torch_and_one_step_of_gru():
    ref = nn.GRUCell(4, 6).double()
    cell = grulab.GRUCell.from_torch(ref)
    x, h = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    assert_close("cell", cell(x, h), ref(x, h), 1e-12)
    assert_close("unbatched", cell(x[0], h[0]), ref(x[0], h[0]), 1e-12)
    assert_close("h=None", cell(x), ref(x), 1e-12)
    back = cell.to_torch()
    assert_close("round trip", back(x, h), ref(x, h), 0.0)
    gru = grulab.GRU(4, 6).double()
    with torch.no_grad():
        for a, b in zip(gru.direction_parameters(0), cell.direction_parameters(), strict=True):
            a.copy_(b)
    assert_close("GRU one step", gru(x[None], h[None])[1][0], cell(x, h), 1e-14)


def test_reset_before_differs_and_has_no_torch_equivalent():
    torch.manual_seed(0)
    after = grulab.GRU(3, 4, reset="after")
    before = grulab.GRU(3, 4, reset="before")
    before.load_state_dict(after.state_dict())
    x = torch.randn(5, 2, 3)
    assert not torch.allclose(after(x)[0], before(x)[0])
    with pytest.raises(ValueError, match="reset='after'"):
        before.to_torch()


def test_parameter_names_follow_the_equations():
    gru = grulab.GRU(3, 4, num_layers=2, bidirectional=True)
    names = [n for n, _ in gru.named_parameters()]
    assert names[:4] == ["W_l0", "U_l0", "b_W_l0", "b_U_l0"]
    assert "W_l1_reverse" in names and gru.W_l1.shape == (12, 8)
    assert "bias=False" in repr(grulab.GRU(3, 4, bias=False))


@pytest.mark.parametrize("kind", ["GRU", "RNN", "LSTM"])
def test_step_jacobian_public_api(kind):
    m = KINDS[kind][1](3, 4, num_layers=2).double()
    x, h = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    if kind == "LSTM":
        J = grulab.step_jacobian(m, x, h, c_prev=torch.randn(2, 4, dtype=torch.float64), layer=1)
        assert J.shape == (2, 8, 8)
    else:
        J = grulab.step_jacobian(m, x, h, layer=1)
        assert J.shape == (2, 4, 4)
        assert grulab.step_jacobian(m, x[0], h[0], layer=1).shape == (4, 4)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_step_jacobian_of_the_baselines_equals_autograd_of_one_step(kind):
    """Values, not only shapes, for the baselines (the GRU's test is below): one step of a one-layer
    module (PyTorch's kernel on our parameters) differentiated by autograd, one sequence at a time."""
    m = KINDS[kind][1](3, 4).double()
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    c = torch.randn(2, 4, dtype=torch.float64)
    J = grulab.step_jacobian(m, x, h, c_prev=c if kind == "LSTM" else None)
    for b in range(2):
        if kind == "LSTM":
            f = lambda s, b=b: torch.cat([v[0] for v in m(x[b:b + 1], (s[None, :4], s[None, 4:]))[1]])
            auto = jacobian(f, torch.cat([h[b], c[b]]))
        else:
            auto = jacobian(lambda s, b=b: m(x[b:b + 1], s[None])[1][0], h[b])
        assert_close(f"{kind} J[{b}]", J[b], auto, GRAD_MATCH[torch.float64])


def _one_step_jacobian(m, x, hx, idx):
    """``∂h_n[idx]/∂hx[idx]`` of one time step of the whole module, by autograd, per batch item
    ``(B, H, H)``; cross-batch blocks must vanish. Also returns that direction's layer input."""
    B, D = hx.shape[1], m.num_directions

    def h_n(h):
        return m(x, torch.cat([hx[:idx], h[None], hx[idx + 1:]]))[1][idx]  # (B, H)

    full = jacobian(h_n, hx[idx])  # (B, H, B, H)
    blocks = torch.stack([full[b, :, b, :] for b in range(B)])
    off = full.clone()
    for b in range(B):
        off[b, :, b, :] = 0
    assert not off.any(), "a sequence's step depends on another sequence's state"
    layer = idx // D
    with torch.no_grad():
        if layer == 0:
            x_layer = x[0]
        else:  # one step: the layer below outputs its final states, forward direction first
            h_below = m(x, hx)[1][(layer - 1) * D:layer * D]  # (D, B, H)
            x_layer = torch.cat(list(h_below), dim=-1)
    return blocks, x_layer


@pytest.mark.parametrize("reset", ["before", "after"])
def test_step_jacobian_equals_autograd_of_one_module_step(reset):
    """``grulab.step_jacobian`` of every layer and direction against autograd through one step of
    the whole module; with ``U`` zeroed only the direct part ``diag(1 - z)`` remains."""
    T, B, I, H = 1, 3, 3, 4
    m = grulab.GRU(I, H, num_layers=2, bidirectional=True, reset=reset, dtype=torch.float64)
    with torch.no_grad():  # gates away from 1/2 so that every term of the Jacobian is visible
        for p in m.parameters():
            p.mul_(2.0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = torch.randn(4, B, H, dtype=torch.float64)
    tol = GRAD_MATCH[torch.float64]
    for idx in range(4):
        layer, direction = divmod(idx, 2)
        auto, x_layer = _one_step_jacobian(m, x, hx, idx)
        J = grulab.step_jacobian(m, x_layer, hx[idx], layer=layer, direction=direction)
        assert_close(f"J l{layer} d{direction}", J, auto, tol, relative=True)
        assert_close(f"J l{layer} d{direction} unbatched",
                     grulab.step_jacobian(m, x_layer[1], hx[idx, 1], layer=layer, direction=direction), J[1],
                     TORCH_MATCH[torch.float64])
        # the direct part alone: with U = 0 the paths through z, r and h_tilde carry nothing
        W, U, b_W, b_U = m.direction_parameters(layer, direction)
        with torch.no_grad():
            U.zero_()
            z = torch.sigmoid(x_layer @ W[:H].T + b_W[:H] + b_U[:H])  # (B, H) rows [z; r; h] of the layout
        J0 = grulab.step_jacobian(m, x_layer, hx[idx], layer=layer, direction=direction)
        assert_close(f"J0 l{layer} d{direction} = diag(1 - z)", J0, torch.diag_embed(1 - z), TORCH_MATCH[torch.float64])
        auto0, _ = _one_step_jacobian(m, x, hx, idx)
        assert_close(f"autograd with U = 0, l{layer} d{direction}", auto0, J0, tol)
    # GRUCell: step_jacobian against autograd of the plain torch-ops cell (no hand backward anywhere)
    cell = grulab.GRUCell(I, H, reset=reset, dtype=torch.float64)
    xc, hc = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    J = grulab.step_jacobian(cell, xc, hc)
    for b in range(B):
        auto = jacobian(lambda h, b=b: cell(xc[b], h), hc[b])
        assert_close(f"GRUCell J[{b}]", J[b], auto, TORCH_MATCH[torch.float64])
