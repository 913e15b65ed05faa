"""W{3,4,8} × A{4,8} integer GEMM with a dequantizing epilogue, one Triton kernel.

Reference: :func:`dvdq_compile.quant.qlinear_ref` (the specification; DESIGN §4)::

    y[m, n] = Δ[n] · Σ_g s[m, g] · Σ_{k∈g} xq[m, k] · (q[n, k] − z[n])  + bias[n]

- ``xq`` int8 activation codes [M, K] (A4: −7..7, A8: −127..127), ``s`` fp32 [M, K/ga]; the activation group
  ``ga`` is a power of two >= 32 or ``K`` (per-token scale).
- ``q`` 4-bit (or 3-bit) weight codes packed two per uint8 along K, low nibble = even k, [N, K/2] K-contiguous;
  or 8-bit codes, one per uint8, [N, K]. ``z`` int32 and ``Δ`` fp32 [N, 1] (one per output row).
- Inside a group: int8 ``tl.dot(out_dtype=int32)``, exact. Nibbles are unpacked in registers to int8 ``q − z``
  (−15..15). 8-bit ``q − z`` (−255..255) does not fit int8, so the dot takes ``q − 128`` (−128..127) and the
  zero-point comes back as a rank-1 integer correction, ``Σ x·(q − z) = Σ x·(q − 128) + (128 − z)·Σ x`` with the
  activation row sums ``Σ x`` accumulated beside the dot (still exact int32). Across groups: fp32,
  ``acc += s[:, g] · float(P_g)`` in group order (the reference's order). Epilogue: ``· Δ[n]``, ``+ bias[n]``,
  cast to the output dtype.

Cost (``cost.qlinear_cost``): FLOPs ``2·M·N·K`` (int8 MACs) + ``2·M·N·K/ga`` (promotion); bytes ``M·K`` codes +
``4·M·K/ga`` scales + ``N·K·b/8`` weights (b = 4 for 3/4-bit nibbles, 8 for bytes) + ``8·N`` (Δ, z) +
``e_out·M·N`` (+ bias), counting each operand once (tile re-reads hit L2). The 8-bit correction adds ``M·K``
integer adds (row sums) and ``2·M·N`` per group.

Hopper notes (platform.md §7): weights are the K-contiguous B operand (``[BN, BK]`` tile, transposed in
registers), BLOCK_K >= 32 for 8-bit dots, BLOCK_M >= 64 for wgmma, int64 row offsets (M·K can pass 2^31),
GROUP_M swizzle for L2 reuse, ``@triton.autotune`` over several tiles on a GPU and one config in the interpreter.

A debug mode (``PARTIALS``) stores the int32 group partial sums ``P[m, n, g]`` instead of the epilogue, so tests
can compare them bit for bit with :func:`quant.int_partials`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tl_common import INTERPRET, as_rows, configs, is_pow2, m_bucket

WEIGHT_BITS = (3, 4, 8)   # 3/4: nibble layout; 8: bytes with the q − 128 correction
MIN_BLOCK_K = 32          # int8 tl.dot on NVIDIA
MAX_BLOCK_K = 256 if INTERPRET else 128


def _gpu_configs():
    # Checked offline for sm_90 (tests/codegen/aot_sm90.py; ptxas resource usage, group 128 / per-token):
    # 128x128 (8 warps), 64x128, 128x64, 64x64 (4 warps) compile to wgmma without spills; 128x256 / 256x128
    # spill ~200 B (an int32 group partial and the fp32 accumulator are both live) but stay as candidates.
    # 8-bit weights (the row-sum dot adds a [BM, 16] int32 accumulator): 128x128 / 8 warps spills 48-80 B;
    # 64x128, 128x64, 64x64 (4 warps) do not (aot_sm90.py --all).
    out = []
    for bm, bn, w, st in ((128, 128, 8, 3), (128, 128, 8, 4), (128, 256, 8, 3), (256, 128, 8, 3),
                          (64, 128, 4, 4), (128, 64, 4, 4), (64, 64, 4, 4)):
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=st))
    return out


_CONFIGS = configs(_gpu_configs(), triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "GROUP_M": 4}, num_warps=4,
                                                  num_stages=1))


def pack_factor(wbits: int) -> int:
    """Codes per stored byte along K: 2 for the 3/4-bit nibble layout, 1 for 8-bit codes."""
    return 1 if wbits == 8 else 2


@triton.jit
def load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """The dot's int8 B operand [BK, BN] from a stored tile [BN, BK/PACK].

    PACK == 2: nibbles (low = even k) -> ``q − z``. PACK == 1: bytes -> ``q − 128`` (the zero-point is added back
    by :func:`zero_correct`).
    """
    p = tl.load(w_ptrs, mask=mask_n[:, None], other=0)
    if PACK == 2:
        lo = (p & 0xF).to(tl.int8) - z8[:, None]
        hi = (p >> 4).to(tl.int8) - z8[:, None]
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    else:
        w = (p ^ 0x80).to(tl.int8, bitcast=True)   # q − 128 without widening
    return tl.trans(w)


RS_COLS: tl.constexpr = tl.constexpr(16)  # width of the row-sum dot (wgmma needs N >= 8)


@triton.jit
def row_sum(a, rs, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """Running ``Σ_k a[m, k]`` for the 8-bit zero-point correction as ``a @ 1`` [BM, RS_COLS] (every column the
    row sum): a tensor-core dot, where ``tl.sum`` over the int8 tile spilled ~160 B/thread on sm_90
    (tests/codegen/aot_sm90.py). A no-op for nibbles."""
    if PACK == 1:
        rs = tl.dot(a, tl.full((BLOCK_K, RS_COLS), 1, tl.int8), rs, out_dtype=tl.int32)
    return rs


@triton.jit
def zero_correct(acc_i, rs, zc, PACK: tl.constexpr):
    """8-bit weights: ``Σ a·(q − 128) + Σ a · (128 − z)`` = ``Σ a·(q − z)``, exact in int32."""
    if PACK == 1:
        acc_i += tl.max(rs, axis=1)[:, None] * zc[None, :]
    return acc_i


@triton.jit
def swizzle(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % per_group) % size_m)
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS: tl.constexpr):
    """``acc · Δ[n] (+ bias[n])`` stored in the output dtype."""
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
    acc = acc * ws[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "GROUP_K", "PER_TOKEN", "PACK"])
@triton.jit
def _qlinear_kernel(
    a_ptr, s_ptr, w_ptr, ws_ptr, wz_ptr, bias_ptr, c_ptr,
    M, N, K, M_BUCKET,
    stride_am, stride_sm, stride_wn, stride_cm,
    GROUP_K: tl.constexpr, BLOCK_K: tl.constexpr, PER_TOKEN: tl.constexpr, PACK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PARTIALS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = swizzle(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_kh = tl.arange(0, BLOCK_K // PACK)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_kh[None, :]
    zr = tl.load(wz_ptr + offs_n, mask=mask_n, other=0)
    z8 = zr.to(tl.int8)      # nibbles: q − z in registers
    zc = 128 - zr            # bytes: the int32 correction (128 − z)
    s_rows = s_ptr + offs_m * stride_sm

    if PER_TOKEN:
        acc_i = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        rs = tl.zeros((BLOCK_M, RS_COLS), tl.int32)
        for _k in range(0, K // BLOCK_K):
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
            b = load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N, BLOCK_K, PACK)
            acc_i = tl.dot(a, b, acc_i, out_dtype=tl.int32)
            rs = row_sum(a, rs, BLOCK_K, PACK)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K // PACK
        acc_i = zero_correct(acc_i, rs, zc, PACK)
        if PARTIALS:
            p_ptrs = c_ptr + offs_m[:, None] * N + offs_n[None, :]
            tl.store(p_ptrs, acc_i, mask=mask_m[:, None] & mask_n[None, :])
        else:
            s = tl.load(s_rows, mask=mask_m, other=0.0)
            acc = acc_i.to(tl.float32) * s[:, None]
            epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS)
    else:
        n_groups = K // GROUP_K
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for g in range(0, n_groups):
            # the first K-block of a group starts its int32 accumulator (no zero tile to add)
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
            b = load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N, BLOCK_K, PACK)
            acc_i = tl.dot(a, b, out_dtype=tl.int32)
            rs = row_sum(a, tl.zeros((BLOCK_M, RS_COLS), tl.int32), BLOCK_K, PACK)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K // PACK
            for _kk in tl.static_range(GROUP_K // BLOCK_K - 1):
                a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
                b = load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N, BLOCK_K, PACK)
                acc_i = tl.dot(a, b, acc_i, out_dtype=tl.int32)
                rs = row_sum(a, rs, BLOCK_K, PACK)
                a_ptrs += BLOCK_K
                w_ptrs += BLOCK_K // PACK
            acc_i = zero_correct(acc_i, rs, zc, PACK)
            if PARTIALS:
                p_ptrs = c_ptr + (offs_m[:, None] * N + offs_n[None, :]) * n_groups + g
                tl.store(p_ptrs, acc_i, mask=mask_m[:, None] & mask_n[None, :])
            else:
                s = tl.load(s_rows + g, mask=mask_m, other=0.0)
                acc += acc_i.to(tl.float32) * s[:, None]
        if not PARTIALS:
            epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------------------
# host side

def unsupported_reason(wbits: int, wscale_shape, act_group: int, k: int) -> str | None:
    """Why :func:`qlinear` cannot run this case (``None``: it can)."""
    if wbits not in WEIGHT_BITS:
        return f"weight bits {wbits}: kernels take {WEIGHT_BITS} (3/4 in the nibble layout, 8 one code per byte)"
    if len(wscale_shape) != 2 or wscale_shape[1] != 1:
        return f"weight scales {tuple(wscale_shape)}: kernels take one (scale, zero) per output row ([N, 1])"
    if k <= 0 or k % pack_factor(wbits):
        return f"K={k} must be a positive multiple of {pack_factor(wbits)} for {wbits}-bit weights"
    if act_group < 1 or k % act_group:
        return f"activation group {act_group} does not divide K={k}"
    if 127 * (2**wbits - 1) * act_group >= 2**31:
        return (f"activation group {act_group} with {wbits}-bit weights: the int32 group partial sum "
                f"(up to 127·{2**wbits - 1}·{act_group}) could overflow")
    if is_pow2(act_group) and act_group >= MIN_BLOCK_K:
        return None
    if act_group == k and k % MIN_BLOCK_K == 0:
        return None
    return (f"activation group {act_group} (K={k}): kernels take a power-of-two group >= {MIN_BLOCK_K} or a "
            f"per-token scale with K a multiple of {MIN_BLOCK_K}")


def block_k(group: int, k: int, per_token: bool) -> int:
    if not per_token:
        return min(group, MAX_BLOCK_K)
    bk = MAX_BLOCK_K
    while k % bk:
        bk //= 2
    return bk


def _check(codes, scales, packed, wscale, wzero, wbits):
    k = codes.shape[-1]
    if codes.dtype != torch.int8:
        raise TypeError(f"activation codes must be int8, got {codes.dtype}")
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed weight must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    why = unsupported_reason(wbits, tuple(wscale.shape), k // scales.shape[-1] if scales.shape[-1] else 0, k)
    if why is None and k % scales.shape[-1]:
        why = f"{scales.shape[-1]} scale groups do not divide K={k}"
    if why:
        raise ValueError(f"Triton qlinear: {why}")
    if packed.shape[1] * pack_factor(wbits) != k:
        raise ValueError(f"packed weight holds K={packed.shape[1] * pack_factor(wbits)} {wbits}-bit codes per row "
                         f"but activations have K={k}")
    if tuple(wzero.shape) != tuple(wscale.shape) or wscale.shape[0] != packed.shape[0]:
        raise ValueError(f"weight scale {tuple(wscale.shape)} / zero {tuple(wzero.shape)} do not match "
                         f"{packed.shape[0]} rows")


def _launch(codes, scales, packed, wscale, wzero, bias, wbits, out, partials: bool):
    k = codes.shape[-1]
    a = as_rows(codes)
    m = a.shape[0]
    n = packed.shape[0]
    ga = k // scales.shape[-1]
    per_token = scales.shape[-1] == 1 and not (is_pow2(ga) and ga <= MAX_BLOCK_K)
    s = scales.reshape(m, -1)
    if s.stride(-1) != 1:
        s = s.contiguous()
    s = s.to(torch.float32)
    w = packed if packed.stride(-1) == 1 else packed.contiguous()
    ws = wscale.reshape(-1).to(torch.float32).contiguous()
    wz = wzero.reshape(-1).to(torch.int32).contiguous()
    b = bias.contiguous() if bias is not None else ws
    bk = block_k(ga, k, per_token)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _qlinear_kernel[grid](
        a, s, w, ws, wz, b, out, m, n, k, m_bucket(m),
        a.stride(0), s.stride(0), w.stride(0), out.stride(0) if out.dim() == 2 else n,
        GROUP_K=ga if not per_token else k, BLOCK_K=bk, PER_TOKEN=per_token, PACK=pack_factor(wbits),
        HAS_BIAS=bias is not None, PARTIALS=partials,
    )


def output_buffer(lead, n: int, out_dtype: torch.dtype, device, out: torch.Tensor | None):
    """(kernel buffer [M, N], result [..., N]). The interpreter truncates fp32 -> bf16 (platform.md §2), so there
    the kernel writes fp32 and torch rounds."""
    m = 1
    for d in lead:
        m *= d
    kdt = torch.float32 if (INTERPRET and out_dtype == torch.bfloat16) else out_dtype
    if out is not None:
        if tuple(out.shape) != (*lead, n) or out.dtype != out_dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {(*lead, n)}")
        res = out
    else:
        res = torch.empty((*lead, n), dtype=out_dtype, device=device)
    buf = res.view(m, n) if kdt == out_dtype else torch.empty((m, n), dtype=kdt, device=device)
    return buf, res


def qlinear(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
            wzero: torch.Tensor, bias: torch.Tensor | None, wbits: int, out_dtype: torch.dtype,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of :func:`quant.qlinear_ref`; returns ``y`` [..., N] in ``out_dtype`` (into ``out`` if given)."""
    _check(codes, scales, packed, wscale, wzero, wbits)
    n = packed.shape[0]
    buf, res = output_buffer(codes.shape[:-1], n, out_dtype, codes.device, out)
    if buf.numel():
        _launch(codes, scales, packed, wscale, wzero, bias, wbits, buf, partials=False)
        if buf.data_ptr() != res.data_ptr():
            res.view(buf.shape).copy_(buf)
    return res


def qlinear_int_partials(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
                         wzero: torch.Tensor, wbits: int) -> torch.Tensor:
    """Debug path: the kernel's int32 partial sums ``P[m, n, g]`` [M, N, K/ga] (one block when per-token).

    Same tiles, unpack and dots as :func:`qlinear`; compare with ``quant.int_partials(codes, packed, wzero, wbits,
    block=ga)``.
    """
    _check(codes, scales, packed, wscale, wzero, wbits)
    k = codes.shape[-1]
    m = codes.numel() // k
    n = packed.shape[0]
    ga = k // scales.shape[-1]
    per_token = scales.shape[-1] == 1 and not (is_pow2(ga) and ga <= MAX_BLOCK_K)
    nb = 1 if per_token else k // ga
    out = torch.full((m, n, nb), -2**31, dtype=torch.int32, device=codes.device)  # poison: unwritten shows
    if m and n:
        _launch(codes, scales, packed, wscale, wzero, None, wbits, out, partials=True)
    return out
