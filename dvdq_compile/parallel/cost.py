"""Step time of a Wan-style DiT on N GPUs with Ulysses and CFG-parallel: compute, all-to-all traffic, overlap.

Sympy expressions in the model's sizes, like ``kernels/cost.py`` (FLOPs = 2 per multiply-add). One transformer
call on ``S`` video tokens and ``L`` text tokens, hidden size ``d``, FFN size ``f``, ``layers`` blocks:

- linears per block: self-attention q, k, v, o (``4 · 2·S·d²``), cross-attention q, o on the video tokens and k, v
  on the text (``2 · 2·S·d² + 2 · 2·L·d²``), FFN up and down (``2 · 2·S·d·f``);
- attention per block: self ``4·S²·d`` (QKᵀ and PV), cross ``4·S·L·d``.

Ulysses over ``u`` ranks (diffusers' ``TemplatedUlyssesAttention``): each rank holds ``S/u`` tokens; self-attention
all-to-alls q, k and v before and the output after (4 per block), each moving ``(S/u)·d·bytes·(u−1)/u`` out of
every rank. Cross-attention runs locally (diffusers does not shard Wan's text: each rank attends its queries to the
whole text). Every other op is per token and shards perfectly. CFG-parallel over ``c`` ranks gives each group one
of the two guidance branches: no traffic but one gather of the output per step.

Time per rank = compute / (peak · efficiency) + collectives / bandwidth, minus what overlaps (``overlap`` in [0, 1]
of the all-to-all hidden behind compute; Ulysses' q/k/v exchange is on the critical path of attention, so 0 is the
default and the table also gives the fully-overlapped bound).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

S, L, D, F, LAYERS, U = sympy.symbols("S L d f layers u", positive=True, integer=True)


def linear_flops(s=S, l=L, d=D, f=F):
    """Linear FLOPs of one block, one call (batch 1)."""
    return 4 * 2 * s * d * d + 2 * 2 * s * d * d + 2 * 2 * l * d * d + 2 * 2 * s * d * f


def attention_flops(s=S, l=L, d=D):
    """Attention FLOPs of one block, one call: self ``4·S²·d`` plus cross ``4·S·L·d``."""
    return 4 * s * s * d + 4 * s * l * d


def ulysses_bytes(s=S, d=D, u=U, elem: int = 2):
    """Bytes one rank sends per block in Ulysses self-attention (q, k, v and the output: 4 all-to-alls)."""
    return 4 * (s / u) * d * elem * (u - 1) / u


@dataclass(frozen=True)
class Model:
    name: str
    d: int
    f: int
    layers: int
    heads: int
    text: int = 512

    def tokens(self, frames: int, height: int, width: int, vae_t: int = 4, vae_s: int = 8, patch=(1, 2, 2)) -> int:
        """Video tokens: Wan's VAE (4x time, 8x space, first frame alone) and (1, 2, 2) patches."""
        lat_f = (frames - 1) // vae_t + 1
        return (lat_f // patch[0]) * (height // vae_s // patch[1]) * (width // vae_s // patch[2])


WAN_14B = Model("Wan 2.1-14B", d=5120, f=13824, layers=40, heads=40)


@dataclass(frozen=True)
class GPU:
    name: str
    bf16: float  # dense tensor-core FLOP/s
    int8: float  # dense int8 OP/s
    all_to_all: float  # achieved all-to-all bandwidth out of one GPU, B/s


# NVIDIA's published dense peaks; all-to-all: NVLink 4 through NVSwitch is 450 GB/s per direction per GPU, of which
# NCCL all-to-all reaches roughly 80% at these message sizes (tens of MB): 360 GB/s. An assumption, not measured here.
H100 = GPU("H100 SXM", bf16=989e12, int8=1979e12, all_to_all=360e9)


@dataclass(frozen=True)
class Efficiency:
    """Fraction of peak each kind of work reaches (assumptions, stated in the results table)."""
    gemm_bf16: float = 0.70  # cuBLAS bf16 on M ~ 1e4-1e5, N, K >= 5120
    attention: float = 0.60  # FlashAttention-3 bf16, head_dim 128: ~600 TFLOP/s on H100
    gemm_w4a8: float = 0.80  # the static instrument's estimate of the int8-expanded W4A8 loop (bench/results/sass.md)
    act_quant: float = 0.05  # activation quantization's time as a share of the W4A8 GEMM (norm-fused where possible)


def step_seconds(model: Model, tokens: int, gpus: int, *, ulysses: int, cfg: int, precision: str,
                 gpu: GPU = H100, eff: Efficiency = Efficiency(), overlap: float = 0.0, branches: int = 2) -> dict:
    """Seconds per denoising step (``branches`` = 2 transformer calls with CFG) on ``gpus = cfg · ulysses`` ranks.

    ``precision``: ``"bf16"`` or ``"w4a8"`` (dvdquant's linears; attention stays bf16 in both). Returns the parts:
    ``linear``, ``attention``, ``comm`` (unhidden), ``total`` seconds per rank per step, and the all-to-all bytes."""
    if cfg * ulysses != gpus:
        raise ValueError(f"cfg*ulysses = {cfg}*{ulysses} must equal gpus = {gpus}")
    if cfg not in (1, 2) or branches % cfg:
        raise ValueError(f"cfg={cfg}: CFG-parallel splits the {branches} guidance branches, so cfg is 1 or 2")
    if model.heads % ulysses:
        raise ValueError(f"ulysses={ulysses} must divide the {model.heads} heads of {model.name}")
    calls = branches // cfg  # transformer calls each rank makes per step
    subs = {S: tokens, L: model.text, D: model.d, F: model.f, U: ulysses}
    lin = float(linear_flops().subs(subs)) * model.layers * calls / ulysses
    att = float(attention_flops().subs(subs)) * model.layers * calls / ulysses
    if precision == "bf16":
        t_lin = lin / (gpu.bf16 * eff.gemm_bf16)
    elif precision == "w4a8":
        t_lin = lin / (gpu.int8 * eff.gemm_w4a8) * (1 + eff.act_quant)
    else:
        raise ValueError(f"precision={precision!r}: expected 'bf16' or 'w4a8'")
    t_att = att / (gpu.bf16 * eff.attention)
    nbytes = float(ulysses_bytes().subs(subs)) * model.layers * calls if ulysses > 1 else 0.0
    t_comm = nbytes / gpu.all_to_all
    hidden = min(overlap * t_comm, t_lin + t_att)
    return dict(linear=t_lin, attention=t_att, comm=t_comm - hidden, total=t_lin + t_att + t_comm - hidden,
                comm_bytes=nbytes)
