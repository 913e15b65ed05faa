"""Single-launch quantized linear: rotate + scale + quantize the activations in the GEMM prologue.

Reference: ``quant.quantize_act`` followed by ``quant.qlinear_ref`` (numerically the same as
:func:`act_quant.act_quant` → :func:`qlinear.qlinear`)::

    x̃ = x · (I ⊗ D·H_r);  s[m, g] = max_{k∈g}|x̃[m, k]| / qmax;  xq = clamp(round(x̃ / s), ±qmax)
    y[m, n] = Δ[n] · Σ_g s[m, g] · Σ_{k∈g} xq[m, k] · (q[n, k] − z[n]) + bias[n]

Cost (``cost.fused_qlinear_cost``): FLOPs ``2·M·N·K`` (int8) + ``2·M·K·r·⌈N/BN⌉`` (the rotation is recomputed by
every N-tile; twice with a per-token scale, which needs the full-K absmax first) + ``≈4·M·K·⌈N/BN⌉`` (quantize);
bytes ``e·M·K·⌈N/BN⌉`` (activations re-read per N-tile, mostly from L2) + ``N·K·b/8`` + ``e_out·M·N``. It saves the
``M·K·(1 + 4/g)`` byte round trip of the codes and one launch; it pays ``2r/BN`` of extra GEMM time in rotation
work (docs/architecture.md §6). Which variant wins is measured (``bench/kernels.py``) and recorded in
``table.json``; :func:`variant.choose_variant` reads it.

Supported: ``group`` a power of two in [32, 256] with the rotation block dividing it, or ``group == K``
(per-token) with K a multiple of 32; weights as in :mod:`qlinear` (3/4-bit nibbles or 8-bit bytes with the
``q − 128`` zero-point correction, per-row Δ, z).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.act import qmax_for
from ..quant.hadamard import NO_SIGNS
from . import capability
from .capability import pack_factor
from .tl_common import (
    RS_COLS,
    USE_RINT,
    as_rows,
    check_weight_rows,
    configs,
    epilogue,
    gemm_grid,
    hadamard_for,
    int_dot,
    load_hadamard,
    load_rotated,
    m_bucket,
    output_buffer,
    output_tile,
    quantize_rows,
    row_absmax,
    running_absmax,
    weight_args,
    weight_prologue,
    zero_correct,
)


def _gpu_configs():
    out = []
    for bm, bn, w, st in ((64, 128, 4, 3), (64, 256, 8, 3), (128, 128, 8, 3), (128, 256, 8, 3), (64, 64, 4, 4),
                          (128, 64, 4, 3)):
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=st))
    return out


_CONFIGS = configs(_gpu_configs(), triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "GROUP_M": 4}, num_warps=4,
                                                  num_stages=1))


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "GROUP_K", "ROT", "PER_TOKEN", "PACK"])
@triton.jit
def _fused_qlinear_kernel(
    x_ptr, h_ptr, w_ptr, ws_ptr, wz_ptr, bias_ptr, c_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_cm,
    QMAX: tl.constexpr, GROUP_K: tl.constexpr, PER_TOKEN: tl.constexpr, PACK: tl.constexpr,
    ROT: tl.constexpr, ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr,
    USE_RINT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    # GROUP_K: the scale group (group mode) or the K chunk (per-token mode); also the dot's K block
    offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_k = tl.arange(0, GROUP_K)
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_ptrs, z8, zc = weight_prologue(w_ptr, wz_ptr, offs_n, mask_n, stride_wn, GROUP_K, PACK)
    h = load_hadamard(h_ptr, ROT)

    if PER_TOKEN:
        amax = running_absmax(x_rows, mask_m, h, K, BLOCK_M, GROUP_K, ROT, ROT_MODE, ROT_SCALE, True)
        acc_i = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        rs = tl.zeros((BLOCK_M, RS_COLS), tl.int32)
        for k0 in range(0, K, GROUP_K):
            xr = load_rotated(x_rows + (k0 + offs_k)[None, :], mask_m[:, None], h, BLOCK_M, GROUP_K, ROT, ROT_MODE,
                              ROT_SCALE)
            c, _ = quantize_rows(xr, amax[:, None], QMAX, USE_RINT)
            acc_i, rs = int_dot(c.to(tl.int8), w_ptrs, mask_n, z8, acc_i, rs, BLOCK_N, GROUP_K, PACK)
            w_ptrs += GROUP_K // PACK
        acc_i = zero_correct(acc_i, rs, zc, PACK)
        s = tl.math.div_rn(amax, tl.full((BLOCK_M,), QMAX, tl.float32))
        acc = acc_i.to(tl.float32) * s[:, None]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, K, GROUP_K):
            xr = load_rotated(x_rows + (k0 + offs_k)[None, :], mask_m[:, None], h, BLOCK_M, GROUP_K, ROT, ROT_MODE,
                              ROT_SCALE)
            amax = row_absmax(xr, 1)
            c, s = quantize_rows(xr, amax[:, None], QMAX, USE_RINT)
            acc_i, rs = int_dot(c.to(tl.int8), w_ptrs, mask_n, z8, None, tl.zeros((BLOCK_M, RS_COLS), tl.int32),
                                BLOCK_N, GROUP_K, PACK)
            acc_i = zero_correct(acc_i, rs, zc, PACK)
            acc += acc_i.to(tl.float32) * s
            w_ptrs += GROUP_K // PACK
    epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------------------
# host side

def fused_qlinear(x: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor, wzero: torch.Tensor,
                  bias: torch.Tensor | None, wbits: int, abits: int, group: int, rotate: int = 0,
                  sign_seed: int = NO_SIGNS, out: torch.Tensor | None = None) -> torch.Tensor:
    """One-launch ``qlinear(*act_quant(x, abits, group, rotate, sign_seed), ...)``; ``y`` [..., N] in x.dtype
    (into ``out`` if given)."""
    if not x.is_floating_point():
        raise TypeError(f"activation must be a floating-point tensor, got dtype {x.dtype}")
    qmax = qmax_for(abits)
    k = x.shape[-1]
    why = capability.unsupported_reason("fused_qlinear", wbits, tuple(wscale.shape), group, k, rotate)
    if why:
        raise ValueError(f"Triton fused_qlinear: {why}")
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] * pack_factor(wbits) != k:
        raise ValueError(f"packed weight {packed.dtype} {tuple(packed.shape)} does not match K={k}")
    check_weight_rows(packed, wscale, wzero)
    per_token, gk = capability.plan("fused_qlinear", group, k, rotate)
    n = packed.shape[0]
    x2 = as_rows(x)
    m = x2.shape[0]
    buf, res = output_buffer(x.shape[:-1], n, x.dtype, x.device, out)
    if m == 0 or n == 0:
        return res
    h, mode, rscale = hadamard_for(rotate, sign_seed, x2)
    w, ws, wz, b = weight_args(packed, wscale, wzero, bias)
    _fused_qlinear_kernel[gemm_grid(m, n)](
        x2, h, w, ws, wz, b, buf, m, n, k, m_bucket(m), x2.stride(0), w.stride(0), buf.stride(0),
        QMAX=qmax, GROUP_K=gk, PER_TOKEN=per_token, PACK=pack_factor(wbits), ROT=rotate, ROT_MODE=mode,
        ROT_SCALE=rscale, USE_RINT=USE_RINT, HAS_BIAS=bias is not None,
    )
    if buf.data_ptr() != res.data_ptr():
        res.view(buf.shape).copy_(buf)
    return res
