"""BGR: bounded-init grid refinement, the data-free weight quantizer of DVD-Quant (docs/algorithms.md §1).

Per row (or per row × K-group): try clipped ranges ``[lo + i·step, hi − i·step]`` (``step = range/n``), MinMax on
each, then alternate the closed-form least-squares updates

    Δ' = ⟨q−z, W⟩ / ⟨q−z, q−z⟩                       (Eq. 4)
    z' = clamp(round(mean(q) − mean(W)/Δ'), 0, qmax)   (Eq. 5)
    q' = clamp(round(W/Δ') + z', 0, qmax)              (Eq. 6)

until the error stops improving by ``rel_eps`` (or ``max_iter``), keeping the best state seen. The runnable fixes
Our fixes to the printed algorithm (docs/algorithms.md §1): candidate ``i = 0`` is plain MinMax, so BGR is never
worse than MinMax on any row; stop on
``E_prev − E_new ≤ rel_eps·E_prev``; a non-positive or non-finite Δ' falls back to the MinMax Δ; keep-best because
rounding z makes the alternation non-monotone. Codes always come from the **unclipped** W.

``max_shrink`` caps the total clipped fraction of the range (candidates ``i < max_shrink·n/2``); the printed
algorithm's ``i → n/2`` would shrink the range to nothing. Defaults n = 64, max_shrink = 0.9 (our choice, the
paper gives none): on Gaussian and Student-t rows (K = 1024) they reach the same error as n = 128 at a third of the
time (the refinement moves Δ continuously, so a coarse initial grid suffices). Cost per refinement step ≈ 10 flops per weight and candidate.
"""
from __future__ import annotations

import math

import torch

from .exact import div_exact
from .minmax import (
    TINY,
    as_rows,
    check_finite,
    codes_for,
    finish,
    minmax_rows,
    range_with_zero,
)

# Elements of one refinement batch. Rows are independent, so the chunking never changes a result, only the speed:
# on CPU a batch that stays in L2 (4 MB of fp32 per temporary) runs ~4x faster than a 64 MB one (a 1536x1536 weight:
# 32 s -> 8 s on 2 cores); a GPU wants large batches to fill its SMs.
CHUNK_ELEMS = {"cpu": 1 << 20, "cuda": 1 << 24}


