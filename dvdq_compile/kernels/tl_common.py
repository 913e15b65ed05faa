"""Shared pieces of the Triton kernels: interpreter detection, config lists, and the ``@triton.jit`` helpers the
kernels are made of (Triton inlines them; constexpr arguments stay constexpr).

Platform facts these encode (docs/architecture.md §8; rounding and division: docs/numerics.md §7):

- ``TRITON_INTERPRET=1`` is read when ``@triton.jit`` runs, so :data:`INTERPRET` is fixed at import time.
- The interpreter breaks with ``@triton.autotune`` over >= 2 configs: :func:`configs` returns one config there.
- The interpreter has no ``libdevice.rint``: round half to even with ``(y + 1.5·2²³) − 1.5·2²³`` (|y| < 2²²); on a
  GPU the kernels use ``libdevice.rint`` (``USE_RINT``).
- fp32 ``/`` lowers to an approximate ``div.full.f32`` on NVIDIA; the kernels use ``tl.math.div_rn`` (IEEE,
  what ``torch`` does) so codes and scales are bit-exact against the reference.
- bf16 arithmetic and bf16 ``tl.dot`` are broken in the interpreter: every load is cast to fp32 before math, and
  the 16-bit Hadamard path (:data:`ROT_PM1`) is used for bf16 only on a GPU.
- NaN constants in the helpers are ``math.nan``, not a ``tl.constexpr`` global: Triton checks that a global read
  by two helpers of one kernel has one value, and ``nan != nan`` fails that check.

Helpers, by the kernels that use them:

- activation side (``act_quant``, the ``fused_qlinear`` prologue): :func:`load_hadamard`, :func:`load_rotated`,
  :func:`rotated`, :func:`chunk_mask`, :func:`running_absmax`, :func:`row_absmax`, :func:`quantize_rows`,
  :func:`quantize_groups`, :func:`quotient`, :func:`round_half_even`
- integer GEMM (``qlinear``, ``fused_qlinear``, ``gelu_quant``): :func:`output_tile` (:func:`swizzle`),
  :func:`weight_prologue`, :func:`int_dot` (:func:`load_weight_tile`, :func:`row_sum`), :func:`zero_correct`,
  :func:`scale_bias`, :func:`epilogue`
- quantizing epilogue (``gelu_quant``): :func:`round_to` (:func:`round_bf16`), :func:`gelu`
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

try:  # GPU rounding; the interpreter cannot run it (docs/numerics.md §7) and never takes that branch
    from triton.language.extra import libdevice as _libdevice
except Exception:  # pragma: no cover - very old triton
    _libdevice = None

from ..quant.hadamard import hadamard_matrix

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
USE_RINT = (not INTERPRET) and _libdevice is not None

# Rotation modes (constexpr ROT_MODE)
ROT_FP32 = 0  # x (fp32) · H (fp32, normalized), input_precision="ieee": no TF32 on the GPU
ROT_PM1 = 1   # x (fp16/bf16, exact) · S (±1 in the same dtype, exact), fp32 accumulate, then · 1/sqrt(g)

OUT_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}   # the OUT constexpr of :func:`round_to`
RS_COLS: tl.constexpr = tl.constexpr(16)  # width of the row-sum dot (wgmma needs N >= 8)
# Compiled (GPU) code: quotients by one correctly rounded reciprocal per group and two FMAs (:func:`quotient`), and a
# NaN-propagating max reduction (:func:`row_absmax`). The interpreter's tl.fma rounds twice (numpy) and it runs a custom
# reduction in Python element by element, so there the kernels divide with div_rn and reduce with tl.max plus an
# explicit NaN flag (the same result).
FMA_DIV: tl.constexpr = tl.constexpr(not INTERPRET)


# ----------------------------------------------------------------------------------------------------------------
# activation side: rotate, absmax, quantize

@triton.jit
def round_half_even(y, USE_RINT: tl.constexpr):
    """Round to nearest, ties to even (``torch.round``); exact for |y| < 2^22, passes ±inf and NaN through."""
    if USE_RINT:
        r = _libdevice.rint(y)
    else:
        r = (y + 12582912.0) - 12582912.0  # 1.5 * 2**23
        # |y| >= 2^22 is already an integer (and ±inf must stay inf, not become NaN through inf - inf)
        r = tl.where(tl.abs(y) < 4194304.0, r, y)
    return r


@triton.jit
def rotate_tile(x, h, BM: tl.constexpr, T: tl.constexpr, ROT: tl.constexpr, ROT_MODE: tl.constexpr,
                ROT_SCALE: tl.constexpr):
    """``x`` [BM, T] (T a multiple of ROT) times ``I ⊗ H`` along the columns, returned as fp32 [BM, T].

    ROT_FP32: ``x`` fp32, ``h`` fp32 normalized. ROT_PM1: ``x`` and ``h`` (±1) 16-bit, products exact, fp32
    accumulation, one fp32 multiply by ``1/sqrt(ROT)``. FLOPs ``2·BM·T·ROT``.
    """
    xr = tl.reshape(x, (BM * (T // ROT), ROT))
    if ROT_MODE == 0:
        y = tl.dot(xr, h, input_precision="ieee", out_dtype=tl.float32)
    else:
        y = tl.dot(xr, h, out_dtype=tl.float32) * ROT_SCALE
    return tl.reshape(y, (BM, T))


@triton.jit
def load_hadamard(h_ptr, ROT: tl.constexpr):
    """The [ROT, ROT] rotation matrix (row-major at ``h_ptr``); ``None`` when ROT == 0 (no rotation)."""
    if ROT > 0:
        offs_r = tl.arange(0, ROT)
        h = tl.load(h_ptr + offs_r[:, None] * ROT + offs_r[None, :])
    else:
        h = None
    return h


@triton.jit
def load_rotated(x_ptrs, mask, h, BLOCK_M: tl.constexpr, T: tl.constexpr, ROT: tl.constexpr,
                 ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr):
    """The activation tile at ``x_ptrs`` [BLOCK_M, T] (0 where ``mask`` is off), rotated by ``I ⊗ H`` when
    ROT > 0, as fp32."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    return rotated(x, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)


