"""Triton qlinear / fused_qlinear vs quant.int_partials and quant.qlinear_ref (CPU interpreter)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels import launch as kernels

from .helpers import assert_out_close, assert_out_close_rotated, linear_cases, make_weight, make_x, tie_rows

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _nan_out(lead, n, dtype):
    return torch.full((*lead, n), float("nan"), dtype=dtype)


def _setup(case, seed):
    m, n, k, group, rotate, abits, wbits, dtype, has_bias = case
    g = torch.Generator().manual_seed(seed)
    x = make_x(m, k, dtype, gen=g)
    packed, ws, wz = make_weight(n, k, wbits, gen=g)
    bias = (torch.randn(n, generator=g) * 2).to(dtype) if has_bias else None
    return x, packed, ws, wz, bias


@settings(max_examples=50)
@given(case=linear_cases(), seed=st.integers(0, 2**16))
def test_int_partials_bit_exact(case, seed):
    """The kernel's int32 group partials equal quant.int_partials exactly (same tiles, unpack, dots)."""
    m, n, k, group, rotate, abits, wbits, dtype, _ = case
    x, packed, ws, wz, _ = _setup(case, seed)
    codes, scales = quant.quantize_act(x, abits, group, rotate, 11)
    p = kernels.qlinear_int_partials(codes, scales, packed, ws, wz, wbits)   # poisoned with -2^31 inside
    ref = quant.int_partials(codes, packed, wz, wbits, group)
    assert p.shape == ref.shape and p.dtype == torch.int32
    assert torch.equal(p, ref)


@settings(max_examples=50)
@given(case=linear_cases(), seed=st.integers(0, 2**16))
def test_qlinear_vs_reference(case, seed):
    """Given the same codes, y equals qlinear_ref within fp32 summation order (+1 ulp of the output dtype)."""
    m, n, k, group, rotate, abits, wbits, dtype, _ = case
    x, packed, ws, wz, bias = _setup(case, seed)
    codes, scales = quant.quantize_act(x, abits, group, rotate, 11)
    y = kernels.qlinear(codes, scales, packed, ws, wz, bias, wbits, dtype, out=_nan_out((m,), n, dtype))
    yr = quant.qlinear_ref(codes, scales, packed, ws, wz, bias, wbits, dtype)
    assert_out_close(y, yr, dtype)


@settings(max_examples=50)
@given(case=linear_cases(), seed=st.integers(0, 2**16))
def test_split_pipeline_vs_reference(case, seed):
    """act_quant → qlinear (both Triton) vs quantize_act → qlinear_ref."""
    m, n, k, group, rotate, abits, wbits, dtype, _ = case
    x, packed, ws, wz, bias = _setup(case, seed)
    codes, scales = kernels.act_quant(x, abits, group, rotate, 5)
    y = kernels.qlinear(codes, scales, packed, ws, wz, bias, wbits, dtype)
    rc, rs = quant.quantize_act(x, abits, group, rotate, 5)
    yr = quant.qlinear_ref(rc, rs, packed, ws, wz, bias, wbits, dtype)
    if rotate:
        assert_out_close_rotated(y, yr, tie_rows(x, abits, group, rotate, 5), rs, ws, wbits, dtype)
    else:
        assert_out_close(y, yr, dtype)


@settings(max_examples=50)
@given(case=linear_cases(fused=True), seed=st.integers(0, 2**16))
def test_fused_vs_reference(case, seed):
    m, n, k, group, rotate, abits, wbits, dtype, _ = case
    x, packed, ws, wz, bias = _setup(case, seed)
    y = kernels.fused_qlinear(x, packed, ws, wz, bias, wbits, abits, group, rotate, 5,
                              out=_nan_out((m,), n, dtype))
    rc, rs = quant.quantize_act(x, abits, group, rotate, 5)
    yr = quant.qlinear_ref(rc, rs, packed, ws, wz, bias, wbits, dtype)
    if rotate:
        assert_out_close_rotated(y, yr, tie_rows(x, abits, group, rotate, 5), rs, ws, wbits, dtype)
    else:
        assert_out_close(y, yr, dtype)


