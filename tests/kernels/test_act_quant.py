"""Triton act_quant vs quant.quantize_act (CPU interpreter)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels import launch as kernels

from .helpers import POISON_I8, make_x, near_tie_x


def _poisoned(x, group):
    k = x.shape[-1]
    codes = torch.full(x.shape, POISON_I8, dtype=torch.int8)
    scales = torch.full((*x.shape[:-1], k // group), float("nan"), dtype=torch.float32)
    return codes, scales


def _run(x, bits, group, rotate, seed):
    codes, scales = kernels.act_quant(x, bits, group, rotate, seed, out=_poisoned(x, group))
    ref = quant.quantize_act(x, bits, group, rotate, seed)
    return codes, scales, ref


@st.composite
def act_cases(draw):
    group = draw(st.sampled_from([16, 32, 64, 128, 256, "K"]))
    if group == "K":
        k = draw(st.sampled_from([40, 96, 128, 200, 256, 384]))
        group = k
    else:
        k = group * draw(st.integers(1, max(1, 256 // group)))
    m = draw(st.one_of(st.sampled_from([0, 1]), st.integers(2, 70)))
    bits = draw(st.sampled_from([4, 8]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    lead = draw(st.sampled_from([(m,), (1, m)]))
    return lead, k, group, bits, dtype


@settings(max_examples=50)
@given(case=act_cases(), seed=st.integers(0, 2**16))
def test_no_rotation_bit_exact(case, seed):
    lead, k, group, bits, dtype = case
    g = torch.Generator().manual_seed(seed)
    m = lead[-1]
    x = make_x(m, k, dtype, gen=g).reshape(*lead, k)
    codes, scales, (rc, rs) = _run(x, bits, group, 0, quant.NO_SIGNS)
    assert codes.shape == rc.shape and scales.shape == rs.shape
    assert torch.equal(codes, rc)
    assert torch.equal(scales, rs)


@st.composite
def rot_cases(draw):
    rotate = draw(st.sampled_from([16, 32, 64, 128, 256]))
    per_token = draw(st.booleans())
    if per_token:
        k = rotate * draw(st.integers(1, max(1, 384 // rotate)))
        group = k
    else:
        group = draw(st.sampled_from([g for g in (16, 32, 64, 128, 256) if max(g, rotate) <= 256]))
        k = max(group, rotate) * draw(st.integers(1, max(1, 256 // max(group, rotate))))
    m = draw(st.one_of(st.just(1), st.integers(2, 64)))
    bits = draw(st.sampled_from([4, 8]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    signs = draw(st.sampled_from([quant.NO_SIGNS, 0, 1234]))
    return m, k, group, rotate, bits, dtype, signs


@settings(max_examples=50)
@given(case=rot_cases(), seed=st.integers(0, 2**16))
def test_rotation_close(case, seed):
    m, k, group, rotate, bits, dtype, signs = case
    x = make_x(m, k, dtype, gen=torch.Generator().manual_seed(seed))
    codes, scales, (rc, rs) = _run(x, bits, group, rotate, signs)
    torch.testing.assert_close(scales, rs, rtol=1e-5, atol=1e-30)
    d = (codes.to(torch.int32) - rc.to(torch.int32)).abs()
    assert int(d.max()) <= 1
    assert float((d > 0).float().mean()) <= 2e-3


def test_rotation_mostly_exact_large():
    """Over ~100k elements with A8 (the most sensitive case), code disagreements stay a tiny fraction."""
    x = make_x(256, 384, torch.float32, gen=torch.Generator().manual_seed(7))
    codes, scales, (rc, rs) = _run(x, 8, 128, 128, 3)
    d = (codes.to(torch.int32) - rc.to(torch.int32)).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 1e-3
    torch.testing.assert_close(scales, rs, rtol=1e-5, atol=0)


@pytest.mark.parametrize("group,rotate", [(8, 0), (64, 0), (64, 64), (128, 0)])
@pytest.mark.parametrize("bits", [4, 8])
def test_special_values_exact(group, rotate, bits):
    """Ties (round half to even), all-zero groups, NaN and ±Inf groups: identical to the reference."""
    if group < 16 and rotate:
        pytest.skip("no such case")
    qmax = 2 ** (bits - 1) - 1
    k = 256
    x = torch.randn(6, k)
    # row 0: exact ties — group absmax = qmax so s = 1 and x/s hits k + 0.5
    x[0] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.5, float(qmax), -float(qmax)]).repeat(k // 8)
    x[1] = 0.0                                      # all-zero row
    x[2, 3] = float("nan")                          # NaN in the first group
    x[3, 5] = float("inf")                          # +Inf
    x[4, k - 1] = float("-inf")                     # -Inf in the last group
    x[5, : k // 2] = 0.0                            # zero groups beside finite ones
    codes, scales, (rc, rs) = _run(x, bits, group, rotate, quant.NO_SIGNS)
    assert torch.equal(scales.isnan(), rs.isnan()) and torch.equal(scales.isinf(), rs.isinf())
    if rotate:  # the fp32 rotation sums in another order: scales to 1e-5, codes within 1
        torch.testing.assert_close(scales, rs, rtol=1e-5, atol=0, equal_nan=True)
        assert int((codes.to(torch.int32) - rc.to(torch.int32)).abs().max()) <= 1
    else:
        assert torch.equal(codes, rc)
        assert torch.equal(torch.nan_to_num(scales, nan=-1.0), torch.nan_to_num(rs, nan=-1.0))
    assert not scales[1].isnan().any() and (scales[1] == 0).all() and (codes[1] == 0).all()


@pytest.mark.parametrize("bits,group", [(4, 32), (8, 64), (8, 256)])
def test_near_ties_exact(bits, group):
    """x/s within an ulp of k + 0.5: codes equal only with IEEE division and round-half-even."""
    x = near_tie_x(64, 256, group, bits, gen=torch.Generator().manual_seed(bits + group))
    codes, scales, (rc, rs) = _run(x, bits, group, 0, quant.NO_SIGNS)
    assert torch.equal(scales, rs)
    assert torch.equal(codes, rc)


@pytest.mark.parametrize("rotate", [0, 64])
def test_per_token_special_values(rotate):
    x = torch.randn(4, 192)
    x[1] = 0.0
    x[2, 7] = float("nan")
    x[3, 100] = float("inf")
    codes, scales, (rc, rs) = _run(x, 8, 192, rotate, quant.NO_SIGNS)
    torch.testing.assert_close(scales, rs, rtol=1e-5 if rotate else 0, atol=0, equal_nan=True)
    if rotate:
        assert int((codes.to(torch.int32) - rc.to(torch.int32)).abs().max()) <= 1
    else:
        assert torch.equal(codes, rc)


def test_empty_and_leading_dims():
    x = torch.randn(2, 0, 128)
    codes, scales = kernels.act_quant(x, 4, 64, 64, quant.NO_SIGNS)
    assert codes.shape == (2, 0, 128) and codes.dtype == torch.int8
    assert scales.shape == (2, 0, 2) and scales.dtype == torch.float32
    x = torch.randn(2, 3, 128)
    codes, scales = kernels.act_quant(x, 4, 64, 0, quant.NO_SIGNS)
    rc, rs = quant.quantize_act(x, 4, 64)
    assert torch.equal(codes, rc) and torch.equal(scales, rs)


def test_non_contiguous_input():
    x = torch.randn(128, 10).t()  # [10, 128], row stride 1: not K-contiguous
    codes, scales = kernels.act_quant(x, 8, 64, 0, quant.NO_SIGNS)
    rc, rs = quant.quantize_act(x, 8, 64)
    assert torch.equal(codes, rc) and torch.equal(scales, rs)


def test_bf16_in_interpreter():
    """bf16 math is broken in the interpreter; loads are cast to fp32, so codes stay exact."""
    x = make_x(9, 128, torch.bfloat16)
    codes, scales, (rc, rs) = _run(x, 4, 128, 0, quant.NO_SIGNS)
    assert torch.equal(codes, rc) and torch.equal(scales, rs)


def test_unsupported_raise():
    x = torch.randn(4, 96)
    with pytest.raises(ValueError):
        kernels.act_quant(x, 4, 48, 0, quant.NO_SIGNS)   # 48: not a power of two, not K
    with pytest.raises(ValueError):
        kernels.act_quant(x, 4, 32, 64, quant.NO_SIGNS)  # Hadamard 64 does not divide 96
    with pytest.raises(ValueError):
        kernels.act_quant(x, 9, 32, 0, quant.NO_SIGNS)   # bits
    with pytest.raises(TypeError):
        kernels.act_quant(x.to(torch.int32), 4, 32, 0, quant.NO_SIGNS)
    assert not kernels.supports_act_quant(48, 0, 96) and kernels.supports_act_quant(96, 0, 96)
