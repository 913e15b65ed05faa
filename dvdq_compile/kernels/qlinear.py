"""W{3,4,8} × A{4,8} integer GEMM with a dequantizing epilogue, one Triton kernel.

Reference: :func:`dvdq_compile.quant.qlinear_ref` (the specification; docs/numerics.md §6)::

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

Hopper notes (docs/architecture.md §8): weights are the K-contiguous B operand (``[BN, BK]`` tile, transposed in
registers), BLOCK_K >= 32 for 8-bit dots, BLOCK_M >= 64 for wgmma, int64 row offsets (M·K can pass 2^31),
GROUP_M swizzle for L2 reuse, ``@triton.autotune`` over several tiles on a GPU and one config in the interpreter.

A debug mode (``PARTIALS``) stores the int32 group partial sums ``P[m, n, g]`` instead of the epilogue, so tests
can compare them bit for bit with :func:`quant.int_partials`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import capability
from . import gluon_qlinear as GQL
from . import gluon_ws as GWS
from .capability import pack_factor
from .expand import expand_weight
from .tl_common import (
    INTERPRET,
    RS_COLS,
    as_rows,
    check_weight_rows,
    configs,
    epilogue,
    gemm_grid,
    int_dot,
    m_bucket,
    output_buffer,
    output_tile,
    weight_args,
    weight_prologue,
    zero_correct,
)


def _gpu_configs():
    # Checked offline for sm_90 (tests/kernels/aot_sm90.py; ptxas resource usage, group 128 / per-token):
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


@triton.jit
def _k_block(a_ptrs, w_ptrs, mask_m, mask_n, z8, acc_i, rs, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             PACK: tl.constexpr, EXPANDED: tl.constexpr):
    """One K block: load the int8 codes, dot with the weight tile; returns ``(acc_i, rs, a_ptrs, w_ptrs)`` with both
    pointers moved to the next block. EXPANDED: the weight tile is already int8 ``q − z`` (a pure int8 dot, the
    operands straight from the pipelined shared-memory copies); else :func:`int_dot` unpacks it."""
    a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
    if EXPANDED:
        b = tl.load(w_ptrs, mask=mask_n[:, None], other=0)
        acc_i = tl.dot(a, tl.trans(b), acc_i, out_dtype=tl.int32)
        w_next = w_ptrs + BLOCK_K
    else:
        acc_i, rs = int_dot(a, w_ptrs, mask_n, z8, acc_i, rs, BLOCK_N, BLOCK_K, PACK)
        w_next = w_ptrs + BLOCK_K // PACK
    return acc_i, rs, a_ptrs + BLOCK_K, w_next


@triton.jit
def accumulate(a_ptr, s_ptr, w_ptr, wz_ptr, p_ptr, offs_m, offs_n, mask_m, mask_n, N, K,
               stride_am, stride_sm, stride_wn,
               GROUP_K: tl.constexpr, BLOCK_K: tl.constexpr, PER_TOKEN: tl.constexpr, PACK: tl.constexpr,
               PARTIALS: tl.constexpr, EXPANDED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The K loop of one output tile: fp32 ``acc[m, n] = Σ_g s[m, g] · float(P_g[m, n])`` in group order (per-token:
    ``s[m] · float(P)``), before ``Δ`` and the bias. PARTIALS: stores the int32 ``P`` at ``p_ptr`` instead (the
    returned tile is then meaningless). Shared by every kernel built on the integer GEMM (``qlinear``, the
    ``gelu_quant`` epilogue kernel)."""
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + tl.arange(0, BLOCK_K)[None, :]
    if EXPANDED:  # int8 q − z, one byte per code: no zero-point work at all
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + tl.arange(0, BLOCK_K)[None, :]
        z8 = None
        zc = None
    else:
        w_ptrs, z8, zc = weight_prologue(w_ptr, wz_ptr, offs_n, mask_n, stride_wn, BLOCK_K, PACK)
    s_rows = s_ptr + offs_m * stride_sm

    if PER_TOKEN:
        acc_i = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        rs = tl.zeros((BLOCK_M, RS_COLS), tl.int32)
        for _k in range(0, K // BLOCK_K):
            acc_i, rs, a_ptrs, w_ptrs = _k_block(a_ptrs, w_ptrs, mask_m, mask_n, z8, acc_i, rs, BLOCK_N, BLOCK_K,
                                                 PACK, EXPANDED)
        if not EXPANDED:
            acc_i = zero_correct(acc_i, rs, zc, PACK)
        if PARTIALS:
            p_ptrs = p_ptr + offs_m[:, None] * N + offs_n[None, :]
            tl.store(p_ptrs, acc_i, mask=mask_m[:, None] & mask_n[None, :])
            acc = acc_i.to(tl.float32)
        else:
            s = tl.load(s_rows, mask=mask_m, other=0.0)
            acc = acc_i.to(tl.float32) * s[:, None]
    else:
        n_groups = K // GROUP_K
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for g in range(0, n_groups):
            # the first K-block of a group starts its int32 accumulator (no zero tile to add)
            acc_i, rs, a_ptrs, w_ptrs = _k_block(a_ptrs, w_ptrs, mask_m, mask_n, z8, None,
                                                 tl.zeros((BLOCK_M, RS_COLS), tl.int32), BLOCK_N, BLOCK_K, PACK,
                                                 EXPANDED)
            for _kk in tl.static_range(GROUP_K // BLOCK_K - 1):
                acc_i, rs, a_ptrs, w_ptrs = _k_block(a_ptrs, w_ptrs, mask_m, mask_n, z8, acc_i, rs, BLOCK_N,
                                                     BLOCK_K, PACK, EXPANDED)
            if not EXPANDED:
                acc_i = zero_correct(acc_i, rs, zc, PACK)
            if PARTIALS:
                p_ptrs = p_ptr + (offs_m[:, None] * N + offs_n[None, :]) * n_groups + g
                tl.store(p_ptrs, acc_i, mask=mask_m[:, None] & mask_n[None, :])
            else:
                s = tl.load(s_rows + g, mask=mask_m, other=0.0)
                acc += acc_i.to(tl.float32) * s[:, None]
    return acc


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "GROUP_K", "PER_TOKEN", "PACK", "EXPANDED"])
@triton.jit
def _qlinear_kernel(
    a_ptr, s_ptr, w_ptr, ws_ptr, wz_ptr, bias_ptr, c_ptr,
    M, N, K, M_BUCKET,
    stride_am, stride_sm, stride_wn, stride_cm,
    GROUP_K: tl.constexpr, BLOCK_K: tl.constexpr, PER_TOKEN: tl.constexpr, PACK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PARTIALS: tl.constexpr, EXPANDED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = accumulate(a_ptr, s_ptr, w_ptr, wz_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, N, K,
                     stride_am, stride_sm, stride_wn, GROUP_K, BLOCK_K, PER_TOKEN, PACK, PARTIALS, EXPANDED,
                     BLOCK_M, BLOCK_N)
    if not PARTIALS:
        epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS)


