"""The fused CPU engine against the reference engine: outputs, final state and every gradient."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grulab.engine.dispatch import GRUFunction, resolve_backend
from tests.tolerances import assert_close

# relative to the largest magnitude of each compared quantity (issue contract: 1e-5 / 1e-10)
ENGINE_MATCH = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_args(T, B, I, H, dtype, bias=True, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    return [mk(T, B, I), mk(B, H), mk(3 * H, I), mk(3 * H, H)] + ([mk(3 * H), mk(3 * H)] if bias else [None, None])


def compare(args, reset, lengths, reverse, engine, dtype):
    leaves = [a for a in args if a is not None]
    y_ref, h_ref = GRUFunction.apply(*args, reset, lengths, reverse, "reference")
    y, h = GRUFunction.apply(*args, reset, lengths, reverse, engine)
    tol = ENGINE_MATCH[dtype]
    assert_close("y", y, y_ref, tol, relative=True)
    assert_close("h_n", h, h_ref, tol, relative=True)
    g = torch.Generator().manual_seed(7)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(dtype)
    ref = torch.autograd.grad((y_ref, h_ref), leaves, (dy, dh))
    got = torch.autograd.grad((y, h), leaves, (dy, dh))
    for name, a, b in zip(["dx", "dh0", "dW", "dU", "db_W", "db_U"], got, ref, strict=False):
        assert_close(name, a, b, tol, relative=True)


@given(
    T=st.integers(1, 9), B=st.integers(1, 11), I=st.integers(1, 7), H=st.integers(1, 9),
    reset=st.sampled_from(["before", "after"]), reverse=st.booleans(), with_lengths=st.booleans(),
    bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
    engine=st.sampled_from(["cpu", "cpu_recompute"]), seed=st.integers(0, 2**16), panels=st.booleans(),
)
def test_engine_matches_reference(T, B, I, H, reset, reverse, with_lengths, bias, dtype, engine, seed, panels):
    """Random shapes; with ``panels`` every call multiplies through packed panels (``gemm_nn``),
    otherwise these short calls use ``gemm_nt``."""
    from grulab.engine import cpu

    args = make_args(T, B, I, H, dtype, bias, seed)
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(seed)) if with_lengths else None
    saved = cpu.PANEL_MIN_ROWS_STEPS
    cpu.PANEL_MIN_ROWS_STEPS = 1 if panels else 10**9
    try:
        compare(args, reset, lengths, reverse, engine, dtype)
    finally:
        cpu.PANEL_MIN_ROWS_STEPS = saved


@pytest.mark.parametrize("reset", ["before", "after"])
def test_engine_matches_reference_at_a_realistic_size(reset):
    """Shapes that exercise full GEMM tiles, several threads and remainders."""
    args = make_args(23, 37, 19, 45, torch.float32, seed=1)
    compare(args, reset, torch.randint(1, 24, (37,), generator=torch.Generator().manual_seed(2)), True, "cpu",
            torch.float32)


@pytest.mark.parametrize("fuse_min_rows", [1, 10**9])  # every chunk computes W x_t itself / never does
@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_and_precomputed_input_products_match_reference(fuse_min_rows, reset, dtype, monkeypatch):
    from grulab.engine import cpu

    monkeypatch.setattr(cpu, "FUSE_MIN_ROWS", fuse_min_rows)
    for seed, (T, B, I, H), bias in ((0, (6, 9, 5, 7), True), (1, (4, 20, 3, 13), False)):
        args = make_args(T, B, I, H, dtype, bias, seed)
        lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
        compare(args, reset, lengths, bool(seed), "cpu", dtype)
        compare(args, reset, None, not seed, "cpu_recompute", dtype)


def test_auto_picks_the_cpu_engine():
    assert resolve_backend("auto", torch.zeros(1)) == "cpu"
    assert resolve_backend("auto", torch.zeros(1, dtype=torch.bfloat16)) == "reference"
    with pytest.raises(ValueError, match="runs float32/float64 CPU tensors"):
        resolve_backend("cpu", torch.zeros(1, dtype=torch.float16))


def test_nan_propagates():
    args = make_args(4, 3, 2, 5, torch.float32)
    with torch.no_grad():
        args[0][1, 0, 0] = math.nan
    y, h = GRUFunction.apply(*args, "after", None, False, "cpu")
    assert torch.isnan(y[1:, 0]).all() and torch.isnan(h[0]).all()
    assert torch.isfinite(y[:, 1:]).all()


def test_only_requested_gradients_are_computed():
    args = make_args(5, 4, 3, 6, torch.float64)
    args[0].requires_grad_(False)
    y, h = GRUFunction.apply(*args, "after", None, False, "cpu")
    grads = torch.autograd.grad(y.sum(), args[1:])
    assert all(g is not None for g in grads)


def test_long_sequence_float32_stays_within_1e4_of_float64():
    """100,000 steps: the float32 kernels (fast activations) track the float64 state."""
    T, B, I, H = 100_000, 2, 3, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    k = 1 / math.sqrt(H)  # PyTorch's default range: a contractive, input-driven regime
    params = [torch.empty(3 * H, I, dtype=torch.float64).uniform_(-k, k, generator=g),
              torch.empty(3 * H, H, dtype=torch.float64).uniform_(-k, k, generator=g),
              torch.empty(3 * H, dtype=torch.float64).uniform_(-k, k, generator=g),
              torch.empty(3 * H, dtype=torch.float64).uniform_(-k, k, generator=g)]
    h0 = torch.zeros(B, H, dtype=torch.float64)
    with torch.no_grad():
        for reset in ("after", "before"):
            y64, _ = GRUFunction.apply(x, h0, *params, reset, None, False, "cpu")
            y32, _ = GRUFunction.apply(x.float(), h0.float(), *(p.float() for p in params), reset, None, False, "cpu")
            err = (y32.double() - y64).abs().max().item()
            print(f"{reset}: max |h32 - h64| over {T} steps = {err:.2e}")
            assert err < 1e-4


@pytest.mark.nojit
def test_small_case_for_the_uncompiled_kernels():
    """Run under NUMBA_DISABLE_JIT=1 by `make test`: the kernel bodies execute as Python."""
    from grulab.engine import cpu

    for fuse_min_rows in (1, 10**9):  # the input products inside the kernel, and computed beforehand
        cpu.FUSE_MIN_ROWS, saved = fuse_min_rows, cpu.FUSE_MIN_ROWS
        try:
            for reset in ("after", "before"):
                compare(make_args(3, 5, 2, 3, torch.float64, seed=3), reset, torch.tensor([3, 0, 2, 1, 3]), True,
                        "cpu", torch.float64)
        finally:
            cpu.FUSE_MIN_ROWS = saved


def _tuner_says(monkeypatch, path: str) -> None:
    """Make the path tuner choose ``path`` for every small-batch call (even when slower under test
    load), and let it choose: the test setup turns deterministic algorithms on, which fixes the
    path without asking the tuner."""
    from grulab.engine import cpu

    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    monkeypatch.setattr(cpu.TUNER, "choose", lambda key, paths: path)


def _force_unit_split(monkeypatch, helper: str, earliest: int = 0) -> list:
    """Route every eligible call through the unit split, with worker 1 started as ``helper`` says:
    ``"never"`` (worker 0 runs alone to the end), ``"first"`` (worker 1 is running before worker 0
    starts: it joins at step ``earliest``, a multiple of the input block). Returns the flags of every
    call (the join step among them)."""
    import threading

    from grulab.engine import cpu

    _tuner_says(monkeypatch, "units")
    monkeypatch.setattr(cpu, "EARLIEST_JOIN", earliest)
    monkeypatch.setattr(cpu, "INPUT_BLOCK", 3)  # input products in blocks of 3 steps: a partial last block
    joins = []

    def submit(kernel, *args):
        flags = args[-1]  # (..., hbuf, flags)
        joins.append(flags)
        if helper == "never":
            return
        th = threading.Thread(target=kernel, args=args, daemon=True)
        th.start()
        while flags[cpu._ARRIVE] == 0:  # worker 1 is running before worker 0 starts
            pass

    monkeypatch.setattr(cpu, "submit_helper", submit)
    return joins


@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("helper, earliest", [("never", 0), ("first", 0), ("first", 6)])
@pytest.mark.parametrize("B, H", [(1, 97), (3, 64)])
@pytest.mark.parametrize("panels", [False, True])
def test_small_batch_unit_split_matches_reference(reset, helper, earliest, B, H, panels, monkeypatch):
    """Small batches split the units over two threads once the helper thread runs (barrier per
    step): alone to the end, split from the first step, and split from a step in the middle;
    with the weights as ``gemm_nt`` reads them and packed into panels (``gemm_nn``)."""
    from grulab.engine import cpu

    if cpu.threads() < 2:
        pytest.skip("needs two threads")
    monkeypatch.setattr(cpu, "PANEL_MIN_ROWS_STEPS", 1 if panels else 10**9)
    joins = _force_unit_split(monkeypatch, helper, earliest)
    T = 10  # every split step is a barrier: keep it short, a busy test machine makes each one slow
    assert cpu._unit_split_eligible(B, T, H)
    lengths = torch.tensor([T, 7, 0][:B])
    scale = 1 / H**0.5  # a contractive regime, where two float32 summation orders stay close
    compare(make_args(T, B, 5, H, torch.float64, seed=B, scale=scale), reset, lengths, False, "cpu", torch.float64)
    compare(make_args(T, B, 5, H, torch.float32, seed=B, scale=scale), reset, None, True, "cpu", torch.float32)
    expected = T if helper == "never" else earliest  # the join step every forward call recorded
    assert joins and {int(f[cpu._JOIN]) for f in joins} == {expected}


@pytest.mark.parametrize("arena", ["kept", "none"])
def test_unit_split_weight_copies_in_the_kept_arena_or_their_own_arrays(arena, monkeypatch):
    """The workers copy their rows of U and W and W's panels into halves of a kept, 2 MB-aligned
    buffer that the next call is lent again; with no room there (an empty arena) they allocate
    their own copies. Both give the reference's values."""
    from grulab.engine import cpu

    if cpu.threads() < 2:
        pytest.skip("needs two threads")
    _force_unit_split(monkeypatch, "first")
    if arena == "none":
        monkeypatch.setattr(cpu, "_lend_arena", lambda I, H, dtype: np.empty(0, dtype))
    for dtype in (torch.float64, torch.float32):
        compare(make_args(9, 1, 6, 70, dtype, seed=7, scale=70**-0.5), "before", None, False, "cpu", dtype)
    if arena == "kept":
        from grulab.engine import _scratch

        kept = _scratch._PAGES[("gru.units", np.dtype(np.float32))]
        assert kept.shape[0] >= 2 * 3 * 35 * (70 + 2 * 6)  # rows of U, rows and panels of W
        assert cpu._lend_arena(6, 70, np.dtype(np.float32)) is kept  # lent again, not allocated
        cpu.give_back("gru.units", kept)


