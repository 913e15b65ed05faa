"""Triton BGR (kernels/bgr.py) vs the reference quant.bgr_rows, in the interpreter.

The kernel sums in another order, so Δ may differ in the last bits; what must hold: the reference's states are
searched (per-row error within 1e-4 relative of the reference's on at least 95% of rows, and close on all), no row
is worse than MinMax, zero/constant rows stay exact, and the outputs are valid (Δ > 0 finite, z integral in range).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile.kernels import bgr as kernel
from dvdq_compile.quant import bgr_rows, minmax

from ..quant._util import DISTS, make_weight

FAST = dict(n=8, max_iter=8)  # the interpreter runs every scalar step in Python


def row_err(w, d, z, bits):
    q = (torch.round(w / d[:, None]) + z[:, None]).clamp(0, 2**bits - 1)
    return (w.double() - d[:, None].double() * (q - z[:, None]).double()).square().sum(1)


def minmax_err(w, bits):
    codes, scale, zero = minmax(w, bits)
    return (w.double() - scale.double() * (codes.double() - zero.double())).square().sum(1)


@settings(max_examples=12, deadline=None)
@given(dist=st.sampled_from(DISTS), rows=st.integers(1, 5), length=st.integers(1, 300), bits=st.sampled_from([3, 4, 8]),
       seed=st.integers(0, 2**16))
def test_matches_the_reference_search(dist, rows, length, bits, seed):
    w = make_weight(dist, rows, length, seed=seed)
    d, z = kernel.bgr_rows(w, bits, **FAST)
    dr, zr = bgr_rows(w, bits, **FAST)
    assert d.shape == z.shape == (rows,) and d.dtype == z.dtype == torch.float32
    assert bool(torch.isfinite(d).all() & (d > 0).all())
    assert torch.equal(z, z.round()) and bool(((z >= 0) & (z <= 2**bits - 1)).all())
    e, er, emm = row_err(w, d, z, bits), row_err(w, dr, zr, bits), minmax_err(w, bits)
    tiny = 1e-12 * w.double().square().sum(1) + 1e-30
    assert bool((e <= emm * (1 + 1e-5) + tiny).all()), (e, emm)          # never worse than MinMax
    close = (e - er).abs() <= 1e-4 * er + tiny
    assert int(close.sum()) >= 0.95 * rows, (e, er)
    assert bool(((e - er).abs() <= 0.05 * er + tiny).all()), (e, er)


def test_degenerate_rows_exact():
    w = torch.zeros(4, 40)
    w[1] = 2.5
    w[2] = -0.75
    w[3, 7] = 4.0
    for bits in (3, 4, 8):
        d, z = kernel.bgr_rows(w, bits, **FAST)
        e = row_err(w, d, z, bits)
        assert bool(torch.isfinite(d).all() & (d > 0).all())
        assert float(e.max()) <= 1e-10, e


def test_gaussian_rows_like_the_reference():
    """K = 1024 Gaussian rows at the default grid: the same error as the reference per row to ~1e-6."""
    w = make_weight("gauss", 6, 1024, seed=3) * 0.02
    d, z = kernel.bgr_rows(w, 4, n=16, max_iter=32)
    dr, zr = bgr_rows(w, 4, n=16, max_iter=32)
    e, er = row_err(w, d, z, 4), row_err(w, dr, zr, 4)
    assert bool(((e - er).abs() <= 1e-5 * er).all()), ((e - er) / er)
    assert bool((e < minmax_err(w, 4)).all())  # and BGR did improve on MinMax


def test_bad_input():
    with pytest.raises(ValueError, match="L <= 16384"):
        kernel.bgr_rows(torch.zeros(2, 20000), 4)
    with pytest.raises(ValueError, match="n >= 2"):
        kernel.bgr_rows(torch.zeros(2, 16), 4, n=1)
    d, z = kernel.bgr_rows(torch.zeros(0, 16), 4)
    assert d.shape == z.shape == (0,)
    assert kernel.supports(13824) and not kernel.supports(0)


def test_bgr_solver_keeps_the_reference_off_cuda():
    from dvdq_compile.kernels.dispatch import bgr_solver

    assert bgr_solver(torch.device("cpu"), 16, "auto") is None  # CPU: the reference (the specification)
    with pytest.raises(ValueError, match="bgr_impl"):
        bgr_solver(torch.device("cpu"), 16, "fast")
