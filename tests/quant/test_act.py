"""ARQ activation quantizers (docs/numerics.md §5, docs/algorithms.md §2, quant/act.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dvdq_compile.quant import (
    dequantize_act,
    fake_quant_per_channel,
    qmax_for,
    quantize_act,
    rotate,
)

ACT = [(4, 7), (8, 127), (6, 31)]


def grouped(x, group):
    return x.reshape(*x.shape[:-1], x.shape[-1] // group, group)


def make_act(shape, seed, outliers=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if outliers and shape[-1] >= 4:
        idx = torch.randint(0, shape[-1], (2,), generator=g)
        x[..., idx] *= 40.0
    return x


@pytest.mark.parametrize("bits,qmax", ACT + [(3, 3), (5, 15), (7, 63)])
def test_qmax_for(bits, qmax):
    assert qmax_for(bits) == qmax


@pytest.mark.parametrize("bits", [0, 1, 2, 9, 16])
def test_qmax_for_rejects(bits):
    with pytest.raises(ValueError, match=r"activation bits"):
        qmax_for(bits)


@given(lead=st.lists(st.integers(0, 5), min_size=1, max_size=3), n_groups=st.integers(1, 5),
       group=st.sampled_from([1, 4, 16, 32, 128]), act=st.sampled_from(ACT), seed=st.integers(0, 2**16),
       log_scale=st.integers(-10, 8))
def test_codes_scales_and_round_to_nearest_bound(lead, n_groups, group, act, seed, log_scale):
    bits, qmax = act
    k = n_groups * group
    x = make_act((*lead, k), seed) * 2.0**log_scale
    codes, scales = quantize_act(x, bits, group)
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert scales.dtype == torch.float32 and scales.shape == (*lead, n_groups)
    assert bool((codes.abs() <= qmax).all())
    # s = absmax/qmax per (token, group), exactly (fp64 division rounded once to fp32 is the correctly rounded one)
    if x.numel():
        assert torch.equal(scales, (grouped(x, group).double().abs().amax(-1) / qmax).to(torch.float32))
    # round to nearest: |x − code·s| ≤ s/2 per element, and the group's absmax element maps to ±qmax
    err = (grouped(x, group).double() - grouped(codes, group).double() * scales.double()[..., None]).abs()
    assert bool((err <= scales.double()[..., None] * (0.5 + 1e-6)).all())
    if x.numel():
        top = grouped(codes, group).abs().amax(-1)
        assert bool((top[scales > 0] == qmax).all())
        deq = dequantize_act(codes, scales)
        assert deq.dtype == torch.float32 and deq.shape == x.shape
        torch.testing.assert_close(deq, x, atol=float(scales.max()) / 2 * 1.0001, rtol=0)


@pytest.mark.parametrize("bits,qmax", ACT)
def test_round_half_to_even_on_ties(bits, qmax):
    """Values at exactly (j + ½)·s, with s a power of two (absmax = qmax·s), round to the even integer."""
    s = 0.25
    halves = [j + 0.5 for j in range(-qmax, qmax)]  # −qmax+½ .. qmax−½
    vals = torch.tensor([qmax] + halves, dtype=torch.float64) * s
    k = vals.numel()
    pad = (-k) % 8
    x = torch.cat([vals, torch.zeros(pad, dtype=torch.float64)]).to(torch.float32)[None]
    codes, scales = quantize_act(x, bits, x.shape[-1])
    assert float(scales[0, 0]) == s
    got = codes[0, 1:k].tolist()
    expected = [round(h) for h in halves]  # Python's round() is round-half-to-even
    assert expected[qmax - 2: qmax + 2] == [-2, 0, 0, 2]  # −1½, −½, ½, 1½
    assert got == expected
    assert all(c % 2 == 0 for c in got)


@pytest.mark.parametrize("bits,qmax", ACT)
def test_all_zero_group(bits, qmax):
    x = make_act((3, 64), 0)
    x[1, 16:32] = 0.0
    x[2] = 0.0
    codes, scales = quantize_act(x, bits, 16)
    assert float(scales[1, 1]) == 0.0 and bool((scales[2] == 0).all())
    assert bool((codes[1, 16:32] == 0).all()) and bool((codes[2] == 0).all())
    assert bool((scales[0] > 0).all()) and bool((scales[1, [0, 2, 3]] > 0).all())
    out = dequantize_act(codes, scales)
    assert torch.isfinite(out).all()
    assert bool((out[2] == 0).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_group_scale_and_other_groups_unaffected(bad):
    x = make_act((4, 64), 1)
    ref_codes, ref_scales = quantize_act(x, 4, 16)
    x[2, 37] = bad
    codes, scales = quantize_act(x, 4, 16)
    assert not bool(torch.isfinite(scales[2, 2]))
    mask = torch.ones_like(scales, dtype=torch.bool)
    mask[2, 2] = False
    assert torch.equal(scales[mask], ref_scales[mask])
    cmask = torch.ones_like(codes, dtype=torch.bool)
    cmask[2, 32:48] = False
    assert torch.equal(codes[cmask], ref_codes[cmask])
    assert not bool(torch.isfinite(dequantize_act(codes, scales)[2, 32:48]).all())  # the token output is non-finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_group_codes_are_zero(bad):
    x = torch.full((1, 16), 3.0)
    x[0, 5] = bad
    codes, scales = quantize_act(x, 4, 16)
    assert not bool(torch.isfinite(scales[0, 0]))
    assert bool((codes == 0).all()), codes.tolist()


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_non_float_dtype_raises(dtype):
    x = torch.ones(2, 16).to(dtype)
    with pytest.raises(TypeError, match=r"floating"):
        quantize_act(x, 8, 16)
    with pytest.raises(TypeError, match=r"floating"):
        fake_quant_per_channel(x, 8)


@pytest.mark.parametrize("group", [0, -16, 6, 7, 24, 64])
def test_group_not_dividing_k_raises(group):
    with pytest.raises(ValueError, match=r"does not divide"):
        quantize_act(torch.randn(2, 40), 8, group)


def test_bad_bits_raises():
    with pytest.raises(ValueError, match=r"activation bits"):
        quantize_act(torch.randn(2, 16), 2, 16)


@pytest.mark.parametrize("seed", [-1, 0, 5])
@pytest.mark.parametrize("bits,group,block", [(4, 128, 128), (8, 32, 128), (4, 256, 64), (8, 256, 256)])
def test_rotate_then_quantize(bits, group, block, seed):
    x = make_act((2, 3, 256), 2)
    got = quantize_act(x, bits, group, rotate=block, sign_seed=seed)
    ref = quantize_act(rotate(x, block, seed), bits, group)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # and not the same as quantizing the unrotated tensor
    assert not torch.equal(got[0], quantize_act(x, bits, group)[0])


def test_rotation_lowers_a4_error_with_outlier_channels():
    x = make_act((64, 256), 3) * 0.5
    x[:, [3, 100, 200]] = 30.0 * torch.sign(torch.randn(64, 3))
    err_plain = (dequantize_act(*quantize_act(x, 4, 128)) - x).square().sum()
    xr = rotate(x, 128)
    err_rot = (dequantize_act(*quantize_act(x, 4, 128, rotate=128)) - xr).square().sum()  # same norm (orthonormal)
    assert err_rot < 0.5 * err_plain


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes(dtype):
    x = make_act((5, 64), 4).to(dtype)
    codes, scales = quantize_act(x, 8, 32)
    ref = quantize_act(x.to(torch.float32), 8, 32)
    assert scales.dtype == torch.float32
    assert torch.equal(codes, ref[0]) and torch.equal(scales, ref[1])


def test_empty_token_dim():
    for shape in [(0, 64), (2, 0, 64)]:
        codes, scales = quantize_act(torch.randn(*shape), 8, 16)
        assert codes.shape == shape and codes.dtype == torch.int8
        assert scales.shape == (*shape[:-1], 4)


def test_per_token_group_equals_k():
    x = make_act((6, 96), 5)
    codes, scales = quantize_act(x, 8, 96)
    assert scales.shape == (6, 1)
    torch.testing.assert_close(scales[:, 0], x.abs().amax(-1) / 127, rtol=0, atol=0)


def test_tokens_are_independent():
    """Per-token scales: a token's codes do not depend on the other tokens (unlike the per-channel Λ mode)."""
    x = make_act((5, 64), 6)
    c, s = quantize_act(x, 4, 16)
    c2, s2 = quantize_act(x[3:4] * 1.0, 4, 16)
    assert torch.equal(c[3:4], c2) and torch.equal(s[3:4], s2)


