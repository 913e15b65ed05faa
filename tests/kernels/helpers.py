"""Shared builders and tolerances for the kernel tests (CPU interpreter and GPU)."""
from __future__ import annotations

import random

import torch
from hypothesis import strategies as st

from dvdq_compile import quant

ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
POISON_I8 = -128  # outside every ±qmax: an unwritten code shows


def make_weight(n: int, k: int, bits: int = 4, device="cpu", gen: torch.Generator | None = None):
    """Random codes in [0, 2^b−1] and zero-points anywhere in that range (q − z covers ±(2^b − 1)), per-row Δ."""
    hi = 2**bits
    q = torch.randint(0, hi, (n, k), generator=gen, dtype=torch.int64)
    z = torch.randint(0, hi, (n, 1), generator=gen, dtype=torch.int64).to(torch.int32)
    d = (torch.rand(n, 1, generator=gen) * 0.05 + 0.001).to(torch.float32)
    return quant.pack(q, bits).to(device), d.to(device), z.to(device)


def make_x(m: int, k: int, dtype=torch.float32, device="cpu", gen: torch.Generator | None = None,
           zero_row: bool = True):
    """Activations with per-channel outliers (what the rotation is for) and, if possible, one all-zero row."""
    x = torch.randn(m, k, generator=gen) * (1.0 + 8.0 * (torch.rand(k, generator=gen) > 0.95))
    if zero_row and m > 2:
        x[m // 2] = 0.0
    return x.to(dtype).to(device)


def out_tol(yr: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """fp32 summation-order tolerance (relative to the output's scale) + one ulp of the output dtype."""
    yr = yr.float()
    big = yr.abs().max() if yr.numel() else torch.tensor(0.0)
    return 1e-5 * big + 1e-6 + 2 * ULP[out_dtype] * yr.abs()


def assert_out_close(y: torch.Tensor, yr: torch.Tensor, out_dtype: torch.dtype):
    assert y.shape == yr.shape and y.dtype == yr.dtype == out_dtype, (y.shape, yr.shape, y.dtype, yr.dtype)
    yf, rf = y.float(), yr.float()
    assert not torch.isnan(yf).any(), "NaN in the output (unwritten element?)"
    err = (yf - rf).abs()
    tol = out_tol(rf, out_dtype)
    bad = err > tol
    assert not bad.any(), f"{int(bad.sum())}/{bad.numel()} outside tolerance; max err {err.max():.3g}"


def tie_rows(x: torch.Tensor, abits: int, group: int, rotate: int, seed: int, tol: float = 2e-4) -> torch.Tensor:
    """Tokens whose activation codes can legitimately differ between two exact implementations of the rotation:
    some rotated value ``x̃/s`` lies within ``tol`` (relative to its size, >= fp32 summation-order noise of a
    Hadamard of <= 256 terms) of a .5 rounding tie, or the group's absmax (its scale) is within ``tol`` of another
    element's magnitude. Computed with the PyTorch reference rotation (``quant.hadamard``), not the kernel."""
    from dvdq_compile.quant.act import qmax_for
    from dvdq_compile.quant.hadamard import rotate as ref_rotate

    qmax = qmax_for(abits)
    k = x.shape[-1]
    xr = (ref_rotate(x, rotate, seed) if rotate else x.float()).reshape(-1, k // group, group).double()
    amax = xr.abs().amax(-1, keepdim=True)
    v = (xr / torch.where(amax > 0, amax / qmax, 1.0)).abs()
    frac = v - v.floor()
    near = (frac - 0.5).abs() <= tol * v.clamp_min(1.0)
    top2 = xr.abs().topk(min(2, group), -1).values
    scale_tie = (top2[..., :1] - top2[..., -1:]).abs() <= tol * amax if group > 1 else torch.zeros_like(amax,
                                                                                                         dtype=bool)
    return (near.any(-1) | scale_tie.squeeze(-1)).any(-1)


def assert_out_close_rotated(y, yr, ties, scales, wscale, wbits, out_dtype, flips=2):
    """With a rotation, codes at a rounding tie may differ by 1 (another fp32 summation order in the Hadamard):
    every row is within the tight tolerance except rows in ``ties`` (``tie_rows``), which may be off by at most
    ``flips`` code flips' worth. A row without a tie that is off fails, whatever M is."""
    assert y.shape == yr.shape and y.dtype == yr.dtype == out_dtype
    yf, rf = y.float().reshape(-1, y.shape[-1]), yr.float().reshape(-1, y.shape[-1])
    assert not torch.isnan(yf).any(), "NaN in the output (unwritten element?)"
    if not yf.numel():
        return
    ties = ties.reshape(-1).to(yf.device)
    err = (yf - rf).abs()
    tight = out_tol(rf, out_dtype)
    s_max = scales.float().reshape(yf.shape[0], -1).abs().amax(1, keepdim=True)    # [M, 1]
    flip = flips * s_max * wscale.float().reshape(1, -1).abs() * (2**wbits - 1)        # [M, N]
    assert (err <= tight + flip).all(), f"max err {err.max():.3g} beyond {flips} code flips"
    off = (err > tight).any(1)
    assert not (off & ~ties).any(), f"{int((off & ~ties).sum())}/{yf.shape[0]} rows without a rounding tie are " \
                                    f"outside the tolerance (max err {err[off & ~ties].max():.3g})"


@st.composite
def linear_cases(draw, fused: bool = False, dtypes=(torch.float32, torch.float16)):
    """(M, N, K, group, rotate, abits, wbits, dtype, bias) with ragged M/N, K a multiple of the group (<= 256)."""
    # choices from a drawn seed: hypothesis' own preferences for "simple" values skewed the mix badly (mostly
    # per-token, mostly M = 0); this gives ~20% per-token, ~6% M = 0, ~8% M = 1, half rotated
    rnd = random.Random(draw(st.integers(0, 2**31 - 1)))
    if rnd.random() < 0.2:
        k = rnd.choice((64, 96, 128, 160, 192, 256))
        group = k
    else:
        group = rnd.choice((32, 64, 128, 256))
        k = group * rnd.randint(1, 256 // group)
    per_token = group == k
    rots = [r for r in (16, 32, 64, 128) if k % r == 0 and (not fused or per_token or r <= group)]
    rotate = rnd.choice(rots) if rots and rnd.random() < 0.5 else 0
    v = rnd.random()
    m = 0 if v < 0.06 else 1 if v < 0.14 else rnd.randint(2, 70)
    n = rnd.randint(1, 70)
    abits = rnd.choice((4, 8))
    wbits = rnd.choice((3, 4, 4, 8))
    dtype = rnd.choice(list(dtypes))
    bias = rnd.random() < 0.5
    return m, n, k, group, rotate, abits, wbits, dtype, bias

def near_tie_x(m: int, k: int, group: int, bits: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """fp32 activations whose ``x / s`` lands on or within an ulp of a .5 tie in every group: ``round(x / s)``
    then depends on IEEE division (``x · (1/s)`` or an approximate divide flips thousands of codes) and on
    ties-to-even rounding."""
    qmax = 2 ** (bits - 1) - 1
    rows = m * (k // group)
    amax = torch.rand(rows, 1, generator=gen) * 10 + 0.1
    s = amax / qmax
    j = torch.randint(-qmax, qmax, (rows, group - 1), generator=gen).to(torch.float64)
    x = ((j + 0.5) * s.double()).float()
    step = torch.randint(-1, 2, (rows, group - 1), generator=gen)
    x = torch.where(step > 0, torch.nextafter(x, torch.full_like(x, 1e9)),
                    torch.where(step < 0, torch.nextafter(x, torch.full_like(x, -1e9)), x))
    return torch.cat([amax, x], 1).reshape(m, k)