def candidate_count(n: int, max_shrink: float) -> int:
    """Initial ranges searched per row: ``i < max_shrink·n/2`` (and ``< n/2``, where the bounds cross)."""
    if n < 2:
        raise ValueError(f"BGR needs n >= 2 candidate steps, got {n}")
    if not 0.0 <= max_shrink < 1.0:
        raise ValueError(f"BGR max_shrink must be in [0, 1), got {max_shrink}")
    return max(1, min(n // 2, math.ceil(max_shrink * n / 2)))


def bgr_rows(rows: torch.Tensor, bits: int = 4, n: int = 64, max_shrink: float = 0.9,
             rel_eps: float = 1e-4, max_iter: int = 64,
             chunk_elems: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (Δ, z) [R] fp32 minimising ``‖W − Δ(q − z)‖`` on each row of ``rows`` [R, L].

    All candidates of a chunk of rows are refined together as one [C·r, L] batch (candidate-major), so the Python
    loop runs ``max_iter`` times per chunk, not ``C × max_iter`` times; ``chunk_elems`` bounds that batch (default
    per device, ``CHUNK_ELEMS``).
    """
    if chunk_elems is None:
        chunk_elems = CHUNK_ELEMS.get(rows.device.type, 1 << 24)
    n_cand = candidate_count(n, max_shrink)
    r_all, length = rows.shape
    per = max(1, chunk_elems // max(1, n_cand * length))
    ds, zs = [], []
    for r0 in range(0, r_all, per):
        d, z = _bgr_chunk(rows[r0:r0 + per], bits, n, n_cand, rel_eps, max_iter)
        ds.append(d)
        zs.append(z)
    if not ds:
        return rows.new_empty(0), rows.new_empty(0)
    return torch.cat(ds), torch.cat(zs)


def _bgr_chunk(rows, bits, n, n_cand, rel_eps, max_iter):
    qmax = 2**bits - 1
    r = rows.shape[0]
    lo, hi = range_with_zero(rows)
    step = div_exact(hi - lo, n)
    i = torch.arange(n_cand, device=rows.device, dtype=rows.dtype)[:, None]  # candidate 0 = MinMax
    lo_i, hi_i = (lo + i * step).reshape(-1), (hi - i * step).reshape(-1)
    d = div_exact(hi_i - lo_i, qmax).clamp_min(TINY)
    z = torch.round(-lo_i / d).clamp_(0, qmax)
    w = rows.repeat(n_cand, 1)
    d_mm, _ = minmax_rows(rows, bits)
    best_e = torch.full_like(d, float("inf"))
    best_d, best_z = d.clone(), z.clone()
    _refine(w, w.mean(1), d, z, d_mm.repeat(n_cand), qmax, rel_eps, max_iter, best_e, best_d, best_z)
    pick = best_e.reshape(n_cand, r).argmin(0)  # first minimum: MinMax wins ties
    cols = torch.arange(r, device=rows.device)
    return best_d.reshape(n_cand, r)[pick, cols], best_z.reshape(n_cand, r)[pick, cols]


def _refine(rows, row_mean, d, z, d_mm, qmax, rel_eps, max_iter, best_e, best_d, best_z):
    """Alternating LS refinement from per-row (d, z); updates best_* in place for rows that improve.

    Converged rows drop out of the batch (compaction by one index_select per tensor: boolean indexing ran a
    nonzero per tensor and cost a third of the time), so late iterations only touch the rows still improving.
    ``c = q − z`` of an iteration serves both its error and the next Δ' update."""
    idx = torch.arange(rows.shape[0], device=rows.device)
    w, wm, dmm = rows, row_mean, d_mm
    q = codes_for(w, d, z, qmax)
    c, q_mean = q - z[:, None], q.mean(1)
    del q
    e = _error(w, c, d)
    _keep(idx, e, d, z, best_e, best_d, best_z)
    for _ in range(max_iter):
        d2 = (c * w).sum(1) / (c * c).sum(1).clamp_min(TINY)
        d2 = torch.where((d2 > 0) & torch.isfinite(d2), d2, dmm)
        z2 = torch.round(q_mean - wm / d2).clamp_(0, qmax)
        q2 = codes_for(w, d2, z2, qmax)
        c2 = q2 - z2[:, None]
        e2 = _error(w, c2, d2)
        _keep(idx, e2, d2, z2, best_e, best_d, best_z)
        go = (e - e2) > rel_eps * e  # strictly improving rows keep iterating
        n_go = int(go.sum())
        if n_go == 0:
            break
        q_mean = q2.mean(1)
        if n_go < go.numel():
            sel = go.nonzero().squeeze(1)
            idx, w, wm, dmm = idx[sel], w.index_select(0, sel), wm[sel], dmm[sel]
            d2, e2, c2, q_mean = d2[sel], e2[sel], c2.index_select(0, sel), q_mean[sel]
        e, c = e2, c2


def _error(w, c, d):
    """Per-row ``‖W − Δ·c‖²`` with ``c = q − z`` (squared Frobenius; monotone in the norm)."""
    t = d[:, None] * c
    return torch.sub(w, t, out=t).square_().sum(1)


def _keep(idx, e, d, z, best_e, best_d, best_z):
    better = e < best_e[idx]
    if bool(better.any()):
        sel = idx[better]
        best_e[sel], best_d[sel], best_z[sel] = e[better], d[better], z[better]


def bgr(w: torch.Tensor, bits: int = 4, group: int | None = None, rows_fn=None, **kw):
    """BGR quantization of ``w`` [N, K]. Returns ``(codes uint8 [N, K], scale fp32 [N, G], zero int32 [N, G])``.

    ``rows_fn`` solves the rows (default :func:`bgr_rows`; ``kernels.bgr.bgr_rows`` is its Triton twin)."""
    check_finite(w)
    rows = as_rows(w, group)
    d, z = (rows_fn or bgr_rows)(rows, bits, **kw)
    return finish(w.shape, rows, d, z, bits)