# ----------------------------------------------------------------------------------------------------------------
# host side

def _check(codes, scales, packed, wscale, wzero, wbits):
    k = codes.shape[-1]
    if codes.dtype != torch.int8:
        raise TypeError(f"activation codes must be int8, got {codes.dtype}")
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed weight must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    why = capability.unsupported_reason("qlinear", wbits, tuple(wscale.shape),
                                        k // scales.shape[-1] if scales.shape[-1] else 0, k)
    if why is None and k % scales.shape[-1]:
        why = f"{scales.shape[-1]} scale groups do not divide K={k}"
    if why:
        raise ValueError(f"Triton qlinear: {why}")
    if packed.shape[1] * pack_factor(wbits) != k:
        raise ValueError(f"packed weight holds K={packed.shape[1] * pack_factor(wbits)} {wbits}-bit codes per row "
                         f"but activations have K={k}")
    check_weight_rows(packed, wscale, wzero)


# At and above this many rows a call expands the 3/4-bit codes to int8 q − z once and runs the pure int8 loop
# (kernels/expand.py: 1.5·N·K bytes, ~443/M of the GEMM's time at int8 peak on H100; bench/results/sass.md has
# the loop it replaces). Below it the packed loop reads half the weight bytes, which matters when M is small.
EXPAND_MIN_M = 4096


def use_expanded(m: int, wbits: int, expand: bool | None = None) -> bool:
    """Whether a call with ``m`` rows runs on int8-expanded weights: ``expand`` if given (3/4-bit only), else
    ``m >= EXPAND_MIN_M`` on a GPU (the interpreter gains nothing from it)."""
    if wbits not in (3, 4):
        if expand:
            raise ValueError(f"expand=True needs 3/4-bit weights (8-bit q − z does not fit int8), got {wbits} bits")
        return False
    if expand is not None:
        return bool(expand)
    return m >= EXPAND_MIN_M and not INTERPRET


@dataclass
class Operands:
    """What a kernel built on :func:`accumulate` is launched with: rows of codes ``a`` [M, K], fp32 scales ``s``
    [M, K/ga], the weight (int8-expanded when ``expanded``), Δ, z, bias (or a stand-in), and the K-loop plan."""
    a: torch.Tensor
    s: torch.Tensor
    w: torch.Tensor
    ws: torch.Tensor
    wz: torch.Tensor
    b: torch.Tensor
    m: int
    k: int
    ga: int
    per_token: bool
    bk: int
    expanded: bool
    pack: int


def operands(codes, scales, packed, wscale, wzero, bias, wbits, expand: bool | None) -> Operands:
    k = codes.shape[-1]
    a = as_rows(codes)
    m = a.shape[0]
    ga = k // scales.shape[-1]
    per_token, bk = capability.plan("qlinear", ga, k)
    s = scales.reshape(m, -1)
    if s.stride(-1) != 1:
        s = s.contiguous()
    s = s.to(torch.float32)
    w, ws, wz, b = weight_args(packed, wscale, wzero, bias)
    expanded = use_expanded(m, wbits, expand)
    if expanded:
        w = expand_weight(w, wz, wbits)
    return Operands(a, s, w, ws, wz, b, m, k, ga, per_token, bk, expanded, 1 if expanded else pack_factor(wbits))


def with_config(kernel, config: triton.Config | None):
    """``(kernel, launch kwargs)``: the autotuned kernel, or its plain JIT function with ``config``'s tile forced."""
    if config is None:
        return kernel, {}
    return kernel.fn, dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _launch(codes, scales, packed, wscale, wzero, bias, wbits, out, partials: bool, expand: bool | None,
            config: triton.Config | None = None):
    """Run the kernel into ``out``: the [M, N] output, or the [M, N, groups] int32 partials; ``config``: this tile
    config instead of autotuning (benchmarks of single configs)."""
    o = operands(codes, scales, packed, wscale, wzero, bias, wbits, expand)
    n = packed.shape[0]
    if not partials and config is None and GQL.use_gluon():   # opt-in (DVDQ_GLUON=1): the Gluon kernels
        b = o.b if bias is not None else None
        # one scale per row whenever the group is all of K (the Triton plan runs a per-row scale over a K of one dot
        # block as one group, o.per_token False; the Gluon kernels' group path means groups of 128 columns)
        pt = o.ga == o.k
        # group 128: the warp-specialized cooperative kernel on its wide 128x192 tile (kernels/gluon_ws.py: the
        # fewest L2 bytes per MAC its registers allow); per-token, and what it does not take (fp32 output): the
        # single-warpgroup-pair kernel (kernels/gluon_qlinear.py), per-token on 256x128
        if not pt and GWS.supported(n, o.k, o.ga, o.expanded, out.dtype) is None:
            GWS.ws_qlinear(o.a, o.s, o.w, o.ws, b, out, pt, wide=True)
            return
        if GQL.supported(o.k, o.ga, o.expanded, n, out.dtype) is None:
            GQL.gluon_qlinear(o.a, o.s, o.w, o.ws, b, out, pt)
            return
    kernel, forced = with_config(_qlinear_kernel, config)
    kernel[gemm_grid(o.m, n)](
        o.a, o.s, o.w, o.ws, o.wz, o.b, out, o.m, n, o.k, m_bucket(o.m),
        o.a.stride(0), o.s.stride(0), o.w.stride(0), out.stride(0) if out.dim() == 2 else n,
        GROUP_K=o.ga, BLOCK_K=o.bk, PER_TOKEN=o.per_token, PACK=o.pack,
        HAS_BIAS=bias is not None, PARTIALS=partials, EXPANDED=o.expanded, **forced,
    )


def qlinear(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
            wzero: torch.Tensor, bias: torch.Tensor | None, wbits: int, out_dtype: torch.dtype,
            out: torch.Tensor | None = None, expand: bool | None = None,
            config: triton.Config | None = None) -> torch.Tensor:
    """Triton twin of :func:`quant.qlinear_ref`; returns ``y`` [..., N] in ``out_dtype`` (into ``out`` if given).

    ``expand``: run on int8-expanded weights (:func:`use_expanded`; None decides by M). Same numbers either way.
    ``config``: a ``triton.Config`` with BLOCK_M / BLOCK_N / GROUP_M to run instead of autotuning."""
    _check(codes, scales, packed, wscale, wzero, wbits)
    n = packed.shape[0]
    buf, res = output_buffer(codes.shape[:-1], n, out_dtype, codes.device, out)
    if buf.numel():
        _launch(codes, scales, packed, wscale, wzero, bias, wbits, buf, partials=False, expand=expand, config=config)
        if buf.data_ptr() != res.data_ptr():
            res.view(buf.shape).copy_(buf)
    return res


def qlinear_int_partials(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
                         wzero: torch.Tensor, wbits: int, expand: bool | None = None) -> torch.Tensor:
    """Debug path: the kernel's int32 partial sums ``P[m, n, g]`` [M, N, K/ga] (one block when per-token).

    Same tiles, unpack and dots as :func:`qlinear`; compare with ``quant.int_partials(codes, packed, wzero, wbits,
    block=ga)``.
    """
    _check(codes, scales, packed, wscale, wzero, wbits)
    k = codes.shape[-1]
    m = codes.numel() // k
    n = packed.shape[0]
    ga = k // scales.shape[-1]
    nb = 1 if capability.plan("qlinear", ga, k).per_token else k // ga
    out = torch.full((m, n, nb), -2**31, dtype=torch.int32, device=codes.device)  # poison: unwritten shows
    if m and n:
        _launch(codes, scales, packed, wscale, wzero, None, wbits, out, partials=True, expand=expand)
    return out
