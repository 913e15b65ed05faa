"""quant.offset: TQE's weight (MinMax grid of W, codes of W + (B A)ᵀ) against an independent composition."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.quant.offset import offset_qweight


@st.composite
def _cases(draw):
    bits = draw(st.sampled_from([3, 4, 8]))
    n = draw(st.integers(1, 37))                    # ragged N
    k = 2 * draw(st.integers(1, 40))                # the nibble layout needs an even K
    r = draw(st.integers(1, 5))
    return bits, n, k, r, draw(st.integers(0, 2**16)), draw(st.sampled_from([torch.float32, torch.bfloat16]))


@settings(max_examples=40, deadline=None)
@given(case=_cases())
def test_offset_codes_match_an_independent_composition(case):
    bits, n, k, r, seed, dtype = case
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(k, r, generator=g) * 0.05
    a = torch.randn(r, n, generator=g)
    packed, scale, zero = offset_qweight(w, b, a, bits)
    qmax = 2**bits - 1
    wf = w.float()
    lo = wf.amin(1).clamp(max=0)
    hi = wf.amax(1).clamp(min=0)
    d = ((hi - lo) / qmax).clamp_min(torch.finfo(torch.float32).tiny)
    z = torch.round(-lo / d).clamp(0, qmax)
    want = torch.clamp(torch.round((wf + (b @ a).T) / d[:, None]) + z[:, None], 0, qmax)
    assert torch.equal(quant.unpack(packed, bits).float(), want)
    assert torch.equal(scale[:, 0], d) and torch.equal(zero[:, 0], z.to(torch.int32))
    assert scale.shape == (n, 1) and scale.dtype == torch.float32 and zero.dtype == torch.int32


@settings(max_examples=20, deadline=None)
@given(case=_cases())
def test_no_offset_is_minmax_rtn(case):
    bits, n, k, _, seed, dtype = case
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype)
    qw = quant.quantize_weight(w, quant.WeightSpec(bits=bits, method="minmax", rotate=0))
    for got, want in zip(offset_qweight(w, None, None, bits), qw.tensors()):
        assert torch.equal(got, want)


def test_all_zero_rows_and_bad_shapes():
    w = torch.zeros(3, 8)
    w[1] = torch.linspace(-1, 1, 8)
    packed, scale, zero = offset_qweight(w, torch.zeros(8, 2), torch.zeros(2, 3), 3)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    dq = quant.dequantize(quant.unpack(packed, 3), scale, zero)
    assert torch.equal(dq[0], torch.zeros(8)) and torch.equal(dq[2], torch.zeros(8))
    with pytest.raises(ValueError, match=r"offset factors B \(8, 2\) and A \(2, 4\) do not fit a weight \[3, 8\]"):
        offset_qweight(w, torch.zeros(8, 2), torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="2-D"):
        offset_qweight(torch.zeros(8), None, None, 3)
