"""Attention with a rotate → quantize epilogue (kernels/attn_quant.py) vs its reference (quant.attn_quant_ref: fp32
attention, heads merged, cast, quantize_act)."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels.attn_quant import attn_act_quant, unsupported_reason

# fp32 inputs: the same math up to the order of fp32 sums. 16-bit inputs: the kernel rounds the probabilities to
# the input dtype before P·V (as flash kernels do; the reference does not), which moves the output by about one
# ulp of that dtype: scales within one ulp of the output dtype, codes within one (bf16: ~8% of codes flip by one)
SCALE_RTOL = {torch.float32: 3e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@st.composite
def cases(draw):
    """(B, H, Sq, Skv, D, group, rotate, bits, dtype, out_dtype, scale): ragged Sq and Skv (the interpreter's tiles
    are 16 x 16), a query block of one token, cross-attention lengths."""
    rnd = random.Random(draw(st.integers(0, 2**31 - 1)))
    d = rnd.choice((16, 32, 64, 128))
    group = rnd.choice([g for g in (16, 32, 64, 128) if g <= d])
    rotate = rnd.choice([r for r in (16, 32, 64, 128) if r <= group] + [0])
    dtype = rnd.choice((torch.float32, torch.float16, torch.bfloat16))
    out_dtype = dtype if rnd.random() < 0.8 else torch.float32
    return (rnd.randint(1, 2), rnd.randint(1, 3), rnd.choice((1, rnd.randint(2, 40))), rnd.randint(1, 45), d, group,
            rotate, rnd.choice((4, 8)), dtype, out_dtype, None if rnd.random() < 0.7 else 0.3)


def _qkv(case, seed):
    b, h, sq, skv, d = case[:5]
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, s, d, generator=g) for s in (sq, skv, skv))
    return q.to(case[8]), (k * 2).to(case[8]), v.to(case[8])


def _compare(dtype, out_dtype, c, s, rc, rs):
    assert c.shape == rc.shape and s.shape == rs.shape and c.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, rs, rtol=max(SCALE_RTOL[dtype], SCALE_RTOL[out_dtype]), atol=0)
    d = (c.int() - rc.int()).abs()
    assert int(d.max()) <= 1
    if dtype == torch.float32 and out_dtype == torch.float32:
        assert float((d > 0).float().mean()) <= 2e-3


@settings(max_examples=40, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**16))
def test_vs_reference(case, seed):
    *_, group, rotate, bits, dtype, out_dtype, scale = case
    q, k, v = _qkv(case, seed)
    c, s = attn_act_quant(q, k, v, scale, out_dtype, bits, group, rotate, 5)
    rc, rs = quant.attn_quant_ref(q, k, v, scale, out_dtype, bits, group, rotate, 5)
    _compare(dtype, out_dtype, c, s, rc, rs)


def test_strided_views_as_diffusers_passes_them():
    """q, k, v as the permuted [B, S, H, D] -> [B, H, S, D] views diffusers' processors hand to SDPA."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n, 2, 64, generator=g).permute(0, 2, 1, 3) for n in (33, 21, 21))
    assert not q.is_contiguous()
    c, s = attn_act_quant(q, k, v, None, torch.float32, 8, 64, 64, 5)
    rc, rs = quant.attn_quant_ref(q, k, v, None, torch.float32, 8, 64, 64, 5)
    _compare(torch.float32, torch.float32, c, s, rc, rs)


def test_zero_values_give_zero_scales_not_nan():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 2, 20, 32, generator=g), torch.randn(1, 2, 20, 32, generator=g)
    c, s = attn_act_quant(q, k, torch.zeros_like(k), None, torch.float32, 8, 32, 32, 5)
    assert torch.equal(s, torch.zeros_like(s)) and torch.equal(c, torch.zeros_like(c))


@pytest.mark.parametrize("q,k,dtype,group,rotate,why", [
    ((1, 2, 8, 64), (1, 2, 8, 32), torch.float32, 64, 0, "same B, H and D"),
    ((1, 2, 8, 64), (1, 1, 8, 64), torch.float32, 64, 0, "grouped-query"),
    ((1, 2, 8, 96), (1, 2, 8, 96), torch.float32, 32, 0, "head dim 96"),
    ((1, 2, 8, 256), (1, 2, 8, 256), torch.float32, 128, 0, "head dim 256"),
    ((1, 2, 8, 64), (1, 2, 8, 64), torch.float32, 128, 0, "activation group 128 with head dim 64"),
    ((1, 2, 8, 64), (1, 2, 8, 64), torch.float32, 32, 64, "Hadamard block 64"),
    ((1, 2, 8, 64), (1, 2, 8, 64), torch.int8, 64, 0, "dtypes"),
])
def test_unsupported_says_why(q, k, dtype, group, rotate, why):
    assert why in unsupported_reason(q, k, k, dtype, torch.float32, group, rotate)
    if dtype.is_floating_point:
        with pytest.raises(ValueError, match="Triton attn_act_quant"):
            attn_act_quant(torch.zeros(q, dtype=dtype), torch.zeros(k, dtype=dtype), torch.zeros(k, dtype=dtype),
                           None, torch.float32, 8, group, rotate)


def test_inputs_it_cannot_take_say_why():
    """q, k, v of different dtypes, and a softmax over no keys, are refused by name (no NaN output)."""
    q = torch.zeros(1, 2, 8, 32)
    with pytest.raises(ValueError, match="q, k, v dtypes torch.float32, torch.float16, torch.float32 differ"):
        attn_act_quant(q, q.half(), q, None, torch.float32, 8, 32)
    with pytest.raises(ValueError, match=r"no keys \(Skv = 0\)"):
        attn_act_quant(q, q[:, :, :0], q[:, :, :0], None, torch.float32, 8, 32)
