"""What the Triton kernels can run: one capability query for the three ops, and the launch plan of a case they run.

- :func:`unsupported_reason` ``(op, wbits, wscale_shape, act_group, K, rotate)``: ``None`` when ``op`` (one of
  :data:`OPS`) runs this case, else why not (the text the compile report shows).
- :func:`plan` ``(op, act_group, K, rotate)``: ``(per_token, block)`` for a launch; ``ValueError`` with the reason
  when the activation side (group, rotation) is not a kernel case.

Weight side (``qlinear``, ``fused_qlinear``): bits :data:`WEIGHT_BITS` in the kernel layout of
:mod:`dvdq_compile.quant.pack` (:func:`pack_factor` codes per byte along K), one (Δ, z) per output row
(``wscale_shape == (N, 1)``), an activation group a power of two >= :data:`MIN_BLOCK_K` or ``K`` (per-token, K a
multiple of :data:`MIN_BLOCK_K`) small enough that the int32 group partial sum cannot overflow.
"""
from __future__ import annotations

from typing import NamedTuple

from ..quant.pack import codes_per_byte
from .tl_common import INTERPRET, is_pow2

OPS = ("act_quant", "qlinear", "fused_qlinear")

WEIGHT_BITS = (3, 4, 8)   # 3/4: nibble layout; 8: bytes with the q − 128 correction
MIN_BLOCK_K = 32          # int8 tl.dot on NVIDIA
MAX_BLOCK_K = 256 if INTERPRET else 128   # widest K block of an int8 dot (qlinear BLOCK_K, fused per-token chunk)
TILE_MAX = 256            # act_quant: widest column tile (tile mode) / chunk (per-token mode)
ROT_MIN, ROT_MAX = 16, 256   # Hadamard blocks a kernel can hold (tl.dot needs K >= 16 on NVIDIA)
FUSED_MAX_GROUP = 256     # fused_qlinear: widest scale group (one group is one dot K block)


class Plan(NamedTuple):
    """A launch: ``per_token`` (one scale per row, two passes / a runtime K loop) and ``block``: the column tile
    ``T`` (act_quant), ``BLOCK_K`` (qlinear), or ``GROUP_K``, the group or per-token chunk (fused_qlinear)."""
    per_token: bool
    block: int


def pack_factor(wbits: int) -> int:
    """Codes per stored byte along K in the kernel layout (the one definition: :func:`quant.pack.codes_per_byte`)."""
    return codes_per_byte(wbits)


def _weight_reason(wbits: int, wscale_shape, act_group: int, k: int) -> str | None:
    """The integer GEMM's conditions (weight layout, scale shape, activation group)."""
    if wbits not in WEIGHT_BITS:
        return f"weight bits {wbits}: kernels take {WEIGHT_BITS} (3/4 in the nibble layout, 8 one code per byte)"
    if len(wscale_shape) != 2 or wscale_shape[1] != 1:
        return f"weight scales {tuple(wscale_shape)}: kernels take one (scale, zero) per output row ([N, 1])"
    if k <= 0 or k % pack_factor(wbits):
        return f"K={k} must be a positive multiple of {pack_factor(wbits)} for {wbits}-bit weights"
    if act_group < 1 or k % act_group:
        return f"activation group {act_group} does not divide K={k}"
    if 127 * (2**wbits - 1) * act_group >= 2**31:
        return (f"activation group {act_group} with {wbits}-bit weights: the int32 group partial sum "
                f"(up to 127·{2**wbits - 1}·{act_group}) could overflow")
    if is_pow2(act_group) and act_group >= MIN_BLOCK_K:
        return None
    if act_group == k and k % MIN_BLOCK_K == 0:
        return None
    return (f"activation group {act_group} (K={k}): kernels take a power-of-two group >= {MIN_BLOCK_K} or a "
            f"per-token scale with K a multiple of {MIN_BLOCK_K}")