@pytest.mark.parametrize("group,rotate,abits", [(64, 64, 4), (128, 128, 8), (256, 0, 8), (320, 64, 8)])
def test_fused_equals_split(group, rotate, abits):
    """The single-kernel variant gives the two-kernel numbers (the same ops in the same order)."""
    k = 320 if group == 320 else 256
    x = make_x(37, k, torch.float32)
    packed, ws, wz = make_weight(45, k, 4)
    bias = torch.randn(45)
    y = kernels.fused_qlinear(x, packed, ws, wz, bias, 4, abits, group, rotate, 9)
    c, s = kernels.act_quant(x, abits, group, rotate, 9)
    ys = kernels.qlinear(c, s, packed, ws, wz, bias, 4, torch.float32)
    if rotate:
        assert_out_close_rotated(y, ys, tie_rows(x, abits, group, rotate, 9), s, ws, 4, torch.float32, flips=1)
    else:
        assert torch.equal(y, ys)


def test_leading_dims_and_empty():
    packed, ws, wz = make_weight(24, 128, 4)
    x = make_x(6, 128).reshape(2, 3, 128)
    c, s = quant.quantize_act(x, 8, 64)
    y = kernels.qlinear(c, s, packed, ws, wz, None, 4, torch.float16)
    assert y.shape == (2, 3, 24) and y.dtype == torch.float16
    assert_out_close(y, quant.qlinear_ref(c, s, packed, ws, wz, None, 4, torch.float16), torch.float16)
    x0 = torch.randn(0, 128)
    c0, s0 = quant.quantize_act(x0, 8, 64)
    assert kernels.qlinear(c0, s0, packed, ws, wz, None, 4, torch.float32).shape == (0, 24)
    y0 = kernels.fused_qlinear(x0.reshape(1, 0, 128), packed, ws, wz, None, 4, 4, 64, 64, 1)
    assert y0.shape == (1, 0, 24) and y0.dtype == torch.float32


def test_bf16_output_in_interpreter():
    packed, ws, wz = make_weight(20, 256, 4)
    x = make_x(9, 256, torch.bfloat16)
    bias = torch.randn(20, dtype=torch.bfloat16)
    c, s = quant.quantize_act(x, 4, 128)
    y = kernels.qlinear(c, s, packed, ws, wz, bias, 4, torch.bfloat16)
    yr = quant.qlinear_ref(c, s, packed, ws, wz, bias, 4, torch.bfloat16)
    assert_out_close(y, yr, torch.bfloat16)
    yf = kernels.fused_qlinear(x, packed, ws, wz, bias, 4, 4, 128, 0, -1)
    assert_out_close(yf, yr, torch.bfloat16)


def test_large_values_int32_headroom():
    """Worst-case codes (±127 × ±15 over K) stay exact in the int32 accumulator; per-token K = 2048."""
    k = 2048
    codes = torch.full((3, k), 127, dtype=torch.int8)
    codes[1] = -127
    scales = torch.ones(3, 1)
    q = torch.zeros(4, k, dtype=torch.int64)
    q[1] = 15
    packed = quant.pack(q, 4)
    wz = torch.tensor([[15], [0], [7], [15]], dtype=torch.int32)
    ws = torch.ones(4, 1)
    p = kernels.qlinear_int_partials(codes, scales, packed, ws, wz, 4)
    assert torch.equal(p, quant.int_partials(codes, packed, wz, 4, k))
    assert int(p.abs().max()) == 127 * 15 * k


