"""Division by a constant that rounds once (IEEE) on every device.

PyTorch's CUDA division by a Python (CPU) scalar multiplies by the scalar's reciprocal instead (``a · (1/b)``, which
can differ from ``a / b`` in the last bit); its CPU division divides. The reference in this package is the
specification the kernels are tested against bit for bit, so it must not depend on the device: measured on an
H200, ``quantize_act`` on CUDA tensors gave scales ``absmax · (1/127)`` while the kernels (and the CPU reference)
give ``absmax / 127``, and codes near a rounding tie flipped. A divisor on the dividend's device takes the true
division path everywhere.
"""
from __future__ import annotations

import torch


def div_exact(t: torch.Tensor, v: float) -> torch.Tensor:
    """``t / v`` correctly rounded in ``t``'s dtype, on any device."""
    return t / torch.full((), v, dtype=t.dtype, device=t.device)
