"""SVDQuant per layer (Li et al. 2024; docs/algorithms.md §7.1): smoothing, a rank-r 16-bit branch, a 4-bit residual.

For linears that read one activation ``x`` (q/k/v share one, so they share one smoothing factor):

    λ_j = max|X_j|^α / max|W_:,j|^(1−α)          (max over every weight of the group; clamped like SmoothQuant)
    X̂ = X·diag(λ)⁻¹,   Ŵ = W·diag(λ)              exact in full precision
    Ŵ ≈ (L1·L2)ᵀ + R,  L1 = V_r·S_r [K, r], L2 = U_rᵀ [r, N]   (top-r SVD of Ŵ, fp64)
    R → Q(R): 4-bit asymmetric, group 64 along K (RTN = MinMax, or GPTQ with the Hessian of X̂)
    y = (x̂·L1)·L2 + Q(x̂)·Q(R)ᵀ + b

α is grid-searched per group on a layer-output error computed from the calibration statistics only
(``XᵀX``, channel ``absmax``, token count T; no stored activations), aware of the low-rank branch:

    E(α) = Σ_W tr(ΔW Σ̂ ΔWᵀ)  +  T · Σ_j σ_j² ‖Q(R)_:,j‖²,   ΔW = Ŵ − (L1L2)ᵀ − Q(R),  Σ̂ = diag(λ)⁻¹ XᵀX diag(λ)⁻¹

The first term is the exact weight-error contribution ``‖X̂ ΔWᵀ‖²``. The second models the activation
rounding of ``Q(x̂)`` as independent uniform noise of step ``ĝ/qmax`` (σ² = step²/12), ĝ the calibrated range of
the channel's K-group after smoothing: a proxy (it uses the calibration-wide maximum, not each token's); it is
what makes α trade activation outliers against weight range, and the low-rank branch enters it because its
input is the unquantized x̂ (only R sees quantized activations). During the search the residual is RTN-quantized
and L1L2 is the plain SVD; on the chosen α the branch is refit and GPTQ (if asked) runs once.

Low-rank refit (SVDQuant refits L1L2 on the output error, ≤ 100 iterations with early stop; docs/algorithms.md §7.1), on
the same objective E as the α search: given the current RTN residual Q = Q(Ŵ − L), and taking Q(R) ≈ R = Ŵ − L in
the activation-noise term (D = T·diag(σ²)), the rank-r L minimizing ``tr((Ŵ−Q−L)Σ̂(·)ᵀ) + tr((Ŵ−L)D(·)ᵀ)`` is
closed-form, a truncated SVD in the P-weighted norm:

    L = trunc_r(B·P^-½)·P^-½,   B = (Ŵ − Q)·Σ̂ + Ŵ·D,   P = Σ̂ + D + δ·mean(diag(Σ̂ + D))·I

(δ = ``refit_damp`` keeps dead channels finite); then Q is requantized from the new residual. Without the noise
term (16-bit activations) the refit would only chase the weight error and push error into the residual, whose
activations are the 4-bit ones. Iterations stop when E improves by less than ``refit_tol`` relatively; a step
that does not lower E is never taken, so the refit never ends worse than the plain SVD start.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .act import qmax_for
from .gptq import GPTQConfig, gptq
from .minmax import dequantize, minmax
from .smooth import smooth_factors, weight_absmax

DEFAULT_ALPHAS = tuple(round(0.1 * i, 2) for i in range(11))


@dataclass(frozen=True)
class SVDQuantConfig:
    rank: int = 32
    bits: int = 4
    group: int = 64  # weight scale group of the residual along K (0: per row)
    act_bits: int = 4  # for the activation-noise term of the α objective (16: none)
    act_group: int = 64
    alphas: tuple = DEFAULT_ALPHAS
    gptq: bool = True
    gptq_block: int = 128
    gptq_damp: float = 0.01
    gptq_act_order: bool = False
    refit_iters: int = 100  # 0: the plain SVD branch
    refit_tol: float = 1e-4
    refit_damp: float = 0.01

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"SVDQuant rank must be >= 0, got {self.rank}")
        if not isinstance(self.refit_iters, int) or self.refit_iters < 0:
            raise ValueError(f"SVDQuant refit_iters must be an int >= 0, got {self.refit_iters!r}")
        if not (self.refit_tol >= 0 and self.refit_damp > 0):
            raise ValueError(f"SVDQuant refit_tol must be >= 0 and refit_damp > 0, got {self.refit_tol}, "
                             f"{self.refit_damp}")
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"SVDQuant alphas must be a non-empty grid in [0, 1], got {self.alphas}")
        if self.act_bits != 16:
            qmax_for(self.act_bits)


@dataclass
class SVDQuantLayer:
    """One weight's SVDQuant factors: Ŵ ≈ (l1·l2)ᵀ + dequantize(codes, scale, zero), in the smoothed basis."""
    l1: torch.Tensor  # [K, r] fp32
    l2: torch.Tensor  # [r, N] fp32
    codes: torch.Tensor  # [N, K] uint8
    scale: torch.Tensor  # [N, G] fp32
    zero: torch.Tensor  # [N, G] int32

    def residual(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero)

    def weight(self) -> torch.Tensor:
        """The effective smoothed weight (l1·l2)ᵀ + Q(R), fp32 [N, K]."""
        return (self.l1 @ self.l2).T + self.residual()


