"""Layer norm → adaLN modulation → cast → rotate → quantize, one Triton kernel: activation quantization at its
producer.

Reference: :func:`dvdq_compile.quant.norm_modulate` then :func:`dvdq_compile.quant.quantize_act` (the
specification; docs/numerics.md §5)::

    y = (layer_norm(x.float(), eps) · mult + shift).to(out_dtype)     # mult, shift broadcast over [B, S, K]
    codes, scales = quantize_act(y, bits, group, rotate, sign_seed)

Why: a separate ``act_quant`` pass reads the 16-bit ``y`` the norm kernel wrote and writes codes: ``3·M·K`` bytes
more than the GEMM needs, as much as the W4A8 GEMM's own traffic on the N = 1536 layers of Wan
(``bench/results/sass.md``). Here the norm's read of ``x`` is the only activation read and the codes are the only
write: ``e·M·K`` in, ``M·K + 4·M·K/g`` out, two passes over each row (statistics, then normalize-quantize; the
second pass of a row usually hits L2).

Launch: one program per BLOCK_M rows; pass 1 folds per-chunk mean and M2 (Chan's parallel update, fp32), pass 2
normalizes, modulates, casts to ``out_dtype`` (the graph's rounding), rotates by ``I ⊗ H`` and quantizes each
group in the chunk. Chunk T: a power of two, a multiple of the group and the Hadamard block, dividing K.

Numerics: the mean and variance sum in another order than torch's layer norm, so ``y`` can differ in its last
fp32 bit, and after the cast a 16-bit ``y`` can round the other way; codes then differ by one at rounding ties
(the tests bound how often), scales by at most one ulp of ``out_dtype``.

Cost: bytes ``e·M·K`` in (twice from L2/HBM) + ``M·K + 4·M·K/g`` out + ``mult``/``shift`` (``4·B·K`` each when
broadcast per batch); FLOPs ``2·M·K·r`` (rotation) + ``≈12·M·K``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.act import qmax_for
from ..quant.hadamard import NO_SIGNS
from .tl_common import OUT_CODES, USE_RINT, configs, hadamard_for, load_hadamard, quantize_groups, rotated, round_to

TILE_MAX = 256

# One stage: the loads are not worth a shared-memory pipeline here (the kernel is issue-bound), and at 40-49 KiB per
# CTA 2-4 CTAs share an SM, which hides each one's wait on its Hadamard wgmma (bench/results/sass.md: 2 stages held
# 128 KiB and one CTA per SM, 0.6 vs 0.34 issue cycles per element; 64 rows on 4 warps spills).
_CONFIGS = configs(
    [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1) for bm, w in ((16, 4), (32, 4), (32, 8))],
    triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1),
)


@triton.jit
def _row_vec(ptr, offs_m, S, stride_b, stride_s, offs_k, mask_m):
    """``mult`` / ``shift`` at rows ``offs_m`` (row m = batch m // S, token m % S) and columns ``offs_k``, fp32."""
    b = offs_m // S
    s = offs_m % S
    p = ptr + (b * stride_b + s * stride_s)[:, None] + offs_k[None, :]
    return tl.load(p, mask=mask_m[:, None], other=0.0).to(tl.float32)


@triton.autotune(configs=_CONFIGS, key=["K", "T", "GROUP", "ROT", "OUT"])
@triton.jit
def _norm_quant_kernel(
    x_ptr, mult_ptr, shift_ptr, h_ptr, c_ptr, s_ptr,
    M, K, S, eps,
    stride_xm, stride_mb, stride_ms, stride_sb, stride_ss, stride_cm, stride_sm,
    QMAX: tl.constexpr, GROUP: tl.constexpr, T: tl.constexpr, ROT: tl.constexpr, ROT_MODE: tl.constexpr,
    ROT_SCALE: tl.constexpr, OUT: tl.constexpr, USE_RINT: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    h = load_hadamard(h_ptr, ROT)

    # pass 1: mean and M2 over K, folded chunk by chunk (Chan et al.): no catastrophic sum-of-squares cancellation
    mean = tl.zeros((BLOCK_M,), tl.float32)
    m2 = tl.zeros((BLOCK_M,), tl.float32)
    n_old = tl.zeros((BLOCK_M,), tl.float32)   # columns folded so far
    for k0 in range(0, K, T):
        x = tl.load(x_rows + (k0 + tl.arange(0, T))[None, :], mask=mask_m[:, None], other=0.0).to(tl.float32)
        cm = tl.sum(x, axis=1) / T
        d = x - cm[:, None]
        cm2 = tl.sum(d * d, axis=1)
        n_new = n_old + T
        delta = cm - mean
        mean = mean + delta * (T / n_new)
        m2 = m2 + cm2 + delta * delta * (n_old * T / n_new)
        n_old = n_new
    rstd = 1.0 / tl.sqrt(m2 / K + eps)

    # pass 2: normalize, modulate, cast (the graph's rounding), rotate, quantize each group of the chunk
    for k0 in range(0, K, T):
        offs_k = k0 + tl.arange(0, T)
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None], other=0.0).to(tl.float32)
        y = (x - mean[:, None]) * rstd[:, None]
        y = y * _row_vec(mult_ptr, offs_m, S, stride_mb, stride_ms, offs_k, mask_m) + \
            _row_vec(shift_ptr, offs_m, S, stride_sb, stride_ss, offs_k, mask_m)
        yr = rotated(round_to(y, OUT), h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
        c, s = quantize_groups(yr, None, BLOCK_M, T, GROUP, QMAX, USE_RINT, False)
        tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_k[None, :], c, mask=mask_m[:, None])
        offs_g = k0 // GROUP + tl.arange(0, T // GROUP)
        tl.store(s_ptr + offs_m[:, None] * stride_sm + offs_g[None, :], s, mask=mask_m[:, None])


