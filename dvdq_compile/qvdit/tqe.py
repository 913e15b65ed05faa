"""TQE on one linear, in the form of Q-VDiT's released code (docs/algorithms.md §8).

    W'  = W + (B A)ᵀ                      B [K, r] zero-init, A [r, N]: a rank-r offset added BEFORE quantization
    Ŵ   = Δ (clamp(round(W'/Δ) + z, 0, 2^b − 1) − z)        per-output-row asymmetric, (Δ, z) fixed from W
    X̂   = Qa(X)                            dynamic per-token, 2^(a−1) − 1 levels each side (see below)
    y   = X̂ Ŵᵀ + m ⊙ (X̂ (b1 a1)ᵀ) + bias  b1 [N, 1] zero-init, a1 [1, K]: a rank-1 full-precision correction AFTER it

``m`` is the token mask (one value per frame, init 1) that Q-VDiT puts on the rank-1 term of its *temporal*
attention linears only. In OpenSora those layers attend over the frame axis (tokens ``[B·HW, T, C]``); Wan, and
the zoo model, have no temporal layers: one joint spatio-temporal self-attention over all ``F·H·W`` tokens and a
cross-attention to the text. So the recipe creates no mask on Wan; the layer supports one (``frames``) for models
that have temporal layers, applied per frame of a frame-major token axis.

Both rounding steps use a straight-through estimator (``round`` passes the gradient unchanged; ``clamp`` zeroes it
outside the code range), so A, B, a1, b1 and the mask all receive gradients. B and b1 start at zero, so at
initialization the layer *is* the plain RTN-quantized layer: same codes, same (Δ, z), bit-exact on the integer path.
The weight quantizer is the project's MinMax reference (``quant.minmax``), not Q-VDiT's clip-grid search, so the
untrained layer is exactly the "plain RTN" baseline it is compared with; Δ is not learned (Q-VDiT trains it at
lr 1e-6; at our budget that moves nothing).

Activations: Q-VDiT quantizes activations dynamically per token, asymmetric (``2^a`` levels over [min, max]). The
project's kernels take symmetric per-token codes (``quant.quantize_act`` with one group per token: ``2^a − 1``
levels over [−absmax, absmax]). We use the symmetric form (``act_sym=True``, the default) so that a trained layer
runs on the integer path the backend executes (``quant.qlinear_ref``; Triton kernels match it); asymmetric
per-token is available as a fake-quant for comparison (it gives about 2× finer steps on one-signed inputs such as
the FFN's post-GELU activations, which the integer kernels cannot express without a zero-point term).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import quant
from ..quant.act import ACT_BITS as _ACT_BITS
from ..quant.minmax import codes_for, minmax
from ..quant.offset import shifted
from ..quant.qweight import WEIGHT_BITS

ACT_BITS = (*_ACT_BITS, 16)


@dataclass(frozen=True)
class TQEConfig:
    """One layer's quantization and estimator shape. ``act_bits`` 16 = activations not quantized."""
    weight_bits: int = 3
    act_bits: int = 6
    rank: int = 32
    act_sym: bool = True
    lora: bool = True      # False: plain RTN layer (no learned tensors), for baselines and the faithful W8A8 MLP

    def __post_init__(self):
        if self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"qvdit weight_bits={self.weight_bits} is not allowed; expected one of "
                             f"{WEIGHT_BITS}")
        if self.act_bits not in ACT_BITS:
            raise ValueError(f"qvdit act_bits={self.act_bits} is not allowed; expected one of {ACT_BITS}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"qvdit rank={self.rank!r} is not allowed; expected an int >= 1")


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def fake_quant_act(x: torch.Tensor, bits: int, sym: bool = True) -> torch.Tensor:
    """Per-token fake quantization with a straight-through estimator, fp32.

    ``sym``: exactly ``dequantize_act(quantize_act(x, bits, K))`` in the forward pass (the kernel contract);
    otherwise asymmetric ``2^bits`` levels over the token's [min, max] (Q-VDiT). An all-zero token stays zero.
    """
    xf = x.float()
    if sym:
        qmax = quant.qmax_for(bits)
        s = xf.detach().abs().amax(-1, keepdim=True) / qmax
        ok = torch.isfinite(s) & (s > 0)
        safe = torch.where(ok, s, torch.ones_like(s))
        q = torch.clamp(round_ste(xf / safe), -qmax, qmax)
        return torch.where(ok, q * s, torch.zeros_like(xf))
    levels = 2**bits - 1
    lo = xf.detach().amin(-1, keepdim=True).clamp(max=0.0)
    hi = xf.detach().amax(-1, keepdim=True).clamp(min=0.0)
    d = (hi - lo) / levels
    ok = d > 0
    safe = torch.where(ok, d, torch.ones_like(d))
    z = torch.round(-lo / safe)
    q = torch.clamp(round_ste(xf / safe) + z, 0, levels)
    return torch.where(ok, (q - z) * d, torch.zeros_like(xf))


class TQELinear(nn.Module):
    """A quantized ``nn.Linear`` with Q-VDiT's learned error estimator. The FP weight is a frozen buffer.

    ``forward`` is the differentiable fake-quant (training); ``integer_forward`` runs the dvdq reference integer
    GEMM on the learned weight codes plus the rank-1 branch (evaluation; no grad).
    """

    def __init__(self, linear: nn.Linear, cfg: TQEConfig, frames: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"TQELinear wraps an nn.Linear, got {type(linear).__name__}")
        self.cfg = cfg
        self.frames = frames
        self.integer = False     # evaluation on the integer reference path (swap.set_integer)
        self.quant_act = True    # False: FP activations (Q-VDiT optimises the estimator with FP activations)
        w = linear.weight.detach().to(torch.float32)
        n, k = w.shape
        self.in_features, self.out_features = k, n
        self.register_buffer("weight", w.clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        _, scale, zero = minmax(w, cfg.weight_bits)
        self.register_buffer("wscale", scale)          # [N, 1] fp32
        self.register_buffer("wzero", zero)            # [N, 1] int32
        if cfg.lora:
            r = cfg.rank
            g = generator
            # A carries the direction, B (zero) the magnitude: W' = W at init. A ~ N(0, 1/N) keeps (B A)ᵀ's rows on
            # the weight's scale for B entries of O(|W|); a1 ~ N(0, 1/K) likewise for the rank-1 branch.
            self.lora_A = nn.Parameter(torch.randn(r, n, generator=g) / n**0.5)
            self.lora_B = nn.Parameter(torch.zeros(k, r))
            self.a1 = nn.Parameter(torch.randn(1, k, generator=g) / k**0.5)
            self.b1 = nn.Parameter(torch.zeros(n, 1))
            self.mask = nn.Parameter(torch.ones(frames)) if frames else None
        else:
            self.lora_A = self.lora_B = self.a1 = self.b1 = self.mask = None

    # -- weights -----------------------------------------------------------------------------------------------
    def shifted_weight(self) -> torch.Tensor:
        """``W + (B A)ᵀ`` fp32 [N, K] (``W`` itself without an estimator)."""
        if self.lora_B is None:
            return self.weight
        return shifted(self.weight, self.lora_B, self.lora_A)

    def weight_codes(self) -> torch.Tensor:
        """The integer codes of the learned weight, uint8 [N, K] (what the backend would pack)."""
        with torch.no_grad():
            return codes_for(self.shifted_weight(), self.wscale[:, 0], self.wzero[:, 0].float(),
                             2**self.cfg.weight_bits - 1).to(torch.uint8)

    def qweight(self) -> torch.Tensor:
        """Fake-quantized weight Ŵ [N, K] with a straight-through estimator."""
        w = self.shifted_weight()
        d, z = self.wscale, self.wzero.float()
        q = torch.clamp(round_ste(w / d) + z, 0, 2**self.cfg.weight_bits - 1)
        return d * (q - z)

    # -- forward -----------------------------------------------------------------------------------------------
    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.act_bits == 16 or not self.quant_act:
            return x.float()
        return fake_quant_act(x, self.cfg.act_bits, self.cfg.act_sym)

    def _rank1(self, xq: torch.Tensor) -> torch.Tensor | None:
        if self.b1 is None:
            return None
        r = (xq @ self.a1.T) * self.b1.T                 # [..., N]
        if self.mask is None:
            return r
        if r.dim() < 3 or r.shape[-2] % self.frames:
            raise ValueError(f"TQE token mask: {self.frames} frames do not divide the token axis of an input of "
                             f"shape {tuple(xq.shape)} (expected [..., F·tokens_per_frame, K])")
        lead, s, n = r.shape[:-2], r.shape[-2], r.shape[-1]
        r = r.reshape(*lead, self.frames, s // self.frames, n) * self.mask[:, None, None]
        return r.reshape(*lead, s, n)

    def _finish(self, y: torch.Tensor, xq: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Add the rank-1 branch (on the quantized activation) and the bias; cast back to the input dtype."""
        r = self._rank1(xq)
        if r is not None:
            y = y + r
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"TQELinear expects inputs [..., {self.in_features}], got shape {tuple(x.shape)}")
        if self.integer:
            return self.integer_forward(x)
        xq = self._act(x)
        y = xq @ self.qweight().T
        return self._finish(y, xq, x.dtype)

    @torch.no_grad()
    def integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer on the dvdq integer reference (``quant.qlinear_ref``): int32-exact products of the
        activation codes and the learned weight codes, then the rank-1 FP branch on the dequantized activation."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"TQELinear expects inputs [..., {self.in_features}], got shape {tuple(x.shape)}")
        bits = self.cfg.weight_bits
        packed = quant.pack(self.weight_codes(), bits)
        if self.cfg.act_bits == 16:
            y = quant.dequant_linear_ref(x, packed, self.wscale, self.wzero, None, bits)
            xq = x.float()
        else:
            if not self.cfg.act_sym:
                raise ValueError("TQELinear.integer_forward: asymmetric activations (act_sym=False) have no integer "
                                 "path in the dvdq kernels; use forward() (fake-quant)")
            codes, scales = quant.quantize_act(x, self.cfg.act_bits, self.in_features)
            y = quant.qlinear_ref(codes, scales, packed, self.wscale, self.wzero, None, bits, torch.float32)
            xq = quant.dequantize_act(codes, scales)
        return self._finish(y, xq, x.dtype)

    def learned(self) -> dict[str, torch.Tensor]:
        """The learned tensors (empty for a plain layer)."""
        out = {}
        for k in ("lora_A", "lora_B", "a1", "b1", "mask"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v.detach()
        return out

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"{self.in_features}->{self.out_features}, W{c.weight_bits}A{c.act_bits}"
                f"{'' if c.act_sym else ' asym'}, rank={c.rank if c.lora else 0}, mask={bool(self.frames)}")
