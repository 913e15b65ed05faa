"""The producer of to_out's input: attention, its heads merged back into the channels.

Specification of ``dvdq::attn_act_quant`` (docs/numerics.md §5)::

    o = softmax(q · kᵀ · scale) · v                    # [B, H, Sq, D], fp32 scores, softmax and sums
    a = o.transpose(1, 2).flatten(2).to(out_dtype)     # [B, Sq, H·D]: what diffusers' processors hand to to_out
    codes, scales = quantize_act(a, bits, group, rotate, sign_seed)

``scale`` None means ``1/sqrt(D)``, as in ``F.scaled_dot_product_attention``. Quantized as written, the attention
kernel writes the 16-bit ``a``, ``act_quant`` reads it and writes codes, to_out's GEMM reads the codes; a kernel that
quantizes in its epilogue writes only codes and scales (``kernels/attn_quant.py``). A group is a slice of one head's
channels (``group`` divides ``D``), so one attention output tile holds whole groups and whole Hadamard blocks.

The fp32 attention is what a flash kernel computes from fp32 inputs; from 16-bit inputs flash kernels (and this
project's) round the probabilities to 16 bits before the ``P · V`` product, which the tests bound.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .act import quantize_act
from .hadamard import NO_SIGNS


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q·kᵀ·scale)·v`` in fp32, [B, H, Sq, D] from q [B, H, Sq, D] and k, v [B, H, Skv, D]."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale)


def attn_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
             out_dtype: torch.dtype) -> torch.Tensor:
    """The attention with its heads merged: [B, Sq, H·D] in ``out_dtype``."""
    return attention(q, k, v, scale).transpose(1, 2).flatten(2).to(out_dtype)


def attn_quant_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, out_dtype: torch.dtype,
                   bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS):
    """``(codes int8 [B, Sq, H·D], scales fp32 [B, Sq, H·D/group])``: the module docstring's specification."""
    return quantize_act(attn_out(q, k, v, scale, out_dtype), bits, group, rotate, sign_seed)
