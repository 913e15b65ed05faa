"""Attention whose epilogue rotates and quantizes its output: to_out's activation quantized at its producer.

Reference: :func:`dvdq_compile.quant.attn_quant_ref` (``quant/attn.py``: fp32 attention, heads merged, cast to the
graph's dtype, then ``quantize_act``). One program per (query block of BLOCK_M tokens, batch · head): the flash
attention forward (online softmax in base 2, fp32 scores, running max and sum, fp32 ``P·V`` accumulator; ``P`` is
rounded to the 16-bit input dtype before the product, as flash kernels do), then, on the [BLOCK_M, D] output tile:
divide by the sum, cast to the output dtype (what the graph's ``type_as`` does), rotate by ``I ⊗ H`` (ROT ≤ group),
quantize each group of ``group`` channels (group divides D: the tile holds whole groups), and store int8 codes into
``[B, Sq, H·D]`` and fp32 scales into ``[B, Sq, H·D/group]``: the layout the to_out GEMM reads.

Bytes (Wan 2.1-1.3B self-attention, 32,760 tokens, 12 heads of 128): reads q, k, v (3·2·M·C) and, instead of the
16-bit output (2·M·C) that a separate ``act_quant`` reads again (3·M·C + 4·M·C/g), writes codes and scales
(M·C + 4·M·C/g): the activation quantization adds no bytes (−M·C against the unquantized attention).
FLOPs: ``4·B·H·Sq·Skv·D`` (two GEMMs) + ``2·B·Sq·H·D·ROT`` (the rotation).

Hopper notes: fp32 inputs dot with ``input_precision="ieee"`` (no TF32); 16-bit inputs use the tensor cores. The
tile configs are the Triton tutorial's shape class for D ≤ 128 (128x64 / 8 warps, 64x64 / 4 warps); nothing here has
been timed on a GPU, so the pass uses it only when asked (``fuse_attn``, docs/architecture.md §6).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..quant.act import qmax_for
from ..quant.hadamard import NO_SIGNS
from .tl_common import (
    FMA_DIV,
    OUT_CODES,
    ROT_PM1,
    USE_RINT,
    configs,
    hadamard_for,
    is_pow2,
    load_hadamard,
    quantize_groups,
    rotated,
    round_to,
)

LOG2E = 1.4426950408889634
D_MAX = 128


def _gpu_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
            for bm, bn, w, st in ((128, 64, 8, 3), (64, 64, 4, 3))]   # no spill at D = 128 (aot_sm90.py)


_CONFIGS = configs(_gpu_configs(), triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1))


@triton.autotune(configs=_CONFIGS, key=["D", "IEEE", "IN", "OUT", "GROUP", "ROT"])
@triton.jit
def _attn_quant_kernel(
    q_ptr, k_ptr, v_ptr, h_ptr, c_ptr, cs_ptr,
    Sq, Skv, H, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_cb, stride_cs, stride_csb, stride_css,
    D: tl.constexpr, IEEE: tl.constexpr, IN: tl.constexpr, OUT: tl.constexpr, QMAX: tl.constexpr, GROUP: tl.constexpr,
    ROT: tl.constexpr, ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr, USE_RINT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    mask_m = offs_m < Sq
    # the interpreter computes 16-bit dots wrongly (tl_common): there the operands go to fp32 and P is rounded to
    # the input dtype on the bits, the same numbers as the GPU's 16-bit dots up to the order of fp32 sums
    F32: tl.constexpr = IEEE or not FMA_DIV
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=mask_m[:, None], other=0.0)
    if F32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, Skv, BLOCK_N):
        kv = start + offs_n
        mask_n = kv < Skv
        kt = tl.load(k_base + kv[:, None] * stride_ks + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        if F32:
            kt = kt.to(tl.float32)
            s = tl.dot(q, tl.trans(kt), input_precision="ieee", out_dtype=tl.float32)
        else:
            s = tl.dot(q, tl.trans(kt), out_dtype=tl.float32)
        s = tl.where(mask_n[None, :], s * qk_scale, -float("inf"))   # base-2 logits: exp2(s·log2e) = e^s
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(v_base + kv[:, None] * stride_vs + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        if F32:
            pr = round_to(p, IN).to(tl.float32)      # IN = 0 (fp32 inputs): p itself
            acc = acc * alpha[:, None] + tl.dot(pr, vt.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, out_dtype=tl.float32)
        m_i = m_new
    o = round_to(acc / l_i[:, None], OUT)            # the graph's cast of the merged heads (type_as)
    hm = load_hadamard(h_ptr, ROT)
    orot = rotated(o, hm, BLOCK_M, D, ROT, ROT_MODE, ROT_SCALE)
    c, s = quantize_groups(orot, None, BLOCK_M, D, GROUP, QMAX, USE_RINT, False)
    # channels h·D .. h·D + D − 1 of [B, Sq, H·D]; groups h·D/GROUP .. of [B, Sq, H·D/GROUP]
    tl.store(c_ptr + b * stride_cb + offs_m[:, None] * stride_cs + h * D + offs_d[None, :], c, mask=mask_m[:, None])
    offs_g = tl.arange(0, D // GROUP)
    tl.store(cs_ptr + b * stride_csb + offs_m[:, None] * stride_css + h * (D // GROUP) + offs_g[None, :], s,
             mask=mask_m[:, None])


# ----------------------------------------------------------------------------------------------------------------
# host side

def offline_spec(config: triton.Config) -> tuple[dict, dict]:
    """(signature, constexprs) of the kernel for bf16 heads of 128 with an A8, group-128, Hadamard-128 epilogue at
    ``config``'s tile: the offline sm_90 compile (kernels/aot.py: tests/kernels/aot_sm90.py, bench/sass.py)."""
    sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "h_ptr": "*bf16", "c_ptr": "*i8", "cs_ptr": "*fp32",
           "Sq": "i32", "Skv": "i32", "H": "i32", "qk_scale": "fp32",
           **{f"stride_{t}{a}": "i32" for t in "qkv" for a in "bhs"}, "stride_cb": "i32", "stride_cs": "i32",
           "stride_csb": "i32", "stride_css": "i32"}
    const = dict(D=128, IEEE=False, IN=OUT_CODES[torch.bfloat16], OUT=OUT_CODES[torch.bfloat16], QMAX=127,
                 GROUP=128, ROT=128, ROT_MODE=ROT_PM1, ROT_SCALE=128 ** -0.5, USE_RINT=True, **config.kwargs)
    return sig, const


