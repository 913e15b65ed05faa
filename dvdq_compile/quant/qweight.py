"""A quantized weight in kernel layout, and the function that makes one from a 16/32-bit weight."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .bgr import bgr
from .hadamard import NO_SIGNS, rotate
from .minmax import dequantize, minmax
from .pack import pack, packed_bytes, unpack

WEIGHT_BITS = (3, 4, 8)
WEIGHT_METHODS = ("bgr", "minmax")


@dataclass(frozen=True)
class WeightSpec:
    """How one linear's weight is quantized. ``group`` 0 = one (Δ, z) per output row; ``rotate`` 0 = no rotation."""
    bits: int = 4
    method: str = "bgr"
    group: int = 0
    rotate: int = 128
    sign_seed: int = NO_SIGNS
    bgr_n: int = 64
    bgr_max_shrink: float = 0.9
    bgr_max_iter: int = 64
    # Non-empty when the weight is multiplied per input channel before rotation (SmoothQuant's diag(s)·Wᵀ):
    # a hash of ``s``, so the cache keeps one quantized copy per (weight, smoothing).
    pre_scale: str = ""

    def __post_init__(self):
        if self.bits not in WEIGHT_BITS:
            raise ValueError(f"weight bits must be one of {WEIGHT_BITS}, got {self.bits}")
        if self.method not in WEIGHT_METHODS:
            raise ValueError(f"weight method must be one of {WEIGHT_METHODS}, got {self.method!r}")


@dataclass
class QuantizedWeight:
    """Packed codes [N, K/2] (3/4 bits) or [N, K] (8 bits) uint8, scale fp32 [N, G], zero int32 [N, G]."""
    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    spec: WeightSpec
    shape: tuple[int, int]
    # Per-row squared weight error of this quantizer and of MinMax on the same (rotated) weight, for the report.
    stats: dict = field(default_factory=dict)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.packed, self.scale, self.zero

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def dequantize(self) -> torch.Tensor:
        """Ŵ in the rotated basis, fp32 [N, K]."""
        return dequantize(unpack(self.packed, self.spec.bits), self.scale, self.zero)


def quantized_bytes(n: int, k: int, spec: WeightSpec) -> int:
    g = 1 if not spec.group else k // spec.group
    return packed_bytes(n, k, spec.bits) + n * g * (4 + 4)


def quantize_weight(w: torch.Tensor, spec: WeightSpec, with_stats: bool = False,
                    pre_scale: torch.Tensor | None = None, rows_fn=None) -> QuantizedWeight:
    """Scale columns by ``pre_scale`` [K] (if given), rotate (``W·H_bd``), then quantize ``w`` [N, K] per ``spec``.
    Runs on ``w``'s device in fp32. ``rows_fn``: BGR's row solver (None: the reference :func:`quant.bgr.bgr_rows`);
    the caller hands in the Triton kernel on a GPU (``kernels.dispatch.bgr_solver``): this reference imports none."""
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"weight must be floating point, got {w.dtype}")
    if bool(spec.pre_scale) != (pre_scale is not None):
        raise ValueError(f"weight spec pre_scale={spec.pre_scale!r} and the pre_scale tensor "
                         f"({'given' if pre_scale is not None else 'missing'}) disagree")
    if pre_scale is not None:
        if pre_scale.shape != (w.shape[1],):
            raise ValueError(f"pre_scale must have shape [K]=({w.shape[1]},), got {tuple(pre_scale.shape)}")
        w = w.detach().to(torch.float32) * pre_scale.to(device=w.device, dtype=torch.float32)
    wr = rotate(w.detach(), spec.rotate, spec.sign_seed) if spec.rotate else w.detach().to(torch.float32)
    group = spec.group or None
    if spec.method == "bgr":
        codes, scale, zero = bgr(wr, spec.bits, group, rows_fn=rows_fn, n=spec.bgr_n,
                                 max_shrink=spec.bgr_max_shrink, max_iter=spec.bgr_max_iter)
    else:
        codes, scale, zero = minmax(wr, spec.bits, group)
    qw = QuantizedWeight(pack(codes, spec.bits), scale.contiguous(), zero.contiguous(), spec, tuple(w.shape))
    if with_stats:
        err = (wr - dequantize(codes, scale, zero)).square().sum(1)
        mm = minmax(wr, spec.bits, group) if spec.method != "minmax" else (codes, scale, zero)
        err_mm = (wr - dequantize(*mm)).square().sum(1)
        qw.stats = {"mse": float(err.sum()) / w.numel(), "mse_minmax": float(err_mm.sum()) / w.numel()}
    return qw