# ----------------------------------------------------------------------------------------------------------------
# host side

def tile_for(k: int, group: int, rotate: int) -> int | None:
    """The chunk T for K, or None when the kernel does not take this (group, rotate, K)."""
    if group < 16 or group & (group - 1) or (rotate and (rotate & (rotate - 1) or rotate > group)):
        return None
    t = group
    if t > TILE_MAX or k % t:
        return None
    while t * 2 <= TILE_MAX and k % (t * 2) == 0:
        t *= 2
    return t


def unsupported_reason(k: int, group: int, rotate: int, out_dtype: torch.dtype) -> str | None:
    if out_dtype not in OUT_CODES:
        return f"output dtype {out_dtype} (fused norm quantization casts to fp32/fp16/bf16)"
    if tile_for(k, group, rotate) is None:
        return (f"group {group} / Hadamard block {rotate} / K={k}: the fused norm kernel takes a power-of-two group "
                f"in [16, {TILE_MAX}] dividing K, with a Hadamard block that is a power of two <= the group")
    return None


def _bsk(t: torch.Tensor, shape: torch.Size, what: str) -> tuple[torch.Tensor, int, int]:
    """``t`` broadcast to ``shape`` = [..., S, K] as a [B, S, K] view: (tensor, stride_b, stride_s) with unit stride
    along K (copied only when the broadcast view cannot be expressed that way)."""
    try:
        e = torch.broadcast_to(t, shape)
    except RuntimeError as err:
        raise ValueError(f"norm_act_quant: {what} of shape {tuple(t.shape)} does not broadcast to the activation "
                         f"{tuple(shape)}") from err
    k = shape[-1]
    s = shape[-2] if len(shape) >= 2 else 1
    try:
        v = e.view(-1, s, k)
    except RuntimeError:
        v = e.contiguous().view(-1, s, k)
    if v.stride(-1) != 1:
        v = v.contiguous()
    return v, v.stride(0), v.stride(1)


def norm_act_quant(x: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, eps: float, out_dtype: torch.dtype,
                   bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS):
    """Triton twin of ``quantize_act(norm_modulate(x, mult, shift, eps, out_dtype), bits, group, rotate,
    sign_seed)``: ``(codes int8 [..., K], scales fp32 [..., K/group])``."""
    if not x.is_floating_point():
        raise TypeError(f"norm_act_quant: activation must be floating point, got {x.dtype}")
    k = x.shape[-1]
    why = unsupported_reason(k, group, rotate, out_dtype)
    if why:
        raise ValueError(f"Triton norm_act_quant: {why}")
    t = tile_for(k, group, rotate)
    codes = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty((*x.shape[:-1], k // group), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return codes, scales
    x3 = x if x.dim() >= 2 else x.reshape(1, k)
    shape = x3.shape
    xr = x3.reshape(-1, k)
    if xr.stride(-1) != 1:
        xr = xr.contiguous()
    m = xr.shape[0]
    mv, smb, sms = _bsk(mult, shape, "mult")
    sv, ssb, sss = _bsk(shift, shape, "shift")
    s_tok = shape[-2]
    # the rotation reads the cast value: its matrix and mode follow out_dtype, as act_quant's follow its input's
    if rotate:
        h, mode, rscale = hadamard_for(rotate, sign_seed, torch.empty(0, dtype=out_dtype, device=x.device))
    else:
        h, mode, rscale = xr, 0, 1.0   # never read (ROT = 0)
    c2, s2 = codes.view(m, k), scales.view(m, k // group)
    _norm_quant_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](
        xr, mv, sv, h, c2, s2, m, k, s_tok, float(eps),
        xr.stride(0), smb, sms, ssb, sss, c2.stride(0), s2.stride(0),
        QMAX=qmax_for(bits), GROUP=group, T=t, ROT=rotate, ROT_MODE=mode, ROT_SCALE=rscale, OUT=OUT_CODES[out_dtype],
        USE_RINT=USE_RINT,
    )
    return codes, scales
