"""grulab modules under torch.autocast (CPU, bfloat16), torch.jit.trace and torch.compile."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import grulab
from grulab.models import SequenceModel
from grulab.variants.regularized import LayerNormGRU
from tests.tolerances import GRAD_MATCH, TORCH_MATCH, assert_close

MODULES = {
    "GRU": lambda: grulab.GRU(3, 5, num_layers=2, bidirectional=True),
    "GRU reference": lambda: grulab.GRU(3, 5, reset="before", backend="reference"),
    "RNN": lambda: grulab.RNN(3, 5),
    "LSTM": lambda: grulab.LSTM(3, 5, num_layers=2),
    "MinGRU": lambda: grulab.MinGRU(3, 5, num_layers=2),
    "LayerNormGRU": lambda: LayerNormGRU(3, 5, zoneout=0.1).eval(),
}


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_autocast_bfloat16_keeps_the_recurrence_and_state_in_float32(name, input_dtype):
    m = MODULES[name]()
    x = torch.randn(6, 2, 3)
    y, h = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ac, h_ac = m(x.to(input_dtype))
    for a, b in zip((y_ac, *(h_ac if isinstance(h_ac, tuple) else (h_ac,))),
                    (y, *(h if isinstance(h, tuple) else (h,))), strict=True):
        assert a.dtype == torch.float32
        # the recurrence ran in float32: exact for a float32 input, the input's rounding otherwise
        assert_close(f"{name} under autocast", a, b, 0.0 if input_dtype == torch.float32 else 2e-2)


def test_autocast_training_step_of_a_sequence_model():
    model = SequenceModel("gru", 3, 8, 2, num_layers=2)
    x, target = torch.randn(12, 4, 3), torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, lengths=torch.tensor([12, 5, 9, 1]))
        assert out.dtype == torch.bfloat16  # the head is a Linear: autocast runs it in bfloat16
        loss = torch.nn.functional.mse_loss(out.float(), target)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())


def test_autocast_packed_sequence_and_cell():
    gru = grulab.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    packed = pack_padded_sequence(x.bfloat16(), torch.tensor([5, 3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = gru(packed)
        h = grulab.GRUCell(3, 4)(x=x[0].bfloat16(), h=torch.zeros(2, 4, dtype=torch.bfloat16))  # keywords too
    assert y.data.dtype == torch.float32 and h.dtype == torch.float32


@pytest.mark.parametrize("reset", ["after", "before"])
def test_jit_trace_keeps_the_loop_and_saves(tmp_path, reset):
    gru = grulab.GRU(3, 5, num_layers=2, bidirectional=True, reset=reset, batch_first=True)
    traced = torch.jit.trace(gru, (torch.randn(2, 4, 3), torch.zeros(4, 2, 5)), check_trace=False)
    path = tmp_path / "gru.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    for T in (1, 4, 17):  # any length, not only the example's
        x, h0 = torch.randn(3, T, 3), torch.randn(4, 3, 5)
        with torch.no_grad():
            y, h = gru(x, h0)
            for name, mod in (("traced", traced), ("saved and loaded", loaded)):
                y_t, h_t = mod(x, h0)
                assert_close(f"{name} T={T}", y_t, y, 1e-6)
                assert_close(f"{name} h_n T={T}", h_t, h, 1e-6)


def test_jit_trace_of_minGRU_parallel_and_variant_warning():
    m = grulab.MinGRU(3, 4, num_layers=2)
    traced = torch.jit.trace(m, (torch.randn(6, 2, 3),), check_trace=False)
    x = torch.randn(13, 2, 3)
    assert_close("MinGRU traced at T=6, run at T=13", traced(x)[0], m(x)[0], 1e-6)
    with pytest.warns(UserWarning, match="only accepts sequences of length 6"):
        torch.jit.trace(LayerNormGRU(3, 4), (torch.randn(6, 2, 3),), check_trace=False)


def test_torch_compile_runs_forward_and_backward():
    torch._dynamo.reset()
    model = SequenceModel("gru", 3, 6, 2, num_layers=2, readout="all")
    compiled = torch.compile(model, dynamic=True)  # inductor; the recurrence itself is opaque to dynamo
    for T in (7, 11):
        x = torch.randn(T, 2, 3)
        y = compiled(x)
        assert_close(f"compiled T={T}", y, model(x), 1e-6)
        y.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# every public recurrent module (GRUCell below); the regularised ones in training draw their masks
# from torch's global generator, so eager and compiled runs are seeded alike
COMPILE_MODULES = {
    "GRU after": lambda: grulab.GRU(3, 5, num_layers=2, bidirectional=True),
    "GRU before": lambda: grulab.GRU(3, 5, reset="before"),
    "GRU before reference": lambda: grulab.GRU(3, 5, reset="before", backend="reference"),
    "RNN": lambda: grulab.RNN(3, 5, num_layers=2),
    "LSTM": lambda: grulab.LSTM(3, 5, num_layers=2, bidirectional=True),
    "MinGRU": lambda: grulab.MinGRU(3, 5, num_layers=2),
    "LayerNormGRU": lambda: grulab.LayerNormGRU(3, 5, zoneout=0.1).eval(),
    "RegularizedGRU eval": lambda: grulab.RegularizedGRU(3, 5, num_layers=2, dropout=0.2, zoneout=0.1,
                                                         input_dropout=0.1, recurrent_dropout=0.2).eval(),
    "RegularizedGRU train": lambda: grulab.RegularizedGRU(3, 5, num_layers=2, dropout=0.2, zoneout=0.1,
                                                          input_dropout=0.1, recurrent_dropout=0.2).train(),
}


def _forward_backward(m, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Output, final state(s) and the gradients of a loss on both w.r.t. input and parameters."""
    torch.manual_seed(seed)
    y, h = m(x)
    hs = h if isinstance(h, tuple) else (h,)
    loss = y.square().mean() + sum(s.sin().sum() for s in hs)
    return [y, *hs, *torch.autograd.grad(loss, [x, *m.parameters()])]


