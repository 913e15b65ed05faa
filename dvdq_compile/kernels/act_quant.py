"""Rotate + per-(token, K-group) symmetric activation quantization (ARQ), one Triton kernel.

Reference: :func:`dvdq_compile.quant.quantize_act` (the specification; docs/numerics.md §5)::

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
from . import capability
from .tl_common import (
    USE_RINT,
    as_rows,
    chunk_mask,
    configs,
    hadamard_for,
    load_hadamard,
    load_rotated,
    m_bucket,
    quantize_groups,
    quantize_rows,
    running_absmax,
)

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
    h = load_hadamard(h_ptr, ROT)

    if not PER_TOKEN:
        # ---- tile mode: T columns = T // GROUP whole groups
        offs_k = tl.program_id(1) * T + tl.arange(0, T)
        xr = load_rotated(x_rows + offs_k[None, :], mask_m[:, None], h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
        clip = tl.load(clip_ptr) if HAS_CLIP else None
        c, s = quantize_groups(xr, clip, BLOCK_M, T, GROUP, QMAX, USE_RINT, HAS_CLIP)
        tl.store(c_rows + offs_k[None, :], c, mask=mask_m[:, None])
        offs_g = tl.program_id(1) * (T // GROUP) + tl.arange(0, T // GROUP)
        tl.store(s_ptr + offs_m[:, None] * stride_sm + offs_g[None, :], s, mask=mask_m[:, None])
    else:
        # ---- per-token mode: pass 1 absmax over K, pass 2 quantize (rotation recomputed)
        amax = running_absmax(x_rows, mask_m, h, K, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE, False)
        if HAS_CLIP:
            amax = amax * tl.load(clip_ptr)
        for k0 in range(0, K, T):
            offs_k = k0 + tl.arange(0, T)
            mask = chunk_mask(mask_m, offs_k, K, False)
            xr = load_rotated(x_rows + offs_k[None, :], mask, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
            c, _ = quantize_rows(xr, amax[:, None], QMAX, USE_RINT)
            tl.store(c_rows + offs_k[None, :], c.to(tl.int8), mask=mask)
        s = tl.math.div_rn(amax, tl.full((BLOCK_M,), QMAX, tl.float32))
        tl.store(s_ptr + offs_m * stride_sm, s, mask=mask_m)


# ----------------------------------------------------------------------------------------------------------------
# host side

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
    per_token, t = capability.plan("act_quant", group, k, rotate)
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
    h, mode, rscale = hadamard_for(rotate, sign_seed, x2)
    grid = (lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)) if per_token else \
        (lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), k // t))
    _act_quant_kernel[grid](
        x2, h, c2, s2, c1.to(x.device) if c1 is not None else s2, m, k, m_bucket(m), x2.stride(0), c2.stride(0),
        s2.stride(0),
        QMAX=qmax, GROUP=group if not per_token else 1, T=t, ROT=rotate, ROT_MODE=mode, ROT_SCALE=rscale,
        PER_TOKEN=per_token, USE_RINT=USE_RINT, HAS_CLIP=c1 is not None,
    )
    return codes, scales
