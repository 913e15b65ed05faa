"""What an artifact gives one layer (``Extras``), and the interface every artifact implements (``Artifact``).

A quantized linear is ``y = Q(x)·Q(W)ᵀ + b``. A calibrated or trained recipe may attach to a layer any subset of:

- ``pre_scale`` λ [K]: smoothing. The graph computes ``x̂ = x·diag(λ)⁻¹`` and quantizes x̂; the weight side is
  ``W·diag(λ)``, which then comes precomputed (``qweight``: it differs per expert, and the run-time weight cache
  keys one smoothing per weight). Layers that read one activation and carry the same λ (one artifact group) share
  one x̂ and one ``act_quant``.
- ``qweight``: the quantized weight (packed codes, scale, zero in kernel layout) precomputed by the artifact (e.g.
  SVDQuant's GPTQ'd residual) instead of quantized from W at run time.
- ``weight_offset`` (B [K, r], A [r, N]) with ``offset_weight=True`` (Q-VDiT's TQE): the weight is quantized at the
  model's first call on MinMax(W)'s grid with the codes of ``W + (B A)ᵀ`` (``quant.offset_qweight``); ``None``
  = no offset. Exclusive with ``qweight``.
- ``weight_bits`` / ``act_bits``: this layer's bits when the artifact fixes them per layer; ``act_bits=16`` makes
  the layer weight-only. ``None`` = the options' bits.
- ``lowrank`` L1 [K, r], L2 [r, N]: a 16-bit output branch ``y += (u·L1)·L2``, ``u`` = x̂ (``lowrank_input="x"``)
  or the dequantized activation the integer GEMM saw (``"xq"``).
- ``clip`` [B]: activation clip ratio per timestep bin (scale ``c·absmax/qmax``, ``c = clip[bin(t)]``).

The plan (``passes/plan.py``) turns these into graph inputs fed per model by ``runtime/extras.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .bins import TimestepBins


@dataclass
class Extras:
    """One layer's extras as tensors (see the module docstring); None = not used."""
    pre_scale: torch.Tensor | None = None
    qweight: tuple | None = None  # (packed, scale, zero)
    lowrank: tuple | None = None  # (L1 [K, r], L2 [r, N])
    lowrank_input: str = "x"
    clip: torch.Tensor | None = None  # [B]
    weight_offset: tuple | None = None  # (B [K, r], A [r, N]), with offset_weight
    offset_weight: bool = False  # the weight is quantized at load on MinMax(W)'s grid, codes of W + (B A)ᵀ
    weight_bits: int | None = None
    act_bits: int | None = None  # 16: weight-only

    def __post_init__(self):
        if self.pre_scale is not None and self.qweight is None:
            raise ValueError("extras: a pre_scale needs the precomputed qweight (W·diag(λ) differs per expert, and "
                             "the run-time weight cache keys one smoothing per weight)")
        if self.lowrank_input not in ("x", "xq"):
            raise ValueError(f"extras: lowrank_input must be 'x' or 'xq', got {self.lowrank_input!r}")
        if self.offset_weight and self.qweight is not None:
            raise ValueError("extras: a layer's weight comes either precomputed (qweight) or from its offset, not both")
        if self.weight_offset is not None and not self.offset_weight:
            raise ValueError("extras: weight_offset needs offset_weight=True")
        if self.offset_weight and self.weight_bits is None:
            raise ValueError("extras: an offset weight needs its weight_bits")
        if self.act_bits == 16 and (self.pre_scale is not None or self.clip is not None or self.lowrank_input != "x"):
            raise ValueError("extras: a weight-only layer (act_bits=16) has no smoothing, clip table or branch on "
                             "quantized activations")


@runtime_checkable
class Artifact(Protocol):
    """What the backend reads from any artifact (a calibration, an SVDQuant-GPTQ-TS calibration, a Q-VDiT
    artifact). One compile may take several (one per expert sharing the graph), matched by fingerprint."""
    meta: dict  # "path" when loaded from a file, the recipe's settings
    weights: dict  # layer -> weight fingerprint

    def check(self, name: str, w: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``w`` is not the weight layer ``name`` had when the artifact was made."""

    @property
    def bins(self) -> TimestepBins:
        """The timestep bins of its per-bin tables (one bin: no timestep dependence)."""

    @property
    def groups(self) -> list:
        """Lists of layer names that read one input and share its smoothing / quantized activation."""

    def layer_extras(self, name: str) -> Extras | None:
        """What the artifact gives layer ``name`` (None: nothing; the layer runs the default path)."""


def label(art) -> str:
    """How messages name an artifact: its path, or "(in memory)"."""
    return art.meta.get("path", "(in memory)")


def matches(art, weights: dict[str, torch.Tensor]) -> bool:
    """Whether every layer of ``weights`` (name -> weight) that ``art`` knows has the fingerprint it recorded."""
    for name, w in weights.items():
        try:
            art.check(name, w)
        except ValueError:
            return False
    return True
