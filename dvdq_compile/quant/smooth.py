"""SmoothQuant's per-input-channel smoothing factors (Xiao et al. 2023, Eq. 4).

``s_j = max|X_j|^α / max|W_{:,j}|^(1−α)``; the linear becomes ``(X·diag(s)⁻¹)·(diag(s)·Wᵀ)`` — exact in full
precision — which moves activation outlier channels into the weights so that per-token activation quantization
loses less. For linears that read the same activation (q/k/v), ``max|W_{:,j}|`` is taken over all of them, so one
smoothed activation serves the group. Channels with no signal (max |x| or max |w| zero) keep ``s = 1``; ``s`` is
clamped to ``[1e-5, 1e5]`` so neither side can overflow or flush to zero.
"""
from __future__ import annotations

import torch

S_MIN, S_MAX = 1e-5, 1e5


def smooth_factors(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s`` [K] fp32 from the activation and weight per-channel absolute maxima [K]."""
    if act_absmax.shape != w_absmax.shape or act_absmax.dim() != 1:
        raise ValueError(f"smooth_factors: act_absmax {tuple(act_absmax.shape)} and w_absmax "
                         f"{tuple(w_absmax.shape)} must be the same 1-D [K] shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_factors: alpha must be in [0, 1], got {alpha}")
    a = act_absmax.to(torch.float32).nan_to_num(0.0)
    w = w_absmax.to(device=a.device, dtype=torch.float32).nan_to_num(0.0)
    live = (a > 0) & (w > 0)
    s = torch.where(live, a.clamp_min(1e-30).pow(alpha) / w.clamp_min(1e-30).pow(1.0 - alpha), torch.ones_like(a))
    return s.clamp(S_MIN, S_MAX)


def weight_absmax(weights: list[torch.Tensor]) -> torch.Tensor:
    """max |W_{:,j}| [K] over the rows of every weight in ``weights`` (all [N_i, K])."""
    return torch.stack([w.detach().abs().amax(0).to(torch.float32) for w in weights]).amax(0)
