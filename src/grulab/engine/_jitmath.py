"""Numba building blocks for the fused kernels: vectorisable activations and a small GEMM.

* ``exp32``: ``exp`` in float32 by Cody–Waite range reduction (``x = n ln2 + r``, ``|r| <= ln2/2``),
  a degree-7 Taylor polynomial for ``e^r`` and ``2^n`` built by writing ``n + 127`` into the
  exponent bits. Branch-free, so LLVM vectorises loops that call it (``math.exp`` stays a scalar
  libm call). Relative error <= 2e-7 over the float32 range (``tests/engine/test_jitmath.py``).
* ``sigmoid32 = 1 / (1 + exp32(-x))`` (relative error <= 2e-7) and
  ``tanh32 = 2 sigmoid32(2x) - 1`` (absolute error <= 2e-7). NaN inputs give NaN outputs.
* ``sigmoid64``/``tanh64``: exact libm forms for float64, the accuracy path.
* ``gemm_nt(A, Bm, C)``: ``C = A @ Bm.T`` with both operands contiguous along the reduction
  axis; 6x2 and 4x2 register tiles, one vector accumulator per output, reduced at the end.
* ``gemm_nn(A, P, C, N)``: the same product from ``Bm`` packed into panels (``pack_panels``):
  6-row x 2-vector blocks of outputs in registers, emitted as LLVM vector IR, no reduction;
  ``matmul_t`` picks between the two.
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
# A step body that runs thousands of times per call and allocates nothing compiles without Numba's
# reference counting (``_nrt=False``: a decorator option that Numba marks internal; the pinned version
# is tested with it). Otherwise every array view it makes or receives costs an atomic increment and
# decrement of its owner's count. The unit split's step had been inlined into its worker's loop; on
# its own without the counts, a batch-1 step took 6-11% less (both versions alternating in one
# process: 1.05-1.28 against 1.14-1.40 us at H=64, 1.92-2.90 against 2.05-3.19 at H=128), and one
# stream step 1.99 against 2.57 us at H=64. The whole loop of steps without the counts, the step
# inlined into it (``cpu._units_run``), took 5-15% less again (no call per step, whose ~30 arrays
# went one field at a time). Such a function must not allocate (it would not compile) and must not
# return a new array.
STEP = {**FLAGS, "_nrt": False}

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


# ------------------------------------------------------------------- packed-panel GEMM (outer product)
# gemm_nt reduces every output across a vector at the end of its dot product; with K of 64-256
# that reduction is a large share of the work (gemm_nt: 60-87 GFLOP/s on one core). The panel GEMM
# keeps 6 rows x 2 vectors of outputs in registers, broadcasts one element of A per row and
# step of k, and multiplies it into two vectors of a panel of Bm^T: no reduction at all (107-115
# GFLOP/s on the same core and shapes, float32; float64 54-58 against 43-52). Numba cannot
# express register-resident vector accumulators (its SLP vectoriser is off, and loop-vectorised
# accumulators stay in memory), so the block is emitted as LLVM vector IR. Each output is one
# fused multiply-add chain over k in order, whatever the block shape: the results do not depend
# on how rows are blocked or split over threads.
PANEL_VECTORS = 2  # vectors of 64 bytes per panel row: 32 float32 or 16 float64 columns
MATVEC_PANELS_FROM = 512 * 1024  # bytes of Bm from which one row goes through the panels too


def panel_width(dtype: np.dtype) -> int:
    """Columns of one panel: ``PANEL_VECTORS`` 64-byte vectors."""
    return PANEL_VECTORS * 64 // np.dtype(dtype).itemsize


def pack_panels(Bm: np.ndarray) -> np.ndarray:
    """``Bm (N, K)`` as panels ``(ceil(N / NR), K, NR)`` of ``Bm^T`` (zero-padded columns), the
    layout :func:`gemm_nn` reads: one contiguous ``NR``-wide row of the panel per step of k."""
    N, K = Bm.shape
    NR = panel_width(Bm.dtype)
    full, rest = divmod(N, NR)
    if not rest:
        return np.ascontiguousarray(Bm.reshape(full, NR, K).transpose(0, 2, 1))
    P = np.zeros((full + 1, K, NR), Bm.dtype)
    P[:full] = Bm[: full * NR].reshape(full, NR, K).transpose(0, 2, 1)
    P[full, :, :rest] = Bm[full * NR :].T
    return P


def no_panels(dtype: np.dtype) -> np.ndarray:
    """An empty panel array: tells :func:`matmul_t` to use ``gemm_nt`` on the plain matrix."""
    return np.zeros((0, 1, panel_width(dtype)), dtype)


@njit(**FLAGS)
def pack_panels_into(Bm, P):  # noqa: ANN001, ANN201
    """:func:`pack_panels` in compiled code, into ``P`` (a kernel packs its own weights: on this
    machine each NumPy call of a per-call packing cost tens of microseconds after an idle spell)."""
    N, K = Bm.shape
    NR = P.shape[2]
    if P.shape[0] * NR < N or P.shape[1] != K:
        raise ValueError("pack_panels_into: the panel array does not fit the matrix")
    for p in range(P.shape[0]):
        for c in range(NR):
            n = p * NR + c
            if n < N:
                row = Bm[n]
                for k in range(K):
                    P[p, k, c] = row[k]
            else:
                for k in range(K):
                    P[p, k, c] = 0.0


@njit(**{**FLAGS, "inline": "always"})
def reads_panels(rows, nbytes):  # noqa: ANN001, ANN201
    """The rule of :func:`matmul_t`: a product of ``rows`` rows by a matrix of ``nbytes`` reads the
    matrix's panels (when it has any) unless it is one row by a matrix that fits in L2."""
    return rows > 1 or nbytes >= MATVEC_PANELS_FROM


