"""The dvdq custom ops with impl="triton" equal impl="reference" (eager and under torch.compile aot_eager)."""
import pytest
import torch

import dvdq_compile.ops  # noqa: F401  (registers torch.ops.dvdq.*)

from .helpers import assert_out_close, assert_out_close_rotated, make_weight, make_x, tie_rows

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("dtype,abits,group,rotate", [(torch.float32, 4, 64, 0), (torch.float16, 8, 128, 128),
                                                     (torch.float32, 8, 192, 64)])
def test_ops_triton_equals_reference(dtype, abits, group, rotate):
    k = 192 if group == 192 else 256
    x = make_x(2 * 17, k, dtype).reshape(2, 17, k)
    packed, ws, wz = make_weight(33, k, 4)
    bias = torch.randn(33).to(dtype)
    c, s = torch.ops.dvdq.act_quant(x, abits, group, rotate, 3, "triton")
    rc, rs = torch.ops.dvdq.act_quant(x, abits, group, rotate, 3, "reference")
    assert c.shape == rc.shape == x.shape and s.shape == rs.shape == (2, 17, k // group)
    if rotate:
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=0)
        assert int((c.int() - rc.int()).abs().max()) <= 1
    else:
        assert torch.equal(c, rc) and torch.equal(s, rs)
    y = torch.ops.dvdq.qlinear(rc, rs, packed, ws, wz, bias, 4, dtype, "triton")
    yr = torch.ops.dvdq.qlinear(rc, rs, packed, ws, wz, bias, 4, dtype, "reference")
    assert_out_close(y, yr, dtype)
    yf = torch.ops.dvdq.fused_qlinear(x, packed, ws, wz, bias, 4, abits, group, rotate, 3, "triton")
    yfr = torch.ops.dvdq.fused_qlinear(x, packed, ws, wz, bias, 4, abits, group, rotate, 3, "reference")
    if rotate:
        assert_out_close_rotated(yf, yfr, tie_rows(x, abits, group, rotate, 3), rs, ws, 4, dtype)
    else:
        assert_out_close(yf, yfr, dtype)


def test_compile_aot_eager_with_triton_ops():
    k, n = 128, 24
    packed, ws, wz = make_weight(n, k, 4)
    bias = torch.randn(n)

    def fn(x, impl):
        c, s = torch.ops.dvdq.act_quant(x, 8, 64, 64, 1, impl)
        y1 = torch.ops.dvdq.qlinear(c, s, packed, ws, wz, bias, 4, x.dtype, impl)
        y2 = torch.ops.dvdq.fused_qlinear(x, packed, ws, wz, None, 4, 4, 64, 64, 1, impl)
        return torch.relu(y1) + y2

    x = make_x(19, k)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: fn(x, "triton"), backend="aot_eager", fullgraph=True)
    y = compiled(x)
    yr = fn(x, "reference")
    err = (y - yr).abs().max()
    assert y.shape == (19, n) and torch.isfinite(y).all()
    assert err <= 1e-4 * yr.abs().max() + 1e-5, float(err)
