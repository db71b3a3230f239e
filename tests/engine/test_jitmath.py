"""The compiled building blocks: fast float32 activations and the small GEMM."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from grulab.engine._jitmath import (
    MATVEC_PANELS_FROM,
    exp32,
    gemm_nn,
    gemm_nt,
    pack_panels,
    pack_panels_into,
    panel_width,
    panels_if,
    sigmoid32,
    tanh32,
)


@njit
def _apply(kind, x, out):
    for i in range(x.shape[0]):
        if kind == 0:
            out[i] = exp32(x[i])
        elif kind == 1:
            out[i] = sigmoid32(x[i])
        else:
            out[i] = tanh32(x[i])


def _eval(kind, x):
    out = np.empty_like(x)
    _apply(kind, x, out)
    return out


X = np.linspace(-100, 100, 2_000_001, dtype=np.float32)


def test_exp32_relative_error():
    xs = X[(X > -87) & (X < 88)]
    ref = np.exp(xs.astype(np.float64))
    rel = np.abs(_eval(0, xs) - ref) / ref
    print(f"exp32 max relative error {rel.max():.2e}")
    assert rel.max() < 2.5e-7


def test_sigmoid32_relative_and_tanh32_absolute_error():
    xd = X.astype(np.float64)
    sig = 1 / (1 + np.exp(-xd))
    rel = np.abs(_eval(1, X) - sig) / np.maximum(sig, 1e-300)
    keep = sig > 1e-30
    print(f"sigmoid32 max relative error {rel[keep].max():.2e}")
    assert rel[keep].max() < 2.5e-7
    abs_err = np.abs(_eval(2, X) - np.tanh(xd)).max()
    print(f"tanh32 max absolute error {abs_err:.2e}")
    assert abs_err < 2.5e-7


def test_special_values():
    out = _eval(1, np.array([np.nan, np.inf, -np.inf, 0.0], np.float32))
    assert np.isnan(out[0]) and out[1] == 1.0 and out[2] < 1e-30 and out[3] == 0.5
    out = _eval(2, np.array([np.nan, np.inf, -np.inf, 0.0], np.float32))
    assert np.isnan(out[0]) and out[1] == 1.0 and out[2] == -1.0 and abs(out[3]) < 1e-7


@given(M=st.integers(1, 40), N=st.integers(1, 13), K=st.integers(1, 40),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_gemm_nt_all_remainders(M, N, K, dtype):
    rng = np.random.default_rng(M * 1000 + N * 50 + K)
    A, Bm = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)
    C = np.full((M, N), np.nan, dtype)
    gemm_nt(A, Bm, C)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(C, A @ Bm.T, rtol=tol, atol=tol)


@pytest.mark.nojit
def test_uncompiled_bitcast_matches():
    x = np.array([-3.5, 0.0, 1.0, 20.0], np.float32)
    np.testing.assert_allclose(_eval(0, x), np.exp(x.astype(np.float64)), rtol=3e-7)


@given(M=st.integers(0, 20), N=st.integers(1, 80), K=st.integers(1, 40), extra=st.integers(0, 3),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_gemm_nn_from_panels_matches_numpy(M, N, K, extra, dtype):
    """Every row-block size (1-6) and a partial last panel; columns past N are left untouched."""
    rng = np.random.default_rng(M * 1000 + N * 50 + K)
    A, Bm = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype)
    P = pack_panels(Bm)
    assert P.shape == (-(-N // panel_width(dtype)), K, panel_width(dtype))
    C = np.full((M, N + extra), np.nan, dtype)
    gemm_nn(A, P, C, N)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(C[:, :N], A @ Bm.T, rtol=tol, atol=tol)
    assert np.isnan(C[:, N:]).all()


@given(N=st.integers(1, 80), K=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]))
def test_compiled_packing_matches_pack_panels(N, K, dtype):
    """The kernels' own packing gives pack_panels' layout (zero-padded columns included)."""
    Bm = np.random.default_rng(N * 50 + K).standard_normal((N, K)).astype(dtype)
    P = np.full(pack_panels(Bm).shape, np.nan, dtype)
    pack_panels_into(Bm, P)
    np.testing.assert_array_equal(P, pack_panels(Bm))
    np.testing.assert_array_equal(panels_if(Bm, True, 2), pack_panels(Bm))


def test_compiled_packing_follows_matmul_t_rule():
    """No panels unless used: not when switched off, not for one row by a matrix that fits L2."""
    small = np.ones((64, 64), np.float32)
    big = np.ones((MATVEC_PANELS_FROM // (4 * 64), 64), np.float32)
    assert panels_if(small, False, 8).shape[0] == 0 and panels_if(small, True, 1).shape[0] == 0
    assert panels_if(small, True, 2).shape[0] == 2 and panels_if(big, True, 1).shape[0] > 0
    with pytest.raises(ValueError, match="pack_panels_into"):
        pack_panels_into(small, np.zeros((1, 64, 32), np.float32))  # 32 columns of panels for 64 rows


def test_gemm_nn_rejects_operands_that_do_not_match():
    """The compiled blocks never see mismatched operands: the driver raises first."""
    P = pack_panels(np.ones((4, 5), np.float32))
    for A, C, N in ((np.ones((2, 3), np.float32), np.ones((2, 4), np.float32), 4),  # K differs
                    (np.ones((2, 5), np.float32), np.ones((2, 3), np.float32), 4),  # C too narrow
                    (np.ones((2, 5), np.float32), np.ones((1, 4), np.float32), 4),  # C too short
                    (np.ones((2, 5), np.float32), np.ones((2, 64), np.float32), 64),  # N beyond the panels
                    (np.ones((2, 10), np.float32)[:, ::2], np.ones((2, 4), np.float32), 4)):  # A strided
        with pytest.raises(ValueError, match="gemm_nn"):
            gemm_nn(A, P, C, N)


@pytest.mark.parametrize("N", [128, 150, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_nn_one_row_four_panels_at_a_time(N, dtype):
    """A single row goes through four full panels per block, the rest one panel at a time."""
    rng = np.random.default_rng(N)
    A, Bm = rng.standard_normal((1, 70)).astype(dtype), rng.standard_normal((N, 70)).astype(dtype)
    C = np.full((1, N + 1), np.nan, dtype)
    gemm_nn(A, pack_panels(Bm), C, N)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(C[:, :N], A @ Bm.T, rtol=tol, atol=tol)
    assert np.isnan(C[0, N])
