"""Numba building blocks for the fused kernels: vectorisable activations and a small GEMM.

* ``exp32``: ``exp`` in float32 by Cody–Waite range reduction (``x = n ln2 + r``, ``|r| <= ln2/2``),
  a degree-7 Taylor polynomial for ``e^r`` and ``2^n`` built by writing ``n + 127`` into the
  exponent bits. Branch-free, so LLVM vectorises loops that call it (``math.exp`` stays a scalar
  libm call). Relative error <= 2e-7 over the float32 range (``tests/engine/test_jitmath.py``).
* ``sigmoid32 = 1 / (1 + exp32(-x))`` (relative error <= 2e-7) and
  ``tanh32 = 2 sigmoid32(2x) - 1`` (absolute error <= 2e-7). NaN inputs give NaN outputs.
* ``sigmoid64``/``tanh64``: exact libm forms for float64, the accuracy path.
* ``gemm_nt(A, Bm, C)``: ``C = A @ Bm.T`` with both operands contiguous along the reduction
  axis; 4x2 register tiles, one vector accumulator per output, reduced at the end.
* ``copy_row(src, dst, k0)``: a row copy without Numba's overlap check (which allocates).
* ``barrier``/``wait_until``: spin waits between the two workers of the unit split (atomic
  acquire/release on an int64 array, ``pause``, then ``sched_yield``).
* ``ftz_enter``/``ftz_leave`` (and the ``mxcsr`` intrinsic under them): flush-to-zero and
  denormals-are-zero for a kernel call on x86 (no-ops elsewhere).

Kernels compile with :data:`FLAGS`: ``fastmath`` without ``nnan``/``ninf`` (reassociation and
FMA contraction for vectorised reductions, but NaN and Inf keep their IEEE meaning) and
``error_model="numpy"`` (no ZeroDivisionError branch, which would block vectorisation). The
activations compile with :data:`ACTIVATION`, the same without reassociation.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}
FLAGS = {"fastmath": FASTMATH, "error_model": "numpy", "cache": True, "nogil": True}
# Activations must not be reassociated: that would fold the Cody-Waite split c - n*ln2_hi - n*ln2_lo
# into c - n*ln2 and lose its precision. Fast-math flags live on each instruction, so they keep
# these semantics when LLVM inlines the functions into the (reassociating) kernels.
TILE = {**FLAGS, "inline": "always"}  # tiles inline into gemm_nt's loops (a call per tile cost ~15%)
ACTIVATION = {"fastmath": FASTMATH - {"reassoc"}, "error_model": "numpy", "cache": True, "nogil": True}

if numba.config.DISABLE_JIT:  # pure-Python fallback so the kernels run (and are covered) without JIT

    def bits_to_f32(v):  # noqa: ANN001, ANN201
        return np.array([v], dtype=np.int64).astype(np.int32).view(np.float32)[0]

else:

    @intrinsic
    def bits_to_f32(typingctx, v):  # noqa: ANN001, ANN201
        """Reinterpret the low 32 bits of an integer as a float32 (a bitcast, no conversion)."""
        if not isinstance(v, types.Integer):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            val = args[0]
            if v.bitwidth != 32:
                val = builder.trunc(val, ir.IntType(32))
            return builder.bitcast(val, ir.FloatType())

        return types.float32(v), codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split so n * _LN2_HI is exact for |n| < 2^9
_LN2_LO = np.float32(-2.12194440e-4)
_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7 = (np.float32(1.0 / f) for f in (1, 1, 2, 6, 24, 120, 720, 5040))
_ONE, _TWO, _HALF = np.float32(1.0), np.float32(2.0), np.float32(0.5)
_LO, _HI = np.float32(-87.0), np.float32(88.0)


@njit(**ACTIVATION)
def exp32(x):  # noqa: ANN001, ANN201
    c = min(max(x, _LO), _HI)
    k = np.int32(c * _LOG2E + np.float32(128.5)) - np.int32(128)  # floor(c log2 e + 1/2), argument > 0
    n = np.float32(k)
    r = c - n * _LN2_HI - n * _LN2_LO
    p = _E7 * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + _E1
    p = p * r + _E0
    scale = bits_to_f32((k + np.int32(127)) << np.int32(23))  # 2^k
    return p * scale if x == x else x  # a NaN input stays NaN (the clamp above would hide it)


@njit(**ACTIVATION)
def sigmoid32(x):  # noqa: ANN001, ANN201
    return _ONE / (_ONE + exp32(-x))


@njit(**ACTIVATION)
def tanh32(x):  # noqa: ANN001, ANN201
    return _TWO * sigmoid32(_TWO * x) - _ONE


@njit(**ACTIVATION)
def sigmoid64(x):  # noqa: ANN001, ANN201
    return 1.0 / (1.0 + np.exp(-x))


@njit(**ACTIVATION)
def tanh64(x):  # noqa: ANN001, ANN201
    return np.tanh(x)


@njit(**TILE)
def copy_row(src, dst, k0):  # noqa: ANN001, ANN201
    """``dst[k0 : k0 + len(src)] = src`` (1-D) as a plain loop. Numba's slice assignment first checks
    whether the two arrays overlap and copies the source when they might: an allocation per row
    and step inside a kernel's loop, which cost more than the step's element-wise work. The
    destination is sliced first: with ``dst[k0 + j]`` in the loop it did not vectorise."""
    n = src.shape[0]
    d = dst[k0 : k0 + n]
    for j in range(n):
        d[j] = src[j]


@njit(**FLAGS)
def gemm_nt(A, Bm, C):  # noqa: ANN001, ANN201
    """``C[M, N] = A[M, K] @ Bm[N, K].T`` (both C-contiguous in K). Overwrites ``C``.

    Rows of ``A`` go in blocks of 6, then 4, then 1; each block sweeps ``Bm`` two rows at a time.
    Every output of a tile keeps one vector accumulator over ``K`` (a 6x2 tile: 8 loads per 12
    FMAs), reduced once at the end. Of the tile shapes and loop orders tried on the GRU's shapes
    (M <= 32, K and N in 128..1536), this one ran fastest: 61-72 GFLOP/s of one core's 78 peak.
    Where fewer 6-row blocks leave a multiple of 4 rows, those take 4-row blocks instead of single
    rows (a single row is a matrix-vector product that reads all of ``Bm`` for one row): 32 rows as
    6+6+6+6+4+4 ran 4.5% faster than 6x5+1+1 per GRU step (input and recurrent products, K=128/256,
    N=768), 8 rows as 4+4 17% faster than 6+1+1."""
    M = A.shape[0]
    N = Bm.shape[0]
    n6 = M // 6
    while n6 > 0 and (M - 6 * n6) % 4 != 0:
        n6 -= 1
    if (M - 6 * n6) % 4 != 0:
        n6 = M // 6  # no split into 6s and 4s: the rows left over go one at a time
    i = 0
    while i < 6 * n6:
        for j in range(0, N - 1, 2):
            _tile6x2(A, Bm, C, i, j)
        if N % 2:
            for m in range(6):
                _tile1x1(A, Bm, C, i + m, N - 1)
        i += 6
    while i + 4 <= M:
        for j in range(0, N - 1, 2):
            _tile4x2(A, Bm, C, i, j)
        if N % 2:
            for m in range(4):
                _tile1x1(A, Bm, C, i + m, N - 1)
        i += 4
    while i < M:
        _row1(A, Bm, C, i)
        i += 1


@njit(**TILE)
def _tile6x2(A, Bm, C, i, j):  # noqa: ANN001, ANN202
    a0, a1, a2, a3, a4, a5 = A[i], A[i + 1], A[i + 2], A[i + 3], A[i + 4], A[i + 5]
    b0, b1 = Bm[j], Bm[j + 1]
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = s40 = s41 = s50 = s51 = C.dtype.type(0)
    for k in range(A.shape[1]):
        y0, y1 = b0[k], b1[k]
        s00 += a0[k] * y0
        s01 += a0[k] * y1
        s10 += a1[k] * y0
        s11 += a1[k] * y1
        s20 += a2[k] * y0
        s21 += a2[k] * y1
        s30 += a3[k] * y0
        s31 += a3[k] * y1
        s40 += a4[k] * y0
        s41 += a4[k] * y1
        s50 += a5[k] * y0
        s51 += a5[k] * y1
    C[i, j], C[i, j + 1], C[i + 1, j], C[i + 1, j + 1] = s00, s01, s10, s11
    C[i + 2, j], C[i + 2, j + 1], C[i + 3, j], C[i + 3, j + 1] = s20, s21, s30, s31
    C[i + 4, j], C[i + 4, j + 1], C[i + 5, j], C[i + 5, j + 1] = s40, s41, s50, s51


@njit(**TILE)
def _tile4x2(A, Bm, C, i, j):  # noqa: ANN001, ANN202
    a0, a1, a2, a3 = A[i], A[i + 1], A[i + 2], A[i + 3]
    b0, b1 = Bm[j], Bm[j + 1]
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = C.dtype.type(0)
    for k in range(A.shape[1]):
        y0, y1 = b0[k], b1[k]
        s00 += a0[k] * y0
        s01 += a0[k] * y1
        s10 += a1[k] * y0
        s11 += a1[k] * y1
        s20 += a2[k] * y0
        s21 += a2[k] * y1
        s30 += a3[k] * y0
        s31 += a3[k] * y1
    C[i, j], C[i, j + 1], C[i + 1, j], C[i + 1, j + 1] = s00, s01, s10, s11
    C[i + 2, j], C[i + 2, j + 1], C[i + 3, j], C[i + 3, j + 1] = s20, s21, s30, s31


@njit(**TILE)
def _row1(A, Bm, C, i):  # noqa: ANN001, ANN202
    """One row: a matrix-vector product, 4 rows of ``Bm`` at a time (the batch-1 path)."""
    K = A.shape[1]
    N = Bm.shape[0]
    zero = C.dtype.type(0)
    a0 = A[i]
    j = 0
    while j + 4 <= N:
        b0, b1, b2, b3 = Bm[j], Bm[j + 1], Bm[j + 2], Bm[j + 3]
        s0 = s1 = s2 = s3 = zero
        for k in range(K):
            x = a0[k]
            s0 += x * b0[k]
            s1 += x * b1[k]
            s2 += x * b2[k]
            s3 += x * b3[k]
        C[i, j], C[i, j + 1], C[i, j + 2], C[i, j + 3] = s0, s1, s2, s3
        j += 4
    while j < N:
        _tile1x1(A, Bm, C, i, j)
        j += 1


@njit(**TILE)
def _tile1x1(A, Bm, C, i, j):  # noqa: ANN001, ANN202
    a0, b0 = A[i], Bm[j]
    s0 = C.dtype.type(0)
    for k in range(A.shape[1]):
        s0 += a0[k] * b0[k]
    C[i, j] = s0


# ------------------------------------------------------------------------------ thread barrier
# Two workers that advance a recurrence together exchange "I finished phase p" through an int64
# array: one slot per worker, 8 slots apart (64 bytes) so the slots sit on separate cache lines.
# A release store publishes a worker's writes with its counter; an acquire load makes the other
# worker's writes visible once it sees the counter. A waiting worker spins with the ``pause`` hint
# and, after ``YIELD_AFTER`` spins (tens of microseconds), also yields its core at each spin: on a
# machine with more runnable threads than cores, the partner it waits for may be the thread that
# needs this core.
SLOT = 8
YIELD_AFTER = 2000

if numba.config.DISABLE_JIT:

    def load_acquire(arr, i):  # noqa: ANN001, ANN201
        return arr[i]

    def store_release(arr, i, v):  # noqa: ANN001, ANN201
        arr[i] = v

    def cpu_pause():  # noqa: ANN201
        return None

    def sched_yield():  # noqa: ANN201
        import os

        os.sched_yield()

    def mxcsr(v):  # noqa: ANN001, ANN202
        return -1

else:

    def cgutils_get_or_insert(module, fnty, name):  # noqa: ANN001, ANN202
        from numba.core import cgutils

        return cgutils.get_or_insert_function(module, fnty, name)

    def _item_pointer(context, builder, aryty, ary_val, idx):  # noqa: ANN001, ANN202
        from numba.core import cgutils

        ary = context.make_array(aryty)(context, builder, ary_val)
        return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])

    @intrinsic
    def load_acquire(typingctx, arr, i):  # noqa: ANN001, ANN201
        """``arr[i]`` as an atomic load with acquire ordering (int64 arrays)."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            ptr = _item_pointer(context, builder, sig.args[0], args[0], args[1])
            return builder.load_atomic(ptr, ordering="acquire", align=8)

        return types.int64(arr, i), codegen

    @intrinsic
    def store_release(typingctx, arr, i, v):  # noqa: ANN001, ANN201
        """``arr[i] = v`` as an atomic store with release ordering (int64 arrays)."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            ptr = _item_pointer(context, builder, sig.args[0], args[0], args[1])
            val = context.cast(builder, args[2], sig.args[2], types.int64)
            builder.store_atomic(val, ptr, ordering="release", align=8)
            return context.get_dummy_value()

        return types.void(arr, i, v), codegen

    def _is_x86() -> bool:
        import platform

        return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

    @intrinsic
    def cpu_pause(typingctx):  # noqa: ANN001, ANN201
        """The x86 ``pause`` hint inside spin loops (a no-op elsewhere)."""

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            if _is_x86():
                fn = cgutils_get_or_insert(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
                builder.call(fn, [])
            return context.get_dummy_value()

        return types.void(), codegen

    @intrinsic
    def sched_yield(typingctx):  # noqa: ANN001, ANN201
        """POSIX ``sched_yield()``: give this core to another runnable thread, if any (bound by
        name, so kernels that call it stay cacheable)."""

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            fn = cgutils_get_or_insert(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
            return context.get_dummy_value()

        return types.void(), codegen

    @intrinsic
    def mxcsr(typingctx, v):  # noqa: ANN001, ANN202
        """Set the x86 SSE control register to ``v`` (when ``v >= 0``); returns its previous value
        (``-1`` elsewhere: nothing to set)."""
        if not isinstance(v, types.Integer):
            return None

        def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
            from numba.core import cgutils

            i32 = ir.IntType(32)
            if not _is_x86():
                return ir.Constant(ir.IntType(64), -1)
            slot = cgutils.alloca_once(builder, i32)
            ptr = builder.bitcast(slot, ir.IntType(8).as_pointer())
            fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
            builder.call(cgutils_get_or_insert(builder.module, fnty, "llvm.x86.sse.stmxcsr"), [ptr])
            old = builder.zext(builder.load(slot), ir.IntType(64))
            val = context.cast(builder, args[0], sig.args[0], types.int64)
            with builder.if_then(builder.icmp_signed(">=", val, ir.Constant(ir.IntType(64), 0))):
                builder.store(builder.trunc(val, i32), slot)
                builder.call(cgutils_get_or_insert(builder.module, fnty, "llvm.x86.sse.ldmxcsr"), [ptr])
            return old

        return types.int64(v), codegen


FTZ_DAZ = 0x8040  # MXCSR bits: flush subnormal results to zero, read subnormal inputs as zero


@njit(cache=True, nogil=True)
def ftz_enter():  # noqa: ANN201
    """Turn this thread's flush-to-zero / denormals-are-zero modes on; returns the previous control
    word for :func:`ftz_leave` (-1 where there is none). Called around a kernel, never inside one,
    so no floating-point operation of the kernel can be moved across the switch."""
    old = mxcsr(-1)
    if old >= 0:
        mxcsr(old | FTZ_DAZ)
    return old


@njit(cache=True, nogil=True)
def ftz_leave(old):  # noqa: ANN001, ANN201
    """Restore the control word :func:`ftz_enter` returned."""
    if old >= 0:
        mxcsr(old)


@njit(**FLAGS)
def wait_until(flags, i, at_least):  # noqa: ANN001, ANN201
    """Spin until ``flags[i] >= at_least`` (acquire); returns the value seen."""
    spins = 0
    v = load_acquire(flags, i)
    while v < at_least:
        cpu_pause()
        spins += 1
        if spins > YIELD_AFTER:
            sched_yield()
        v = load_acquire(flags, i)
    return v


@njit(**FLAGS)
def barrier(flags, w, nw, phase):  # noqa: ANN001, ANN201
    """Publish that worker ``w`` reached ``phase`` (its slot ``w * SLOT``), wait for the others."""
    store_release(flags, w * SLOT, phase)
    for v in range(nw):
        if v != w:
            wait_until(flags, v * SLOT, phase)
