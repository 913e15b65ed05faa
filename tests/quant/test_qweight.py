"""QuantizedWeight / quantize_weight (quant/qweight.py): rotate (W·H_bd), quantize, pack."""
from __future__ import annotations

import pytest
import torch

from dvdq_compile.quant import (
    NO_SIGNS,
    QuantizedWeight,
    WeightSpec,
    bgr,
    hadamard_matrix,
    minmax,
    pack,
    quantize_weight,
    quantized_bytes,
    rotate,
    unpack,
)

from ._util import dequant_ref, make_weight, sqnr_db

FAST_BGR = dict(bgr_n=32, bgr_max_iter=32)


def h_bd(k, block, seed=NO_SIGNS):
    h = hadamard_matrix(block, seed, dtype=torch.float64)
    return torch.block_diag(*([h] * (k // block)))


# Measured 4-bit SQNR of Ŵ·H_bdᵀ vs W on these Gaussian [48, 256] weights: BGR ≈ 19.8 dB, MinMax ≈ 19.0 dB;
# 3 bits: BGR ≈ 14.3 dB, MinMax ≈ 12.5 dB; 8 bits ≈ 43.8 dB.
@pytest.mark.parametrize("seed", [NO_SIGNS, 3])
@pytest.mark.parametrize("method,bits,floor", [("bgr", 4, 18.5), ("minmax", 4, 17.5), ("bgr", 3, 13.0),
                                               ("minmax", 8, 40.0), ("bgr", 8, 40.0)])
def test_dequantize_rotated_back_approximates_w(method, bits, floor, seed):
    n, k = 48, 256
    w = make_weight("gauss", n, k, seed=1) * 0.02
    qw = quantize_weight(w, WeightSpec(bits=bits, method=method, rotate=128, sign_seed=seed, **FAST_BGR))
    assert isinstance(qw, QuantizedWeight) and qw.shape == (n, k)
    wr_hat = qw.dequantize()
    assert wr_hat.dtype == torch.float32 and wr_hat.shape == (n, k)
    back = wr_hat.double() @ h_bd(k, 128, seed).T  # undo the rotation: H_bd⁻¹ = H_bdᵀ
    assert sqnr_db(w, back) > floor
    # the dequantized weight lives in the ROTATED basis: it is close to W·H_bd, not to W
    assert sqnr_db(rotate(w, 128, seed), wr_hat) > floor
    assert sqnr_db(w, wr_hat) < 3.0


@pytest.mark.parametrize("method,fn", [("bgr", bgr), ("minmax", minmax)])
@pytest.mark.parametrize("bits,group", [(4, 0), (3, 0), (8, 0), (4, 64)])
def test_is_rotate_then_quantize_then_pack(method, fn, bits, group):
    w = make_weight("laplace", 8, 256, seed=2)
    spec = WeightSpec(bits=bits, method=method, group=group, rotate=128, sign_seed=5, **FAST_BGR)
    qw = quantize_weight(w, spec)
    kw = dict(n=32, max_iter=32, max_shrink=spec.bgr_max_shrink) if method == "bgr" else {}
    codes, scale, zero = fn(rotate(w, 128, 5), bits, group or None, **kw)
    assert torch.equal(qw.packed, pack(codes, bits))
    assert torch.equal(qw.scale, scale) and torch.equal(qw.zero, zero)
    assert torch.equal(unpack(qw.packed, bits), codes)
    assert torch.equal(qw.dequantize().double(), dequant_ref(codes, scale, zero).float().double())


def test_no_rotation():
    w = make_weight("gauss", 8, 96, seed=3)
    qw = quantize_weight(w, WeightSpec(rotate=0, **FAST_BGR))
    assert sqnr_db(w, qw.dequantize()) > 17.0
    assert torch.equal(qw.scale, bgr(w, 4, None, n=32, max_iter=32)[1])


@pytest.mark.parametrize("n,k,bits,group", [(8, 256, 4, 0), (8, 256, 3, 0), (8, 256, 8, 0), (5, 128, 4, 32),
                                            (3, 384, 8, 128), (1, 128, 3, 64)])
def test_nbytes(n, k, bits, group):
    w = make_weight("gauss", n, k, seed=4)
    spec = WeightSpec(bits=bits, group=group, rotate=128, method="minmax")
    qw = quantize_weight(w, spec)
    assert qw.nbytes == quantized_bytes(n, k, spec)
    g = k // group if group else 1
    assert qw.nbytes == n * (k if bits == 8 else k // 2) + n * g * 8  # codes + fp32 scale + int32 zero
    assert qw.packed.dtype == torch.uint8 and qw.packed.shape == ((n, k) if bits == 8 else (n, k // 2))
    assert qw.scale.shape == (n, g) and qw.zero.shape == (n, g)
    assert qw.scale.dtype == torch.float32 and qw.zero.dtype == torch.int32
    assert qw.scale.is_contiguous() and qw.zero.is_contiguous()
    assert qw.tensors() == (qw.packed, qw.scale, qw.zero)


@pytest.mark.parametrize("bits,group", [(4, 0), (3, 0), (4, 32)])
@pytest.mark.parametrize("dist", ["student_t3", "outliers", "gauss"])
def test_stats(bits, group, dist):
    n, k = 8, 256
    w = make_weight(dist, n, k, seed=5)
    qb = quantize_weight(w, WeightSpec(bits=bits, group=group, **FAST_BGR), with_stats=True)
    qm = quantize_weight(w, WeightSpec(bits=bits, group=group, method="minmax"), with_stats=True)
    sb, sm = qb.stats, qm.stats
    assert sb["mse"] <= sb["mse_minmax"] * (1 + 1e-6)
    assert sb["mse"] < sb["mse_minmax"]  # strictly better on these rows
    assert sm["mse"] == pytest.approx(sm["mse_minmax"], rel=1e-12)
    assert sb["mse_minmax"] == pytest.approx(sm["mse_minmax"], rel=1e-6)
    wr = rotate(w, 128).double()
    assert sb["mse"] == pytest.approx(float((wr - qb.dequantize().double()).square().mean()), rel=1e-4)
    assert sm["mse"] == pytest.approx(float((wr - qm.dequantize().double()).square().mean()), rel=1e-4)
    assert quantize_weight(w, WeightSpec(bits=bits, group=group, method="minmax")).stats == {}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weight(dtype):
    w = make_weight("gauss", 4, 128, seed=6).to(dtype)
    qw = quantize_weight(w, WeightSpec(method="minmax"))
    ref = quantize_weight(w.to(torch.float32), WeightSpec(method="minmax"))
    assert torch.equal(qw.packed, ref.packed) and torch.equal(qw.scale, ref.scale)


def test_requires_grad_weight_is_fine():
    w = make_weight("gauss", 4, 128, seed=7).requires_grad_()
    qw = quantize_weight(w, WeightSpec(method="minmax"))
    assert not qw.scale.requires_grad


@pytest.mark.parametrize("shape", [(128,), (2, 4, 128)])
def test_non_2d_weight_raises(shape):
    with pytest.raises(ValueError, match=r"2-D"):
        quantize_weight(torch.randn(*shape), WeightSpec())


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.uint8])
def test_integer_weight_raises(dtype):
    with pytest.raises(TypeError, match=r"floating"):
        quantize_weight(torch.ones(4, 128, dtype=dtype), WeightSpec())


@pytest.mark.parametrize("kw", [{"bits": 2}, {"bits": 5}, {"bits": 16}, {"method": "gptq"}, {"method": "BGR"}])
def test_bad_spec_raises(kw):
    with pytest.raises(ValueError):
        WeightSpec(**kw)


def test_rotation_block_must_divide_k():
    with pytest.raises(ValueError, match=r"does not divide"):
        quantize_weight(torch.randn(4, 96), WeightSpec(rotate=64))


def test_spec_defaults_match_the_paper():
    s = WeightSpec()
    assert (s.bits, s.method, s.group, s.rotate, s.sign_seed) == (4, "bgr", 0, 128, NO_SIGNS)
    with pytest.raises(Exception):
        s.bits = 8  # frozen


@pytest.mark.parametrize("which", ["minmax", "bgr", "quantize_weight"])
def test_empty_weight(which):
    w = torch.zeros(0, 128)
    try:
        if which == "quantize_weight":
            qw = quantize_weight(w, WeightSpec())
            out = qw.tensors()
            assert out[0].shape == (0, 64)
        else:
            out = (minmax if which == "minmax" else bgr)(w, 4)
            assert out[0].shape == (0, 128)
        assert out[1].shape == (0, 1) and out[2].shape == (0, 1)
    except ValueError:
        pass  # a clear refusal is acceptable too
