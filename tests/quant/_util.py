"""Shared helpers for tests/quant: weight distributions and independent error measures."""
from __future__ import annotations

import math

import torch

DISTS = ("gauss", "laplace", "uniform", "student_t3", "outliers", "positive", "constant", "zero", "mixed")


def student_t(shape, df: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(shape, generator=gen)
    chi2 = torch.randn(tuple(shape) + (df,), generator=gen).square().sum(-1)
    return z / (chi2 / df).sqrt()


def make_weight(dist: str, n: int, k: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """[n, k] fp32 weight rows drawn from ``dist`` (see DISTS)."""
    g = torch.Generator().manual_seed(seed)
    if dist == "gauss":
        w = torch.randn(n, k, generator=g)
    elif dist == "laplace":
        u = torch.rand(n, k, generator=g).clamp(1e-7, 1 - 1e-7) - 0.5
        w = -u.sign() * torch.log1p(-2 * u.abs())
    elif dist == "uniform":
        w = torch.rand(n, k, generator=g) * 2 - 1
    elif dist == "student_t3":
        w = student_t((n, k), 3, g)
    elif dist == "outliers":
        w = torch.randn(n, k, generator=g) * 0.05
        n_out = max(1, k // 64)
        idx = torch.randint(0, k, (n, n_out), generator=g)
        val = (torch.rand(n, n_out, generator=g) * 2 - 1) * 20
        w.scatter_(1, idx, val)
    elif dist == "positive":
        w = torch.rand(n, k, generator=g) + 0.5
    elif dist == "constant":
        c = torch.randn(n, 1, generator=g)
        w = c.expand(n, k).clone()
    elif dist == "zero":
        w = torch.zeros(n, k)
    elif dist == "mixed":  # one row of each kind, cycling
        parts = [make_weight(d, 1, k, seed + i) for i, d in enumerate(DISTS[:-1])]
        w = torch.cat([parts[i % len(parts)] for i in range(n)], 0)
    else:
        raise AssertionError(dist)
    return (w * scale).to(torch.float32)


def row_sq_err(w: torch.Tensor, what: torch.Tensor) -> torch.Tensor:
    """Per-row squared error in fp64."""
    return (w.double() - what.double()).square().sum(1)


def dequant_ref(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Independent fp64 Δ(q − z) for codes [N, K], scale/zero [N, G]."""
    n, k = codes.shape
    g = scale.shape[1]
    q = codes.to(torch.float64).reshape(n, g, k // g)
    return (scale.double()[..., None] * (q - zero.double()[..., None])).reshape(n, k)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref = ref.double()
    noise = (ref - approx.double()).square().sum()
    return 10 * math.log10(float(ref.square().sum()) / max(float(noise), 1e-300))
