"""3-bit weights and 6-bit activations end to end: reference, packing, Triton kernels (interpreter), backend."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dvdq_compile
from dvdq_compile import quant
from dvdq_compile.kernels import launch as kernels
from dvdq_compile.quant.pack import pack_int3, unpack_int3
from tests.helpers import TinyDiT, compiled, rel_err
from tests.kernels.helpers import assert_out_close, make_weight, make_x

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

X = torch.randn(2, 20, 24, generator=torch.Generator().manual_seed(1))
T = torch.tensor([500, 500])


def test_a6_qmax_and_w3_code_range():
    assert quant.qmax_for(6) == 31
    w = torch.randn(9, 64, generator=torch.Generator().manual_seed(0))
    qw = quant.quantize_weight(w, quant.WeightSpec(bits=3, method="minmax", rotate=0))
    codes = quant.unpack(qw.packed, 3)
    assert int(codes.max()) <= 7 and int(codes.max()) == 7 and int(codes.min()) == 0
    # the 3-bit storage format round-trips the kernel's nibble codes exactly
    assert torch.equal(unpack_int3(pack_int3(codes)), codes)
    c, _ = quant.quantize_act(torch.randn(5, 64), 6, 64)
    assert int(c.abs().max()) == 31


@st.composite
def _cases(draw):
    m = draw(st.sampled_from([0, 1, 3, 17, 33]))
    n = draw(st.integers(1, 40))
    group = draw(st.sampled_from([32, 64]))
    k = group * draw(st.integers(1, 3))
    return m, n, k, group, draw(st.sampled_from([torch.float32, torch.float16])), draw(st.integers(0, 2**16))


@settings(max_examples=12)
@given(case=_cases())
def test_a6_w3_kernels_bit_exact_vs_reference(case):
    m, n, k, group, dtype, seed = case
    g = torch.Generator().manual_seed(seed)
    x = make_x(m, k, dtype, gen=g)            # includes an all-zero row for m > 2
    packed, ws, wz = make_weight(n, k, 3, gen=g)
    codes, scales = kernels.act_quant(x, 6, group, 0, quant.NO_SIGNS)
    rc, rs = quant.quantize_act(x, 6, group, 0, quant.NO_SIGNS)
    assert torch.equal(codes, rc) and torch.equal(scales, rs)
    assert not torch.isnan(scales).any()
    p = kernels.qlinear_int_partials(codes, scales, packed, ws, wz, 3)
    assert torch.equal(p, quant.int_partials(codes, packed, wz, 3, group))
    y = kernels.qlinear(codes, scales, packed, ws, wz, None, 3, dtype)
    assert_out_close(y, quant.qlinear_ref(codes, scales, packed, ws, wz, None, 3, dtype), dtype)


def _minmax_w3a6_reference(model):
    """Independent composition of the reference: MinMax 3-bit rows, per-token 6-bit activations, no rotation."""
    ref = copy.deepcopy(model)
    spec = quant.WeightSpec(bits=3, method="minmax", rotate=0)
    for name, m in ref.named_modules():
        if not (isinstance(m, torch.nn.Linear) and name.startswith("blocks.")):
            continue
        qw = quant.quantize_weight(m.weight, spec)

        weight_only = name.endswith("norm1.linear")

        def fwd(x, m=m, qw=qw, weight_only=weight_only):
            if weight_only:
                return quant.dequant_linear_ref(x.float(), *qw.tensors(), m.bias, 3).to(x.dtype)
            codes, scales = quant.quantize_act(x, 6, x.shape[-1], 0)
            return quant.qlinear_ref(codes, scales, *qw.tensors(), m.bias, 3, x.dtype)
        m.forward = fwd
    return ref


def test_minmax_w3a6_through_the_backend_matches_reference_and_is_worse_than_w4a8():
    model = TinyDiT()
    with torch.no_grad():
        fp = model(X, T)
        y = compiled(model, recipe="minmax", weight_bits=3, act_bits=6)(X, T)
        r = dvdq_compile.report(model)
        expected = _minmax_w3a6_reference(model)(X, T)
        y48 = compiled(model, recipe="minmax", weight_bits=4, act_bits=8)(X, T)
    q = [x for x in r.layers if x.decision == "quantize"]
    assert q and all(x.weight_bits == 3 for x in q), r.table()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert rel_err(y48, fp) < rel_err(y, fp) < 1.0


def test_minmax_w3a6_triton_kernels_through_the_backend():
    model = TinyDiT()
    with torch.no_grad():
        fp = model(X, T)
        yt = compiled(model, recipe="minmax", weight_bits=3, act_bits=6, kernels="triton")(X, T)
        r = dvdq_compile.report(model)
        yr = compiled(model, recipe="minmax", weight_bits=3, act_bits=6, kernels="reference")(X, T)
    assert {x.kernel for x in r.layers if x.decision == "quantize"} == {"triton"}
    # no rotation: the kernel's codes are bit-exact, so only the fp32 summation order differs
    assert rel_err(yt, yr) < 1e-5 * max(1.0, rel_err(yr, fp)) + 1e-5