def test_unit_split_helper_arriving_after_the_end_is_harmless(monkeypatch):
    """A helper that gets a core only after worker 0 has finished returns at once, writing nothing."""
    from grulab.engine import cpu

    if cpu.threads() < 2:
        pytest.skip("needs two threads")
    late = []
    _tuner_says(monkeypatch, "units")
    monkeypatch.setattr(cpu, "submit_helper", lambda kernel, *args: late.append((kernel, args)) or None)
    args = make_args(12, 1, 3, 100, torch.float64)
    compare(args, "after", None, False, "cpu", torch.float64)
    for kernel, a in late:
        y = a[15].copy()  # (w, nblk, solo, use_panels, x, W, b_W, h0, U, b_U, lengths, reverse, after,
        #                  save_states, save_gates, y, ..., hbuf, flags)
        kernel(*a)  # the helper runs now: the join step says "finished", it returns
        assert a[-1][cpu._JOIN] == 12 and np.array_equal(a[15], y)


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for the test, restored after it."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _late_helper(monkeypatch, delay: float) -> list:
    """Start the unit split's worker 1 ``delay`` seconds late (a helper thread that waits for a
    core); returns the flags of every call."""
    import threading
    import time

    from grulab.engine import cpu

    calls = []

    def submit(kernel, *args):
        calls.append(args[-1])
        threading.Thread(target=lambda: (time.sleep(delay), kernel(*args)), daemon=True).start()

    monkeypatch.setattr(cpu, "submit_helper", submit)
    return calls