@pytest.mark.parametrize("per_token", [False, True])
def test_w8_extremes_int32_exact(per_token):
    """8-bit weights at the corners: q ∈ {0, 255}, z ∈ {0, 128, 255}, codes ±127 — q − z spans −255..255 and the
    (128 − z)·Σx correction is as large as the dot itself; partials, outputs and the fused kernel stay exact."""
    k = 2048 if per_token else 512
    group = k if per_token else 256
    codes = torch.full((4, k), 127, dtype=torch.int8)
    codes[1] = -127
    codes[2, ::2] = -127
    codes[3] = 0
    scales = torch.ones(4, k // group)
    q = torch.zeros(6, k, dtype=torch.int64)
    q[1] = 255
    q[3, 1::2] = 255
    q[4] = 128
    q[5] = 255
    packed = quant.pack(q, 8)
    wz = torch.tensor([[255], [0], [128], [255], [128], [255]], dtype=torch.int32)
    ws = torch.ones(6, 1)
    p = kernels.qlinear_int_partials(codes, scales, packed, ws, wz, 8)
    ref = quant.int_partials(codes, packed, wz, 8, group)
    assert torch.equal(p, ref)
    assert int(p.abs().max()) == 127 * 255 * group
    y = kernels.qlinear(codes, scales, packed, ws, wz, None, 8, torch.float32)
    assert torch.equal(y, quant.qlinear_ref(codes, scales, packed, ws, wz, None, 8, torch.float32))


def test_supports_predicate():
    assert kernels.supports(4, (64, 1), 128, 3072)
    assert kernels.supports(3, (64, 1), 3072, 3072, rotate=128)              # per-token
    assert kernels.supports(4, (64, 1), 64, 256, rotate=64, variant="fused")
    assert kernels.supports(8, (64, 1), 128, 3072)                          # bytes + the q − 128 correction
    assert kernels.supports(8, (64, 1), 3072, 3072, variant="fused")        # per-token
    assert not kernels.supports(8, (64, 1), 2**16 + 2**15, 2**16 + 2**15)    # int32 partial could overflow
    assert kernels.supports(4, (64, 1), 2**16 + 2**15, 2**16 + 2**15)        # ±15 codes: room to spare
    assert not kernels.supports(5, (64, 1), 128, 3072)                      # no 5-bit layout
    assert not kernels.supports(4, (64, 24), 128, 3072)                     # group-wise weight scales
    assert not kernels.supports(4, (64, 1), 16, 256)                        # int8 dot needs K-block >= 32
    assert not kernels.supports(4, (64, 1), 48, 96)                         # not a power of two, not K
    assert not kernels.supports(4, (64, 1), 64, 256, rotate=128, variant="fused")  # rotation wider than group
    assert kernels.supports(4, (64, 1), 64, 256, rotate=128)                # the split kernels handle it
    assert "overflow" in kernels.unsupported_reason(8, (64, 1), 2**16 + 2**15, 2**16 + 2**15)
    with pytest.raises(ValueError, match="5"):
        kernels.qlinear(torch.zeros(2, 64, dtype=torch.int8), torch.ones(2, 1), torch.zeros(3, 64, dtype=torch.uint8),
                        torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.int32), None, 5, torch.float32)
    with pytest.raises(ValueError, match="8-bit codes per row"):   # a nibble-packed weight passed as 8-bit
        kernels.qlinear(torch.zeros(2, 64, dtype=torch.int8), torch.ones(2, 1), torch.zeros(3, 32, dtype=torch.uint8),
                        torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.int32), None, 8, torch.float32)
    with pytest.raises(ValueError, match="does not match"):
        kernels.fused_qlinear(torch.randn(2, 64), torch.zeros(3, 32, dtype=torch.uint8), torch.ones(3, 1),
                              torch.zeros(3, 1, dtype=torch.int32), None, 8, 8, 64, 0, -1)
    with pytest.raises(ValueError):
        kernels.fused_qlinear(torch.randn(2, 64), torch.zeros(3, 32, dtype=torch.uint8), torch.ones(3, 2),
                              torch.zeros(3, 2, dtype=torch.int32), None, 4, 4, 32, 0, -1)
