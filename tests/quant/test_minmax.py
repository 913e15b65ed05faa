"""MinMax (RTN) asymmetric weight quantizer (docs/numerics.md §3, quant/minmax.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dvdq_compile.quant import dequantize, minmax

from ._util import DISTS, dequant_ref, make_weight

BITS = [3, 4, 8]


def check_outputs(w, codes, scale, zero, bits, groups):
    n, k = w.shape
    qmax = 2**bits - 1
    assert codes.dtype == torch.uint8 and codes.shape == (n, k)
    assert scale.dtype == torch.float32 and scale.shape == (n, groups)
    assert zero.dtype == torch.int32 and zero.shape == (n, groups)
    assert codes.numel() == 0 or int(codes.max()) <= qmax
    assert bool(((zero >= 0) & (zero <= qmax)).all())
    assert bool((torch.isfinite(scale) & (scale > 0)).all())


@given(n=st.integers(1, 9), k=st.integers(1, 300), bits=st.sampled_from(BITS), dist=st.sampled_from(DISTS),
       seed=st.integers(0, 2**16), log_scale=st.integers(-8, 6))
def test_ranges_and_half_step_error_bound(n, k, bits, dist, seed, log_scale):
    """Codes in [0, 2^b−1], integer zero-point in range, and |W − Ŵ| ≤ Δ/2 everywhere (0 is inside the range,
    so nothing is clipped)."""
    w = make_weight(dist, n, k, seed, scale=2.0**log_scale)
    codes, scale, zero = minmax(w, bits)
    check_outputs(w, codes, scale, zero, bits, 1)
    err = (w.double() - dequant_ref(codes, scale, zero)).abs()
    bound = scale.double() / 2 * (1 + 1e-5) + 1e-6 * w.double().abs()
    assert bool((err <= bound).all()), float((err - bound).max())
    # Δ = (max(W, 0) − min(W, 0)) / qmax per row
    hi = w.double().amax(1).clamp(min=0)
    lo = w.double().amin(1).clamp(max=0)
    nz = hi > lo
    torch.testing.assert_close(scale[nz, 0].double(), ((hi - lo) / (2**bits - 1))[nz], rtol=1e-6, atol=0)


@pytest.mark.parametrize("bits", BITS)
@given(n=st.integers(1, 6), k=st.integers(2, 200), seed=st.integers(0, 2**16), log_d=st.integers(-12, 4))
def test_rows_on_the_grid_reconstruct_exactly(bits, n, k, seed, log_d):
    """W = Δ(q − z) with Δ a power of two and both extreme codes present: codes, Δ, z and Ŵ are recovered exactly."""
    qmax = 2**bits - 1
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, qmax + 1, (n, k), generator=g)
    q[:, 0], q[:, -1] = 0, qmax
    z = torch.randint(0, qmax + 1, (n, 1), generator=g)
    d = 2.0**log_d
    w = (d * (q - z)).to(torch.float32)
    codes, scale, zero = minmax(w, bits)
    assert torch.equal(codes.long(), q)
    assert torch.equal(zero.long(), z)
    assert torch.equal(scale, torch.full((n, 1), d))
    assert torch.equal(dequantize(codes, scale, zero), w)


@pytest.mark.parametrize("bits", BITS)
def test_all_zero_row(bits):
    w = torch.zeros(3, 64)
    w[1] = torch.linspace(-1, 1, 64)
    codes, scale, zero = minmax(w, bits)
    check_outputs(w, codes, scale, zero, bits, 1)
    out = dequantize(codes, scale, zero)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(64)) and torch.equal(out[2], torch.zeros(64))
    assert torch.equal(codes[0].long(), zero[0].long().expand(64))  # zero codes sit on the zero-point


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("c", [3.7, -0.013, 1e-3, -250.0])
def test_constant_row(bits, c):
    qmax = 2**bits - 1
    w = torch.full((2, 48), c)
    codes, scale, zero = minmax(w, bits)
    check_outputs(w, codes, scale, zero, bits, 1)
    torch.testing.assert_close(dequantize(codes, scale, zero), w, rtol=1e-6, atol=0)
    if c > 0:  # range [0, c]: zero-point at code 0, the row at the top code
        assert bool((zero == 0).all()) and bool((codes == qmax).all())
    else:  # range [c, 0]: zero-point at the top code, the row at code 0
        assert bool((zero == qmax).all()) and bool((codes == 0).all())


@pytest.mark.parametrize("bits", BITS)
def test_all_positive_row_includes_zero(bits):
    """The range is extended to include 0: an all-positive row gets z = 0 and Δ = max/qmax, not (max−min)/qmax."""
    qmax = 2**bits - 1
    w = torch.linspace(2.0, 5.0, 40).repeat(2, 1)
    w[1] = -w[1]  # and the all-negative mirror
    codes, scale, zero = minmax(w, bits)
    assert int(zero[0, 0]) == 0 and int(zero[1, 0]) == qmax
    torch.testing.assert_close(scale[:, 0], torch.full((2,), 5.0 / qmax), rtol=1e-6, atol=0)
    assert int(codes[0].max()) == qmax and int(codes[1].min()) == 0


@given(n=st.integers(1, 5), k=st.integers(2, 100), bits=st.sampled_from(BITS), seed=st.integers(0, 999))
def test_exact_zeros_stay_zero(n, k, bits, seed):
    """0 always lies on the grid (integer zero-point): a weight that is exactly 0 dequantizes to exactly 0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 3 + torch.randn(n, 1, generator=g)
    mask = torch.rand(n, k, generator=g) < 0.3
    w[mask] = 0.0
    out = dequantize(*minmax(w, bits))
    assert torch.equal(out[mask], torch.zeros(int(mask.sum())))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n,k,group", [(4, 256, 32), (3, 96, 16), (5, 128, 128), (1, 64, 8), (7, 40, 20)])
