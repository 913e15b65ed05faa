"""The producer of most quantized activations in a video DiT: layer norm (no affine) → adaLN modulation → cast.

Specification of ``dvdq::norm_act_quant`` (docs/numerics.md §5)::

    y = (layer_norm(x.float(), eps) · mult + shift).to(out_dtype)      # mult, shift broadcast to x, fp32 math
    codes, scales = quantize_act(y, bits, group, rotate, sign_seed)

Wan, HunyuanVideo, LTX and CogVideoX write ``norm(x) * (1 + scale) + shift`` in fp32 and cast back before q/k/v or
the FFN: ``mult`` is the ``1 + scale`` tensor of the graph. A kernel that does all of this in one pass writes int8
codes instead of the 16-bit ``y`` and reads ``x`` instead of ``y`` (``kernels/norm_quant.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def norm_modulate(x: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, eps: float,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """``(layer_norm(x.float(), eps) · mult + shift).to(out_dtype)``: the graph's own ops, in its order."""
    n = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)
    return (n * mult + shift).to(out_dtype)