def unsupported_reason(q_shape: tuple, k_shape: tuple, v_shape: tuple, dtype: torch.dtype, out_dtype: torch.dtype,
                       group: int, rotate: int) -> str | None:
    """Why the kernel cannot produce this attention's codes (None: it can). q [B, H, Sq, D], k / v [B, H, Skv, D]."""
    if len(q_shape) != 4 or len(k_shape) != 4 or tuple(k_shape) != tuple(v_shape) or \
            q_shape[:2] != k_shape[:2] or q_shape[3] != k_shape[3]:
        return (f"q {tuple(q_shape)}, k {tuple(k_shape)}, v {tuple(v_shape)}: needs [B, H, S, D] with the same B, H "
                "and D (no grouped-query attention)")
    d = q_shape[3]
    if not is_pow2(d) or not 16 <= d <= D_MAX:
        return f"head dim {d}: the kernel takes a power of two in [16, {D_MAX}]"
    if dtype not in OUT_CODES or out_dtype not in OUT_CODES:
        return f"dtypes {dtype} -> {out_dtype}: fp32, fp16 or bf16"
    if group > d or d % group or group < 16 or not is_pow2(group):
        return f"activation group {group} with head dim {d}: a power of two >= 16 dividing the head dim"
    if rotate and (not is_pow2(rotate) or rotate < 16 or rotate > group):
        return f"Hadamard block {rotate}: a power of two in [16, group={group}]"
    return None


def attn_act_quant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, out_dtype: torch.dtype,
                   bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS):
    """Triton twin of :func:`quant.attn_quant_ref`: ``(codes int8 [B, Sq, H·D], scales fp32 [B, Sq, H·D/group])``."""
    why = unsupported_reason(tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, out_dtype, group, rotate)
    if why is None and not (q.dtype == k.dtype == v.dtype):
        why = f"q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype} differ"
    if why:
        raise ValueError(f"Triton attn_act_quant: {why}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bsz, heads, sq, d = q.shape
    skv = k.shape[2]
    codes = torch.empty((bsz, sq, heads * d), dtype=torch.int8, device=q.device)
    scales = torch.empty((bsz, sq, heads * d // group), dtype=torch.float32, device=q.device)
    if codes.numel() == 0:
        return codes, scales
    if skv == 0:
        raise ValueError("Triton attn_act_quant: no keys (Skv = 0): softmax over nothing")
    # the rotation reads the rounded output: its matrix and mode follow out_dtype (as in gelu_quant)
    h, mode, rscale = hadamard_for(rotate, sign_seed, torch.empty(0, dtype=out_dtype, device=q.device))
    if not rotate:
        h = scales   # never read (ROT = 0)
    qk_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2E
    grid = lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), bsz * heads)  # noqa: E731
    _attn_quant_kernel[grid](
        q, k, v, h, codes, scales, sq, skv, heads, qk_scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), codes.stride(0), codes.stride(1), scales.stride(0), scales.stride(1),
        D=d, IEEE=q.dtype == torch.float32, IN=OUT_CODES[q.dtype], OUT=OUT_CODES[out_dtype], QMAX=qmax_for(bits),
        GROUP=group, ROT=rotate, ROT_MODE=mode, ROT_SCALE=rscale, USE_RINT=USE_RINT,
    )
    return codes, scales
