"""The producer of the FFN-down's activation in a DiT: the FFN-up linear → GELU.

Specification of ``dvdq::qlinear_gelu_quant`` (docs/numerics.md §5)::

    y = qlinear_ref(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype)   # the FFN-up output
    a = F.gelu(y, approximate=approximate)                                         # the graph's op on y
    codes2, scales2 = quantize_act(a, bits, group, rotate, sign_seed)

Every diffusers video FFN is ``linear → GELU (tanh) → dropout(p=0) → linear``. A kernel that applies GELU, the
rotation and the quantizer to the FFN-up GEMM's output tile writes the FFN-down's codes instead of the 16-bit ``y``
and ``a`` (``kernels/gelu_quant.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .act import quantize_act
from .hadamard import NO_SIGNS
from .linear import qlinear_ref


def gelu_quant_ref(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
                   wzero: torch.Tensor, bias: torch.Tensor | None, wbits: int, out_dtype: torch.dtype,
                   approximate: str, bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS):
    """``quantize_act(F.gelu(qlinear_ref(...), approximate), bits, group, rotate, sign_seed)``: the graph's own ops
    in its order (codes int8 [..., N], scales fp32 [..., N/group])."""
    y = qlinear_ref(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype)
    return quantize_act(F.gelu(y, approximate=approximate), bits, group, rotate, sign_seed)
