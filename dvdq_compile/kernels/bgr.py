"""BGR weight quantization in one Triton kernel: one program per row, the row on chip for the whole search.

Reference: :func:`dvdq_compile.quant.bgr_rows` (the specification; docs/algorithms.md §1). Per row ``w`` [L] and candidate
``i`` (``lo_i = lo + i·step``, ``hi_i = hi − i·step``, candidate 0 = MinMax) the alternating refinement

    q = clamp(round(w/Δ) + z, 0, qmax);  E = Σ (w − Δ(q − z))²
    Δ' = Σ (q−z)w / Σ (q−z)²  (MinMax Δ if not > 0);  z' = clamp(round(mean q − mean w / Δ'), 0, qmax)

runs until ``E_prev − E ≤ rel_eps·E_prev`` or ``max_iter`` updates, keeping the best (Δ, z) seen; the first
candidate with the lowest error wins. The same states are evaluated as in the reference; one pass over the row per
state gives its error and the sums of the next update.

Why a kernel: the PyTorch reference is memory-bound (~15 elementwise passes over a ``candidates × rows × L`` batch
per iteration; ~1 min for Wan 2.1-1.3B's 1.39 B weights on an H200 by that count). Here each weight is read from
HBM once (the row stays in registers: ``L <= 16384``); the work is ``≈ 12·L`` FLOPs per state and
``n_cand × (iterations + 1)`` states per row: ~30 × 30 × 12 ≈ 1e4 FLOPs per weight, ~1e13 for that model, compute
bound at a fraction of a second of fp32 peak (not measured yet: no GPU).

Numerics: sums are tree reductions (the reference sums in torch's order), so Δ can differ in the last bits and a
near-tie code or keep-best decision can go the other way: per-row errors match the reference to ~1e-6 relative on
Gaussian rows and within 1e-4 on at least 95% of rows of any kind (tests/kernels/test_bgr.py), and candidate 0
is MinMax's exact state, so no row is worse than MinMax.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.bgr import candidate_count
from ..quant.minmax import TINY
from .tl_common import USE_RINT, next_pow2, round_half_even

# One row in registers: 16K fp32 over 16 warps, 128 registers per thread and no spill on sm_90 (aot_sm90.py; 32K
# spilled 424 B). Covers every K of Wan 2.1 (<= 13824) and HunyuanVideo (<= 15360); longer rows use the reference.
MAX_L = 1 << 14
INF = tl.constexpr(float("inf"))


@triton.jit
def _state(w, mask, d, z, QMAX: tl.constexpr, USE_RINT: tl.constexpr):
    """Error of (d, z) on the row and the sums of the next update: (E, Σcw, Σcc, Σq) with c = q − z."""
    q = round_half_even(tl.math.div_rn(w, d), USE_RINT) + z
    q = tl.minimum(tl.maximum(q, 0.0), QMAX)
    q = tl.where(mask, q, 0.0)
    c = tl.where(mask, q - z, 0.0)
    r = w - d * c
    return tl.sum(r * r), tl.sum(c * w), tl.sum(c * c), tl.sum(q)


@triton.jit
def _bgr_kernel(w_ptr, d_ptr, z_ptr, L, stride_r, N_CAND, N_STEPS, MAX_ITER, rel_eps,
                QMAX: tl.constexpr, TINY: tl.constexpr, BLOCK: tl.constexpr, USE_RINT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < L
    w = tl.load(w_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
    # every division IEEE (div_rn), as torch computes it: the reference's MinMax state exactly
    lf = tl.sum(tl.where(mask, 1.0, 0.0))
    qm = lf * 0.0 + QMAX
    lo = tl.minimum(tl.min(tl.where(mask, w, INF)), 0.0)
    hi = tl.maximum(tl.max(tl.where(mask, w, -INF)), 0.0)
    wm = tl.math.div_rn(tl.sum(w), lf)
    step = tl.math.div_rn(hi - lo, lf * 0.0 + N_STEPS)
    d_mm = tl.maximum(tl.math.div_rn(hi - lo, qm), TINY)
    best_e = lf * 0.0 + INF
    best_d = d_mm
    best_z = lf * 0.0
    for i in range(0, N_CAND):
        lo_i = lo + i * step
        hi_i = hi - i * step
        d = tl.maximum(tl.math.div_rn(hi_i - lo_i, qm), TINY)
        z = tl.minimum(tl.maximum(round_half_even(tl.math.div_rn(-lo_i, d), USE_RINT), 0.0), QMAX)
        e, s_cw, s_cc, s_q = _state(w, mask, d, z, QMAX, USE_RINT)
        better = e < best_e
        best_e = tl.where(better, e, best_e)
        best_d = tl.where(better, d, best_d)
        best_z = tl.where(better, z, best_z)
        it = 0
        go = MAX_ITER > 0
        while go:
            d2 = tl.math.div_rn(s_cw, tl.maximum(s_cc, TINY))
            d2 = tl.where((d2 > 0.0) & ((d2 - d2) == 0.0), d2, d_mm)
            z2 = round_half_even(tl.math.div_rn(s_q, lf) - tl.math.div_rn(wm, d2), USE_RINT)
            z2 = tl.minimum(tl.maximum(z2, 0.0), QMAX)
            e2, s_cw, s_cc, s_q = _state(w, mask, d2, z2, QMAX, USE_RINT)
            better = e2 < best_e
            best_e = tl.where(better, e2, best_e)
            best_d = tl.where(better, d2, best_d)
            best_z = tl.where(better, z2, best_z)
            it += 1
            go = ((e - e2) > rel_eps * e) & (it < MAX_ITER)
            e = e2
    tl.store(d_ptr + row, best_d)
    tl.store(z_ptr + row, best_z)


def supports(length: int) -> bool:
    return 1 <= length <= MAX_L


def bgr_rows(rows: torch.Tensor, bits: int = 4, n: int = 64, max_shrink: float = 0.9, rel_eps: float = 1e-4,
             max_iter: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`quant.bgr_rows`: per-row (Δ, z) [R] fp32 for ``rows`` [R, L] (L <= 16384)."""
    n_cand = candidate_count(n, max_shrink)
    if rows.dim() != 2 or not supports(rows.shape[1]):
        raise ValueError(f"Triton BGR takes rows [R, L] with 1 <= L <= {MAX_L}, got shape {tuple(rows.shape)}")
    r, length = rows.shape
    w = rows if rows.stride(-1) == 1 else rows.contiguous()
    d = torch.empty(r, dtype=torch.float32, device=rows.device)
    z = torch.empty(r, dtype=torch.float32, device=rows.device)
    if r == 0:
        return d, z
    block = max(16, next_pow2(length))
    warps = min(16, max(1, block // 1024))
    _bgr_kernel[(r,)](w, d, z, length, w.stride(0), n_cand, n, max_iter, float(rel_eps),
                      QMAX=2**bits - 1, TINY=TINY, BLOCK=block, USE_RINT=USE_RINT, num_warps=warps)
    return d, z

