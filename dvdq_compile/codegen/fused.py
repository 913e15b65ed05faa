"""Single-launch quantized linear: rotate + scale + quantize the activations in the GEMM prologue.

Reference: ``quant.quantize_act`` followed by ``quant.qlinear_ref`` (numerically the same as
:func:`act_quant.act_quant` → :func:`qlinear.qlinear`)::

    x̃ = x · (I ⊗ D·H_r);  s[m, g] = max_{k∈g}|x̃[m, k]| / qmax;  xq = clamp(round(x̃ / s), ±qmax)
    y[m, n] = Δ[n] · Σ_g s[m, g] · Σ_{k∈g} xq[m, k] · (q[n, k] − z[n]) + bias[n]

Cost (``cost.fused_qlinear_cost``): FLOPs ``2·M·N·K`` (int8) + ``2·M·K·r·⌈N/BN⌉`` (the rotation is recomputed by
every N-tile; twice with a per-token scale, which needs the full-K absmax first) + ``≈4·M·K·⌈N/BN⌉`` (quantize);
bytes ``e·M·K·⌈N/BN⌉`` (activations re-read per N-tile, mostly from L2) + ``N·K·b/8`` + ``e_out·M·N``. It saves the
``M·K·(1 + 4/g)`` byte round trip of the codes and one launch; it pays ``2r/BN`` of extra GEMM time in rotation
work (platform.md §7 "Hadamard placement"). Which variant wins is measured (``bench/kernels.py``) and recorded in
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
from .qlinear import (MIN_BLOCK_K, RS_COLS, epilogue, load_weight_tile, output_buffer, pack_factor, row_sum,
                      swizzle, unsupported_reason as _ql_reason, zero_correct)
from .tl_common import (INTERPRET, NAN, USE_RINT, as_rows, configs, hadamard_for, is_pow2, m_bucket,
                        quantize_rows, rotate_tile, row_absmax)

MAX_GROUP = 256
MAX_CHUNK = 256 if INTERPRET else 128


def _gpu_configs():
    out = []
    for bm, bn, w, st in ((64, 128, 4, 3), (64, 256, 8, 3), (128, 128, 8, 3), (128, 256, 8, 3), (64, 64, 4, 4),
                          (128, 64, 4, 3)):
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=st))
    return out


_CONFIGS = configs(_gpu_configs(), triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "GROUP_M": 4}, num_warps=4,
                                                  num_stages=1))


@triton.jit
def _load_rotated(x_rows, offs_k, mask_m, h, BLOCK_M: tl.constexpr, W: tl.constexpr, ROT: tl.constexpr,
                  ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr):
    x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None], other=0.0)
    if ROT > 0:
        if ROT_MODE == 0:
            x = x.to(tl.float32)
        xr = rotate_tile(x, h, BLOCK_M, W, ROT, ROT_MODE, ROT_SCALE)
    else:
        xr = x.to(tl.float32)
    return xr


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
    pid_m, pid_n = swizzle(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, GROUP_K)
    offs_kh = tl.arange(0, GROUP_K // PACK)
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_kh[None, :]
    zr = tl.load(wz_ptr + offs_n, mask=mask_n, other=0)
    z8 = zr.to(tl.int8)      # nibbles: q − z in registers
    zc = 128 - zr            # bytes: the int32 correction (qlinear.zero_correct)
    if ROT > 0:
        offs_r = tl.arange(0, ROT)
        h = tl.load(h_ptr + offs_r[:, None] * ROT + offs_r[None, :])
    else:
        h = None

    if PER_TOKEN:
        amax = tl.zeros((BLOCK_M,), tl.float32)
        nans = tl.zeros((BLOCK_M,), tl.int32)
        for k0 in range(0, K, GROUP_K):
            xr = _load_rotated(x_rows, k0 + offs_k, mask_m, h, BLOCK_M, GROUP_K, ROT, ROT_MODE, ROT_SCALE)
            amax = tl.maximum(amax, tl.max(tl.abs(xr), axis=1))
            nans = tl.maximum(nans, tl.max((xr != xr).to(tl.int32), axis=1))
        amax = tl.where(nans > 0, NAN, amax)
        acc_i = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        rs = tl.zeros((BLOCK_M, RS_COLS), tl.int32)
        for k0 in range(0, K, GROUP_K):
            xr = _load_rotated(x_rows, k0 + offs_k, mask_m, h, BLOCK_M, GROUP_K, ROT, ROT_MODE, ROT_SCALE)
            c, _ = quantize_rows(xr, amax[:, None], QMAX, USE_RINT)
            c8 = c.to(tl.int8)
            b = load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N, GROUP_K, PACK)
            acc_i = tl.dot(c8, b, acc_i, out_dtype=tl.int32)
            rs = row_sum(c8, rs, GROUP_K, PACK)
            w_ptrs += GROUP_K // PACK
        acc_i = zero_correct(acc_i, rs, zc, PACK)
        s = tl.math.div_rn(amax, tl.full((BLOCK_M,), QMAX, tl.float32))
        acc = acc_i.to(tl.float32) * s[:, None]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, K, GROUP_K):
            xr = _load_rotated(x_rows, k0 + offs_k, mask_m, h, BLOCK_M, GROUP_K, ROT, ROT_MODE, ROT_SCALE)
            amax = row_absmax(xr, 1)
            c, s = quantize_rows(xr, amax[:, None], QMAX, USE_RINT)
            c8 = c.to(tl.int8)
            b = load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N, GROUP_K, PACK)
            acc_i = tl.dot(c8, b, out_dtype=tl.int32)
            rs = row_sum(c8, tl.zeros((BLOCK_M, RS_COLS), tl.int32), GROUP_K, PACK)
            acc_i = zero_correct(acc_i, rs, zc, PACK)
            acc += acc_i.to(tl.float32) * s
            w_ptrs += GROUP_K // PACK
    epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------------------
# host side

def plan(group: int, rotate: int, k: int) -> tuple[bool, int]:
    """(per_token, GROUP_K) for a launch, or ``ValueError`` with the reason."""
    if group < 1 or k % group:
        raise ValueError(f"activation scale group {group} does not divide K={k}")
    if rotate and (not is_pow2(rotate) or not 16 <= rotate <= MAX_GROUP or k % rotate):
        raise ValueError(f"Hadamard block {rotate}: fused kernel takes a power of two in [16, {MAX_GROUP}] "
                         f"dividing K={k}")
    if is_pow2(group) and MIN_BLOCK_K <= group <= MAX_GROUP and group >= rotate:
        return False, group
    if group == k and k % MIN_BLOCK_K == 0:
        chunk = MAX_CHUNK
        while k % chunk:
            chunk //= 2
        if chunk >= max(rotate, MIN_BLOCK_K):
            return True, chunk
    raise ValueError(f"fused qlinear takes a power-of-two group in [{MIN_BLOCK_K}, {MAX_GROUP}] that the Hadamard "
                     f"block divides, or group == K (per-token); got group={group}, rotate={rotate}, K={k}")


def unsupported_reason(wbits: int, wscale_shape, act_group: int, k: int, rotate: int = 0) -> str | None:
    why = _ql_reason(wbits, wscale_shape, act_group, k)
    if why:
        return why
    try:
        plan(act_group, rotate, k)
    except ValueError as e:
        return str(e)
    return None


def fused_qlinear(x: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor, wzero: torch.Tensor,
                  bias: torch.Tensor | None, wbits: int, abits: int, group: int, rotate: int = 0,
                  sign_seed: int = NO_SIGNS, out: torch.Tensor | None = None) -> torch.Tensor:
    """One-launch ``qlinear(*act_quant(x, abits, group, rotate, sign_seed), ...)``; ``y`` [..., N] in x.dtype
    (into ``out`` if given)."""
    if not x.is_floating_point():
        raise TypeError(f"activation must be a floating-point tensor, got dtype {x.dtype}")
    qmax = qmax_for(abits)
    k = x.shape[-1]
    why = unsupported_reason(wbits, tuple(wscale.shape), group, k, rotate)
    if why:
        raise ValueError(f"Triton fused_qlinear: {why}")
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] * pack_factor(wbits) != k:
        raise ValueError(f"packed weight {packed.dtype} {tuple(packed.shape)} does not match K={k}")
    if tuple(wzero.shape) != tuple(wscale.shape) or wscale.shape[0] != packed.shape[0]:
        raise ValueError(f"weight scale {tuple(wscale.shape)} / zero {tuple(wzero.shape)} do not match "
                         f"{packed.shape[0]} rows")
    per_token, gk = plan(group, rotate, k)
    n = packed.shape[0]
    x2 = as_rows(x)
    m = x2.shape[0]
    buf, res = output_buffer(x.shape[:-1], n, x.dtype, x.device, out)
    if m == 0 or n == 0:
        return res
    if rotate:
        h, mode, rscale = hadamard_for(rotate, sign_seed, x)
    else:
        h, mode, rscale = x2, 0, 1.0
    w = packed if packed.stride(-1) == 1 else packed.contiguous()
    ws = wscale.reshape(-1).to(torch.float32).contiguous()
    wz = wzero.reshape(-1).to(torch.int32).contiguous()
    b = bias.contiguous() if bias is not None else ws
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _fused_qlinear_kernel[grid](
        x2, h, w, ws, wz, b, buf, m, n, k, m_bucket(m), x2.stride(0), w.stride(0), buf.stride(0),
        QMAX=qmax, GROUP_K=gk, PER_TOKEN=per_token, PACK=pack_factor(wbits), ROT=rotate, ROT_MODE=mode,
        ROT_SCALE=rscale, USE_RINT=USE_RINT, HAS_BIAS=bias is not None,
    )
    if buf.data_ptr() != res.data_ptr():
        res.view(buf.shape).copy_(buf)
    return res
