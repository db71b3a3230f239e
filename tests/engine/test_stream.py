"""Streaming inference and the native (PyTorch kernel) backend."""

import numpy as np
import pytest
import torch

import grulab
from tests.tolerances import assert_close


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("layers, B", [(1, 1), (3, 4)])
def test_stream_matches_the_whole_sequence(reset, dtype, tol, layers, B):
    gru = grulab.GRU(5, 7, num_layers=layers, reset=reset, dtype=dtype)
    x = torch.randn(30, B, 5, dtype=dtype)
    with torch.no_grad():
        y, h_n = gru(x)
    s = gru.stream(batch_size=B)
    outs = [s.step(x[t]).clone() for t in range(30)]
    assert_close("outputs", torch.stack(outs), y, tol)
    assert_close("state", s.state, h_n, tol)


def test_stream_state_read_set_reset_and_numpy_input():
    gru = grulab.GRU(3, 4, num_layers=2)
    s = gru.stream()
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    for x_t in x[:5]:
        s.step(x_t)
    saved = s.state
    a = torch.stack([s.step(x_t).clone() for x_t in x[5:]])
    s.state = saved
    b = torch.stack([s.step(torch.from_numpy(x_t)).clone() for x_t in x[5:]])
    assert torch.equal(a, b) and a.shape == (5, 4)
    s.reset()
    assert torch.count_nonzero(s.state) == 0
    y, _ = gru(torch.from_numpy(x))
    s.reset()
    assert_close("after reset", torch.stack([s.step(x_t).clone() for x_t in x]), y, 2e-6)


def test_stream_errors():
    with pytest.raises(ValueError, match="unidirectional"):
        grulab.GRU(3, 4, bidirectional=True).stream()
    s = grulab.GRU(3, 4).stream(batch_size=2)
    with pytest.raises(ValueError, match=r"x_t must have shape \(2, 3\)"):
        s.step(torch.zeros(3))
    with pytest.raises(TypeError, match="floating point"):
        s.step(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="state must have shape"):
        s.state = torch.zeros(1, 1, 4)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        grulab.GRU(3, 4).stream(batch_size=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_native_backend_matches_the_fused_engine(bidirectional):
    torch.manual_seed(0)
    ours = grulab.GRU(4, 6, num_layers=2, bidirectional=bidirectional, dtype=torch.float64)
    native = grulab.GRU(4, 6, num_layers=2, bidirectional=bidirectional, backend="native", dtype=torch.float64)
    native.load_state_dict(ours.state_dict())
    x = torch.randn(9, 3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([9, 4, 6])
    for L in (None, lengths, torch.tensor([9, 0, 6])):
        ya, ha = ours(x, lengths=L)
        yb, hb = native(x, lengths=L)
        assert_close("y", yb, ya, 1e-12)
        assert_close("h_n", hb, ha, 1e-12)
        ga = torch.autograd.grad((ya.sum() + ha.sum()), [x, *ours.parameters()])
        gb = torch.autograd.grad((yb.sum() + hb.sum()), [x, *native.parameters()])
        for a, b in zip(ga, gb, strict=True):
            assert_close("grad", b, a, 1e-10, relative=True)
    with pytest.raises(ValueError, match="only has the reset='after' candidate"):
        grulab.GRU(4, 6, reset="before", backend="native")


def test_stream_takes_bfloat16_input_and_keeps_a_float32_state():
    gru = grulab.GRU(3, 4)
    s = gru.stream()
    x = torch.randn(6, 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = torch.stack([s.step(x_t).clone() for x_t in x])
    y, _ = gru(x.float())
    assert outs.dtype == torch.float32
    assert_close("bf16 input", outs, y, 2e-6)


def test_stream_with_saturated_gates_matches_the_sequence_and_restores_the_thread_mode():
    """The float32 step flushes subnormals like the whole-sequence kernels (a gate at sigmoid(-88)
    is a subnormal) and leaves the calling thread's floating-point mode as it found it."""
    from grulab.engine._jitmath import ftz_enter, ftz_leave

    def mode() -> int:
        old = ftz_enter()
        ftz_leave(old)
        return old & ~0x3F if old >= 0 else old  # the low six bits are sticky exception flags

    gru = grulab.GRU(5, 40)
    with torch.no_grad():
        gru.b_W_l0[:40] = -88.0  # the update gate: z ~ 6e-39
    x = torch.randn(20, 1, 5)
    before = mode()
    with torch.no_grad():
        y, _ = gru(x)
    s = gru.stream()
    outs = torch.stack([s.step(x[t]).clone() for t in range(20)])
    assert_close("outputs", outs, y, 2e-6)
    assert mode() == before


def test_steps_through_the_bound_entry_point_match_the_dispatcher_for_every_input_form():
    """step() calls the kernel's compiled entry point for the stream's argument types: every form
    of input it accepts (read-only, another dtype, strided, 1-D, a tensor) is normalised first, and
    the states match a stream stepped through the dispatcher."""
    from grulab.engine import stream as stream_mod

    gru = grulab.GRU(5, 8)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5)).astype(np.float32)
    readonly = x.copy()
    readonly.setflags(write=False)
    forms = [readonly[0], x[0].astype(np.float64), np.asfortranarray(x[0]), x[0], torch.from_numpy(x[0]),
             torch.from_numpy(x[0].copy()).requires_grad_()]
    for B in (1, 2):
        for form in forms:
            s, ref = gru.stream(B), gru.stream(B)
            for t in range(6):
                row = form[t] if B == 1 else np.stack([np.asarray(form[t].detach() if isinstance(form, torch.Tensor)
                                                                  else form[t])] * 2)
                got = s.step(row).clone()
                plain = row.detach().numpy() if isinstance(row, torch.Tensor) else row
                stream_mod._stream_step(np.ascontiguousarray(np.asarray(plain, np.float32).reshape(B, 5)),
                                        *ref._args)
                assert torch.equal(got.reshape(B, 8), torch.from_numpy(ref._h[-1]))
