"""FFN-up GEMM with a GELU → rotate → quantize epilogue vs its reference (quant.gelu_quant_ref: qlinear_ref, then
torch's F.gelu, then quantize_act)."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels.gelu_quant import qlinear_gelu_quant, unsupported_reason

from .helpers import make_weight, make_x

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# GELU is torch's formula with another tanh/erf implementation (a few fp32 ulps), so a 16-bit activation can round
# the other way by one ulp, and the rotation sums in another order: scales within one ulp of the output dtype (a few
# fp32 ulps for fp32), codes equal except at rounding ties, which flip by one
SCALE_RTOL = {torch.float32: 3e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@st.composite
def cases(draw):
    """(M, N, K, in_group, group, rotate, bits, wbits, dtype, bias, approximate): ragged M; N a multiple of the
    epilogue's group but not of the tile (256 in the interpreter); the GEMM's own activation group or per-token."""
    rnd = random.Random(draw(st.integers(0, 2**31 - 1)))
    group = rnd.choice((32, 64, 128, 256))
    n = group * rnd.randint(1, max(1, 384 // group))
    k = rnd.choice((64, 128, 192, 256))
    in_group = rnd.choice([g for g in (32, 64, 128) if k % g == 0] + [k])
    rots = [r for r in (16, 32, 64, 128) if r <= group]
    rotate = rnd.choice(rots) if rnd.random() < 0.6 else 0
    m = 1 if rnd.random() < 0.1 else rnd.randint(2, 70)
    return (m, n, k, in_group, group, rotate, rnd.choice((4, 8)), rnd.choice((3, 4, 8)),
            rnd.choice((torch.float32, torch.float16, torch.bfloat16)), rnd.random() < 0.5,
            rnd.choice(("tanh", "tanh", "none")))


def _setup(case, seed):
    m, n, k, in_group, group, rotate, bits, wbits, dtype, has_bias, approx = case
    g = torch.Generator().manual_seed(seed)
    x = make_x(m, k, torch.float32, gen=g)
    codes, scales = quant.quantize_act(x, 8, in_group, 0)
    packed, ws, wz = make_weight(n, k, wbits, gen=g)
    ws = ws * 4   # FFN-up outputs of a few units: GELU's curved part, both signs
    bias = (torch.randn(n, generator=g)).to(dtype) if has_bias else None
    return codes, scales, packed, ws, wz, bias


def _compare(case, c, s, rc, rs):
    dtype = case[8]
    assert c.shape == rc.shape and s.shape == rs.shape and c.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, rs, rtol=SCALE_RTOL[dtype], atol=0)
    # a 16-bit one-ulp flip moves a scale only when it hits the group's largest element: most agree to fp32 noise
    # (tanh-GELU against erf-GELU, ~1e-4 apart, fails this)
    off = (s - rs).abs() > 3e-6 * rs.abs()
    assert float(off.float().mean()) <= 0.02 if off.numel() else True, float(off.float().mean())
    d = (c.int() - rc.int()).abs()
    assert int(d.max()) <= 1 if d.numel() else True
    assert float((d > 0).float().mean()) <= 2e-3 if d.numel() else True


@settings(max_examples=40, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**16))
def test_vs_reference(case, seed):
    m, n, k, in_group, group, rotate, bits, wbits, dtype, has_bias, approx = case
    codes, scales, packed, ws, wz, bias = _setup(case, seed)
    c, s = qlinear_gelu_quant(codes, scales, packed, ws, wz, bias, wbits, dtype, approx, bits, group, rotate, 5)
    rc, rs = quant.gelu_quant_ref(codes, scales, packed, ws, wz, bias, wbits, dtype, approx, bits, group, rotate, 5)
    _compare(case, c, s, rc, rs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_wan_like_tile_and_expanded_weights(dtype):
    """Wan's FFN-up shape class (N a multiple of 128, group 128, block 128, tanh), 3-D input; the int8-expanded
    weight loop gives bit-identical codes and scales to the packed one."""
    case = (2 * 33, 512, 128, 128, 128, 128, 8, 4, dtype, True, "tanh")
    codes, scales, packed, ws, wz, bias = _setup(case, 1)
    codes, scales = codes.view(2, 33, 128), scales.view(2, 33, -1)
    c, s = qlinear_gelu_quant(codes, scales, packed, ws, wz, bias, 4, dtype, "tanh", 8, 128, 128, 5, expand=False)
    ce, se = qlinear_gelu_quant(codes, scales, packed, ws, wz, bias, 4, dtype, "tanh", 8, 128, 128, 5, expand=True)
    assert c.shape == (2, 33, 512) and s.shape == (2, 33, 4)
    assert torch.equal(c, ce) and torch.equal(s, se)
    rc, rs = quant.gelu_quant_ref(codes, scales, packed, ws, wz, bias, 4, dtype, "tanh", 8, 128, 128, 5)
    _compare(case, c, s, rc, rs)
    assert float((c != rc).float().mean()) < 1e-3


def test_gelu_and_bf16_rounding_match_torch():
    """The epilogue's two roundings alone (no quantization noise): with group = 16, A8 and no rotation the codes of a
    one-element-dominated group are the 16-bit GELU output to ±1; bf16 ties (y exactly between two bf16 values)
    round to even like torch's cast."""
    n, k = 256, 64
    g = torch.Generator().manual_seed(3)
    codes, scales = quant.quantize_act(make_x(40, k, gen=g), 8, k, 0)
    packed, ws, wz = make_weight(n, k, 4, gen=g)
    for approx in ("tanh", "none"):
        c, s = qlinear_gelu_quant(codes, scales, packed, ws * 4, wz, None, 4, torch.bfloat16, approx, 8, 16, 0)
        rc, rs = quant.gelu_quant_ref(codes, scales, packed, ws * 4, wz, None, 4, torch.bfloat16, approx, 8, 16, 0)
        assert float((s != rs).float().mean()) < 1e-3 and float((c != rc).float().mean()) < 1e-3


