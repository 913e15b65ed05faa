"""BGR bounded-init grid refinement (docs/algorithms.md §1, quant/bgr.py): behaviour, not internals."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dvdq_compile.quant import bgr, bgr_rows, dequantize, minmax

from ._util import DISTS, dequant_ref, make_weight, row_sq_err

BITS = [3, 4, 8]
FAST = dict(n=16, max_iter=16)  # small candidate/iteration budgets keep the property tests fast


def errs(w, q):
    return row_sq_err(w, dequant_ref(*q))


def check_outputs(w, codes, scale, zero, bits, groups):
    n, k = w.shape
    qmax = 2**bits - 1
    assert codes.dtype == torch.uint8 and codes.shape == (n, k)
    assert scale.dtype == torch.float32 and scale.shape == (n, groups)
    assert zero.dtype == torch.int32 and zero.shape == (n, groups)
    assert int(codes.max()) <= qmax
    assert bool(((zero >= 0) & (zero <= qmax)).all())
    assert bool((torch.isfinite(scale) & (scale > 0)).all())


def check_codes_are_nearest(w, codes, scale, zero, bits):
    """Codes come from the UNCLIPPED W: q = clamp(round(W/Δ) + z, 0, qmax) for the returned (Δ, z)."""
    n, k = w.shape
    g = scale.shape[1]
    wg = w.reshape(n, g, k // g)
    q = (torch.round(wg / scale[..., None]) + zero[..., None].float()).clamp(0, 2**bits - 1)
    assert torch.equal(codes.reshape(n, g, k // g).float(), q)


@given(n=st.integers(1, 6), k=st.integers(1, 160), bits=st.sampled_from(BITS), dist=st.sampled_from(DISTS),
       seed=st.integers(0, 2**16), log_scale=st.integers(-6, 4), bgr_n=st.sampled_from([2, 3, 16, 33]),
       max_shrink=st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_never_worse_than_minmax_on_any_row(n, k, bits, dist, seed, log_scale, bgr_n, max_shrink):
    w = make_weight(dist, n, k, seed, scale=2.0**log_scale)
    q = bgr(w, bits, n=bgr_n, max_shrink=max_shrink, max_iter=16)
    check_outputs(w, *q, bits, 1)
    check_codes_are_nearest(w, *q, bits)
    e_bgr, e_mm = errs(w, q), errs(w, minmax(w, bits))
    assert bool((e_bgr <= e_mm * (1 + 1e-6) + 1e-30).all()), (e_bgr - e_mm).max()
    assert torch.isfinite(dequantize(*q)).all()


@given(n=st.integers(1, 4), g=st.integers(1, 4), group=st.sampled_from([8, 16, 32, 48]),
       bits=st.sampled_from(BITS), dist=st.sampled_from(DISTS), seed=st.integers(0, 2**16))
def test_group_wise_never_worse_than_minmax_on_any_group(n, g, group, bits, dist, seed):
    k = g * group
    w = make_weight(dist, n, k, seed)
    q = bgr(w, bits, group, **FAST)
    check_outputs(w, *q, bits, g)
    check_codes_are_nearest(w, *q, bits)
    qm = minmax(w, bits, group)
    e_bgr = (w.double() - dequant_ref(*q)).square().reshape(n, g, group).sum(-1)
    e_mm = (w.double() - dequant_ref(*qm)).square().reshape(n, g, group).sum(-1)
    assert bool((e_bgr <= e_mm * (1 + 1e-6) + 1e-30).all())


@pytest.mark.parametrize("bits", BITS)
def test_group_is_a_row(bits):
    """Group-wise BGR treats each (row, K-group) as a row: same error as BGR on the [N·G, group] matrix."""
    n, k, group = 3, 128, 32
    w = make_weight("laplace", n, k, seed=5)
    q = bgr(w, bits, group, **FAST)
    qr = bgr(w.reshape(n * k // group, group), bits, **FAST)
    e = (w.double() - dequant_ref(*q)).square().reshape(-1, group).sum(-1)
    torch.testing.assert_close(e, errs(w.reshape(-1, group), qr), rtol=1e-5, atol=1e-12)


def test_rows_are_independent():
    """A row's result does not depend on which other rows are quantized with it."""
    w = make_weight("mixed", 8, 96, seed=3)
    full = errs(w, bgr(w, 4, **FAST))
    part = errs(w[2:5], bgr(w[2:5].clone(), 4, **FAST))
    torch.testing.assert_close(full[2:5], part, rtol=1e-5, atol=1e-12)


# Measured on this data (16 rows × K = 512, seed 1234, n = 32 or the defaults): error reduction vs MinMax summed
# over rows — Student-t(3) 3 bits 39.5%, 4 bits 21.6% (within 0.2 points of a brute-force grid optimum); Laplace
# 22.6%; Gaussian 21.5%; sparse ±20 outliers on a 0.05 bulk 13.6% (worst single row 0.1%).
@pytest.mark.parametrize("bits,dist,margin,every_row", [(3, "student_t3", 0.30, True), (4, "student_t3", 0.15, True),
                                                        (4, "laplace", 0.15, True), (4, "gauss", 0.15, True),
                                                        (4, "outliers", 0.08, False)])
def test_strictly_better_on_average(bits, dist, margin, every_row):
    w = make_weight(dist, 16, 512, seed=1234)
    e_bgr, e_mm = errs(w, bgr(w, bits, n=32)), errs(w, minmax(w, bits))
    reduction = 1 - float(e_bgr.sum() / e_mm.sum())
    assert reduction >= margin, reduction
    if every_row:  # strictly better on every such row, not just on average
        assert bool((e_bgr < e_mm).all())


