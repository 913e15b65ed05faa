"""Code storage for quantized weights (docs/numerics.md): the one definition of the kernel layout.

- 4-bit: two codes per uint8 along K, **low nibble = even k**; layout ``[N, K/2]`` (K-contiguous).
- 3-bit: eight codes per three bytes along K (little-endian bit stream), layout ``[N, 3K/8]``; a storage format for
  low-bit recipes. Kernels that run 3-bit weights read them from the 4-bit layout (codes ≤ 7 fit a nibble).
- 8-bit: one code per uint8, ``[N, K]``.

All codes are unsigned (``0 .. 2^b − 1``); zero-points live beside them.
"""
from __future__ import annotations

import torch


def _check_codes(q: torch.Tensor, bits: int, k_multiple: int) -> None:
    if q.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(q.shape)}")
    if q.shape[1] % k_multiple:
        raise ValueError(f"{bits}-bit packing needs K to be a multiple of {k_multiple}, got K={q.shape[1]}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 2**bits - 1):
        raise ValueError(f"codes out of range for {bits} bits: [{int(q.min())}, {int(q.max())}]")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 -> [N, K/2] uint8, low nibble = even k."""
    _check_codes(q, 4, 2)
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """[N, K/2] uint8 -> [N, K] uint8 codes."""
    lo = p & 0xF
    hi = p >> 4
    return torch.stack([lo, hi], dim=-1).reshape(p.shape[0], p.shape[1] * 2)


def pack_int3(q: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..7 -> [N, 3K/8] uint8: each run of 8 codes is a 24-bit little-endian word."""
    _check_codes(q, 3, 8)
    n, k = q.shape
    q = q.to(torch.int32).reshape(n, k // 8, 8)
    word = (q << (3 * torch.arange(8, dtype=torch.int32, device=q.device))).sum(-1)  # 24 bits
    out = torch.stack([(word >> (8 * i)) & 0xFF for i in range(3)], dim=-1)
    return out.to(torch.uint8).reshape(n, k // 8 * 3)


def unpack_int3(p: torch.Tensor) -> torch.Tensor:
    """[N, 3K/8] uint8 -> [N, K] uint8 codes."""
    n, nb = p.shape
    if nb % 3:
        raise ValueError(f"3-bit packed rows must have a multiple of 3 bytes, got {nb}")
    b = p.to(torch.int32).reshape(n, nb // 3, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = torch.stack([(word >> (3 * i)) & 7 for i in range(8)], dim=-1)
    return codes.to(torch.uint8).reshape(n, nb // 3 * 8)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Kernel layout for ``bits``: nibbles for 3/4 bits, bytes for 8 bits."""
    if bits in (3, 4):
        _check_codes(q, bits, 2)
        return pack_int4(q)
    if bits == 8:
        _check_codes(q, 8, 1)
        return q.to(torch.uint8).contiguous()
    raise ValueError(f"weight bits must be one of 3, 4, 8; got {bits}")


def unpack(p: torch.Tensor, bits: int) -> torch.Tensor:
    if bits in (3, 4):
        return unpack_int4(p)
    if bits == 8:
        return p
    raise ValueError(f"weight bits must be one of 3, 4, 8; got {bits}")


def codes_per_byte(bits: int) -> int:
    """Codes stored per byte along K in the kernel layout: 2 for the 3/4-bit nibble layout, 1 for 8-bit codes."""
    if bits in (3, 4):
        return 2
    if bits == 8:
        return 1
    raise ValueError(f"weight bits must be one of 3, 4, 8; got {bits}")


def packed_shape(n: int, k: int, bits: int) -> tuple[int, int]:
    """Shape of the kernel layout (uint8) for an [N, K] code matrix."""
    return n, k // codes_per_byte(bits)


def packed_bytes(n: int, k: int, bits: int) -> int:
    """Bytes of the kernel layout for an [N, K] code matrix."""
    rows, cols = packed_shape(n, k, bits)
    return rows * cols
