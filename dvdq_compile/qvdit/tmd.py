"""Temporal Maintenance Distillation loss (Q-VDiT ``qdiff/utils.py::get_time_relation_loss``, docs/algorithms.md §8).

    L = MSE(out_q, out_fp) + λ · KL(softmax(S_fp) ‖ softmax(S_q)),   S = F̂ F̂ᵀ,  F̂ = l2-normalised frames,  λ = 100

on the whole-model output ``[B, C, F, H, W]`` (the zoo model's velocity prediction). The relation term is
:func:`dvdq_compile.metrics.relation_kl_loss` (same definition: row-wise softmax of the frame cosine-similarity
matrix, KL with the full-precision side as the target), divided by ``F``: Q-VDiT reduces ``F.kl_div`` with
``reduction='mean'`` (over B·F·F elements) while ``relation_kl_loss`` sums each row's KL and averages over B·F, so
``/F`` reproduces Q-VDiT's value and with it the meaning of λ = 100. Unlike Q-VDiT's ``reshape(b, t, −1)`` of a
``[B, C, T, H, W]`` tensor (which mixes channels into "frames" when C > 1), frames are taken from dim 2 explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..metrics import relation_kl_loss

LAMBDA = 100.0


@dataclass(frozen=True)
class TMDLoss:
    lam: float = LAMBDA

    def __post_init__(self):
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0 and self.lam == self.lam):
            raise ValueError(f"qvdit TMD lambda={self.lam!r} is not allowed; expected a finite float >= 0")

    def terms(self, out_q: torch.Tensor, out_fp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mse, kl)`` for outputs ``[B, C, F, H, W]``; ``out_fp`` is the target (detached here)."""
        if out_q.shape != out_fp.shape or out_q.dim() != 5:
            raise ValueError(f"TMD loss needs two outputs of one shape [B, C, F, H, W]; got {tuple(out_q.shape)} "
                             f"and {tuple(out_fp.shape)}")
        ref = out_fp.detach().float()
        q = out_q.float()
        mse = torch.nn.functional.mse_loss(q, ref)
        kl = relation_kl_loss(q.transpose(1, 2), ref.transpose(1, 2)) / q.shape[2]
        return mse, kl

    def __call__(self, out_q: torch.Tensor, out_fp: torch.Tensor) -> torch.Tensor:
        mse, kl = self.terms(out_q, out_fp)
        return mse + self.lam * kl
