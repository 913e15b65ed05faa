"""Fused layer norm → modulate → cast → rotate → quantize vs its reference (quant.norm_modulate + quantize_act)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import ops, quant  # noqa: F401  (registers the dvdq ops)
from dvdq_compile.kernels.norm_quant import norm_act_quant, tile_for, unsupported_reason

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _inputs(b, s, k, dtype, per_token_mod, gen):
    # a DiT residual stream: an offset mean, a few large channels, and one all-equal row (variance 0)
    x = torch.randn(b, s, k, generator=gen) * (1 + 20 * (torch.rand(k, generator=gen) > 0.97)) + 3.0
    if b * s > 2:
        x[0, s // 2] = 1.5
    mshape = (b, s, k) if per_token_mod else (b, 1, k)
    mult = 1 + 0.5 * torch.randn(mshape, generator=gen)
    shift = 0.3 * torch.randn(mshape, generator=gen)
    return x.to(dtype), mult, shift


def _compare(x, mult, shift, eps, out_dtype, bits, group, rotate):
    c, s = norm_act_quant(x, mult, shift, eps, out_dtype, bits, group, rotate, 7)
    y = quant.norm_modulate(x, mult, shift, eps, out_dtype)
    rc, rs = quant.quantize_act(y, bits, group, rotate, 7)
    assert c.shape == rc.shape and s.shape == rs.shape and c.dtype == torch.int8
    assert torch.isfinite(s).all()
    # the kernel's mean/variance sum in another order, so y differs in its last fp32 bits: scales within 2 ulp of
    # fp32; with a 16-bit output an element of y can round the other way in the cast (one ulp of that dtype, which
    # the scale sees through the rotation at most in full); codes equal except at rounding ties, which flip by one
    rtol = {torch.float32: 3e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[out_dtype]
    torch.testing.assert_close(s, rs, rtol=rtol, atol=0)
    d = (c.int() - rc.int()).abs()
    assert int(d.max()) <= 1
    assert float((d > 0).float().mean()) <= 2e-3, float((d > 0).float().mean())
    return c, rc


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), s=st.integers(1, 37), kmul=st.sampled_from([1, 2, 3]),
       group=st.sampled_from([32, 64, 128]), rot=st.sampled_from([0, 16, 32]), bits=st.sampled_from([4, 8]),
       per_token_mod=st.booleans(), seed=st.integers(0, 2**16))
def test_vs_reference_fp32(b, s, kmul, group, rot, bits, per_token_mod, seed):
    k = group * kmul
    x, mult, shift = _inputs(b, s, k, torch.float32, per_token_mod, torch.Generator().manual_seed(seed))
    _compare(x, mult, shift, 1e-6, torch.float32, bits, group, min(rot, group))


@pytest.mark.parametrize("rot", [0, 64])
def test_fp16_output_and_input(rot):
    """A 16-bit graph: x in fp16, modulation in fp32, the cast to fp16 before the rotation (as the graph does)."""
    x, mult, shift = _inputs(2, 50, 256, torch.float16, False, torch.Generator().manual_seed(3))
    c, rc = _compare(x, mult, shift, 1e-6, torch.float16, 8, 64, rot)
    assert float((c != rc).float().mean()) < 1e-3


def test_bf16_output_rounds_like_torch():
    """A bf16 graph: the cast before the rotation rounds to nearest even in the interpreter too (its own fp32 → bf16
    cast truncates; round_to rounds on the bits), so codes and scales stay at the reference's."""
    x, mult, shift = _inputs(2, 50, 256, torch.bfloat16, True, torch.Generator().manual_seed(4))
    for rot in (0, 128):
        c, rc = _compare(x, mult, shift, 1e-6, torch.bfloat16, 8, 128, rot)
        assert float((c != rc).float().mean()) < 1e-3


def test_equal_row_gives_zero_codes_not_nan():
    """A row whose values are all equal has variance 0: y = shift, finite codes, no NaN."""
    k = 64
    x = torch.full((1, 3, k), 2.5)
    mult, shift = torch.ones(1, 1, k), torch.zeros(1, 1, k)
    c, s = norm_act_quant(x, mult, shift, 1e-6, torch.float32, 8, 64)
    assert torch.isfinite(s).all() and torch.equal(s, torch.zeros_like(s)) and not c.any()


def test_unsupported_and_errors():
    assert tile_for(1536, 128, 128) == 256 and tile_for(1536, 128, 0) == 256 and tile_for(384, 128, 128) == 128
    assert unsupported_reason(1536, 96, 0, torch.float32) and unsupported_reason(1536, 128, 256, torch.float32)
    assert unsupported_reason(100, 64, 0, torch.float32) and unsupported_reason(128, 64, 0, torch.int8)
    x = torch.randn(2, 4, 64)
    with pytest.raises(ValueError, match="does not broadcast"):
        norm_act_quant(x, torch.ones(3, 1, 64), torch.zeros(1, 1, 64), 1e-6, torch.float32, 8, 64)
    with pytest.raises(ValueError, match="power-of-two group"):
        norm_act_quant(x, torch.ones(1, 1, 64), torch.zeros(1, 1, 64), 1e-6, torch.float32, 8, 48)
    with pytest.raises(TypeError, match="floating point, got torch.int32"):
        norm_act_quant(x.int(), torch.ones(1, 1, 64), torch.zeros(1, 1, 64), 1e-6, torch.float32, 8, 64)
    with pytest.raises(ValueError, match="output dtype torch.int8"):
        norm_act_quant(x, torch.ones(1, 1, 64), torch.zeros(1, 1, 64), 1e-6, torch.int8, 8, 64)


def test_op_reference_path_is_the_composition():
    x, mult, shift = _inputs(1, 9, 128, torch.float32, False, torch.Generator().manual_seed(1))
    c, s = torch.ops.dvdq.norm_act_quant(x, mult, shift, 1e-6, torch.float32, 8, 64, 64, 7, "reference")
    rc, rs = quant.quantize_act(quant.norm_modulate(x, mult, shift, 1e-6, torch.float32), 8, 64, 64, 7)
    assert torch.equal(c, rc) and torch.equal(s, rs)