def test_helper_arriving_late_makes_worker_0_start_alone(monkeypatch):
    """Worker 0 waits for the helper only ~0.2 ms: one 20 ms late finds it past step 0."""
    from grulab.engine import cpu

    if cpu.threads() < 2 or cpu.cpus_available() < 2:
        pytest.skip("needs two threads on two CPUs")
    _tuner_says(monkeypatch, "units")
    monkeypatch.setattr(cpu, "INPUT_BLOCK", 3)
    calls = _late_helper(monkeypatch, 0.02)
    args = make_args(400, 1, 4, 64, torch.float32, seed=3, scale=64**-0.5)
    with torch.no_grad():
        GRUFunction.apply(*args, "after", None, False, "cpu")
    assert calls and int(calls[0][cpu._JOIN]) > 0


@pytest.mark.parametrize("reset", ["before", "after"])
def test_deterministic_algorithms_give_the_same_values_on_every_call(reset, deterministic, monkeypatch):
    """Under ``torch.use_deterministic_algorithms(True)`` a small batch takes one path per shape
    (no tuner) and worker 0 waits for the helper, however late: the split starts at step 0 and
    every call gives the same values, bit for bit, with and without autograd."""
    from grulab.engine import cpu

    if cpu.threads() < 2 or cpu.cpus_available() < 2:
        pytest.skip("needs two threads on two CPUs")
    monkeypatch.setattr(cpu.TUNER, "choose", lambda key, paths: pytest.fail("the tuner chose a path"))
    monkeypatch.setattr(cpu, "INPUT_BLOCK", 3)
    args = make_args(cpu.UNIT_SPLIT_MIN_STEPS + 5, 1, 4, 256, torch.float32, seed=5, scale=256**-0.5)
    assert cpu._fixed_path(1, cpu.UNIT_SPLIT_MIN_STEPS + 5, 256) == "units"
    y_ref, h_ref = GRUFunction.apply(*args, reset, None, False, "reference")
    with torch.no_grad():
        y0, h0 = GRUFunction.apply(*args, reset, None, False, "cpu")  # helper on time
    calls = _late_helper(monkeypatch, 0.02)
    with torch.no_grad():
        y1, h1 = GRUFunction.apply(*args, reset, None, False, "cpu")
    y2, h2 = GRUFunction.apply(*args, reset, None, False, "cpu")  # the autograd path
    assert [int(f[cpu._JOIN]) for f in calls] == [0, 0]
    assert torch.equal(y0, y1) and torch.equal(h0, h1)
    assert torch.equal(y0, y2.detach()) and torch.equal(h0, h2.detach())
    assert_close("y", y0, y_ref, ENGINE_MATCH[torch.float32], relative=True)


