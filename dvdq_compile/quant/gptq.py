"""GPTQ (Frantar et al. 2022; docs/algorithms.md §7.2): weight quantization that compensates each column's rounding
error on the columns not yet quantized, using the layer's input Hessian ``H = XᵀX``.

Reference semantics (``IST-DASLab/gptq`` ``fasterquant``), with these choices:

- Dead input channels (``diag(H) == 0``: the channel never fired during calibration) get ``H[j, j] = 1`` and a
  zero weight column, as in the reference: nothing measured says what they should be.
- Damping ``λ = damp · mean(diag H)`` on the diagonal; when a Cholesky factorisation fails (H rank-deficient,
  fp noise) λ is multiplied by 10 and retried, up to ``max_damp_tries`` times, then a ``ValueError`` names the
  shape and the last λ.
- Scales are MinMax asymmetric (range extended to include 0, as ``quant.minmax``) so codes, scales and zeros
  are in the kernel layout (docs/numerics.md §3, §4). Per row (``group=0``): fitted once on the original weight.
  Group-wise:
  refitted on the *current* (error-updated) columns when a group starts; ``block`` must be a multiple of
  ``group`` so a group never straddles a lazy block update.
- ``act_order`` quantizes columns by decreasing ``diag(H)`` (the reference's heuristic) and un-permutes the
  result. With groups, the kernel needs contiguous K-groups, so act_order uses *static* groups (fitted on the
  original weight before any update: the reference's ``static_groups=True``).
- Everything runs in fp64 on the weight's device; codes are computed with the same fp32 ops as ``minmax``, so
  with ``H = I`` (no error propagation) the result equals MinMax RTN bit for bit. Deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .minmax import check_finite, codes_for, minmax_rows


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group: int = 64  # 0: one scale per output row
    block: int = 128
    damp: float = 0.01
    act_order: bool = False
    max_damp_tries: int = 8

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"GPTQ bits must be one of (2, 3, 4, 8), got {self.bits}")
        if self.group < 0 or self.block < 1:
            raise ValueError(f"GPTQ group must be >= 0 and block >= 1, got group={self.group} block={self.block}")
        if self.group and self.block % self.group:
            raise ValueError(f"GPTQ block {self.block} must be a multiple of group {self.group}")
        if not self.damp > 0 or self.max_damp_tries < 1:
            raise ValueError(f"GPTQ damp must be > 0 and max_damp_tries >= 1, got {self.damp}, {self.max_damp_tries}")


def _inverse_cholesky(h: torch.Tensor, cfg: GPTQConfig) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, raising λ ×10 per failed try."""
    k = h.shape[0]
    diag = torch.diagonal(h)
    lam = cfg.damp * float(diag.mean())
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    for _ in range(cfg.max_damp_tries):
        hl, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            u, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(hl), upper=True)
            if int(info) == 0 and torch.isfinite(u).all():
                return u
        lam *= 10.0
    raise ValueError(f"GPTQ: the Hessian [{k}, {k}] is not positive definite even with damping {lam / 10:g} "
                     f"after {cfg.max_damp_tries} tries (damp={cfg.damp}); check the calibration statistics")


def gptq(w: torch.Tensor, h: torch.Tensor, cfg: GPTQConfig = GPTQConfig()):
    """GPTQ-quantize ``w`` [N, K] with Hessian ``h`` [K, K] (any positive multiple of ``XᵀX``).

    Returns ``(codes uint8 [N, K], scale fp32 [N, G], zero int32 [N, G])``, G = K/group (1 per row), in the layout of
    ``quant.minmax.minmax`` (so ``quant.minmax.dequantize`` gives Ŵ).
    """
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(f"GPTQ: weight must be a non-empty 2-D [N, K] tensor, got shape {tuple(w.shape)}")
    n, k = w.shape
    if h.shape != (k, k):
        raise ValueError(f"GPTQ: Hessian shape {tuple(h.shape)} does not match the weight's K={k} (want [{k}, {k}])")
    if cfg.group and k % cfg.group:
        raise ValueError(f"GPTQ: weight group {cfg.group} does not divide K={k}")
    check_finite(w)
    check_finite(h, "GPTQ Hessian")
    qmax = 2**cfg.bits - 1
    g = cfg.group or k
    ng = k // g
    w32 = w.detach().to(torch.float32)
    h = h.detach().to(device=w.device, dtype=torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    W = w32.to(torch.float64).clone()
    W[:, dead] = 0.0

    scale = torch.zeros(n, ng, dtype=torch.float32, device=w.device)
    zero = torch.zeros(n, ng, dtype=torch.float32, device=w.device)
    static = cfg.group == 0 or cfg.act_order
    if static:  # fitted once on the (dead-zeroed) original weight
        rows = W.to(torch.float32).reshape(n * ng, g)
        d, z = minmax_rows(rows, cfg.bits)
        scale.copy_(d.reshape(n, ng))
        zero.copy_(z.reshape(n, ng))

    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if cfg.act_order else None
    if perm is not None:
        W = W[:, perm]
        h = h[perm][:, perm]
    col_group = (perm if perm is not None else torch.arange(k, device=w.device)) // g
    u = _inverse_cholesky(h, cfg)
    Q = torch.zeros(n, k, dtype=torch.float32, device=w.device)
    for i1 in range(0, k, cfg.block):
        i2 = min(i1 + cfg.block, k)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            col = i1 + j
            gi = int(col_group[col])
            if not static and col % g == 0:  # refit on the columns as updated so far
                d, z = minmax_rows(W1[:, j:j + g].to(torch.float32), cfg.bits)
                scale[:, gi], zero[:, gi] = d, z
            d, z = scale[:, gi], zero[:, gi]
            wc = W1[:, j].to(torch.float32)
            q = codes_for(wc[:, None], d, z, qmax)[:, 0]
            Q[:, col] = q
            deq = (d * (q - z)).to(torch.float64)
            err = (W1[:, j] - deq) / u[col, col]
            W1[:, j + 1:] -= err[:, None] * u[col, col + 1:i2][None, :]
            E1[:, j] = err
        W[:, i2:] -= E1 @ u[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.uint8), scale, zero.to(torch.int32)