def test_group_wise(bits, n, k, group):
    w = make_weight("student_t3", n, k, seed=n * k)
    codes, scale, zero = minmax(w, bits, group)
    g = k // group
    check_outputs(w, codes, scale, zero, bits, g)
    # each (row, group) is quantized on its own: same as quantizing the [N·G, group] row matrix
    c2, s2, z2 = minmax(w.reshape(n * g, group), bits)
    assert torch.equal(codes, c2.reshape(n, k))
    assert torch.equal(scale, s2.reshape(n, g)) and torch.equal(zero, z2.reshape(n, g))
    # a group's scale only depends on that group's range
    wg = w.double().reshape(n, g, group)
    hi, lo = wg.amax(-1).clamp(min=0), wg.amin(-1).clamp(max=0)
    torch.testing.assert_close(scale.double(), (hi - lo) / (2**bits - 1), rtol=1e-6, atol=0)
    deq = dequantize(codes, scale, zero)
    torch.testing.assert_close(deq.double(), dequant_ref(codes, scale, zero), rtol=1e-6, atol=1e-7)
    # finer groups never lose accuracy against per-row scales on a heavy-tailed row
    per_row = dequantize(*minmax(w, bits))
    assert (w - deq).square().sum() <= (w - per_row).square().sum() * 1.01


@pytest.mark.parametrize("group", [None, 0, 64])
def test_group_equal_to_k_or_none_is_per_row(group):
    w = make_weight("gauss", 4, 64)
    assert all(torch.equal(a, b) for a, b in zip(minmax(w, 4, group), minmax(w, 4)))


def test_group_not_dividing_k_raises():
    with pytest.raises(ValueError, match=r"does not divide"):
        minmax(torch.randn(2, 100), 4, 32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_weight_raises(bad):
    w = torch.randn(3, 32)
    w[1, 7] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        minmax(w, 4)


@pytest.mark.parametrize("shape", [(16,), (2, 3, 4)])
def test_non_2d_weight_raises(shape):
    with pytest.raises(ValueError, match=r"2-D"):
        minmax(torch.randn(*shape), 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_input_matches_fp32(dtype):
    w = make_weight("laplace", 4, 64).to(dtype)
    got = minmax(w, 4)
    ref = minmax(w.to(torch.float32), 4)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("bits", BITS)
def test_more_bits_less_error(bits):
    w = make_weight("gauss", 8, 256)
    err = (w - dequantize(*minmax(w, bits))).square().sum()
    if bits < 8:
        err_more = (w - dequantize(*minmax(w, bits + 1 if bits == 3 else 8))).square().sum()
        assert err_more < err * 0.5
    # RTN on a uniform grid: MSE ≈ Δ²/12 (within a factor 2 on Gaussian rows)
    d = (w.amax(1) - w.amin(1)) / (2**bits - 1)
    expected = (d.square() / 12).sum() * 256
    assert 0.5 * expected < err < 2 * expected


def test_dequantize_group_broadcast():
    codes = torch.tensor([[0, 1, 2, 3, 15, 14, 13, 12]], dtype=torch.uint8)
    scale = torch.tensor([[0.5, 2.0]])
    zero = torch.tensor([[1, 15]], dtype=torch.int32)
    out = dequantize(codes, scale, zero)
    expected = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 0.0, -2.0, -4.0, -6.0]])
    assert torch.equal(out, expected)