def test_tuned_calls_measure_every_path_and_match_reference(monkeypatch):
    """Without deterministic algorithms a small-batch shape goes through the real tuner: it runs
    each of its paths in turn, keeps their per-step times, and every call gives the reference's
    values."""
    from grulab.engine import cpu

    if not cpu._unit_split_eligible(1, 40, 64):
        pytest.skip("needs the small-batch paths (two threads, compiled kernels)")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    monkeypatch.setattr(cpu, "TUNER", cpu.PathTuner())
    args = make_args(40, 1, 4, 64, torch.float32, seed=9, scale=64**-0.5)
    y_ref, h_ref = GRUFunction.apply(*args, "after", None, False, "reference")
    for _ in range(8):
        with torch.no_grad():
            y, h = GRUFunction.apply(*args, "after", None, False, "cpu")
        assert_close("y", y, y_ref, ENGINE_MATCH[torch.float32], relative=True)
    key = (1, 64, "after", np.dtype(np.float32), (40).bit_length())
    assert set(cpu.TUNER.medians[key]) == set(cpu._paths(40))


def test_path_tuner_prefers_the_faster_path_and_keeps_measuring_the_other():
    from grulab.engine.cpu import PathTuner

    t = PathTuner(explore=4, window=3)
    key, paths = ("k",), ("units", "rows")
    assert t.choose(key, paths) == "units"
    t.record(key, "units", 5.0)  # the call that compiled the kernel: dropped, not a measurement
    assert t.estimate(key, "units") is None and t.choose(key, paths) == "units"
    t.record(key, "units", 3.0)
    assert t.choose(key, paths) == "rows"
    t.record(key, "rows", 9.0)  # rows' first call, dropped too
    assert t.choose(key, paths) == "rows"
    t.record(key, "rows", 2.0)
    for _ in range(2):
        t.record(key, "units", 1.0)  # the median forgets a slow call
    picks = [t.choose(key, paths) for _ in range(8)]  # calls 4-11
    # the first 2 * explore calls re-measure the other every 2nd call (calls 5, 7), then every 4th (11)
    assert picks == ["units", "rows", "units", "rows", "units", "units", "units", "rows"]
    picks = [t.choose(key, paths) for _ in range(8)]
    assert picks.count("units") == 6 and picks.count("rows") == 2
    t.record(key, "units", float("inf"))
    t.record(key, "units", float("inf"))  # a path that turned slow loses until it measures fast again
    assert t.choose(key, paths) == "rows"


