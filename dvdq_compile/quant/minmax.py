"""MinMax (RTN) asymmetric weight quantizer, per output row (or per row × K-group).

``Δ = (hi − lo)/(2^b − 1)``, ``z = round(−lo/Δ)``, ``q = clamp(round(W/Δ) + z, 0, 2^b − 1)``, ``Ŵ = Δ(q − z)``
(docs/algorithms.md §1, docs/numerics.md §3). ``lo``/``hi`` are the row min/max **extended to include 0**: without
it a row whose
values are all positive gets ``z < 0``, which the ``[0, 2^b−1]`` clamp breaks, and an all-zero row would need
``Δ = 0``. With 0 inside the range, ``z`` always lies in ``[0, 2^b−1]`` and a zero row quantizes exactly.
"""
from __future__ import annotations

import torch

from .exact import div_exact

TINY = 1e-12


def as_rows(w: torch.Tensor, group: int | None) -> torch.Tensor:
    """[N, K] -> [N·G, group] fp32 rows (group None/0/K: one row per output channel)."""
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"cannot quantize an empty weight of shape {tuple(w.shape)}")
    n, k = w.shape
    if not group or group == k:
        return w.to(torch.float32)
    if k % group:
        raise ValueError(f"weight group {group} does not divide K={k}")
    return w.to(torch.float32).reshape(n * (k // group), group)


def check_finite(w: torch.Tensor, what: str = "weight") -> None:
    if not torch.isfinite(w).all():
        raise ValueError(f"{what} contains NaN or Inf; cannot quantize it")


def range_with_zero(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rows.amin(1).clamp(max=0.0), rows.amax(1).clamp(min=0.0)


def codes_for(rows: torch.Tensor, d: torch.Tensor, z: torch.Tensor, qmax: int) -> torch.Tensor:
    """``clamp(round(W/Δ) + z, 0, qmax)`` as fp32 (round half to even)."""
    q = rows / d[:, None]
    return q.round_().add_(z[:, None]).clamp_(0, qmax)  # in place: one temporary, not three


def minmax_rows(rows: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (Δ, z) as fp32 tensors of shape [R]."""
    qmax = 2**bits - 1
    lo, hi = range_with_zero(rows)
    d = div_exact(hi - lo, qmax).clamp_min(TINY)
    z = torch.round(-lo / d).clamp_(0, qmax)
    return d, z


def minmax(w: torch.Tensor, bits: int = 4, group: int | None = None):
    """MinMax quantization of ``w`` [N, K]. Returns ``(codes uint8 [N, K], scale fp32 [N, G], zero int32 [N, G])``."""
    check_finite(w)
    rows = as_rows(w, group)
    d, z = minmax_rows(rows, bits)
    return finish(w.shape, rows, d, z, bits)


def finish(shape, rows, d, z, bits):
    n, k = shape
    q = codes_for(rows, d, z, 2**bits - 1)
    g = rows.shape[0] // n
    return q.to(torch.uint8).reshape(n, k), d.reshape(n, g), z.to(torch.int32).reshape(n, g)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``Δ(q − z)`` in fp32 for codes [N, K] with scale/zero [N, G] (G weight groups along K)."""
    n, k = codes.shape
    g = scale.shape[1]
    q = codes.to(torch.float32).reshape(n, g, k // g)
    return (scale[..., None] * (q - zero[..., None].to(torch.float32))).reshape(n, k)
