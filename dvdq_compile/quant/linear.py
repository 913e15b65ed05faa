"""The reference quantized linear, with the exact integer semantics of docs/numerics.md §6.

    y[m, n] = Δ[n] · Σ_g s[m, g] · Σ_{k∈g} xq[m, k] · (q[n, k] − z[n])  + bias[n]

int32-exact inside a group, fp32 across groups (in group order), output in ``out_dtype``. With group-wise weight
scales (``Δ[n, h]``, one per K-group ``h`` of the weight), the promotion block is the finer of the two groupings and
``Δ`` moves inside the sum. FLOPs ``2·M·N·K``; bytes ``M·K`` (codes) + ``N·K·b/8`` (weights) + ``out·M·N``.

The integer partial sums are computed with a float matmul, which is exact while every partial sum stays below
2^24 (fp32) or 2^53 (fp64): ``_exact_dtype`` picks the narrowest exact type from the worst-case bound.
"""
from __future__ import annotations

import torch

from .minmax import dequantize
from .pack import unpack


def _centered_weight(packed: torch.Tensor, zero: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    q = unpack(packed, bits)
    if q.shape[1] != k:
        raise ValueError(f"packed weight holds K={q.shape[1]} codes per row but activations have K={k}")
    n, g = zero.shape
    qc = q.to(torch.int32).reshape(n, g, k // g) - zero[..., None].to(torch.int32)
    return qc.reshape(n, k)


def _exact_dtype(bound: int, device: torch.device) -> torch.dtype:
    fp32_exact = bound < 2**24 and torch.get_float32_matmul_precision() == "highest"
    if device.type == "cuda":
        fp32_exact = fp32_exact and not torch.backends.cuda.matmul.allow_tf32
    return torch.float32 if fp32_exact else torch.float64


def _block(act_group: int, w_group: int) -> int:
    lo, hi = min(act_group, w_group), max(act_group, w_group)
    if hi % lo:
        raise ValueError(f"activation group {act_group} and weight group {w_group} must divide one another")
    return lo


def int_partials(codes: torch.Tensor, packed: torch.Tensor, zero: torch.Tensor, bits: int,
                 block: int) -> torch.Tensor:
    """Integer partial sums ``P[m, n, b] = Σ_{k∈b} xq[m,k]·(q[n,k] − z[n])`` as int32 [M, N, K/block]."""
    k = codes.shape[-1]
    x = codes.reshape(-1, k)
    wc = _centered_weight(packed, zero, bits, k)
    bound = 127 * (2**bits - 1) * block
    dt = _exact_dtype(bound, x.device)
    xb = x.to(dt).reshape(x.shape[0], k // block, block).transpose(0, 1)   # [B, M, blk]
    wb = wc.to(dt).reshape(wc.shape[0], k // block, block).permute(1, 2, 0)  # [B, blk, N]
    return torch.bmm(xb, wb).permute(1, 2, 0).round().to(torch.int32)


def qlinear_ref(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
                wzero: torch.Tensor, bias: torch.Tensor | None, wbits: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Quantized linear on activation codes [..., K] int8 / scales [..., K/ga] and packed weights [N, ·].

    ``wscale`` fp32 / ``wzero`` int32 are [N, Gw] (Gw = 1: per row). Returns [..., N] in ``out_dtype``.
    """
    k = codes.shape[-1]
    lead = codes.shape[:-1]
    n, gw = wscale.shape
    ga = scales.shape[-1]
    blk = _block(k // ga, k // gw)
    x = codes.reshape(-1, k)
    s = scales.reshape(-1, ga).to(torch.float32)
    wc = _centered_weight(packed, wzero, wbits, k)
    dt = _exact_dtype(127 * (2**wbits - 1) * blk, x.device)
    acc = torch.zeros(x.shape[0], n, dtype=torch.float32, device=x.device)
    per_row = gw == 1
    for b in range(k // blk):
        sl = slice(b * blk, (b + 1) * blk)
        part = (x[:, sl].to(dt) @ wc[:, sl].to(dt).T).to(torch.float32)  # exact integers
        a_scale = s[:, b * blk // (k // ga)][:, None]
        if per_row:
            acc += a_scale * part
        else:
            acc += a_scale * (wscale[:, b * blk // (k // gw)][None, :] * part)
    if per_row:
        acc = acc * wscale[:, 0][None, :]
    if bias is not None:
        acc = acc + bias.to(torch.float32)
    return acc.to(out_dtype).reshape(*lead, n)


def dequant_linear_ref(x: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor, wzero: torch.Tensor,
                       bias: torch.Tensor | None, wbits: int) -> torch.Tensor:
    """fp32 ``x · Ŵᵀ + bias`` with the dequantized weight (weight-only and fake-quant paths). Output fp32."""
    k = x.shape[-1]
    w = dequantize(unpack(packed, wbits)[:, :k], wscale, wzero)
    y = x.to(torch.float32) @ w.T
    return y if bias is None else y + bias.to(torch.float32)