def test_path_tuner_with_three_paths_re_measures_each_other_path_in_turn():
    from grulab.engine.cpu import PathTuner

    t = PathTuner(explore=2, window=1)
    key, paths = ("k",), ("units", "solo", "rows")
    t.warm = _AlwaysWarm()  # every call is a measurement here
    for p, sec in (("units", 1.0), ("solo", 2.0), ("rows", 3.0)):
        assert t.choose(key, paths) == p
        t.record(key, p, sec)
    picks = [t.choose(key, paths) for _ in range(8)]
    # turns alternate between solo and rows; rows, 3x slower than units, is re-measured at one of
    # every two of its turns (solo, 2x, at each)
    assert picks.count("units") == 5 and picks.count("solo") == 2 and picks.count("rows") == 1


def test_path_tuner_takes_a_re_measured_path_at_its_new_sample():
    """A path that measured slow in a burst of load and lost wins again at its first good turn: the
    samples it kept from before the turn are stale."""
    from grulab.engine.cpu import PathTuner

    t = PathTuner(explore=64, window=3)  # (no turn of its own in these calls)
    key, paths = ("k",), ("units", "solo")
    t.warm = _AlwaysWarm()
    for sec in (1.0, 1.0, 1.0):
        t.record(key, "units", sec)
    t.record(key, "solo", 1.5)
    for sec in (5.0, 5.0):  # a burst of load: the split's partner waits for a time slice
        t.record(key, "units", sec)
    assert t.choose(key, paths) == "solo"
    t.record(key, "units", 1.0)  # its turn, the burst over
    assert t.estimate(key, "units") == 1.0 and t.choose(key, paths) == "units"


def test_path_tuner_re_measures_a_much_slower_path_rarely():
    """The calls a slow path costs when re-measured stay a bounded share of all calls' time."""
    from grulab.engine.cpu import PathTuner

    t = PathTuner(explore=4, window=1)
    key, paths = ("k",), ("solo", "rows")
    t.warm = _AlwaysWarm()
    t.record(key, "solo", 1.0)
    t.record(key, "rows", 6.0)  # 6x slower: re-measured at one of every 5 of its turns
    picks = [t.choose(key, paths) for _ in range(200)]
    assert picks.count("rows") == 10  # 52 turns (every 2nd call for the first 8, then every 4th), one in 5
    cost = sum({"solo": 1.0, "rows": 6.0}[p] for p in picks)
    assert cost / 200 <= 1.0 + 1 / 4  # at most 1/explore of the time more than always the best
    t.record(key, "rows", 0.5)  # measured faster now: it becomes the best
    assert t.choose(key, paths) == "rows"
    t.record(key, "rows", 1.5)  # close to the best again: re-measured at each turn
    picks = [t.choose(key, paths) for _ in range(40)]
    assert picks.count("rows") == 10


class _AlwaysWarm(set):
    def __contains__(self, item) -> bool:
        return True