# ---- paper-literal per-channel Λ fake-quant ---------------------------------------------------------------------

@pytest.mark.parametrize("bits,qmax", ACT)
@given(b=st.integers(1, 3), s=st.integers(1, 20), k=st.sampled_from([8, 32, 64]), seed=st.integers(0, 999))
def test_fake_quant_per_channel_error_bound(bits, qmax, b, s, k, seed):
    x = make_act((b, s, k), seed)
    y = fake_quant_per_channel(x, bits)
    assert y.dtype == torch.float32 and y.shape == x.shape
    scale = x.double().abs().amax(1, keepdim=True)  # per (batch element, channel), over tokens
    err = (y.double() - x.double()).abs()
    assert bool((err <= scale / (2 * qmax) * (1 + 1e-5) + 1e-7).all())
    # values on the grid: y·qmax/s is an integer in [−qmax, qmax]
    lvl = y.double() * qmax / torch.where(scale > 0, scale, torch.ones_like(scale))
    torch.testing.assert_close(lvl, lvl.round(), atol=1e-3, rtol=0)
    assert bool((lvl.abs() <= qmax + 1e-3).all())


@pytest.mark.parametrize("rot", [0, 32])
def test_fake_quant_per_batch_element(rot):
    x = make_act((2, 10, 64), 7)
    x[1] *= 100.0  # very different ranges: a shared scale would crush element 0
    both = fake_quant_per_channel(x, 4, rotate=rot)
    for i in range(2):
        assert torch.equal(both[i], fake_quant_per_channel(x[i:i + 1], 4, rotate=rot)[0])
        assert torch.equal(both[i], fake_quant_per_channel(x[i], 4, rotate=rot))  # 2-D = one batch element
    shared = fake_quant_per_channel(x.reshape(1, 20, 64), 4, rotate=rot).reshape(2, 10, 64)
    assert not torch.equal(shared[0], both[0])


def test_fake_quant_zero_channel_and_rotation():
    x = make_act((1, 8, 32), 8)
    x[..., 3] = 0.0
    y = fake_quant_per_channel(x, 8)
    assert torch.isfinite(y).all() and bool((y[..., 3] == 0).all())
    yr = fake_quant_per_channel(x, 8, rotate=32, sign_seed=3)
    torch.testing.assert_close(yr, rotate(x, 32, 3), atol=float(rotate(x, 32, 3).abs().max()) / 127, rtol=0)


def test_fake_quant_4d_batch():
    x = make_act((2, 3, 4, 16), 9)
    y = fake_quant_per_channel(x, 8)
    assert y.shape == x.shape
    for i in range(2):
        assert torch.equal(y[i], fake_quant_per_channel(x[i].reshape(1, 12, 16), 8).reshape(3, 4, 16))


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)])
def test_fake_quant_empty_tokens(shape):
    y = fake_quant_per_channel(torch.randn(*shape), 8)
    assert y.shape == shape