@pytest.mark.parametrize("name", list(COMPILE_MODULES))
def test_torch_compile_matches_eager_forward_and_backward(name):
    # aot_eager: dynamo capture plus AOT autograd (where custom autograd.Functions and opaque ops
    # break), without inductor's code generation; the inductor test above keeps that path.
    torch._dynamo.reset()
    m = COMPILE_MODULES[name]()
    compiled = torch.compile(m, backend="aot_eager", dynamic=True)
    for T in (4, 7):
        x = torch.randn(T, 2, 3, requires_grad=True)
        eager, comp = _forward_backward(m, x, seed=T), _forward_backward(compiled, x, seed=T)
        n_out = len(eager) - 1 - len(list(m.parameters()))
        for i, (a, b) in enumerate(zip(comp, eager, strict=True)):
            what = "output" if i == 0 else "state" if i < n_out else "gradient"
            assert a.dtype == torch.float32 and torch.isfinite(a).all(), f"{name} T={T} {what} {i}"
            tol = TORCH_MATCH[torch.float32] if i < n_out else GRAD_MATCH[torch.float32]
            assert_close(f"{name} compiled T={T} {what} {i}", a, b, tol, relative=i >= n_out)
    torch._dynamo.reset()


def test_torch_compile_of_GRUCell_rolled_over_two_lengths():
    torch._dynamo.reset()
    cell = grulab.GRUCell(3, 5, reset="before")
    compiled = torch.compile(cell, backend="aot_eager", dynamic=True)

    def roll(c, x: torch.Tensor) -> list[torch.Tensor]:
        h = None
        for t in range(x.shape[0]):
            h = c(x[t], h)
        return [h, *torch.autograd.grad(h.sin().sum(), [x, *cell.parameters()])]

    for T, B in ((4, 2), (7, 4)):
        x = torch.randn(T, B, 3, requires_grad=True)
        for i, (a, b) in enumerate(zip(roll(compiled, x), roll(cell, x), strict=True)):
            assert torch.isfinite(a).all()
            assert_close(f"GRUCell compiled T={T} B={B} {'h' if i == 0 else f'gradient {i}'}", a, b,
                         TORCH_MATCH[torch.float32] if i == 0 else GRAD_MATCH[torch.float32], relative=i > 0)
    torch._dynamo.reset()