@pytest.mark.parametrize("path", ["solo", "rows"])
def test_small_batch_single_thread_paths_match_reference(path, monkeypatch):
    from grulab.engine import cpu

    _tuner_says(monkeypatch, path)
    submitted = []
    monkeypatch.setattr(cpu, "submit_helper", lambda *a: submitted.append(a))
    for reset in ("after", "before"):
        compare(make_args(20, 1, 3, 40, torch.float32, seed=5, scale=0.2), reset, None, True, "cpu", torch.float32)
    assert not submitted  # neither starts a helper thread


@pytest.mark.parametrize("T, B, I, H, path", [(1, 1, 3, 40, "solo"), (5, 6, 4, 24, "solo"), (2, 8, 256, 512, "rows")])
def test_short_calls_on_small_batches_run_on_one_thread_without_a_framework_product(T, B, I, H, path, monkeypatch):
    """A call of a few steps runs "solo" (one thread, its own input products) while its products
    are small, the rows path above; the same path for the shape every time, with or without
    autograd, with lengths; both give the reference's values."""
    from grulab.engine import cpu

    if cpu._fuse_input(B):
        pytest.skip("a batch this large fuses its input products with one thread")
    taken = []
    orig_split, orig_chunks = cpu._fwd_unit_split, cpu.run_chunks
    monkeypatch.setattr(cpu, "_fwd_unit_split", lambda *a, helper, patience: taken.append("units" if helper else "solo")
                        or orig_split(*a, helper=helper, patience=patience))
    monkeypatch.setattr(cpu, "run_chunks", lambda kernel, *a: (kernel is cpu._gru_fwd_rows and taken.append("rows"))
                        or orig_chunks(kernel, *a))
    monkeypatch.setattr(cpu, "submit_helper", lambda *a: pytest.fail("a short call started the helper thread"))
    lengths = torch.tensor(([T, max(T - 1, 0), 0] + [T] * B)[:B]) if B > 1 else None
    for reset in ("after", "before"):
        compare(make_args(T, B, I, H, torch.float64, seed=T, scale=0.2), reset, lengths, False, "cpu", torch.float64)
        compare(make_args(T, B, I, H, torch.float32, seed=T, scale=0.2), reset, None, True, "cpu", torch.float32)
    assert taken and set(taken) == {path}


def test_float32_kernels_flush_subnormals_and_restore_the_thread_mode():
    """Saturated gates make subnormal products; the float32 kernels run with flush-to-zero on and
    give the reference's results, and the calling thread's floating-point mode is restored."""
    from grulab.engine._jitmath import FTZ_DAZ, ftz_enter, ftz_leave

    def mode() -> int:  # the control bits (the low six are sticky exception flags any operation may set)
        old = ftz_enter()
        ftz_leave(old)
        return old & ~0x3F if old >= 0 else old

    before = mode()
    if before < 0:
        pytest.skip("no x86 control register here")
    assert before & FTZ_DAZ == 0
    args = make_args(12, 3, 5, 40, torch.float32, seed=4)
    with torch.no_grad():
        args[4][:40] = -88.0  # the update gate saturates: z = sigmoid(-88) ~ 6e-39, a subnormal float32
    assert 0 < torch.sigmoid(torch.tensor(-88.0)) < torch.finfo(torch.float32).tiny
    compare(args, "after", None, False, "cpu", torch.float32)
    tiny = np.array([1e-39], np.float32)  # subnormal: Python-side float32 arithmetic still keeps it
    assert mode() == before and float(tiny[0] * np.float32(0.5)) > 0


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "frozen"])
def test_forward_without_a_coming_backward_saves_nothing(context, monkeypatch):
    """Under no_grad / inference_mode, or with nothing requiring a gradient, the fused forward runs
    alone (no gates saved for a backward that never comes; the GRU goes through the array path,
    ``forward_arrays``) and gives the same outputs."""
    import contextlib

    import grulab
    from grulab.engine import cpu, mingru_cpu, variants_cpu

    flags = []
    for mod, name, pos in ((cpu, "gru_fwd", 9), (mingru_cpu, "mingru_fwd", 6), (variants_cpu, "variant_fwd", 13)):
        orig = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _o=orig, _p=pos, _n=name: flags.append((_n, a[_p])) or _o(*a))
    orig_arrays = cpu.forward_arrays
    monkeypatch.setattr(cpu, "forward_arrays", lambda *a: flags.append(("forward_arrays", False)) or orig_arrays(*a))
    torch.manual_seed(0)
    x = torch.randn(6, 2, 3)
    for model in (grulab.GRU(3, 5), grulab.MinGRU(3, 5), grulab.RegularizedGRU(3, 5, zoneout=0.1).eval()):
        y_grad = model(x)[0]
        assert y_grad.requires_grad and flags[-1][1] is True
        if context == "frozen":
            model.requires_grad_(False)
        ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(context, contextlib.nullcontext)
        with ctx():
            y = model(x)[0]
        assert not y.requires_grad and flags[-1][1] is False
        assert flags[-1][0] == ("forward_arrays" if isinstance(model, grulab.GRU) else flags[-2][0])
        assert torch.equal(y, y_grad.detach())


