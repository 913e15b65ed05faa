"""act_quant with a clip ratio: reference semantics, Triton kernel bit-exact (no rotation), the op and its fake."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import ops, quant
from dvdq_compile.kernels import launch as kernels

from .helpers import make_x


def test_reference_clip_semantics():
    x = torch.tensor([[0.1, -0.5, 1.0, 4.0]])
    c0, s0 = quant.quantize_act(x, 4, 4)
    c1, s1 = quant.quantize_act(x, 4, 4, clip=1.0)
    assert torch.equal(c0, c1) and torch.equal(s0, s1)
    c, s = quant.quantize_act(x, 4, 4, clip=torch.tensor([0.5]))
    assert float(s) == float(torch.tensor(4.0 * 0.5) / 7)
    assert c.tolist() == [[0, -2, 3, 7]]  # 4.0 saturates at qmax (1/s = 3.4999998 in fp32 rounds to 3)
    zc, zs = quant.quantize_act(torch.zeros(2, 8), 4, 4, clip=0.7)  # all-zero groups: no NaN
    assert torch.all(zc == 0) and torch.all(zs == 0)
    with pytest.raises(ValueError, match="one value"):
        quant.quantize_act(x, 4, 4, clip=torch.ones(2))


@settings(max_examples=30, deadline=None)
@given(group=st.sampled_from([32, 64, 128, "K"]), m=st.integers(1, 40), bits=st.sampled_from([4, 8]),
       clip=st.sampled_from([1.0, 0.95, 0.8, 0.6, 0.333]), dtype=st.sampled_from([torch.float32, torch.float16]),
       seed=st.integers(0, 999))
def test_triton_clip_bit_exact(group, m, bits, clip, dtype, seed):
    k = 192 if group == "K" else group * 2
    group = k if group == "K" else group
    x = make_x(m, k, dtype, gen=torch.Generator().manual_seed(seed))
    ct = torch.tensor([clip])
    codes, scales = kernels.act_quant(x, bits, group, 0, quant.NO_SIGNS, clip=ct)
    rc, rs = quant.quantize_act(x, bits, group, 0, quant.NO_SIGNS, clip=ct)
    assert torch.equal(codes, rc) and torch.equal(scales, rs)
    if clip < 1:  # the clip must actually change something, or this test could not fail
        nc, _ = quant.quantize_act(x, bits, group, 0, quant.NO_SIGNS)
        assert not torch.equal(nc, rc)


def test_op_passes_clip_and_fake_shapes():
    x = torch.randn(3, 5, 128)
    ct = torch.tensor([0.7])
    for impl in ("reference", "triton"):
        c, s = ops.act_quant(x, 4, 64, 0, quant.NO_SIGNS, impl, ct)
        rc, rs = quant.quantize_act(x, 4, 64, clip=ct)
        assert torch.equal(c, rc) and torch.equal(s, rs)
    c, s = torch.ops.dvdq.act_quant(x, 4, 64, 0, quant.NO_SIGNS, "reference")  # clip stays optional
    assert torch.equal(c, quant.quantize_act(x, 4, 64)[0])
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fc, fs = torch.ops.dvdq.act_quant(mode.from_tensor(x), 4, 64, 0, quant.NO_SIGNS, "reference",
                                          mode.from_tensor(ct))
    assert fc.shape == x.shape and fs.shape == (3, 5, 2)