def _trace(m, example: tuple) -> tuple[torch.jit.ScriptModule, list[str]]:
    """The traced module and the messages of grulab's unrolled-loop warnings raised while tracing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(m, example, check_trace=False)
    return traced, [str(w.message) for w in caught if "unrolls" in str(w.message)]


def _leaves(out: tuple) -> list[torch.Tensor]:
    """``(y, h)`` or ``(y, (h, c))`` as a flat list."""
    y, h = out
    return [y, *(h if isinstance(h, tuple) else (h,))]


# what grulab.runtime promises: a trace keeps the loop (any length) where the module runs
# PyTorch's kernel or grulab.GRU's scripted loop, and warns where it unrolls a per-step loop
TRACE_KEPT = {
    "RNN": lambda: grulab.RNN(3, 5, num_layers=2, bidirectional=True),
    "LSTM": lambda: grulab.LSTM(3, 5, num_layers=2),
    "RegularizedGRU eval, dropout only": lambda: grulab.RegularizedGRU(
        3, 5, num_layers=2, dropout=0.2, input_dropout=0.1, recurrent_dropout=0.2).eval(),
}
TRACE_UNROLLED = {
    "RNN reference": lambda: grulab.RNN(3, 5, backend="reference"),
    "LSTM reference": lambda: grulab.LSTM(3, 5, backend="reference"),
    "RegularizedGRU eval, zoneout": lambda: grulab.RegularizedGRU(3, 5, zoneout=0.1).eval(),
}


@pytest.mark.parametrize("name", list(TRACE_KEPT))
def test_jit_trace_keeps_any_length(name):
    m = TRACE_KEPT[name]()
    traced, unrolled = _trace(m, (torch.randn(6, 2, 3),))
    assert unrolled == []
    for T in (1, 13):
        x = torch.randn(T, 3, 3)
        with torch.no_grad():
            for i, (a, b) in enumerate(zip(_leaves(traced(x)), _leaves(m(x)), strict=True)):
                assert_close(f"{name} traced at T=6, run at T={T}, tensor {i}", a, b, TORCH_MATCH[torch.float32])


@pytest.mark.parametrize("name", list(TRACE_UNROLLED))
def test_jit_trace_of_a_per_step_loop_warns(name):
    m = TRACE_UNROLLED[name]()
    traced, unrolled = _trace(m, (torch.randn(6, 2, 3),))
    assert len(unrolled) == m.num_layers * m.num_directions, unrolled
    assert all("only accepts sequences of length 6" in u for u in unrolled)
    x = torch.randn(6, 3, 3)  # the example's length still runs, and matches
    with torch.no_grad():
        assert_close(f"{name} traced at its own length", traced(x)[0], m(x)[0], TORCH_MATCH[torch.float32])


def test_jit_trace_of_GRUCell_at_another_batch_size():
    # one step: no length to freeze; the trace must not freeze the batch size either
    cell = grulab.GRUCell(3, 5)
    traced, unrolled = _trace(cell, (torch.randn(2, 3), torch.randn(2, 5)))
    assert unrolled == []
    x, h = torch.randn(7, 3), torch.randn(7, 5)
    with torch.no_grad():
        assert_close("GRUCell traced at B=2, run at B=7", traced(x, h), cell(x, h), TORCH_MATCH[torch.float32])


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_autocast_bfloat16_training_RegularizedGRU(input_dtype):
    gru = grulab.RegularizedGRU(3, 5, num_layers=2, dropout=0.2, zoneout=0.1, input_dropout=0.1,
                                recurrent_dropout=0.2).train()
    x = torch.randn(9, 2, 3)

    def run(autocast: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)  # same masks in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, h = gru(x.to(input_dtype) if autocast else x)
        return [y, h, *torch.autograd.grad(y.square().mean() + h.sin().sum(), list(gru.parameters()))]

    ref = run(False)
    for i, (a, b) in enumerate(zip(run(True), ref, strict=True)):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), f"tensor {i}: {a.dtype}"
        # the recurrence runs in float32: exact for a float32 input, the input's rounding otherwise
        tol = 0.0 if input_dtype == torch.float32 else 2e-2
        assert_close(f"RegularizedGRU training under autocast, tensor {i}", a, b, tol, relative=i >= 2)


@pytest.mark.parametrize("cls", [grulab.GRU, grulab.RNN, grulab.LSTM, grulab.MinGRU])
def test_torch_compile_does_not_recompile_per_length(cls):
    """The recurrence is opaque to dynamo (PyTorch's own kernel too): new lengths reuse the graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(cls(3, 5, num_layers=2), backend="aot_eager", dynamic=True)
    graphs = []
    for T in (4, 7, 11, 16):
        compiled(torch.randn(T, 2, 3))[0].sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    print(f"{cls.__name__}: unique graphs after each length {graphs}")
    assert graphs[1:] == graphs[:1] * 3