def test_all_zero_group_gives_zero_scale_not_nan():
    """An FFN-up output group that is exactly 0 (Δ = 0 on its rows, no bias): GELU(0) = 0, scale 0, codes 0."""
    n, k = 256, 64
    g = torch.Generator().manual_seed(0)
    codes, scales = quant.quantize_act(make_x(5, k, gen=g), 8, 32, 0)
    packed, ws, wz = make_weight(n, k, 4, gen=g)
    ws[64:128] = 0.0
    c, s = qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.float32, "tanh", 8, 64, 64, 3)
    assert torch.isfinite(s).all() and torch.equal(s[:, 1], torch.zeros(5)) and not c[:, 64:128].any()


def test_empty_and_errors():
    packed, ws, wz = make_weight(128, 64, 4)
    codes, scales = quant.quantize_act(torch.randn(0, 64), 8, 64, 0)
    c, s = qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.float32, "tanh", 8, 64, 0)
    assert c.shape == (0, 128) and s.shape == (0, 2)
    codes, scales = quant.quantize_act(torch.randn(3, 64), 8, 64, 0)
    with pytest.raises(ValueError, match="power-of-two group in \\[16, 256\\] dividing N"):
        qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.float32, "tanh", 8, 96, 0)
    with pytest.raises(ValueError, match="Hadamard block 128"):
        qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.float32, "tanh", 8, 64, 128)
    with pytest.raises(ValueError, match="approximate='sigmoid'"):
        qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.float32, "sigmoid", 8, 64, 0)
    import triton
    with pytest.raises(ValueError, match="config BLOCK_N=128 does not hold whole groups of 256"):
        qlinear_gelu_quant(codes, scales, make_weight(256, 64, 4)[0], *make_weight(256, 64, 4)[1:], None, 4,
                           torch.float32, "tanh", 8, 256, 0,
                           config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 128, "GROUP_M": 4}, num_warps=4))
    with pytest.raises(ValueError, match="activation bits"):
        qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.float32, "tanh", 2, 64, 0)
    assert unsupported_reason(8960, 128, 128, torch.bfloat16, "tanh") is None
    assert "per-token" in unsupported_reason(8960, 8960, 0, torch.bfloat16, "tanh")
    assert "output dtype" in unsupported_reason(256, 128, 0, torch.int8, "tanh")