@pytest.mark.parametrize("reset", ["before", "after"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layers, bidirectional, batch_first, batched, with_hx",
                         [(1, False, False, True, False), (2, True, True, True, True), (3, False, False, False, True),
                          (2, True, False, True, False)])
def test_inference_array_path_gives_the_autograd_paths_values(reset, dtype, layers, bidirectional, batch_first,
                                                              batched, with_hx, monkeypatch):
    """Inference calls (no gradient can follow) run every layer and direction on arrays; the values
    are those of the autograd path bit for bit (same kernels, same arguments), for stacked,
    bidirectional, batch-first, unbatched calls and a given initial state; batch 1 and batch 20 (the
    small-batch paths and the rows kernel)."""
    import grulab

    calls = []
    orig = grulab.GRU._run_arrays
    monkeypatch.setattr(grulab.GRU, "_run_arrays", lambda self, *a: calls.append(1) or orig(self, *a))
    torch.manual_seed(1)
    gru = grulab.GRU(4, 9, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                     reset=reset, dropout=0.3 if layers > 1 else 0.0).to(dtype).eval()
    D = 2 if bidirectional else 1
    for B, T in ((1, 300), (20, 7)):
        shape = ((B, T, 4) if batch_first else (T, B, 4)) if batched else (T, 4)
        x = torch.randn(*shape, dtype=dtype)
        hx = torch.randn(*((layers * D, B, 9) if batched else (layers * D, 9)), dtype=dtype) if with_hx else None
        y_grad, h_grad = gru(x, hx)
        assert y_grad.requires_grad and not calls
        with torch.no_grad():
            y, h = gru(x, hx)
        assert calls and not y.requires_grad
        assert y.shape == y_grad.shape and h.shape == h_grad.shape
        assert torch.equal(y, y_grad.detach()) and torch.equal(h, h_grad.detach())
        calls.clear()


def test_inference_array_path_is_not_taken_where_it_would_change_the_call(monkeypatch):
    """Dropout between layers in training mode, the reference backend, lengths, and a call whose
    output needs a gradient all keep the general path."""
    import grulab

    calls = []
    orig = grulab.GRU._run_arrays
    monkeypatch.setattr(grulab.GRU, "_run_arrays", lambda self, *a: calls.append(1) or orig(self, *a))
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        grulab.GRU(3, 4, num_layers=2, dropout=0.5).train()(x)
        grulab.GRU(3, 4, backend="reference")(x)
        grulab.GRU(3, 4)(x, lengths=torch.tensor([5, 3]))
    grulab.GRU(3, 4)(x.requires_grad_())
    assert not calls
    with torch.no_grad():
        grulab.GRU(3, 4, num_layers=2, dropout=0.5).eval()(x)
    assert calls


def test_common_inference_calls_take_the_short_path_and_others_the_general_one(monkeypatch):
    """A batched CPU call under no_grad without lengths is answered by ``_fast_forward`` (with or
    without ``hx``, batch-first too), with the general path's values bit for bit; every other form
    falls through to the general path, which validates it (errors included)."""
    import grulab

    torch.manual_seed(2)
    gru = grulab.GRU(3, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    x, hx = torch.randn(4, 7, 3), torch.randn(4, 4, 6)
    answered = []
    orig = grulab.GRU._fast_forward

    def spy(self, *a):
        r = orig(self, *a)
        answered.append(r is not None)
        return r

    monkeypatch.setattr(grulab.GRU, "_fast_forward", spy)
    with torch.no_grad():
        for h in (None, hx):
            y, h_n = gru(x, h)
            assert answered.pop() is True
            with monkeypatch.context() as m:
                m.setattr(grulab.GRU, "_fast_forward", lambda self, *a: None)
                y_general, h_general = gru(x, h)
            assert torch.equal(y, y_general) and torch.equal(h_n, h_general)
        strided = torch.randn(7, 4, 3).transpose(0, 1)  # batch-first from a time-major buffer: copied
        y, h_n = gru(strided)
        assert answered.pop() is True and torch.equal(y, gru(strided.contiguous())[0])
        answered.pop()
        others = [lambda: gru(x[0]), lambda: gru(x, lengths=torch.tensor([7, 7, 3, 1])),
                  lambda: gru(x.double()), lambda: gru(x[:, :0]), lambda: gru(x.bfloat16())]
        for call in others:
            try:
                call()
            except (TypeError, ValueError):
                pass  # the general path's own error
            assert answered.pop() is False
        with pytest.raises(ValueError, match="hx"):
            gru(x, torch.randn(4, 3, 6))  # the short path validates hx as the general one does
    gru(x)  # gradients can follow: the general path
    assert answered.pop() is False


def test_parameter_arrays_follow_every_change_of_the_parameters():
    """The NumPy views the short path keeps are views: in-place updates show at once; a parameter
    given new memory (``.data =``, ``.double()``, ``load_state_dict`` of another dtype), a new
    Parameter object, a deep copy or a pickled copy each get arrays of their own."""
    import copy
    import pickle

    import grulab

    torch.manual_seed(3)
    gru = grulab.GRU(3, 5).eval()
    x = torch.randn(6, 2, 3)

    def check(model, inp):
        with torch.no_grad():
            y = model(inp)[0]
        fresh = grulab.GRU(3, 5).to(inp.dtype).eval()
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert torch.equal(y, fresh(inp)[0]) and model._param_arrays() is not None

    check(gru, x)
    with torch.no_grad():
        gru.U_l0.mul_(1.5)  # in place: the same memory
    check(gru, x)
    gru.W_l0.data = torch.randn(15, 3)  # new memory behind the same Parameter
    check(gru, x)
    gru.b_U_l0 = torch.nn.Parameter(torch.randn(15))  # a new Parameter object
    check(gru, x)
    for clone in (copy.deepcopy(gru), pickle.loads(pickle.dumps(gru))):
        assert "_arrays_cache" not in clone.__dict__
        with torch.no_grad():
            clone.U_l0.zero_()  # its own memory: the original is untouched
        check(clone, x)
    check(gru, x)
    check(gru.double(), x.double())
    gru.U_l0.data = torch.randn(15, 5, dtype=torch.float64).t().contiguous().t()  # strided memory
    assert not gru.U_l0.is_contiguous() and gru._param_arrays() is None  # the general path runs it
    with torch.no_grad():
        y = gru(x.double())[0]
    fresh = grulab.GRU(3, 5).double()
    fresh.load_state_dict(gru.state_dict())
    with torch.no_grad():
        assert torch.equal(y, fresh(x.double())[0])
    gru.W_l0 = None  # a parameter set to None: the general path (and its error)
    with torch.no_grad(), pytest.raises((TypeError, AttributeError, ValueError)):
        gru(x.double())


def test_unit_split_needs_two_cpus_for_the_calling_thread(monkeypatch):
    """A caller pinned to one CPU would put the helper on that CPU too (a barrier per step that
    waits for a time slice): the unit split is not among the paths measured then."""
    from grulab.engine import cpu

    assert "units" not in cpu._paths(cpu.UNIT_SPLIT_MIN_STEPS - 1)
    monkeypatch.setattr(cpu, "cpus_available", lambda: 1)
    assert cpu._paths(1000) == ("solo", "rows")
    monkeypatch.setattr(cpu, "cpus_available", lambda: 2)
    assert cpu._paths(1000) == ("units", "solo", "rows")
