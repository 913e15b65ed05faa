"""Rotate + per-(token, K-group) symmetric activation quantization (ARQ), one Triton kernel.

Reference: :func:`dvdq_compile.quant.quantize_act` (the specification; DESIGN §4)::

    x̃ = x · (I ⊗ D·H_r)                      # block Hadamard, block r = ``rotate`` (0: no rotation)
    s[m, g] = max_{k∈g} |x̃[m, k]| / qmax      # qmax = 2^(bits-1) - 1; with a clip ratio c: (max·c) / qmax
    codes[m, k] = clamp(round_half_even(x̃[m, k] / s[m, g]), -qmax, qmax)   # all-zero group: s = 0, codes 0

Cost (``cost.act_quant_cost``): FLOPs ``2·M·K·r`` (dense per-block Hadamard) + ``≈4·M·K`` (absmax, divide,
round, clamp); bytes ``M·K·e`` in (``e`` = input element size) + ``M·K`` codes + ``4·M·K/g`` scales out. Memory
bound on Hopper as long as the Hadamard runs on tensor cores: 16-bit inputs use an exact ±1 matrix in the input
dtype (products exact, fp32 accumulation); fp32 inputs use an fp32 ``ieee`` dot (never TF32).

Two launch shapes:

- tile mode (``group`` a power of two): one program per (BLOCK_M rows, T columns), T a multiple of both the
  group and the rotation block; every group's absmax is a reduction inside the tile.
- per-token mode (``group == K``, any K): one program per BLOCK_M rows, two passes over K in chunks (absmax, then
  quantize), recomputing the rotation in the second pass instead of keeping the rotated row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.act import clip_value, qmax_for
from ..quant.hadamard import NO_SIGNS
from .tl_common import (INTERPRET, NAN, USE_RINT, as_rows, configs, hadamard_for, is_pow2, m_bucket, quantize_rows,
                        rotate_tile, row_absmax)

TILE_MAX = 256    # widest column tile (tile mode) / chunk (per-token mode)
ROT_MIN, ROT_MAX = 16, 256   # Hadamard blocks a kernel can hold (tl.dot needs K >= 16 on NVIDIA)

_CONFIGS = configs(
    [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=2)
     for bm, w in ((16, 4), (32, 4), (64, 4), (64, 8), (128, 8))],
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1),
)


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "K", "T", "GROUP", "ROT", "PER_TOKEN"])
@triton.jit
def _act_quant_kernel(
    x_ptr, h_ptr, c_ptr, s_ptr, clip_ptr,
    M, K, M_BUCKET,
    stride_xm, stride_cm, stride_sm,
    QMAX: tl.constexpr, GROUP: tl.constexpr, T: tl.constexpr,
    ROT: tl.constexpr, ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr,
    PER_TOKEN: tl.constexpr, USE_RINT: tl.constexpr, HAS_CLIP: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    c_rows = c_ptr + offs_m[:, None] * stride_cm
    if ROT > 0:
        offs_r = tl.arange(0, ROT)
        h = tl.load(h_ptr + offs_r[:, None] * ROT + offs_r[None, :])
    else:
        h = None

    if not PER_TOKEN:
        # ---- tile mode: T columns = T // GROUP whole groups
        offs_k = tl.program_id(1) * T + tl.arange(0, T)
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        if ROT > 0:
            if ROT_MODE == 0:
                x = x.to(tl.float32)
            xr = rotate_tile(x, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
        else:
            xr = x.to(tl.float32)
        x3 = tl.reshape(xr, (BLOCK_M, T // GROUP, GROUP))
        amax = row_absmax(x3, 2)
        if HAS_CLIP:
            amax = amax * tl.load(clip_ptr)
        c, s = quantize_rows(x3, amax[:, :, None], QMAX, USE_RINT)
        tl.store(c_rows + offs_k[None, :], tl.reshape(c, (BLOCK_M, T)).to(tl.int8), mask=mask_m[:, None])
        offs_g = tl.program_id(1) * (T // GROUP) + tl.arange(0, T // GROUP)
        tl.store(s_ptr + offs_m[:, None] * stride_sm + offs_g[None, :], tl.reshape(s, (BLOCK_M, T // GROUP)),
                 mask=mask_m[:, None])
    else:
        # ---- per-token mode: pass 1 absmax over K, pass 2 quantize (rotation recomputed)
        amax = tl.zeros((BLOCK_M,), tl.float32)
        nans = tl.zeros((BLOCK_M,), tl.int32)
        for k0 in range(0, K, T):
            offs_k = k0 + tl.arange(0, T)
            mask = mask_m[:, None] & (offs_k[None, :] < K)
            x = tl.load(x_rows + offs_k[None, :], mask=mask, other=0.0)
            if ROT > 0:
                if ROT_MODE == 0:
                    x = x.to(tl.float32)
                xr = rotate_tile(x, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
            else:
                xr = x.to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xr), axis=1))
            nans = tl.maximum(nans, tl.max((xr != xr).to(tl.int32), axis=1))
        amax = tl.where(nans > 0, NAN, amax)
        if HAS_CLIP:
            amax = amax * tl.load(clip_ptr)
        for k0 in range(0, K, T):
            offs_k = k0 + tl.arange(0, T)
            mask = mask_m[:, None] & (offs_k[None, :] < K)
            x = tl.load(x_rows + offs_k[None, :], mask=mask, other=0.0)
            if ROT > 0:
                if ROT_MODE == 0:
                    x = x.to(tl.float32)
                xr = rotate_tile(x, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
            else:
                xr = x.to(tl.float32)
            c, _ = quantize_rows(xr, amax[:, None], QMAX, USE_RINT)
            tl.store(c_rows + offs_k[None, :], c.to(tl.int8), mask=mask)
        s = tl.math.div_rn(amax, tl.full((BLOCK_M,), QMAX, tl.float32))
        tl.store(s_ptr + offs_m * stride_sm, s, mask=mask_m)


# ----------------------------------------------------------------------------------------------------------------
# host side

def plan(group: int, rotate: int, k: int) -> tuple[bool, int]:
    """(per_token, T) for a launch, or ``ValueError`` saying why the kernel cannot run this case."""
    if group < 1 or k % group:
        raise ValueError(f"activation scale group {group} does not divide K={k}")
    if rotate:
        if not is_pow2(rotate) or not ROT_MIN <= rotate <= ROT_MAX:
            raise ValueError(f"Triton act_quant supports Hadamard blocks {ROT_MIN}..{ROT_MAX} (powers of two), "
                             f"got {rotate}")
        if k % rotate:
            raise ValueError(f"Hadamard block {rotate} does not divide K={k}")
    base = max(group, rotate)
    if is_pow2(group) and base <= TILE_MAX:
        t = base
        while t * 2 <= TILE_MAX and k % (t * 2) == 0:
            t *= 2
        return False, t
    if group == k:
        return True, max(rotate, 128 if not INTERPRET else TILE_MAX)
    raise ValueError(f"Triton act_quant needs a power-of-two group <= {TILE_MAX} (with the Hadamard block) or "
                     f"group == K (per-token); got group={group}, rotate={rotate}, K={k}")


def supports_act_quant(group: int, rotate: int, k: int) -> bool:
    try:
        plan(group, rotate, k)
    except ValueError:
        return False
    return True


def act_quant(x: torch.Tensor, bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS,
              out: tuple[torch.Tensor, torch.Tensor] | None = None, clip=None):
    """Triton twin of :func:`quant.quantize_act`: ``(codes int8 [..., K], scales fp32 [..., K/group])``.

    ``clip``: optional clip ratio (float or one-element tensor), read by the kernel from memory so a new value
    (the next timestep bin) needs no recompilation.

    ``out``: optional preallocated contiguous ``(codes, scales)`` to write into (tests poison them).
    """
    if not x.is_floating_point():
        raise TypeError(f"activation must be a floating-point tensor, got dtype {x.dtype}")
    qmax = qmax_for(bits)
    k = x.shape[-1]
    per_token, t = plan(group, rotate, k)
    cshape, sshape = tuple(x.shape), (*x.shape[:-1], k // group)
    if out is None:
        codes = torch.empty(cshape, dtype=torch.int8, device=x.device)
        scales = torch.empty(sshape, dtype=torch.float32, device=x.device)
    else:
        codes, scales = out
        if (tuple(codes.shape) != cshape or codes.dtype != torch.int8 or tuple(scales.shape) != sshape
                or scales.dtype != torch.float32 or not codes.is_contiguous() or not scales.is_contiguous()):
            raise ValueError(f"out must be contiguous int8 {cshape} and fp32 {sshape}")
    c1 = clip_value(clip)
    x2 = as_rows(x)
    m = x2.shape[0]
    if m == 0 or k == 0:
        return codes, scales
    c2, s2 = codes.view(m, k), scales.view(m, k // group)
    if rotate:
        h, mode, rscale = hadamard_for(rotate, sign_seed, x)
    else:
        h, mode, rscale = x2, 0, 1.0  # unused pointer
    grid = (lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)) if per_token else \
        (lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), k // t))
    _act_quant_kernel[grid](
        x2, h, c2, s2, c1.to(x.device) if c1 is not None else s2, m, k, m_bucket(m), x2.stride(0), c2.stride(0), s2.stride(0),
        QMAX=qmax, GROUP=group if not per_token else 1, T=t, ROT=rotate, ROT_MODE=mode, ROT_SCALE=rscale,
        PER_TOKEN=per_token, USE_RINT=USE_RINT, HAS_CLIP=c1 is not None,
    )
    return codes, scales
