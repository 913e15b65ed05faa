"""quant/exact.py: division by a constant, correctly rounded (the reference's scales must not depend on the device)."""
import pytest
import torch

from dvdq_compile.quant.exact import div_exact


@pytest.mark.parametrize("v", [127, 7, 15, 31, 3])
def test_div_exact_is_the_correctly_rounded_quotient(v):
    # fp32 a / v computed in fp64 and rounded once to fp32 is the correctly rounded fp32 quotient (53 >= 2·24 + 2)
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(v)) * 100
    want = (x.double() / v).float()
    got = div_exact(x, v)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # the reciprocal multiply that PyTorch's CUDA division by a Python scalar does instead is not the same function
    assert not torch.equal(x * (1.0 / v), want)


def test_div_exact_keeps_dtype_and_shape():
    x = torch.ones(3, 4, dtype=torch.float64)
    y = div_exact(x, 7)
    assert y.dtype == torch.float64 and y.shape == (3, 4) and torch.equal(y, x / 7)