def _act_quant_plan(group: int, rotate: int, k: int) -> Plan | str:
    """Tile mode (power-of-two group: T a multiple of group and block, up to TILE_MAX) or per-token (group == K)."""
    if group < 1 or k % group:
        return f"activation scale group {group} does not divide K={k}"
    if rotate:
        if not is_pow2(rotate) or not ROT_MIN <= rotate <= ROT_MAX:
            return f"Triton act_quant supports Hadamard blocks {ROT_MIN}..{ROT_MAX} (powers of two), got {rotate}"
        if k % rotate:
            return f"Hadamard block {rotate} does not divide K={k}"
    base = max(group, rotate)
    if is_pow2(group) and base <= TILE_MAX:
        t = base
        while t * 2 <= TILE_MAX and k % (t * 2) == 0:
            t *= 2
        return Plan(False, t)
    if group == k:
        return Plan(True, max(rotate, 128 if not INTERPRET else TILE_MAX))
    return (f"Triton act_quant needs a power-of-two group <= {TILE_MAX} (with the Hadamard block) or "
            f"group == K (per-token); got group={group}, rotate={rotate}, K={k}")


def _qlinear_plan(group: int, k: int) -> Plan:
    """Per-token when the one group is wider than a dot block (or not a power of two); BLOCK_K divides the group
    (K when per-token). Assumes :func:`_weight_reason` passed."""
    per_token = group == k and not (is_pow2(group) and group <= MAX_BLOCK_K)
    if not per_token:
        return Plan(False, min(group, MAX_BLOCK_K))
    bk = MAX_BLOCK_K
    while k % bk:
        bk //= 2
    return Plan(True, bk)


def _fused_plan(group: int, rotate: int, k: int) -> Plan | str:
    """Group mode (the group is the dot's K block and holds whole Hadamard blocks) or per-token (chunks of K)."""
    if group < 1 or k % group:
        return f"activation scale group {group} does not divide K={k}"
    if rotate and (not is_pow2(rotate) or not ROT_MIN <= rotate <= FUSED_MAX_GROUP or k % rotate):
        return (f"Hadamard block {rotate}: fused kernel takes a power of two in [{ROT_MIN}, {FUSED_MAX_GROUP}] "
                f"dividing K={k}")
    if is_pow2(group) and MIN_BLOCK_K <= group <= FUSED_MAX_GROUP and group >= rotate:
        return Plan(False, group)
    if group == k and k % MIN_BLOCK_K == 0:
        chunk = MAX_BLOCK_K
        while k % chunk:
            chunk //= 2
        if chunk >= max(rotate, MIN_BLOCK_K):
            return Plan(True, chunk)
    return (f"fused qlinear takes a power-of-two group in [{MIN_BLOCK_K}, {FUSED_MAX_GROUP}] that the Hadamard "
            f"block divides, or group == K (per-token); got group={group}, rotate={rotate}, K={k}")


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _activation_plan(op: str, act_group: int, k: int, rotate: int) -> Plan | str:
    if op == "act_quant":
        return _act_quant_plan(act_group, rotate, k)
    if op == "fused_qlinear":
        return _fused_plan(act_group, rotate, k)
    return _qlinear_plan(act_group, k)


def unsupported_reason(op: str, wbits: int | None, wscale_shape, act_group: int, K: int,
                       rotate: int = 0) -> str | None:
    """Why the Triton kernel ``op`` cannot run this case (``None``: it can).

    ``act_group``: the activation scale group (``K`` for a per-token scale); ``rotate``: the Hadamard block (0:
    none). ``act_quant`` ignores ``wbits``/``wscale_shape`` (pass None); ``qlinear`` takes codes, so it ignores
    ``rotate``; ``fused_qlinear`` needs both sides.
    """
    _check_op(op)
    if op != "act_quant":
        why = _weight_reason(wbits, tuple(wscale_shape), act_group, K)
        if why or op == "qlinear":
            return why
    p = _activation_plan(op, act_group, K, rotate)
    return p if isinstance(p, str) else None


def plan(op: str, act_group: int, K: int, rotate: int = 0) -> Plan:
    """The launch plan of ``op`` for this activation group/rotation, or ``ValueError`` with the reason.

    Weight conditions are not checked here (:func:`unsupported_reason` does); for ``qlinear`` call it only once
    :func:`unsupported_reason` passed.
    """
    _check_op(op)
    p = _activation_plan(op, act_group, K, rotate)
    if isinstance(p, str):
        raise ValueError(p)
    return p
