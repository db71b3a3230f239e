"""Scratch buffers lent to the engines' per-call temporaries (grulab.engine._scratch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grulab
from grulab.engine import _scratch, release_scratch
from grulab.engine._scratch import scratch


@pytest.fixture(autouse=True)
def keep_every_size(monkeypatch):
    """These tests use small shapes: keep buffers of any size (the rule is tested below)."""
    monkeypatch.setattr(_scratch, "SCRATCH_MIN_BYTES", 0)
    yield
    release_scratch()


def test_the_buffer_is_lent_again_and_grows_when_too_small():
    release_scratch()
    with scratch("t", (4, 5), torch.float32) as a:
        ptr = a.data_ptr()
        assert a.shape == (4, 5) and a.is_contiguous()
    with scratch("t", (2, 3), torch.float32) as b:
        assert b.data_ptr() == ptr  # the same memory, a smaller view
    with scratch("t", (10, 10), torch.float32) as c:
        assert c.numel() == 100
    with scratch("t", (10, 10), torch.float64) as d:
        assert d.dtype == torch.float64 and d.data_ptr() != c.data_ptr()  # one buffer per dtype
    release_scratch()
    assert not _scratch._FREE


def test_a_buffer_in_use_is_not_lent_twice():
    """Nested (or concurrent) use of one name gets separate memory."""
    release_scratch()
    with scratch("t", (8,), torch.float32) as a, scratch("t", (8,), torch.float32) as b:
        a.fill_(1.0)
        b.fill_(2.0)
        assert a.data_ptr() != b.data_ptr() and bool((a == 1).all())
    release_scratch()


def test_only_sizes_the_allocator_maps_per_call_are_kept(monkeypatch):
    """Below SCRATCH_MIN_BYTES the allocator's heap recycles a block for everyone; above
    SCRATCH_MAX_BYTES a buffer is not worth holding between calls."""
    release_scratch()
    monkeypatch.setattr(_scratch, "SCRATCH_MIN_BYTES", 64)
    monkeypatch.setattr(_scratch, "SCRATCH_MAX_BYTES", 256)
    for n, kept in ((8, False), (32, True), (100, False)):  # 32, 128 and 400 bytes
        with scratch(f"n{n}", (n,), torch.float32) as a:
            assert a.shape == (n,)
        assert ((f"n{n}", torch.float32) in _scratch._FREE) == kept


def test_gradients_do_not_depend_on_what_the_scratch_held_before():
    """A backward after a larger one (the buffer holds its values) gives the gradients of a fresh one:
    the GRU (both candidates), minGRU and a variant engine (layer norm)."""
    torch.manual_seed(0)

    def grads(model, x):
        model.zero_grad(set_to_none=True)
        y, h = model(x)
        (y.square().sum() + h.sum()).backward()  # y.sum() alone would give a broadcast dy
        return [p.grad for p in model.parameters()]

    models = [grulab.GRU(6, 32, reset=reset) for reset in ("after", "before")]
    models += [grulab.MinGRU(6, 32), grulab.LayerNormGRU(6, 32)]
    for model in models:
        big, small = torch.randn(40, 24, 6), torch.randn(9, 5, 6)
        release_scratch()
        fresh = grads(model, small)
        kept = [g.clone() for g in fresh]
        grads(model, big)
        again = grads(model, small)
        assert all(torch.equal(a, b) for a, b in zip(kept, again, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(kept, fresh, strict=True))  # no gradient aliases a scratch


def test_pages_empty_gives_a_writable_tensor_of_the_shape_and_dtype():
    from grulab.engine._scratch import pages_empty

    for dtype in (torch.float32, torch.float64):
        t = pages_empty((3, 4, 5), dtype)
        assert t.shape == (3, 4, 5) and t.dtype == dtype and t.is_contiguous()
        t.fill_(2.0)
        assert float(t.sum()) == 120.0


def test_page_buffers_are_aligned_kept_lent_once_and_released():
    from grulab.engine import _scratch

    dt = np.dtype(np.float32)
    a = _scratch.lend_pages("test.pages", 1000, dt)
    assert a.ndim == 1 and a.shape[0] >= 1000 and a.ctypes.data % _scratch.HUGE_PAGE == 0
    b = _scratch.lend_pages("test.pages", 1000, dt)  # lent out: a second caller gets its own
    assert b.ctypes.data != a.ctypes.data
    _scratch.give_back("test.pages", a)
    assert _scratch.lend_pages("test.pages", 500, dt) is a  # kept, and large enough
    big = _scratch.lend_pages("test.pages", _scratch.PAGES_MAX_BYTES // 4 + 1, dt)
    assert big.shape[0] == 0  # too large to keep: the caller allocates as it would without
    _scratch.give_back("test.pages", a)
    _scratch.give_back("test.pages", big)  # an empty buffer does not replace the kept one
    assert _scratch._PAGES[("test.pages", dt)] is a
    _scratch.release_scratch()
    assert ("test.pages", dt) not in _scratch._PAGES