def test_near_least_squares_optimum():
    """BGR minimises ‖W − Δ(q − z)‖: within 2% of an exhaustive (Δ grid × every integer z) search per row."""
    bits, qmax = 4, 15
    w = make_weight("student_t3", 6, 256, seed=99).double()
    e_bgr = errs(w.float(), bgr(w.float(), bits))
    rng = w.amax(1).clamp(min=0) - w.amin(1).clamp(max=0)
    best = torch.full((w.shape[0],), float("inf"), dtype=torch.float64)
    zs = torch.arange(qmax + 1, dtype=torch.float64)[:, None, None]
    for f in torch.linspace(0.1, 1.0, 181, dtype=torch.float64):
        d = (rng * f / qmax)[None, :, None]
        q = (torch.round(w[None] / d) + zs).clamp(0, qmax)
        e = (w[None] - d * (q - zs)).square().sum(-1).amin(0)
        best = torch.minimum(best, e)
    assert bool((e_bgr <= best * 1.02).all()), (e_bgr / best)


@pytest.mark.parametrize("bits", BITS)
def test_deterministic(bits):
    w = make_weight("mixed", 9, 200, seed=11)
    a = bgr(w, bits, **FAST)
    b = bgr(w.clone(), bits, **FAST)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    d1, z1 = bgr_rows(w, bits, **FAST)
    d2, z2 = bgr_rows(w.clone(), bits, **FAST)
    assert torch.equal(d1, d2) and torch.equal(z1, z2)


@pytest.mark.parametrize("bits", BITS)
def test_chunking_does_not_change_results(bits):
    """Rows are refined independently: one row per batch, a few, or all at once give the same bits (the CPU and
    CUDA default chunk sizes differ; rows that converge early leave the batch at different times)."""
    w = make_weight("mixed", 37, 96, seed=5)
    n_cand = 8  # FAST: n = 16 -> ceil(0.9 · 16 / 2) candidates
    ref = bgr_rows(w, bits, chunk_elems=1 << 30, **FAST)
    for rows_per_batch in (1, 3, 16):
        d, z = bgr_rows(w, bits, chunk_elems=rows_per_batch * n_cand * 96, **FAST)
        assert torch.equal(d, ref[0]) and torch.equal(z, ref[1]), rows_per_batch


def test_does_not_modify_input():
    w = make_weight("outliers", 4, 128, seed=2)
    w0 = w.clone()
    bgr(w, 4, **FAST)
    bgr_rows(w, 4, **FAST)
    assert torch.equal(w, w0)


@pytest.mark.parametrize("bits", BITS)
def test_bgr_rows_contract(bits):
    """bgr_rows -> (Δ, z) fp32 [R]; z integral in [0, qmax]; they reproduce bgr's scale and zero."""
    qmax = 2**bits - 1
    w = make_weight("mixed", 10, 64, seed=4)
    d, z = bgr_rows(w, bits, **FAST)
    assert d.shape == (10,) and z.shape == (10,)
    assert d.dtype == torch.float32
    assert bool((d > 0).all() & torch.isfinite(d).all())
    zf = z.double()
    assert torch.equal(zf, zf.round()) and bool(((zf >= 0) & (zf <= qmax)).all())
    codes, scale, zero = bgr(w, bits, **FAST)
    assert torch.equal(scale[:, 0], d.to(torch.float32))
    assert torch.equal(zero[:, 0], z.to(torch.int32))


@pytest.mark.parametrize("bits", BITS)
def test_degenerate_rows(bits):
    """Zero and constant rows (and a row with a single non-zero) quantize without NaN and as well as MinMax."""
    w = torch.zeros(5, 32)
    w[1] = 2.5
    w[2] = -0.75
    w[3, 17] = 4.0
    w[4] = torch.linspace(-1, 1, 32)
    q = bgr(w, bits, **FAST)
    check_outputs(w, *q, bits, 1)
    out = dequantize(*q)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(32))
    torch.testing.assert_close(out[1:4], w[1:4], rtol=1e-6, atol=0)  # two-level rows are exact


@pytest.mark.parametrize("kw,match", [({"n": 1}, "n"), ({"n": 0}, "n"), ({"n": -3}, "n"),
                                      ({"max_shrink": -0.1}, "max_shrink"), ({"max_shrink": 1.0}, "max_shrink"),
                                      ({"max_shrink": 1.5}, "max_shrink")])
def test_invalid_parameters_raise(kw, match):
    w = torch.randn(2, 16)
    with pytest.raises(ValueError, match=match):
        bgr(w, 4, **kw)
    with pytest.raises(ValueError, match=match):
        bgr_rows(w, 4, **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_raises(bad):
    w = torch.randn(2, 16)
    w[0, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        bgr(w, 4)


def test_non_2d_raises_and_group_must_divide():
    with pytest.raises(ValueError):
        bgr(torch.randn(16), 4)
    with pytest.raises(ValueError, match=r"does not divide"):
        bgr(torch.randn(2, 30), 4, 8)


def test_max_shrink_zero_keeps_the_minmax_range_start():
    """With no clipped candidates BGR still refines from MinMax (never worse), and more shrink never hurts."""
    w = make_weight("student_t3", 8, 256, seed=21)
    e_mm = errs(w, minmax(w, 4)).sum()
    e0 = errs(w, bgr(w, 4, n=32, max_shrink=0.0)).sum()
    e5 = errs(w, bgr(w, 4, n=32, max_shrink=0.5)).sum()
    assert e0 <= e_mm * (1 + 1e-6)
    assert e5 <= e0 * (1 + 1e-6)
