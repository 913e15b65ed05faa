"""Block-diagonal normalized Hadamard rotation (docs/numerics.md §2).

``rotate(x, block)`` computes ``x · H_bd`` along the last dim, with ``H_bd = I ⊗ (D·H_g)``: a normalized Sylvester
Hadamard ``H_g`` (``H_g H_gᵀ = I``) of size ``block``, optionally preceded by a seeded ±1 diagonal ``D`` of length
``block`` (the same signs in every block, so a kernel needs one ``g×g`` matrix). Weights are rotated offline with
the identical matrix (``W · H_bd``), so ``(x H)(W H)ᵀ = x Wᵀ``.

Cost: ``2·M·K·g`` FLOPs as a dense per-block matmul; bytes ``M·K`` in and out.
"""
from __future__ import annotations

import functools

import torch

NO_SIGNS = -1  # sign_seed value meaning "plain Sylvester Hadamard"


def _check_block(block: int) -> None:
    if not isinstance(block, int) or block < 1 or block & (block - 1):
        raise ValueError(f"Hadamard block must be a power of two >= 1, got {block!r}")


@functools.lru_cache(maxsize=64)
def _matrix_cpu(block: int, sign_seed: int) -> torch.Tensor:
    _check_block(block)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:  # Sylvester: H_2n = [[H, H], [H, -H]]
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / block**0.5
    if sign_seed != NO_SIGNS:
        gen = torch.Generator().manual_seed(int(sign_seed))
        signs = torch.randint(0, 2, (block,), generator=gen, dtype=torch.int64) * 2 - 1
        h = signs.to(torch.float64)[:, None] * h  # D·H: flip input channels, then rotate
    return h.to(torch.float32)


@functools.lru_cache(maxsize=64)
def _matrix_on(block: int, sign_seed: int, device: str) -> torch.Tensor:
    """The fp32 matrix on ``device``, made once (read-only use): a host-to-device copy per call would also be an
    illegal operation inside a CUDA-graph capture (weight-only layers rotate through here under
    ``mode="reduce-overhead"``; the first, uncaptured call fills the cache)."""
    return _matrix_cpu(block, sign_seed).to(device)


def hadamard_matrix(block: int, sign_seed: int = NO_SIGNS, device=None, dtype=torch.float32) -> torch.Tensor:
    """The ``block × block`` orthonormal rotation ``D·H`` used for every diagonal block (a fresh tensor)."""
    _check_block(block)
    return _matrix_cpu(block, sign_seed).to(device=device, dtype=dtype, copy=True)


def rotate(x: torch.Tensor, block: int, sign_seed: int = NO_SIGNS) -> torch.Tensor:
    """``x · H_bd`` over the last dim, computed and returned in fp32. ``block`` must divide ``x.shape[-1]``."""
    k = x.shape[-1]
    _check_block(block)
    if k % block:
        raise ValueError(f"Hadamard block {block} does not divide the last dim {k} (shape {tuple(x.shape)})")
    h = _matrix_on(block, sign_seed, str(x.device))
    xf = x.to(torch.float32).reshape(*x.shape[:-1], k // block, block)
    return (xf @ h).reshape(x.shape)
