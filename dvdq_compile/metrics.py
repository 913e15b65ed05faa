"""Video quality metrics for comparing a quantized model's output with the full-precision output.

Videos are float tensors ``[B, C, F, H, W]`` in ``[-1, 1]`` (the zoo pipeline's output). Every metric compares a
video ``x`` (quantized) with a reference ``ref`` (full precision) of the same shape and returns a Python float,
except the per-video variants (a tensor ``[B]``) and :func:`relation_kl_loss` (a differentiable tensor).

* Fidelity: :func:`psnr`, :func:`ssim` (Wang et al. 2004), :func:`sqnr_db` (torchao's ``compute_error``).
* Temporal consistency (docs/algorithms.md §10): :func:`frame_diff_corr` (does the quantized video
  move like the reference?) and :func:`relation_kl` (Q-VDiT's Temporal Maintenance Distillation statistic: is the
  frame-to-frame similarity structure preserved?). Per-frame metrics such as PSNR/SSIM cannot see flicker or
  frozen motion; these two can.

Plain PyTorch (no scikit-image / scipy): the metrics run on whatever device the videos are on. Reductions that
suffer from cancellation (SSIM's ``E[x²] − E[x]²``, Pearson correlation) are computed in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "frame_diff_corr",
    "psnr",
    "psnr_per_video",
    "relation_kl",
    "relation_kl_loss",
    "relation_matrix",
    "sqnr_db",
    "ssim",
    "ssim_per_video",
]

VIDEO_SHAPE = "[B, C, F, H, W]"

# SSIM constants of Wang et al. 2004 (and scikit-image's gaussian_weights=True defaults).
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 2.0  # videos live in [-1, 1]

# Bound on the float64 working set of one SSIM chunk (5 stacked maps), so large videos do not allocate
# 5 x B*C*F*H*W doubles at once.
_SSIM_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------- validation
def _check_tensor(v, name: str) -> None:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    if v.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(v.shape)})")


def _check_pair(x, ref, expected: str, ndim: int | None = None, min_ndim: int | None = None) -> None:
    """Both tensors float, of ``ndim`` (or at least ``min_ndim``) dims, same shape; errors name the argument."""
    for v, name in ((x, "x"), (ref, "ref")):
        _check_tensor(v, name)
        if ndim is not None and v.dim() != ndim:
            raise ValueError(f"{name} must have shape {expected} ({ndim}-D), got shape {tuple(v.shape)} "
                             f"({v.dim()}-D)")
        if min_ndim is not None and v.dim() < min_ndim:
            raise ValueError(f"{name} must have shape {expected} (at least {min_ndim}-D), got shape "
                             f"{tuple(v.shape)} ({v.dim()}-D)")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape {expected}; got x {tuple(x.shape)} and ref "
                         f"{tuple(ref.shape)}")
    if x.device != ref.device:
        raise ValueError(f"x and ref must be on the same device; got x on {x.device} and ref on {ref.device}")


def _check_videos(x, ref) -> None:
    _check_pair(x, ref, VIDEO_SHAPE, ndim=5)


# ------------------------------------------------------------------------------------------------- PSNR
def psnr_per_video(x: torch.Tensor, ref: torch.Tensor, peak: float = DATA_RANGE) -> torch.Tensor:
    """PSNR of each video, float64 tensor ``[B]``: ``10·log10(peak² / MSE_b)``, ``inf`` where ``x_b == ref_b``.

    ``peak`` is the peak-to-peak signal range, 2 for videos in ``[-1, 1]`` (using 1 would understate the error
    by 6.02 dB relative to the same video in ``[0, 1]``).
    """
    _check_videos(x, ref)
    if not peak > 0:
        raise ValueError(f"peak must be > 0, got {peak}")
    mse = (x.double() - ref.double()).square().flatten(1).mean(1)
    # mse == 0 gives peak²/0 = inf and log10(inf) = inf: the documented value for identical videos.
    return 10.0 * torch.log10(peak**2 / mse)


def psnr(x: torch.Tensor, ref: torch.Tensor, peak: float = DATA_RANGE) -> float:
    """PSNR over the whole batch: ``10·log10(peak² / MSE)`` with the MSE pooled over every element of the batch
    (the same number as ``dvdq_compile.cli._psnr``); ``inf`` when ``x == ref``.

    Pooling the MSE (rather than averaging per-video PSNRs, which :func:`psnr_per_video` allows) keeps one
    identical video from making the batch PSNR infinite.
    """
    _check_videos(x, ref)
    if not peak > 0:
        raise ValueError(f"peak must be > 0, got {peak}")
    mse = float((x.double() - ref.double()).square().mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)


# ------------------------------------------------------------------------------------------------- SSIM
def _gaussian_1d(win: int, sigma: float, device) -> torch.Tensor:
    """Normalised Gaussian taps at offsets ``i − (win−1)/2`` (symmetric also for an even, shrunken ``win``)."""
    t = torch.arange(win, dtype=torch.float64, device=device) - (win - 1) / 2.0
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _ssim_images(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each image pair, float64 ``[N]``, for images ``a``, ``b`` of shape ``[N, H, W]``."""
    n, h, w = a.shape
    wh, ww = min(SSIM_WIN, h), min(SSIM_WIN, w)
    gh = _gaussian_1d(wh, SSIM_SIGMA, a.device).view(1, 1, wh, 1).expand(5, 1, wh, 1)
    gw = _gaussian_1d(ww, SSIM_SIGMA, a.device).view(1, 1, 1, ww).expand(5, 1, 1, ww)
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    out = []
    per = max(1, _SSIM_CHUNK_ELEMS // (5 * h * w))
    for i in range(0, n, per):
        # float64: σ² = E[x²] − μ² cancels badly in float32 for low-variance windows, and C2 = 3.6e-3 is small
        # enough that the cancellation error shows in the SSIM value.
        x = a[i:i + per].double()
        y = b[i:i + per].double()
        maps = torch.stack([x, y, x * x, y * y, x * y], 1)  # [n, 5, H, W]
        # The 2-D Gaussian window is separable: two 1-D 'valid' convolutions (no padding) = the window sums
        # over every position where the whole window fits inside the frame.
        m = F.conv2d(F.conv2d(maps, gh, groups=5), gw, groups=5)
        mu_x, mu_y, e_xx, e_yy, e_xy = m.unbind(1)
        var_x = e_xx - mu_x * mu_x
        var_y = e_yy - mu_y * mu_y
        cov = e_xy - mu_x * mu_y
        s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
        out.append(s.flatten(1).mean(1))
    return torch.cat(out)


def ssim_per_video(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM of each video, float64 tensor ``[B]`` (see :func:`ssim` for the definition)."""
    _check_videos(x, ref)
    b, c, f, h, w = x.shape
    # Every frame of every channel is one 2-D image; frames are independent (no temporal window).
    s = _ssim_images(x.reshape(b * c * f, h, w), ref.reshape(b * c * f, h, w))
    return s.view(b, c * f).mean(1)


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean structural similarity (Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error
    visibility to structural similarity", IEEE TIP 2004), 1.0 for identical videos.

    Per frame and per channel, at every position where an ``11×11`` Gaussian window (σ = 1.5, normalised)
    fits inside the frame ('valid' convolution, no padding, as scikit-image crops its border)::

        SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (0.01·L)², C2 = (0.03·L)², L = 2 (the data range of videos in [-1, 1])

    with window-weighted means, variances and covariance (population form, i.e. scikit-image's
    ``use_sample_covariance=False``). The map is averaged over positions, then over frames, channels and the
    batch (all frames have equal weight). Equals ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2)`` per frame.

    Frames smaller than 11 px: the window shrinks to the frame size along that dimension (``min(11, H)`` ×
    ``min(11, W)`` taps of the same σ = 1.5 Gaussian, renormalised), so an ``8×8`` frame has exactly one window
    position. scikit-image raises an error instead; this keeps tiny test videos usable, but such values are not
    comparable with standard 11×11 SSIM numbers.
    """
    return float(ssim_per_video(x, ref).mean())


# ----------------------------------------------------------------------------------- temporal consistency
def frame_diff_corr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Motion fidelity: Pearson correlation between the frame differences of ``x`` and of ``ref``.

    Per video, ``dx = x[:, 1:] − x[:, :-1]`` along frames (and likewise ``dref``) is flattened over channels,
    frame pairs and pixels; the Pearson correlation of ``dx`` and ``dref`` is averaged over the batch. 1.0 for
    identical videos; low or negative when the quantized video moves differently (frozen, jittering, shuffled
    frames). The frame-difference-fidelity motion proxy (docs/algorithms.md §10); unlike PSNR it is
    insensitive to errors that are constant in time, and a per-frame brightness offset only shifts ``dx`` by a
    constant per frame pair, which changes the correlation little when the video moves.

    Zero variance (no defined correlation): a video whose frame differences are constant (e.g. a static video,
    all differences 0) has no motion to correlate. If both ``dx`` and ``dref`` have zero variance the motion is
    the same (none, or a uniform drift) and the value is 1.0; if only one does, the value is 0.0 (no linear
    relation can be measured). Never NaN.
    """
    _check_videos(x, ref)
    if x.shape[2] < 2:
        raise ValueError(f"frame_diff_corr needs at least 2 frames (F >= 2) in {VIDEO_SHAPE}; got shape "
                         f"{tuple(x.shape)}")
    xd, rd = x.double(), ref.double()
    dx = (xd[:, :, 1:] - xd[:, :, :-1]).flatten(1)
    dr = (rd[:, :, 1:] - rd[:, :, :-1]).flatten(1)
    dx = dx - dx.mean(1, keepdim=True)
    dr = dr - dr.mean(1, keepdim=True)
    vx, vr = dx.square().sum(1), dr.square().sum(1)
    corr = (dx * dr).sum(1) / (vx * vr).sqrt()
    # Exact zero test: a static (or uniformly drifting) video gives exactly-zero centred differences.
    zx, zr = vx == 0, vr == 0
    corr = torch.where(zx & zr, torch.ones_like(corr), torch.where(zx | zr, torch.zeros_like(corr), corr))
    return float(corr.mean())


def _check_tau(tau) -> None:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau (softmax temperature) must be a finite number > 0, got {tau!r}")


def _relation_log_probs(v: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise log-softmax of the frame cosine-similarity matrix, ``[B, F, F]``, for ``v`` ``[B, F, ...]``."""
    # Half precision would round the cosine similarities before the softmax: work in at least float32.
    if v.dtype in (torch.float16, torch.bfloat16):
        v = v.float()
    # F.normalize clamps the norm at eps: an all-zero frame becomes a zero vector with cosine 0 to every frame
    # (a uniform contribution to its row) instead of NaN.
    f = F.normalize(v.flatten(2), p=2, dim=2)
    s = f @ f.transpose(1, 2)
    return torch.log_softmax(s / tau, dim=-1)


def relation_matrix(v: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Inter-frame relation matrix ``P`` ``[B, F, F]`` of features ``v`` ``[B, F, ...]`` (frames on dim 1).

    Each frame is flattened to a vector and L2-normalised; ``S[i, j]`` is the cosine similarity of frames ``i``
    and ``j``; ``P = softmax(S / tau)`` row-wise, so each row is a distribution over frames. This is the relation
    map of Q-VDiT's Temporal Maintenance Distillation (Feng et al., "Q-VDiT: Towards Accurate Quantization and
    Distillation of Video-Generation Diffusion Transformers", ICML 2025; code ``qdiff/utils.py::
    get_time_relation_loss``). Features of any trailing shape work (``[B, F, tokens, D]`` for a transformer's
    hidden states); pass a video ``[B, C, F, H, W]`` as ``video.transpose(1, 2)``.
    """
    _check_tensor(v, "v")
    if v.dim() < 3:
        raise ValueError(f"v must have shape [B, F, ...] (at least 3-D), got shape {tuple(v.shape)} ({v.dim()}-D)")
    _check_tau(tau)
    return _relation_log_probs(v, tau).exp()


def relation_kl_loss(x: torch.Tensor, ref: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Differentiable relation KL for features ``[B, F, ...]`` (frames on dim 1): a 0-dim tensor.

    ``KL(P_ref ‖ P_x)`` of the :func:`relation_matrix` rows, each row's KL summed over its ``F`` entries, then
    averaged over the ``F`` rows and the batch. 0 when the frame-similarity structure of ``x`` matches ``ref``'s.
    Gradients flow into ``x`` and, if it requires grad, ``ref`` too: pass ``ref.detach()`` for a distillation
    target. Computed in ``x``'s dtype (at least float32).

    Differences from Q-VDiT's code (kept on purpose): Q-VDiT uses ``F.kl_div(..., reduction='mean')``, which
    also divides by the ``F`` columns, so its value is ``1/F`` of this one (Q-VDiT then weights it by 100); and
    it reshapes its ``[B, C, T, H, W]`` output with ``reshape(b, t, -1)`` without moving the frame axis first,
    which mixes channels into the "frames" when ``C > 1``; here frames are explicitly dim 1.
    """
    _check_pair(x, ref, "[B, F, ...]", min_ndim=3)
    _check_tau(tau)
    log_px = _relation_log_probs(x, tau)
    log_pr = _relation_log_probs(ref, tau).to(log_px.dtype)
    # Σ_j P_ref (log P_ref − log P_x) per row; log-probabilities on both sides avoid log(0) for peaked rows.
    kl_rows = (log_pr.exp() * (log_pr - log_px)).sum(-1)  # [B, F]
    return kl_rows.mean()


def relation_kl(x: torch.Tensor, ref: torch.Tensor, tau: float = 1.0) -> float:
    """Temporal-structure fidelity of videos ``[B, C, F, H, W]``: :func:`relation_kl_loss` over frames, float64.

    0 for identical videos; > 0 when the frame-to-frame similarity pattern changes (e.g. shuffled, frozen or
    flickering frames). Each frame's vector holds all channels and pixels.
    """
    _check_videos(x, ref)
    return float(relation_kl_loss(x.transpose(1, 2).double(), ref.transpose(1, 2).double(), tau))


# ------------------------------------------------------------------------------------------------- SQNR
def sqnr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10·log10(‖ref‖² / ‖x − ref‖²)`` (torchao's
    ``compute_error`` = ``20·log10(‖ref‖ / ‖ref − x‖)``). Any shape (layer outputs, latents, videos).

    ``inf`` when ``x == ref`` (including both zero); ``-inf`` when ``ref`` is all zeros and ``x`` is not (no signal).
    Unlike PSNR it is relative to the signal's own energy, so it compares layers of different scales.
    """
    _check_pair(x, ref, "(any shape, equal for x and ref)")
    xd, rd = x.double(), ref.double()
    noise = float((xd - rd).square().sum())
    if noise == 0.0:
        return math.inf
    signal = float(rd.square().sum())
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)