@dataclass
class SVDQuantGroup:
    lam: torch.Tensor  # [K] fp32 smoothing factor: x̂ = x / lam
    alpha: float
    layers: list[SVDQuantLayer]
    objective: dict = field(default_factory=dict)  # α -> E(α)
    refit: list = field(default_factory=list)  # per layer: {"iters", "err_svd", "err_refit"} (weight error term)


def low_rank(w_hat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD factors of ``w_hat`` [N, K] as (L1 [K, r], L2 [r, N]) fp32, (L1L2)ᵀ ≈ Ŵ."""
    n, k = w_hat.shape
    r = min(rank, n, k)
    if r == 0:
        z = w_hat.new_zeros
        return z(k, 0, dtype=torch.float32), z(0, n, dtype=torch.float32)
    u, s, vh = torch.linalg.svd(w_hat.double(), full_matrices=False)
    l1 = (vh[:r].T * s[:r][None, :]).float().contiguous()
    l2 = u[:, :r].T.float().contiguous()
    return l1, l2


def _act_noise(absmax_hat: torch.Tensor, cfg: SVDQuantConfig) -> torch.Tensor:
    """Per-channel variance [K] of the activation rounding noise model (0 for 16-bit activations)."""
    if cfg.act_bits == 16:
        return torch.zeros_like(absmax_hat, dtype=torch.float64)
    k = absmax_hat.shape[0]
    g = cfg.act_group if cfg.act_group and k % cfg.act_group == 0 else k
    rng = absmax_hat.double().reshape(k // g, g).amax(1, keepdim=True).expand(k // g, g).reshape(k)
    return (rng / qmax_for(cfg.act_bits)).square() / 12.0


def _quant_residual(r: torch.Tensor, h_hat: torch.Tensor | None, cfg: SVDQuantConfig, use_gptq: bool):
    if use_gptq:
        return gptq(r, h_hat, GPTQConfig(bits=cfg.bits, group=cfg.group, block=cfg.gptq_block,
                                         damp=cfg.gptq_damp, act_order=cfg.gptq_act_order))
    return minmax(r, cfg.bits, cfg.group or None)


def _weighted_err(dw: torch.Tensor, h: torch.Tensor) -> float:
    return float(torch.einsum("nk,kl,nl->", dw, h, dw))


def refit_low_rank(w_hat: torch.Tensor, h_hat: torch.Tensor, noise: torch.Tensor, cfg: SVDQuantConfig):
    """The branch (L1 [K, r], L2 [r, N]) fp32 refit on the layer's α objective (module docstring), and
    ``{"iters", "err_svd", "err_refit"}``: iterations taken and the objective before / after. ``noise`` [K] is
    T·σ_j², the activation-rounding noise the residual sees (zeros for 16-bit activations)."""
    w_hat, h, d = w_hat.double(), h_hat.double(), noise.double()
    l1, l2 = low_rank(w_hat, cfg.rank)
    r = l1.shape[1]

    def residual_err(lr):
        q = dequantize(*minmax((w_hat - lr).float(), cfg.bits, cfg.group or None)).double()
        return q, _weighted_err(w_hat - lr - q, h) + float((q.square().sum(0) * d).sum())

    q, err = residual_err((l1.double() @ l2.double()).T)
    info = {"iters": 0, "err_svd": err, "err_refit": err}
    p = h + torch.diag(d)
    mean_diag = float(p.diagonal().mean())
    if r == 0 or cfg.refit_iters == 0 or not mean_diag > 0:
        return l1, l2, info
    e, v = torch.linalg.eigh(p + cfg.refit_damp * mean_diag * torch.eye(p.shape[0], dtype=p.dtype, device=p.device))
    e = e.clamp_min(cfg.refit_damp * mean_diag * 1e-3)  # eigh of a damped PSD matrix: guard round-off only
    p_inv_half = (v / e.sqrt()) @ v.T
    for _ in range(cfg.refit_iters):
        # argmin_L tr((Ŵ−Q−L)Σ̂(·)ᵀ) + tr((Ŵ−L)D(·)ᵀ) = trunc_r(B·P^-½)·P^-½, B = (Ŵ−Q)Σ̂ + Ŵ·D, P = Σ̂ + D
        b = (w_hat - q) @ h + w_hat * d[None, :]
        u, sv, vh = torch.linalg.svd(b @ p_inv_half, full_matrices=False)
        l2_new = u[:, :r].T                                    # [r, N]
        l1_new = ((sv[:r, None] * vh[:r]) @ p_inv_half).T      # [K, r]
        q_new, err_new = residual_err((l1_new @ l2_new).T)
        if not err_new < err:
            break
        gain = (err - err_new) / err if err > 0 else 0.0
        l1, l2, q, err = l1_new.float().contiguous(), l2_new.float().contiguous(), q_new, err_new
        info["iters"] += 1
        if gain < cfg.refit_tol:
            break
    info["err_refit"] = err
    return l1, l2, info


def _factor(weights, lam, xtx, cfg, use_gptq, refit=False, absmax=None, tokens=0):
    inv = (1.0 / lam.double())
    h_hat = xtx * inv[:, None] * inv[None, :]
    out, infos = [], []
    for w in weights:
        w_hat = w.detach().double() * lam.double()[None, :]
        if refit:
            noise = tokens * _act_noise(absmax.double() * inv, cfg)
            l1, l2, info = refit_low_rank(w_hat, h_hat, noise, cfg)
            infos.append(info)
        else:
            l1, l2 = low_rank(w_hat, cfg.rank)
        r = (w_hat - (l1.double() @ l2.double()).T).float()
        out.append(SVDQuantLayer(l1, l2, *_quant_residual(r, h_hat, cfg, use_gptq)))
    return out, infos


def objective(weights, layers: list[SVDQuantLayer], lam, xtx, absmax, tokens, cfg) -> float:
    """E(α) of the module docstring for factors ``layers`` of ``weights`` under smoothing ``lam``."""
    inv = 1.0 / lam.double()
    h_hat = xtx.double() * inv[:, None] * inv[None, :]
    var = _act_noise(absmax.double() * inv, cfg)
    e = 0.0
    for w, lay in zip(weights, layers):
        dw = w.detach().double() * lam.double()[None, :] - lay.weight().double()
        e += float(torch.einsum("nk,kl,nl->", dw, h_hat, dw))
        e += tokens * float((lay.residual().double().square().sum(0) * var).sum())
    return e


def svdquant(weights: list[torch.Tensor], xtx: torch.Tensor, absmax: torch.Tensor, tokens: int,
             cfg: SVDQuantConfig = SVDQuantConfig()) -> SVDQuantGroup:
    """SVDQuant of the linears ``weights`` (each [N_i, K]) that read one activation with statistics ``xtx`` [K, K]
    (running ``XᵀX``), ``absmax`` [K] and ``tokens``. Returns the shared λ, the chosen α and per-weight factors."""
    if not weights:
        raise ValueError("svdquant: no weights given")
    k = weights[0].shape[1]
    for w in weights:
        if w.dim() != 2 or w.shape[1] != k:
            raise ValueError(f"svdquant: every weight must be [N, K={k}], got {tuple(w.shape)}")
    if xtx is None or xtx.shape != (k, k) or absmax.shape != (k,):
        raise ValueError(f"svdquant: calibration statistics must be XᵀX [{k}, {k}] and absmax [{k}], got "
                         f"{None if xtx is None else tuple(xtx.shape)} and {tuple(absmax.shape)} (calibrate with "
                         "hessian=True)")
    xtx = xtx.detach().double().cpu()
    absmax = absmax.detach().float().cpu()
    weights = [w.detach().float().cpu() for w in weights]
    w_max = weight_absmax(weights)
    scores, best = {}, None
    for a in cfg.alphas:
        lam = smooth_factors(absmax, w_max, float(a))
        layers, _ = _factor(weights, lam, xtx, cfg, use_gptq=False)
        scores[float(a)] = objective(weights, layers, lam, xtx, absmax, tokens, cfg)
        if best is None or scores[float(a)] < scores[best[0]]:
            best = (float(a), lam, layers)
    alpha, lam, layers = best
    infos = []
    if cfg.gptq or cfg.refit_iters:
        layers, infos = _factor(weights, lam, xtx, cfg, use_gptq=cfg.gptq, refit=cfg.refit_iters > 0,
                                absmax=absmax, tokens=tokens)
    return SVDQuantGroup(lam, alpha, layers, scores, infos)
