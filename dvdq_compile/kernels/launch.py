"""Public launchers for the dvdq Triton kernels (what ``dvdq_compile.ops`` calls with ``impl="triton"``).

Importing this module imports triton at the top, so ``ImportError`` means "no triton" (``dispatch.kernels_ready``).
Set ``TRITON_INTERPRET=1`` before triton is first imported to run the kernels on CPU tensors (docs/architecture.md §8).

One op per file:

- :mod:`.act_quant`  rotate + per-(token, group) quantize: ``act_quant(x, bits, group, rotate, sign_seed)``
- :mod:`.qlinear`    int GEMM + dequant epilogue: ``qlinear(codes, scales, packed, wscale, wzero, bias, wbits,
  out_dtype)``; debug ``qlinear_int_partials``
- :mod:`.fused`      both in one launch: ``fused_qlinear(x, packed, wscale, wzero, bias, wbits, abits, group,
  rotate, sign_seed)``
- :mod:`.bgr`        BGR weight search, one program per row (used by ``quant.quantize_weight`` on CUDA;
  weight quantization, not a graph op)
- :mod:`.capability` which cases each kernel runs (``unsupported_reason(op, ...)``) and their launch plans
- :mod:`.tl_common`  the ``@triton.jit`` helpers the kernels share, and host helpers
- :mod:`.variant`    ``choose_variant(M, N, K, abits, device)`` from ``table.json``
- :mod:`.cost`       FLOPs/bytes as sympy expressions

Numerics (docs/numerics.md §6, §10): integer partial sums exact, outputs equal to ``quant.qlinear_ref`` up to fp32 summation
order (bit-equal in the interpreter), codes/scales bit-exact without rotation.
"""
from __future__ import annotations

import triton  # noqa: F401  (ImportError here = no triton)

from . import capability
from .act_quant import act_quant
from .fused import fused_qlinear
from .qlinear import qlinear, qlinear_int_partials
from .tl_common import INTERPRET
from .variant import VARIANTS, choose_variant

__all__ = ["INTERPRET", "act_quant", "choose_variant", "fused_qlinear", "qlinear", "qlinear_int_partials",
           "supports", "supports_act_quant", "unsupported_reason"]


def unsupported_reason(wbits: int, wscale_shape, act_group: int, K: int, rotate: int = 0,
                       variant: str = "split") -> str | None:
    """Why the Triton path cannot run this linear (``None``: it can).

    ``variant="split"``: ``act_quant`` + ``qlinear``; ``"fused"``: ``fused_qlinear``. ``act_group`` is the
    activation scale group (``K`` for a per-token scale); ``rotate`` the Hadamard block (0: none).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "fused":
        return capability.unsupported_reason("fused_qlinear", wbits, wscale_shape, act_group, K, rotate)
    why = capability.unsupported_reason("qlinear", wbits, wscale_shape, act_group, K)
    if why is None and not supports_act_quant(act_group, rotate, K):
        why = (f"act_quant: group {act_group} with Hadamard block {rotate} (K={K}) is not a kernel case "
               f"(power-of-two group/block <= 256, block >= 16, or group == K)")
    return why


def supports(wbits: int, wscale_shape, act_group: int, K: int, rotate: int = 0, variant: str = "split") -> bool:
    """True when the Triton kernels run this linear; else fall back to the reference (see ``unsupported_reason``).

    Supported: weight bits 3/4 (nibble layout) or 8 (one code per byte), per-row weight scale/zero
    (``wscale_shape == (N, 1)``), activation group a power of two >= 32 or ``K`` (per-token, K a multiple of 32)
    small enough that the int32 group partial sum cannot overflow, Hadamard block 0 or a power of two in
    [16, 256] dividing K (fused: also dividing the group). The cases are :mod:`.capability`'s.
    """
    return unsupported_reason(wbits, wscale_shape, act_group, K, rotate, variant) is None


def supports_act_quant(group: int, rotate: int, k: int) -> bool:
    """True when :func:`act_quant` runs this (group, Hadamard block, K)."""
    return capability.unsupported_reason("act_quant", None, None, group, k, rotate) is None
