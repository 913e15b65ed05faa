"""int8-expanded weights: the expand kernel vs unpack − z, and the qlinear int8-native loop vs the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels import launch as kernels
from dvdq_compile.kernels import qlinear as qlinear_mod
from dvdq_compile.kernels.expand import expand_weight

from .helpers import assert_out_close, linear_cases, make_weight, make_x

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 70), kh=st.integers(1, 150), bits=st.sampled_from([3, 4]), seed=st.integers(0, 2**16))
def test_expand_equals_unpack_minus_zero(n, kh, bits, seed):
    """Ragged N and K/2 (tile edges): every element is unpack(packed) − z, exactly."""
    g = torch.Generator().manual_seed(seed)
    packed, _, wz = make_weight(n, 2 * kh, bits, gen=g)
    out = torch.full((n, 2 * kh), -128, dtype=torch.int8)   # poison: the expanded range is ±15
    w8 = expand_weight(packed, wz, bits, out=out)
    ref = quant.unpack(packed, bits).to(torch.int32) - wz.to(torch.int32)
    assert w8.dtype == torch.int8 and torch.equal(w8.to(torch.int32), ref)


def _case(case, seed, wbits_for_8: int):
    """Activation codes and a nibble-packed weight for a linear case (8-bit cases take ``wbits_for_8``: expansion
    is for 3/4-bit weights)."""
    m, n, k, group, rotate, abits, wbits, dtype, has_bias = case
    wbits = wbits_for_8 if wbits == 8 else wbits
    g = torch.Generator().manual_seed(seed)
    x = make_x(m, k, dtype, gen=g)
    packed, ws, wz = make_weight(n, k, wbits, gen=g)
    bias = (torch.randn(n, generator=g) * 2).to(dtype) if has_bias else None
    codes, scales = quant.quantize_act(x, abits, group, rotate, 11)
    return codes, scales, packed, ws, wz, bias, wbits, dtype


@settings(max_examples=40, deadline=None)
@given(case=linear_cases(), seed=st.integers(0, 2**16))
def test_expanded_int_partials_bit_exact(case, seed):
    """The int8-native loop's group partials equal quant.int_partials (independent of the kernel) exactly."""
    codes, scales, packed, ws, wz, _, wbits, _ = _case(case, seed, 4)
    p = kernels.qlinear_int_partials(codes, scales, packed, ws, wz, wbits, expand=True)
    assert torch.equal(p, quant.int_partials(codes, packed, wz, wbits, case[3]))


@settings(max_examples=40, deadline=None)
@given(case=linear_cases(), seed=st.integers(0, 2**16))
def test_expanded_qlinear_vs_reference(case, seed):
    codes, scales, packed, ws, wz, bias, wbits, dtype = _case(case, seed, 3)
    y = kernels.qlinear(codes, scales, packed, ws, wz, bias, wbits, dtype, expand=True,
                        out=torch.full((case[0], case[1]), float("nan"), dtype=dtype))
    assert_out_close(y, quant.qlinear_ref(codes, scales, packed, ws, wz, bias, wbits, dtype), dtype)


def test_forced_config_gives_the_autotuned_numbers():
    """qlinear(config=...) runs one tile config instead of autotuning: same loop order, same output."""
    import triton
    codes, scales, packed, ws, wz, bias, wbits, dtype = _case((70, 96, 256, 128, 0, 8, 4, torch.float32, True), 5, 4)
    cfg = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)
    for expand in (False, True):
        y = kernels.qlinear(codes, scales, packed, ws, wz, bias, wbits, dtype, expand=expand, config=cfg)
        assert torch.equal(y, kernels.qlinear(codes, scales, packed, ws, wz, bias, wbits, dtype, expand=expand))


def test_expand_decision():
    assert qlinear_mod.use_expanded(10, 4, True) and not qlinear_mod.use_expanded(10**6, 4, False)
    assert not qlinear_mod.use_expanded(10**6, 8)                 # 8-bit q − z does not fit int8
    with pytest.raises(ValueError, match="8 bits"):
        qlinear_mod.use_expanded(10, 8, True)
    # by M on a GPU; never automatically in the interpreter, where it gains nothing
    expected = not qlinear_mod.INTERPRET
    assert qlinear_mod.use_expanded(qlinear_mod.EXPAND_MIN_M, 4) == expected
    assert not qlinear_mod.use_expanded(qlinear_mod.EXPAND_MIN_M - 1, 4)


def test_expand_rejects_bad_input():
    packed, _, wz = make_weight(4, 8, 4)
    with pytest.raises(ValueError, match="3/4-bit"):
        expand_weight(packed, wz, 8)
    with pytest.raises(ValueError, match="zero-points"):
        expand_weight(packed, wz[:2], 4)
    with pytest.raises(TypeError, match="uint8"):
        expand_weight(packed.to(torch.int8), wz, 4)
    with pytest.raises(ValueError, match=r"out must be int8 \[4, 8\]"):
        expand_weight(packed, wz, 4, out=torch.empty(4, 8, dtype=torch.int16))
