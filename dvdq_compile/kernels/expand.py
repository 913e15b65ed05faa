"""Expand packed 3/4-bit weight codes to int8 ``q − z``, one Triton kernel: the operand of the int8-native GEMM.

Reference (docs/numerics.md §4, §6)::

    w8[n, k] = int8(unpack(packed)[n, k] − z[n])      # −15..15 for 4 bits, −7..7 for 3 bits: exact in int8

Why: unpacking nibbles inside the GEMM's K loop costs ~300 instructions per thread per 128-K step on sm_90 and keeps
the tensor cores idle most of the time (``bench/results/sass.md``). At large M the expansion is paid once per call
instead of once per output tile: ``N·K/2`` bytes read + ``N·K`` written, about 1% of a W4A8 GEMM's time at Wan
shapes (M = 32760), and the GEMM runs a pure int8 loop. The int8 copy is a temporary; the stored weight stays at 4
bits.

Cost: bytes ``1.5·N·K`` (+ ``4·N`` zero-points); integer ops ``3·N·K``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import capability


@triton.jit
def _expand_kernel(p_ptr, z_ptr, out_ptr, N, KH, stride_pn, stride_on,
                   BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kh = pid_k * BLOCK_KH + tl.arange(0, BLOCK_KH)
    mask = (offs_n < N)[:, None] & (offs_kh < KH)[None, :]
    p = tl.load(p_ptr + offs_n[:, None] * stride_pn + offs_kh[None, :], mask=mask, other=0)
    z = tl.load(z_ptr + offs_n, mask=offs_n < N, other=0).to(tl.int8)
    lo = (p & 0xF).to(tl.int8) - z[:, None]
    hi = (p >> 4).to(tl.int8) - z[:, None]
    w = tl.reshape(tl.join(lo, hi), (BLOCK_N, 2 * BLOCK_KH))   # low nibble = even k
    offs_k = pid_k * (2 * BLOCK_KH) + tl.arange(0, 2 * BLOCK_KH)
    omask = (offs_n < N)[:, None] & (offs_k < 2 * KH)[None, :]
    tl.store(out_ptr + offs_n[:, None] * stride_on + offs_k[None, :], w, mask=omask)


def expand_weight(packed: torch.Tensor, wzero: torch.Tensor, wbits: int, out: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """int8 ``q − z`` [N, K] from the nibble layout ``packed`` [N, K/2] and the per-row zero-points ``wzero``."""
    if wbits not in (3, 4) or capability.pack_factor(wbits) != 2:
        raise ValueError(f"expand_weight takes 3/4-bit nibble-packed weights, got {wbits} bits (8-bit codes minus "
                         "their zero-point do not fit int8)")
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed weight must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    n, kh = packed.shape
    if wzero.numel() != n:
        raise ValueError(f"{wzero.numel()} zero-points for {n} weight rows")
    if out is None:
        out = torch.empty((n, 2 * kh), dtype=torch.int8, device=packed.device)
    elif out.shape != (n, 2 * kh) or out.dtype != torch.int8 or out.stride(-1) != 1:
        raise ValueError(f"out must be int8 [{n}, {2 * kh}] with unit stride along K")
    if n == 0 or kh == 0:
        return out
    p = packed if packed.stride(-1) == 1 else packed.contiguous()
    z = wzero.reshape(-1).to(torch.int32).contiguous()
    bn, bkh = 32, 64
    _expand_kernel[(triton.cdiv(n, bn), triton.cdiv(kh, bkh))](p, z, out, n, kh, p.stride(0), out.stride(0),
                                                              BLOCK_N=bn, BLOCK_KH=bkh, num_warps=4)
    return out
