"""ARQ activation quantizers (docs/algorithms.md §2).

Kernel contract (docs/numerics.md §5): rotate ``x̃ = x·H_bd`` (block ``rotate``), then symmetric codes in
``[−qmax, qmax]`` (``qmax = 2^(b−1) − 1``: 7 for A4, 127 for A8) with one fp32 scale ``s = absmax/qmax`` per
(token, K-group of size ``group``). Round half to even. An all-zero group gets scale 0 and codes 0 (never a NaN). A NaN/Inf in a group
makes that group's scale NaN/Inf (codes there are 0), so the token's output is non-finite as in full precision.

Bytes: reads ``M·K`` inputs, writes ``M·K`` int8 codes + ``4·M·K/group`` scale bytes.

``fake_quant_per_channel`` is the paper-literal Λ mode (one scale per input channel over the tokens of each batch
element), a fake-quant for ablations only: per-channel scales cannot be factored out of an integer dot product.
"""
from __future__ import annotations

import torch

from .exact import div_exact
from .hadamard import NO_SIGNS
from .hadamard import rotate as _rotate

ACT_BITS = (3, 4, 5, 6, 7, 8)


def qmax_for(bits: int) -> int:
    if bits not in ACT_BITS:
        raise ValueError(f"activation bits must be one of {ACT_BITS}, got {bits}")
    return 2 ** (bits - 1) - 1


def _prepare(x: torch.Tensor, rotate: int, sign_seed: int) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"activation must be a floating-point tensor, got dtype {x.dtype}")
    return _rotate(x, rotate, sign_seed) if rotate else x.to(torch.float32)


def clip_value(clip, where: str = "act_quant") -> torch.Tensor | None:
    """``clip`` (None, a float or a one-element tensor) as a one-element fp32 tensor.

    Its value (expected in (0, 1]) is not checked: inside a compiled graph it is a device tensor and reading it
    would cost a host sync per call; the recipes that make clip tables check them when they are built/loaded.
    """
    if clip is None:
        return None
    c = torch.as_tensor(clip, dtype=torch.float32)
    if c.numel() != 1:
        raise ValueError(f"{where}: clip ratio must be one value, got shape {tuple(c.shape)}")
    return c.reshape(1)


def quantize_act(x: torch.Tensor, bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS,
                 clip=None):
    """Per-(token, K-group) symmetric quantization of ``x`` [..., K].

    Returns ``codes`` int8 [..., K] and ``scales`` fp32 [..., K/group] with ``x̃ ≈ codes · scales`` per group.
    ``clip`` (a ratio c in (0, 1], one value: a float or a one-element tensor, e.g. read from a per-timestep-bin
    table inside a compiled graph) shrinks every scale to ``s = (absmax·c)/qmax`` (fp32, in that order); values
    beyond the clipped range saturate at ±qmax. ``c = 1`` is bit-identical to no clip.
    """
    qmax = qmax_for(bits)
    k = x.shape[-1]
    if group < 1 or k % group:
        raise ValueError(f"activation scale group {group} does not divide K={k} (shape {tuple(x.shape)})")
    xr = _prepare(x, rotate, sign_seed)
    xg = xr.reshape(*x.shape[:-1], k // group, group)
    c = clip_value(clip)
    if xg.numel():
        amax = xg.abs().amax(-1)
        scales = div_exact(amax * c.to(amax.device) if c is not None else amax, qmax)
    else:
        scales = xg.new_zeros(xg.shape[:-1])
    ok = (torch.isfinite(scales) & (scales > 0))[..., None]
    codes = torch.round(xg / torch.where(ok, scales[..., None], 1.0)).clamp_(-qmax, qmax)
    codes = torch.where(ok, codes, 0.0)  # all-zero or non-finite group: codes 0 (its scale carries the NaN/Inf)
    return codes.to(torch.int8).reshape(x.shape), scales


def dequantize_act(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    k = codes.shape[-1]
    g = scales.shape[-1]
    c = codes.to(torch.float32).reshape(*codes.shape[:-1], g, k // g)
    return (c * scales[..., None]).reshape(codes.shape)


def fake_quant_per_channel(x: torch.Tensor, bits: int, rotate: int = 0, sign_seed: int = NO_SIGNS) -> torch.Tensor:
    """Paper-literal ARQ: ``s_j = max_tokens |x̃_:j|`` per batch element, ``x̂ = round(x̃/s·qmax)/qmax·s`` (fp32).

    ``x`` [B, S, K] (or [S, K], treated as one batch element); scales are per batch element so a result does not
    depend on how CFG halves are batched.
    """
    qmax = qmax_for(bits)
    xr = _prepare(x, rotate, sign_seed)
    xb = xr if xr.dim() >= 3 else xr.unsqueeze(0)
    xb = xb.reshape(xb.shape[0], -1, xb.shape[-1])
    if xb.numel() == 0:
        return xr
    s = xb.abs().amax(1, keepdim=True)
    safe = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    a = torch.round(xb / safe * qmax).clamp_(-qmax, qmax)
    return (a / qmax * s).reshape(xr.shape)
