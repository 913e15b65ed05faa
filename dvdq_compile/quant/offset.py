"""A weight quantized with a learned pre-quantization offset on its own MinMax grid (Q-VDiT's TQE,
docs/algorithms.md §8).

    (Δ, z) = MinMax(W) per output row              the grid comes from the weight itself, not from W'
    W'     = W + (B A)ᵀ                            B [K, r], A [r, N]: the learned low-rank offset
    codes  = clamp(round(W'/Δ) + z, 0, 2^b − 1)    round half to even, as every other quantizer here

So training (fake-quant with a straight-through round), the eager integer reference (``qvdit.tqe.TQELinear``) and the
backend's weight source (``runtime/extras.py``) all call these two functions and get the same codes bit for bit.
With no offset the result is plain per-row MinMax (RTN), identical to ``quantize_weight`` with
``WeightSpec(method="minmax", rotate=0)``.
"""
from __future__ import annotations

import torch

from .minmax import codes_for, minmax
from .pack import pack


def shifted(w: torch.Tensor, lora_B: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
    """``W + (B A)ᵀ`` in fp32 [N, K]."""
    return w.float() + (lora_B.float() @ lora_A.float()).T


def offset_qweight(w: torch.Tensor, lora_B: torch.Tensor | None, lora_A: torch.Tensor | None,
                   bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(packed, scale [N, 1] fp32, zero [N, 1] int32)`` in kernel layout (what ``qlinear`` / ``dq_linear`` take)
    for ``w`` [N, K] shifted by ``(lora_B @ lora_A)ᵀ`` before rounding; ``lora_B`` None: no offset."""
    if w.dim() != 2:
        raise ValueError(f"offset_qweight: weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    if lora_B is not None and (lora_A is None or lora_B.shape[0] != k or lora_A.shape[1] != n
                               or lora_B.shape[1] != lora_A.shape[0]):
        raise ValueError(f"offset_qweight: offset factors B {tuple(lora_B.shape)} and A "
                         f"{None if lora_A is None else tuple(lora_A.shape)} do not fit a weight [{n}, {k}] "
                         "(expected B [K, r], A [r, N])")
    wf = w.detach().float()
    _, scale, zero = minmax(wf, bits)
    target = wf if lora_B is None else shifted(wf, lora_B.to(wf.device), lora_A.to(wf.device))
    codes = codes_for(target, scale[:, 0], zero[:, 0].float(), 2**bits - 1).to(torch.uint8)
    return pack(codes, bits), scale, zero