@njit(**FLAGS)
def panels_if(Bm, use, rows):  # noqa: ANN001, ANN201
    """The panels of ``Bm`` when a product of ``rows`` rows by it reads them (``use`` and
    :func:`reads_panels`), else empty panels: the compiled counterpart of packing per call."""
    return panels_at(Bm, use, rows, np.empty(0, Bm.dtype), 0)


@njit(**FLAGS)
def panels_at(Bm, use, rows, arena, off):  # noqa: ANN001, ANN201
    """:func:`panels_if`, the panels written into ``arena[off:]`` when it has room for them (a
    kept buffer, see ``cpu._lend_arena``), else into a new array."""
    NR = PANEL_VECTORS * 64 // Bm.itemsize
    if use and reads_panels(rows, Bm.size * Bm.itemsize):
        np_ = -(-Bm.shape[0] // NR)
        n = np_ * Bm.shape[1] * NR
        if off + n <= arena.shape[0]:
            P = arena[off : off + n].reshape(np_, Bm.shape[1], NR)
        else:
            P = np.empty((np_, Bm.shape[1], NR), Bm.dtype)
        pack_panels_into(Bm, P)
        return P
    return np.zeros((0, 1, NR), Bm.dtype)


if numba.config.DISABLE_JIT:

    def gemm_nn(A, P, C, N):  # noqa: ANN001, ANN201
        NR = P.shape[2]
        for p in range(P.shape[0]):
            nc = min(NR, N - p * NR)
            C[:, p * NR : p * NR + nc] = A @ P[p][:, :nc]

else:

    def _emit_panel_block(context, builder, sig, args, MR: int, NP: int = 1):  # noqa: ANN001, ANN202
        """LLVM IR of one block (see :func:`_panel_block`): ``MR x NP x PANEL_VECTORS`` vector
        accumulators in allocas of the entry block (LLVM promotes them to registers), one loop over
        k, then stores (element by element for the columns of a partial last panel; blocks of
        ``NP > 1`` panels are full by construction)."""
        from numba.core import cgutils

        aty = sig.args[0]
        a, pp, c = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:3], args[:3], strict=True))
        i64, i32 = ir.IntType(64), ir.IntType(32)
        i0, pv, ncols = (context.cast(builder, v, t, types.int64) for v, t in zip(args[3:], sig.args[3:], strict=True))
        ft = context.get_data_type(aty.dtype)
        size = aty.dtype.bitwidth // 8
        lanes = 64 // size
        vt = ir.VectorType(ft, lanes)

        def const(v):  # noqa: ANN001, ANN202
            return ir.Constant(i64, v)

        def at(addr, ty):  # noqa: ANN001, ANN202
            return builder.inttoptr(addr, ty.as_pointer())

        K, NR = builder.extract_value(pp.shape, 1), builder.extract_value(pp.shape, 2)
        lda, ldc = builder.extract_value(a.strides, 0), builder.extract_value(c.strides, 0)
        ldp = builder.extract_value(pp.strides, 1)
        panel = builder.add(builder.ptrtoint(pp.data, i64), builder.mul(pv, builder.extract_value(pp.strides, 0)))
        abase, cbase = builder.ptrtoint(a.data, i64), builder.ptrtoint(c.data, i64)
        rows = [builder.add(i0, const(r)) for r in range(MR)]
        rows_a = [builder.add(abase, builder.mul(row, lda)) for row in rows]
        zero = ir.Constant(vt, [ir.Constant(ft, 0.0)] * lanes)
        nv = NP * PANEL_VECTORS  # vectors per row of the block: panels p .. p + NP - 1 side by side
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(MR)]
        ldpanel = builder.extract_value(pp.strides, 0)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                             f"llvm.fma.v{lanes}{'f32' if size == 4 else 'f64'}")
        undef = ir.Constant(vt, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        with cgutils.for_range(builder, K) as loop:
            k = loop.index
            row_p = builder.add(panel, builder.mul(k, ldp))
            bv = [builder.load(at(builder.add(builder.add(row_p, builder.mul(const(v // PANEL_VECTORS), ldpanel)),
                                              const(64 * (v % PANEL_VECTORS))), vt), align=size) for v in range(nv)]
            koff = builder.mul(k, const(size))
            for r in range(MR):
                av = builder.load(at(builder.add(rows_a[r], koff), ft), align=size)
                av = builder.shuffle_vector(builder.insert_element(undef, av, ir.Constant(i32, 0)), undef, splat)
                for v in range(nv):
                    builder.store(builder.call(fma, [av, bv[v], builder.load(acc[r][v])]), acc[r][v])
        col0 = builder.mul(builder.mul(pv, NR), const(size))
        rows_c = [builder.add(cbase, builder.add(builder.mul(row, ldc), col0)) for row in rows]
        if NP > 1:
            for r in range(MR):
                for v in range(nv):
                    builder.store(builder.load(acc[r][v]), at(builder.add(rows_c[r], const(64 * v)), vt), align=size)
            return context.get_dummy_value()
        with builder.if_else(builder.icmp_signed("==", ncols, NR)) as (full, partial):
            with full:
                for r in range(MR):
                    for v in range(PANEL_VECTORS):
                        builder.store(builder.load(acc[r][v]), at(builder.add(rows_c[r], const(64 * v)), vt),
                                      align=size)
            with partial:  # the last panel of a matrix whose N is not a multiple of NR
                for r in range(MR):
                    for v in range(PANEL_VECTORS):
                        vec = builder.load(acc[r][v])
                        for lane in range(lanes):
                            col = const(v * lanes + lane)
                            with builder.if_then(builder.icmp_signed("<", col, ncols)):
                                value = builder.extract_element(vec, ir.Constant(i32, lane))
                                builder.store(value, at(builder.add(rows_c[r], builder.mul(col, const(size))), ft),
                                              align=size)
        return context.get_dummy_value()

    def _panel_block(MR: int, NP: int = 1):  # noqa: ANN202
        """An intrinsic computing ``C[i0 : i0 + MR, p*NR : p*NR + ncols] = A[i0 : i0 + MR] @ P[p]``
        (with ``NP`` panels: ``P[p] .. P[p + NP - 1]``, all full). The caller guarantees the bounds
        (see :func:`gemm_nn`); A and C are contiguous along their last axis, P C-contiguous."""

        @intrinsic
        def block(typingctx, A, P, C, i0, p, ncols):  # noqa: ANN001, ANN202
            if not (isinstance(A, types.Array) and isinstance(P, types.Array) and isinstance(C, types.Array)
                    and A.dtype == P.dtype == C.dtype and A.dtype in (types.float32, types.float64)):
                return None
            return types.void(A, P, C, i0, p, ncols), lambda ctx, b, sig, args: _emit_panel_block(ctx, b, sig, args, MR,
                                                                                                NP)

        return block

    _pb1, _pb2, _pb3, _pb4, _pb5, _pb6 = (_panel_block(m) for m in range(1, 7))
    _pr4 = _panel_block(1, 4)  # one row, four panels: eight independent chains (a single row's two wait on FMA latency)

    @njit(**FLAGS)
    def gemm_nn(A, P, C, N):  # noqa: ANN001, ANN201
        """``C[:, :N] = A @ Bm[:N].T`` from the panels ``P`` of ``Bm`` (:func:`pack_panels`); rows
        of ``A`` in blocks of 6 (the remainder in one smaller block). Checks every bound the
        blocks rely on, so a mismatched call raises instead of reading out of bounds."""
        M = A.shape[0]
        NR = P.shape[2]
        if (A.shape[1] != P.shape[1] or C.shape[0] < M or C.shape[1] < N or N > P.shape[0] * NR
                or NR * A.itemsize != 64 * PANEL_VECTORS or (M > 0 and (A.strides[1] != A.itemsize
                                                                       or C.strides[1] != C.itemsize))):
            raise ValueError("gemm_nn: operand shapes or layouts do not match")
        p0 = 0
        if M == 1:  # a matrix-vector product (batch 1): four full panels at a time
            while p0 + 4 <= N // NR:
                _pr4(A, P, C, 0, p0, 4 * NR)
                p0 += 4
        for p in range(p0, -(-N // NR)):
            nc = min(NR, N - p * NR)
            i = 0
            while i + 6 <= M:
                _pb6(A, P, C, i, p, nc)
                i += 6
            r = M - i
            if r == 5:
                _pb5(A, P, C, i, p, nc)
            elif r == 4:
                _pb4(A, P, C, i, p, nc)
            elif r == 3:
                _pb3(A, P, C, i, p, nc)
            elif r == 2:
                _pb2(A, P, C, i, p, nc)
            elif r == 1:
                _pb1(A, P, C, i, p, nc)


@njit(**{**FLAGS, "inline": "always"})
def matmul_t(A, Bm, P, C):  # noqa: ANN001, ANN201
    """``C[:, :N] = A @ Bm.T`` (``N = Bm.shape[0]``): from ``Bm``'s panels ``P`` when it has any,
    else with :func:`gemm_nt` on ``Bm`` itself (a call too short to repay the packing). A single
    row is a matrix-vector product bound by the cache bandwidth: with ``Bm`` in L2, ``gemm_nt``'s
    dot products ran 3-6% faster than the panels (96-384 KB); beyond it the panels did (768 KB:
    7.8 against 10.7 us; 3 MB: 38 against 50 us), so one row uses them from ``MATVEC_PANELS_FROM``."""
    if P.shape[0] > 0 and reads_panels(A.shape[0], Bm.size * Bm.itemsize):
        gemm_nn(A, P, C, Bm.shape[0])
    else:
        gemm_nt(A, Bm, C)


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
def wait_spins(flags, i, spins):  # noqa: ANN001, ANN201
    """Spin (``pause``) until ``flags[i] != 0`` (acquire), at most ``spins`` times; whether it was seen."""
    for _ in range(spins):
        if load_acquire(flags, i) != 0:
            return True
        cpu_pause()
    return load_acquire(flags, i) != 0


@njit(**FLAGS)
def barrier(flags, w, nw, phase):  # noqa: ANN001, ANN201
    """Publish that worker ``w`` reached ``phase`` (its slot ``w * SLOT``), wait for the others."""
    store_release(flags, w * SLOT, phase)
    for v in range(nw):
        if v != w:
            wait_until(flags, v * SLOT, phase)