@triton.jit
def rotated(x, h, BLOCK_M: tl.constexpr, T: tl.constexpr, ROT: tl.constexpr, ROT_MODE: tl.constexpr,
            ROT_SCALE: tl.constexpr):
    """A tile in registers [BLOCK_M, T] (16-bit or fp32), rotated by ``I ⊗ H`` when ROT > 0, as fp32."""
    if ROT > 0:
        if ROT_MODE == 0:
            x = x.to(tl.float32)
        xr = rotate_tile(x, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
    else:
        xr = x.to(tl.float32)
    return xr


@triton.jit
def quantize_groups(xr, clip, BLOCK_M: tl.constexpr, T: tl.constexpr, GROUP: tl.constexpr, QMAX: tl.constexpr,
                    USE_RINT: tl.constexpr, HAS_CLIP: tl.constexpr):
    """Tile mode: the T // GROUP whole groups of each row of ``xr`` [BLOCK_M, T] -> (int8 codes [BLOCK_M, T], scales
    [BLOCK_M, T // GROUP]); ``clip`` (a scalar, read when HAS_CLIP) multiplies each group's absmax."""
    x3 = tl.reshape(xr, (BLOCK_M, T // GROUP, GROUP))
    amax = row_absmax(x3, 2)
    if HAS_CLIP:
        amax = amax * clip
    c, s = quantize_rows(x3, amax[:, :, None], QMAX, USE_RINT)
    return tl.reshape(c, (BLOCK_M, T)).to(tl.int8), tl.reshape(s, (BLOCK_M, T // GROUP))


@triton.jit
def chunk_mask(mask_m, offs_k, K, EVEN_K: tl.constexpr):
    """Mask of a [BLOCK_M, T] chunk at columns ``offs_k``: the rows, and the columns < K unless EVEN_K (T | K)."""
    if EVEN_K:
        mask = mask_m[:, None]
    else:
        mask = mask_m[:, None] & (offs_k[None, :] < K)
    return mask


@triton.jit
def running_absmax(x_rows, mask_m, h, K, BLOCK_M: tl.constexpr, T: tl.constexpr, ROT: tl.constexpr,
                   ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr, EVEN_K: tl.constexpr):
    """Per-token scale pass: ``max_k |x̃[m, k]|`` over the whole row (rotated in chunks of T columns), NaN if any
    x̃ in the row is NaN. ``x_rows`` [BLOCK_M, 1] points at column 0 of each row."""
    amax = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, K, T):
        offs_k = k0 + tl.arange(0, T)
        mask = chunk_mask(mask_m, offs_k, K, EVEN_K)
        xr = load_rotated(x_rows + offs_k[None, :], mask, h, BLOCK_M, T, ROT, ROT_MODE, ROT_SCALE)
        amax = _max_nan(amax, row_absmax(xr, 1))
    return amax


@triton.jit
def quotient(x, s):
    """``RN(x / s)``, IEEE round to nearest, for fp32 ``x`` [..., G] and one finite ``s > 0`` per row [..., 1].

    On a GPU (FMA_DIV): Markstein's correction — ``r = RN(1/s)`` once per row (one ``div_rn``), ``q = RN(x·r)``
    (within an ulp of x/s), ``e = x − q·s`` exact by FMA, ``RN(q + e·r)`` by FMA is the correctly rounded quotient
    (Markstein's theorem; no overflow or underflow on the way: x and s are first scaled by 2^64, exactly, when
    s < 2^-64, and |x/s| <= qmax). Per element a multiply and two FMAs instead of ``div.rn.f32``'s ~30 SASS
    instructions (bench/results/sass.md). Tests: tests/kernels/test_quotient.py checks the sequence against IEEE
    division with exact FMA arithmetic; on a GPU the kernels' codes are compared bit for bit with the reference."""
    if FMA_DIV:
        k = tl.where(s < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)   # 2^-64, 2^64
        sk = s * k
        xk = x * k
        r = tl.math.div_rn(tl.full(sk.shape, 1.0, tl.float32), sk)
        q = xk * r
        e = tl.fma(-q, sk, xk)
        q = tl.fma(e, r, q)
    else:
        q = tl.math.div_rn(x, s)
    return q


@triton.jit
def quantize_rows(xr, amax, QMAX: tl.constexpr, USE_RINT: tl.constexpr):
    """Codes (fp32 integer values) for ``xr`` [..., G] with row absmax ``amax`` [..., 1]; returns (codes, scale).

    Exactly ``quant.quantize_act``: ``s = amax / qmax``; ``c = round(x / s)`` clamped to ±qmax where ``s`` is
    finite and > 0; codes 0 in a group whose scale is 0 (all-zero) or non-finite (NaN/Inf inside).
    """
    s = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    ok = ((s - s) == 0.0) & (s > 0.0)  # finite and positive
    safe = tl.where(ok, s, 1.0)
    c = round_half_even(quotient(xr, safe), USE_RINT)
    c = tl.where(c > QMAX, QMAX, c)
    c = tl.where(c < -QMAX, -QMAX, c)
    c = tl.where(ok, c, 0.0)
    return c, s


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def row_absmax(xr, AXIS: tl.constexpr):
    """``max |x|`` along AXIS, NaN if any element is NaN (torch's ``amax``; a plain GPU ``max`` drops NaN): one
    reduction with a NaN-propagating maximum (``max.NaN.f32``)."""
    if FMA_DIV:
        a = tl.reduce(tl.abs(xr), AXIS, _max_nan)
    else:   # the interpreter runs a custom combine in Python element by element; its tl.max drops NaN
        a = tl.max(tl.abs(xr), axis=AXIS)
        nan = tl.max((xr != xr).to(tl.int32), axis=AXIS)
        a = tl.where(nan > 0, math.nan, a)
    return a


# ----------------------------------------------------------------------------------------------------------------
# integer GEMM: int8 codes × packed weight codes (layout: quant/pack.py, PACK = capability.pack_factor)

@triton.jit
def swizzle(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % per_group) % size_m)
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile (:func:`swizzle`d): ``(offs_m, offs_n, mask_m, mask_n)``, int64 offsets (M·K can
    pass 2^31)."""
    pid_m, pid_n = swizzle(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    return offs_m, offs_n, mask_m, mask_n


@triton.jit
def weight_prologue(w_ptr, wz_ptr, offs_n, mask_n, stride_wn, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """The weight side of a tile: ``(w_ptrs, z8, zc)``. ``w_ptrs`` [BLOCK_N, BLOCK_K/PACK] at K = 0; ``z8`` the
    zero-points as int8 (nibbles: ``q − z`` in registers), ``zc = 128 − z`` int32 (bytes: :func:`zero_correct`)."""
    offs_kh = tl.arange(0, BLOCK_K // PACK)
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_kh[None, :]
    zr = tl.load(wz_ptr + offs_n, mask=mask_n, other=0)
    z8 = zr.to(tl.int8)
    zc = 128 - zr
    return w_ptrs, z8, zc


@triton.jit
def load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """The dot's int8 B operand [BK, BN] from a stored tile [BN, BK/PACK].

    PACK == 2: nibbles (low = even k) -> ``q − z``. PACK == 1: bytes -> ``q − 128`` (the zero-point is added back
    by :func:`zero_correct`).
    """
    p = tl.load(w_ptrs, mask=mask_n[:, None], other=0)
    if PACK == 2:
        lo = (p & 0xF).to(tl.int8) - z8[:, None]
        hi = (p >> 4).to(tl.int8) - z8[:, None]
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    else:
        w = (p ^ 0x80).to(tl.int8, bitcast=True)   # q − 128 without widening
    return tl.trans(w)


@triton.jit
def row_sum(a, rs, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """Running ``Σ_k a[m, k]`` for the 8-bit zero-point correction as ``a @ 1`` [BM, RS_COLS] (every column the
    row sum): a tensor-core dot, where ``tl.sum`` over the int8 tile spilled ~160 B/thread on sm_90
    (tests/kernels/aot_sm90.py). A no-op for nibbles."""
    if PACK == 1:
        rs = tl.dot(a, tl.full((BLOCK_K, RS_COLS), 1, tl.int8), rs, out_dtype=tl.int32)
    return rs


@triton.jit
def int_dot(a, w_ptrs, mask_n, z8, acc_i, rs, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PACK: tl.constexpr):
    """One K block of the integer GEMM: ``acc_i += a @ B`` (int32, exact; ``acc_i`` None starts a new
    accumulator) with B the weight tile at ``w_ptrs`` (:func:`load_weight_tile`), and the 8-bit row sums ``rs``
    (:func:`row_sum`). ``a``: int8 activation codes [BLOCK_M, BLOCK_K]. Returns ``(acc_i, rs)``."""
    b = load_weight_tile(w_ptrs, mask_n, z8, BLOCK_N, BLOCK_K, PACK)
    acc_i = tl.dot(a, b, acc_i, out_dtype=tl.int32)
    rs = row_sum(a, rs, BLOCK_K, PACK)
    return acc_i, rs


@triton.jit
def zero_correct(acc_i, rs, zc, PACK: tl.constexpr):
    """8-bit weights: ``Σ a·(q − 128) + Σ a · (128 − z)`` = ``Σ a·(q − z)``, exact in int32."""
    if PACK == 1:
        acc_i += tl.max(rs, axis=1)[:, None] * zc[None, :]
    return acc_i


@triton.jit
def scale_bias(acc, ws_ptr, bias_ptr, offs_n, mask_n, HAS_BIAS: tl.constexpr):
    """``acc · Δ[n] (+ float32(bias[n]))``, fp32, in the reference's order (docs/numerics.md §6)."""
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
    acc = acc * ws[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    return acc


@triton.jit
def epilogue(acc, ws_ptr, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_cm, HAS_BIAS: tl.constexpr):
    """``acc · Δ[n] (+ bias[n])`` stored in the output dtype."""
    acc = scale_bias(acc, ws_ptr, bias_ptr, offs_n, mask_n, HAS_BIAS)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def round_bf16(y):
    """fp32 ``y`` rounded to the nearest bf16 (ties to even), returned as fp32: what ``tensor.to(bfloat16)`` does.
    Written on the bits because the interpreter's fp32 → bf16 cast truncates (docs/numerics.md §6); NaN passes."""
    u = y.to(tl.uint32, bitcast=True)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) << 16
    return tl.where(y != y, y, r.to(tl.float32, bitcast=True))


@triton.jit
def round_to(y, OUT: tl.constexpr):
    """fp32 ``y`` rounded to the output dtype (OUT: 0 fp32, 1 fp16, 2 bf16), kept in that dtype: on a GPU the
    native round-to-nearest cast; in the interpreter bf16 is rounded on the bits first (its cast truncates; the cast
    of an already-rounded value is exact)."""
    if OUT == 1:
        r = y.to(tl.float16)
    elif OUT == 2:
        if FMA_DIV:   # compiled: cvt.rn.bf16.f32, one instruction
            r = y.to(tl.bfloat16)
        else:
            r = round_bf16(y).to(tl.bfloat16)
    else:
        r = y
    return r


@triton.jit
def gelu(y, APPROX: tl.constexpr):
    """GELU of fp32 ``y`` in fp32: APPROX 1 (``approximate="tanh"``) torch's ``0.5·y·(1 + tanh(u))``,
    ``u = √(2/π)·(y + 0.044715·y³)``, computed as the equal ``y / (1 + 2^(−2u·log2 e))`` (no libdevice tanh in the
    interpreter; exp overflow gives ±0 as torch does); APPROX 0 ``0.5·y·(1 + erf(y/√2))``. A few fp32 ulps from
    torch's (whose 1 + tanh cancels for negative y), so a 16-bit rounding of the result can differ by one ulp
    (docs/numerics.md §5)."""
    if APPROX == 1:
        # 0.5·(1 + tanh(u)) = 1 / (1 + exp(−2u)), −2u·log2(e) = y·(A + B·y²): two multiplies, an FMA, ex2, an add,
        # a reciprocal and a multiply per element (the literal formula took twice as many)
        y2 = y * y
        g = y / (1.0 + tl.exp2(y * (-2.302208198144325 - 0.1029432395800235 * y2)))
    else:
        g = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    return g


# ----------------------------------------------------------------------------------------------------------------
# host helpers

def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def m_bucket(m: int) -> int:
    """Autotune key for the dynamic token dim: next power of two, capped (large M all tune alike)."""
    return min(next_pow2(m), 1 << 17)


def rot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float16 or (dtype == torch.bfloat16 and not INTERPRET):
        return ROT_PM1
    return ROT_FP32


@functools.lru_cache(maxsize=64)
def _hmat(block: int, sign_seed: int, mode: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = hadamard_matrix(block, sign_seed)  # fp32 D·H/sqrt(g), the reference matrix
    if mode == ROT_PM1:
        h = torch.sign(h).to(dtype)  # exact ±1 in 16 bits
    return h.contiguous().to(device)


def hadamard_for(block: int, sign_seed: int, x: torch.Tensor) -> tuple[torch.Tensor, int, float]:
    """(matrix, ROT_MODE, ROT_SCALE) for rotating ``x`` in a kernel; ``block`` 0 (no rotation): ``(x, 0, 1.0)``,
    ``x`` standing in for the pointer the kernel never reads."""
    if not block:
        return x, ROT_FP32, 1.0
    mode = rot_mode(x.dtype)
    h = _hmat(block, int(sign_seed), mode, x.dtype if mode == ROT_PM1 else torch.float32, str(x.device))
    return h, mode, 1.0 / math.sqrt(block)


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., K] -> [M, K] with unit stride along K (copies only when needed)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[-1] > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


def configs(gpu: list[triton.Config], interp: triton.Config) -> list[triton.Config]:
    return [interp] if INTERPRET else gpu


def gemm_grid(m: int, n: int):
    """Launch grid of the GEMM kernels: one program per (BLOCK_M, BLOCK_N) output tile (swizzled in-kernel)."""
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def check_weight_rows(packed: torch.Tensor, wscale: torch.Tensor, wzero: torch.Tensor) -> None:
    if tuple(wzero.shape) != tuple(wscale.shape) or wscale.shape[0] != packed.shape[0]:
        raise ValueError(f"weight scale {tuple(wscale.shape)} / zero {tuple(wzero.shape)} do not match "
                         f"{packed.shape[0]} rows")


def weight_args(packed: torch.Tensor, wscale: torch.Tensor, wzero: torch.Tensor, bias: torch.Tensor | None):
    """Kernel operands ``(w, ws, wz, b)``: packed codes with unit stride along K, Δ fp32 [N], z int32 [N], bias
    (``ws`` standing in for the pointer when there is none: HAS_BIAS=False never reads it)."""
    w = packed if packed.stride(-1) == 1 else packed.contiguous()
    ws = wscale.reshape(-1).to(torch.float32).contiguous()
    wz = wzero.reshape(-1).to(torch.int32).contiguous()
    b = bias.contiguous() if bias is not None else ws
    return w, ws, wz, b


def output_buffer(lead, n: int, out_dtype: torch.dtype, device, out: torch.Tensor | None):
    """(kernel buffer [M, N], result [..., N]). The interpreter truncates fp32 -> bf16 (docs/numerics.md §6), so there
    the kernel writes fp32 and torch rounds."""
    m = 1
    for d in lead:
        m *= d
    kdt = torch.float32 if (INTERPRET and out_dtype == torch.bfloat16) else out_dtype
    if out is not None:
        if tuple(out.shape) != (*lead, n) or out.dtype != out_dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {(*lead, n)}")
        res = out
    else:
        res = torch.empty((*lead, n), dtype=out_dtype, device=device)
    buf = res.view(m, n) if kdt == out_dtype else torch.empty((m, n), dtype=kdt, device=device)
    return buf, res
