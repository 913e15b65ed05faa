"""Reference quantized linear (docs/numerics.md §6 GEMM formula, quant/linear.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from dvdq_compile.quant import (
    WeightSpec,
    dequant_linear_ref,
    dequantize_act,
    int_partials,
    pack,
    qlinear_ref,
    quantize_act,
    quantize_weight,
    rotate,
)

from ._util import sqnr_db


def rand_weight_q(n, k, wbits, w_group, seed):
    """Random codes [N, K] int64, zero-points [N, Gw] int64 in [0, 2^b−1], scales [N, Gw] fp32 > 0."""
    g = torch.Generator().manual_seed(seed)
    gw = 1 if not w_group else k // w_group
    qmax = 2**wbits - 1
    q = torch.randint(0, qmax + 1, (n, k), generator=g)
    z = torch.randint(0, qmax + 1, (n, gw), generator=g)
    d = torch.rand(n, gw, generator=g) * 0.05 + 1e-3
    return q, z, d


def rand_act_q(m, k, abits, a_group, seed, lead=None):
    g = torch.Generator().manual_seed(seed + 1)
    qmax = 2 ** (abits - 1) - 1
    ga = k // a_group
    codes = torch.randint(-qmax, qmax + 1, (m, k), generator=g)
    scales = torch.rand(m, ga, generator=g) * 0.1 + 1e-3
    if lead is not None:
        codes, scales = codes.reshape(*lead, k), scales.reshape(*lead, ga)
    return codes.to(torch.int8), scales


def centered_int64(q, z, k):
    """Independent (q − z) with z broadcast over each weight group, int64 [N, K]."""
    n, gw = z.shape
    return (q.reshape(n, gw, k // gw) - z[..., None]).reshape(n, k).long()


def partials_int64(codes, q, z, block):
    """P[m, n, b] = Σ_{k∈b} x[m,k]·(q[n,k] − z[n,·]) by an int64 einsum."""
    k = codes.shape[-1]
    x = codes.reshape(-1, k).long().reshape(-1, k // block, block)
    wc = centered_int64(q, z, k).reshape(-1, k // block, block)
    return torch.einsum("mbj,nbj->mnb", x, wc)


def formula_fp64(codes, scales, q, z, d, bias):
    """docs/numerics.md §6: y[m,n] = Σ_blocks Δ[n,blk]·s[m,blk]·P[m,n,blk] + bias[n], all in fp64."""
    k = codes.shape[-1]
    ga, gw = scales.shape[-1], d.shape[1]
    blk = min(k // ga, k // gw)
    p = partials_int64(codes, q, z, blk).double()  # [M, N, B]
    nb = k // blk
    s = scales.reshape(-1, ga).double()[:, torch.arange(nb) * blk // (k // ga)]  # [M, B]
    dd = d.double()[:, torch.arange(nb) * blk // (k // gw)]  # [N, B]
    y = (s[:, None, :] * dd[None, :, :] * p).sum(-1)
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*codes.shape[:-1], q.shape[0])


def assert_close_rel(y, ref, rtol):
    scale = float(ref.abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(y.double(), ref, rtol=rtol, atol=rtol * max(scale, 1e-30))


WBITS = [3, 4, 8]
ABITS = [4, 8]


@given(m=st.integers(0, 11), n=st.integers(1, 19), g=st.integers(1, 4), w_group=st.sampled_from([0, 16, 32]),
       block=st.sampled_from([8, 16, 32]), abits=st.sampled_from(ABITS), wbits=st.sampled_from(WBITS),
       seed=st.integers(0, 2**16))
@example(m=0, n=3, g=2, w_group=0, block=32, abits=8, wbits=4, seed=0)
@example(m=1, n=1, g=1, w_group=16, block=8, abits=4, wbits=3, seed=1)
@example(m=1, n=19, g=4, w_group=32, block=16, abits=8, wbits=8, seed=2)
def test_int_partials_exact(m, n, g, w_group, block, abits, wbits, seed):
    k = 32 * g
    q, z, _ = rand_weight_q(n, k, wbits, w_group, seed)
    codes, _ = rand_act_q(m, k, abits, 32, seed)
    p = int_partials(codes, pack(q, wbits), z.to(torch.int32), wbits, block)
    assert p.dtype == torch.int32 and p.shape == (m, n, k // block)
    assert torch.equal(p.long(), partials_int64(codes, q, z, block))


@pytest.mark.parametrize("wbits,block", [(8, 512), (8, 1024), (4, 2048)])
def test_int_partials_exact_at_worst_case_magnitude(wbits, block):
    """Largest |partials| the formats allow (int8 −128/127 against q − z = ±(2^b−1)), odd values mixed in."""
    qmax = 2**wbits - 1
    n, k = 4, block
    q = torch.full((n, k), qmax)
    q[1] = 0
    q[2, ::3] = 0
    q[3] = torch.randint(0, qmax + 1, (k,))
    z = torch.tensor([[0], [qmax], [0], [7]])
    codes = torch.full((3, k), 127, dtype=torch.int8)
    codes[0, 5] = 126  # P[0, 0] = 255·(127·block − 1): odd, so not representable in fp32 once above 2^24
    codes[1] = -128
    codes[2, ::2] = -127
    codes[2, 5] = 1
    p = int_partials(codes, pack(q, wbits), z.to(torch.int32), wbits, block)
    ref = partials_int64(codes, q, z, block)
    assert int(ref.abs().max()) >= 127 * qmax * (block - 1)
    assert int(ref[0, 0, 0]) % 2 == 1
    assert torch.equal(p.long(), ref)


def test_int_partials_exact_under_reduced_matmul_precision():
    """Exactness must not depend on the global fp32 matmul precision (bf16/TF32 paths)."""
    q, z, _ = rand_weight_q(8, 256, 4, 0, 1)
    codes, _ = rand_act_q(5, 256, 8, 256, 1)
    prev = torch.get_float32_matmul_precision()
    try:
        for prec in ("medium", "high"):
            torch.set_float32_matmul_precision(prec)
            p = int_partials(codes, pack(q, 4), z.to(torch.int32), 4, 256)
            assert torch.equal(p.long(), partials_int64(codes, q, z, 256))
    finally:
        torch.set_float32_matmul_precision(prev)


def test_int_partials_leading_dims_and_single_token():
    q, z, _ = rand_weight_q(6, 64, 4, 0, 2)
    codes, _ = rand_act_q(6, 64, 4, 64, 2, lead=(2, 3))
    p = int_partials(codes, pack(q, 4), z.to(torch.int32), 4, 32)
    assert p.shape == (6, 6, 2)
    assert torch.equal(p.long(), partials_int64(codes, q, z, 32))
    p1 = int_partials(codes[1, 2:3], pack(q, 4), z.to(torch.int32), 4, 64)
    assert torch.equal(p1.long(), partials_int64(codes[1, 2:3], q, z, 64))


@given(m=st.integers(0, 9), n=st.integers(1, 17), g=st.integers(1, 4),
       groups=st.sampled_from([(16, 0), (32, 0), (None, 0), (32, 16), (16, 32), (32, 32), (None, 32)]),
       abits=st.sampled_from(ABITS), wbits=st.sampled_from(WBITS), with_bias=st.booleans(),
       seed=st.integers(0, 2**16))
@example(m=0, n=5, g=2, groups=(16, 0), abits=8, wbits=4, with_bias=True, seed=0)
@example(m=1, n=1, g=1, groups=(None, 0), abits=4, wbits=4, with_bias=False, seed=1)
@example(m=1, n=17, g=4, groups=(16, 32), abits=8, wbits=8, with_bias=True, seed=2)
@example(m=3, n=7, g=3, groups=(32, 16), abits=4, wbits=3, with_bias=True, seed=3)
def test_qlinear_ref_matches_fp64_formula(m, n, g, groups, abits, wbits, with_bias, seed):
    k = 32 * g
    a_group, w_group = groups
    a_group = a_group or k  # None: one scale per token (V0)
    q, z, d = rand_weight_q(n, k, wbits, w_group, seed)
    codes, scales = rand_act_q(m, k, abits, a_group, seed)
    bias = torch.randn(n) if with_bias else None
    y = qlinear_ref(codes, scales, pack(q, wbits), d, z.to(torch.int32), bias, wbits, torch.float32)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert_close_rel(y, formula_fp64(codes, scales, q, z, d, bias), 1e-5)


@pytest.mark.parametrize("out_dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("w_group", [0, 32])
def test_qlinear_ref_out_dtype_and_leading_dims(out_dtype, rtol, w_group):
    lead, k, n = (2, 5), 128, 24
    q, z, d = rand_weight_q(n, k, 4, w_group, 3)
    codes, scales = rand_act_q(10, k, 8, 64, 3, lead=lead)
    bias = torch.randn(n) * 0.1
    y = qlinear_ref(codes, scales, pack(q, 4), d, z.to(torch.int32), bias, 4, out_dtype)
    assert y.dtype == out_dtype and y.shape == (*lead, n)
    assert_close_rel(y, formula_fp64(codes, scales, q, z, d, bias), rtol)


def test_qlinear_ref_bias_is_added_once():
    q, z, d = rand_weight_q(7, 64, 4, 0, 4)
    codes, scales = rand_act_q(3, 64, 8, 32, 4)
    packed = pack(q, 4)
    bias = torch.arange(7, dtype=torch.float32) * 10 + 5
    y0 = qlinear_ref(codes, scales, packed, d, z.to(torch.int32), None, 4, torch.float32)
    y1 = qlinear_ref(codes, scales, packed, d, z.to(torch.int32), bias, 4, torch.float32)
    torch.testing.assert_close(y1 - y0, bias.expand(3, 7), rtol=1e-5, atol=1e-4)


def test_qlinear_ref_empty_tokens():
    q, z, d = rand_weight_q(5, 64, 4, 0, 5)
    codes = torch.zeros(0, 64, dtype=torch.int8)
    scales = torch.zeros(0, 2)
    y = qlinear_ref(codes, scales, pack(q, 4), d, z.to(torch.int32), torch.ones(5), 4, torch.float16)
    assert y.shape == (0, 5) and y.dtype == torch.float16


@pytest.mark.parametrize("a_group,w_group", [(32, 0), (64, 16), (16, 64)])
def test_dequant_linear_ref_agrees_with_integer_path(a_group, w_group):
    """fp32 x̂·Ŵᵀ on dequantized operands equals the integer-partials formula up to summation order."""
    k, n = 128, 12
    q, z, d = rand_weight_q(n, k, 4, w_group, 6)
    codes, scales = rand_act_q(9, k, 4, a_group, 6)
    packed = pack(q, 4)
    bias = torch.randn(n)
    y_int = qlinear_ref(codes, scales, packed, d, z.to(torch.int32), bias, 4, torch.float32)
    y_deq = dequant_linear_ref(dequantize_act(codes, scales), packed, d, z.to(torch.int32), bias, 4)
    assert y_deq.dtype == torch.float32
    assert_close_rel(y_deq, y_int.double(), 1e-5)


def test_groups_must_nest():
    k = 96
    q, z, d = rand_weight_q(4, k, 4, 32, 7)  # weight group 32
    codes, scales = rand_act_q(2, k, 8, 48, 7)  # activation group 48: neither divides the other
    with pytest.raises(ValueError, match=r"divide"):
        qlinear_ref(codes, scales, pack(q, 4), d, z.to(torch.int32), None, 4, torch.float32)


def test_k_mismatch_raises():
    q, z, d = rand_weight_q(4, 64, 4, 0, 8)
    codes, scales = rand_act_q(2, 32, 8, 32, 8)
    with pytest.raises(ValueError, match=r"K="):
        qlinear_ref(codes, scales, pack(q, 4), d, z.to(torch.int32), None, 4, torch.float32)
    with pytest.raises(ValueError, match=r"K="):
        int_partials(codes, pack(q, 4), z.to(torch.int32), 4, 32)


# ---- end to end: rotation + BGR + ARQ against the fp64 product ---------------------------------------------------

def _outlier_problem():
    g = torch.Generator().manual_seed(7)
    m, k, n = 64, 256, 64
    x = torch.randn(m, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:4]] *= 30.0  # a few massive channel outliers
    w = torch.randn(n, k, generator=g) / k**0.5
    return x, w, x.double() @ w.double().T


def _run(x, w, abits, a_group, rot, method="bgr"):
    qw = quantize_weight(w, WeightSpec(bits=4, method=method, rotate=rot, bgr_n=32))
    codes, scales = quantize_act(x, abits, a_group, rotate=rot)
    return qlinear_ref(codes, scales, *qw.tensors(), None, 4, torch.float32)


def test_unquantized_rotated_layer_equals_original():
    x, w, ref = _outlier_problem()
    y = rotate(x, 128) @ rotate(w, 128).T
    assert sqnr_db(ref, y) > 100


# Measured (seeded data above): W4A8 rotated 20.5 dB (BGR), 20.0 dB (MinMax); W4A4 g=128 rotated 18.5 dB vs
# unrotated 12.5 dB.
def test_w4a8_rotated_sqnr_floor():
    x, w, ref = _outlier_problem()
    assert sqnr_db(ref, _run(x, w, 8, 128, 128)) > 19.0
    assert sqnr_db(ref, _run(x, w, 8, 256, 128)) > 19.0  # per-token scales (V0)


def test_rotation_rescues_w4a4_with_outliers():
    x, w, ref = _outlier_problem()
    rotated = sqnr_db(ref, _run(x, w, 4, 128, 128))
    plain = sqnr_db(ref, _run(x, w, 4, 128, 0))
    assert rotated > 17.0
    assert rotated - plain > 4.0, (rotated, plain)


def test_bgr_beats_minmax_end_to_end():
    x, w, ref = _outlier_problem()
    assert sqnr_db(ref, _run(x, w, 8, 128, 128, "bgr")) > sqnr_db(ref, _run(x, w, 8, 128, 128, "minmax")) + 0.2
