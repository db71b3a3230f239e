"""Module-level gradients of grulab.GRU, both candidates, every layer option.

``torch.nn.GRU`` is an oracle for ``reset="after"`` only, so here the truth is autograd of the
reference: the layer's per-direction ``gru_sequence`` is swapped for ``gru_ref`` run under torch's
autograd (no hand-derived backward anywhere on that path). Against it we hold the fused CPU engine
(``backend="auto"``) and the reference engine (``backend="reference"``), each with its hand BPTT,
on outputs, ``h_n`` and the gradients with respect to the input, ``hx`` and every parameter; and a
whole two-layer bidirectional module goes through ``torch.autograd.gradcheck``.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import grulab
import grulab.layers
from grulab.engine import dispatch
from grulab.engine.reference import gru_ref
from tests.tolerances import GRAD_MATCH, assert_close

D = torch.float64


def _gru_ref_autograd(x, h0, W, U, b_W, b_U, *, reset, lengths, reverse, backend):  # noqa: ARG001
    y, h_n, _ = gru_ref(x, h0, W, U, b_W, b_U, reset=reset, lengths=lengths, reverse=reverse)
    return y, h_n


@contextmanager
def autograd_of_reference() -> Iterator[None]:
    """Layers run ``gru_ref`` differentiated by autograd; the hand BPTT (GRUFunction) must not run."""
    refuse = mock.Mock(side_effect=AssertionError("GRUFunction used on the autograd path"))
    with mock.patch.object(grulab.layers, "gru_sequence", _gru_ref_autograd), \
            mock.patch.object(dispatch.GRUFunction, "apply", refuse):
        yield


def _run(module, x, hx, lengths, packed, gy_seed):
    """Forward, then gradients of a random linear functional of ``(output, h_n)``."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else hx.detach().clone().requires_grad_()
    if packed:
        inp = pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=False)
        y, h_n = module(inp, hx)
        assert isinstance(y, PackedSequence)
        y = y.data
    else:
        y, h_n = module(x, hx, lengths=lengths)
    g = torch.Generator().manual_seed(gy_seed)
    gy, gh = torch.randn(y.shape, generator=g, dtype=D), torch.randn(h_n.shape, generator=g, dtype=D)
    names = ["input"] + (["hx"] if hx is not None else []) + [n for n, _ in module.named_parameters()]
    leaves = [x] + ([hx] if hx is not None else []) + list(module.parameters())
    grads = torch.autograd.grad((y, h_n), leaves, (gy, gh))
    return y.detach(), h_n.detach(), dict(zip(names, grads, strict=True))


@st.composite
def layer_cases(draw):
    T, B = draw(st.integers(1, 7)), draw(st.integers(1, 4))
    mode = draw(st.sampled_from(["full", "lengths", "packed", "unbatched"]))
    lengths = None
    if mode == "unbatched":
        B = 1
    elif mode in ("lengths", "packed"):
        low = 1 if mode == "packed" else 0  # PyTorch cannot pack an empty sequence
        lengths = draw(st.lists(st.integers(low, T), min_size=B, max_size=B))
        if draw(st.booleans()):  # one full-length sequence somewhere, the others any length, any order
            lengths[draw(st.integers(0, B - 1))] = T
        lengths = torch.tensor(lengths)
    return dict(
        reset=draw(st.sampled_from(["before", "after"])), T=T, B=B, I=draw(st.integers(1, 5)),
        H=draw(st.integers(1, 6)), num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()), bias=draw(st.booleans()), mode=mode, lengths=lengths,
        use_hx=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


def _case(reset, T, B, I, H, num_layers, bidirectional, batch_first, bias, mode, lengths, use_hx, seed=0):
    return dict(reset=reset, T=T, B=B, I=I, H=H, num_layers=num_layers, bidirectional=bidirectional,
                batch_first=batch_first, bias=bias, mode=mode,
                lengths=None if lengths is None else torch.tensor(lengths), use_hx=use_hx, seed=seed)


@settings(max_examples=2 * settings.default.max_examples)
@given(case=layer_cases())
# the combinations torch.nn.GRU cannot check, pinned whatever hypothesis draws
@example(case=_case("before", 6, 4, 3, 4, 3, True, True, True, "lengths", [2, 6, 0, 5], True))
@example(case=_case("before", 5, 3, 2, 3, 2, True, False, False, "packed", [1, 5, 3], True))
@example(case=_case("before", 4, 1, 3, 2, 2, True, True, True, "unbatched", None, True))
@example(case=_case("after", 6, 4, 3, 4, 3, True, True, False, "lengths", [6, 1, 3, 0], False))
def test_hand_bptt_matches_autograd_of_the_reference_for_whole_modules(case):
    reset, T, B, I, H, L = (case[k] for k in ("reset", "T", "B", "I", "H", "num_layers"))
    mode, lengths, batch_first = case["mode"], case["lengths"], case["batch_first"]
    print(f"case: { {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in case.items()} }")
    torch.manual_seed(case["seed"])
    kw = dict(num_layers=L, bias=case["bias"], batch_first=batch_first, bidirectional=case["bidirectional"],
              reset=reset, dtype=D)
    modules = {b: grulab.GRU(I, H, backend=b, **kw) for b in ("auto", "reference")}
    modules["reference"].load_state_dict(modules["auto"].state_dict())
    LD = L * (2 if case["bidirectional"] else 1)
    if mode == "unbatched":
        x, hx_shape = torch.randn(T, I, dtype=D), (LD, H)
    else:
        x, hx_shape = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=D), (LD, B, H)
    hx = torch.randn(hx_shape, dtype=D) * 0.5 if case["use_hx"] else None
    assert dispatch.resolve_backend("auto", x) == "cpu"  # "auto" really is the fused engine here
    args = (x, hx, lengths, mode == "packed", case["seed"])

    with autograd_of_reference():
        y_true, h_true, g_true = _run(modules["reference"], *args)
    tol = GRAD_MATCH[D]
    for backend, module in modules.items():
        y, h_n, grads = _run(module, *args)
        assert_close(f"{backend}: output", y, y_true, tol)
        assert_close(f"{backend}: h_n", h_n, h_true, tol)
        if lengths is not None and mode != "packed":  # past a length the output is exactly zero
            steps = torch.arange(T)[:, None] >= lengths[None, :]  # (T, B)
            y_tb = y.transpose(0, 1) if batch_first else y
            assert not y_tb[steps].any()
        assert g_true.keys() == grads.keys()
        for name, g in grads.items():
            assert_close(f"{backend}: d{name}", g, g_true[name], tol, relative=True)


@pytest.mark.parametrize("reset", ["before", "after"])
def test_gradcheck_of_a_two_layer_bidirectional_module_with_lengths(reset):
    """The whole stack on the default backend (fused engine + hand BPTT) against finite differences."""
    T, B, I, H = 4, 3, 2, 2
    gru = grulab.GRU(I, H, num_layers=2, bidirectional=True, batch_first=True, reset=reset, dtype=D)
    assert gru.backend == "auto"
    names = [n for n, _ in gru.named_parameters()]
    x = torch.randn(B, T, I, dtype=D, requires_grad=True)
    hx = (torch.randn(4, B, H, dtype=D) * 0.5).requires_grad_()
    lengths = torch.tensor([2, T, 1])  # unsorted, one full, one of a single step
    params = [p.detach().clone().requires_grad_() for p in gru.parameters()]

    def f(x, hx, *params):
        return functional_call(gru, dict(zip(names, params, strict=True)), (x, hx), {"lengths": lengths})

    assert torch.autograd.gradcheck(f, (x, hx, *params))
