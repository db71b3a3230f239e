"""grulab modules under torch.autocast (CPU, bfloat16), torch.jit.trace and torch.compile."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import grulab
from grulab.models import SequenceModel
from grulab.variants.regularized import LayerNormGRU
from tests.tolerances import assert_close

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
