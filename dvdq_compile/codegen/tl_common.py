"""Shared pieces of the Triton kernels: interpreter detection, config lists, rounding and rotation helpers.

Platform facts these encode (``reference/platform.md`` §2, §7):

- ``TRITON_INTERPRET=1`` is read when ``@triton.jit`` runs, so :data:`INTERPRET` is fixed at import time.
- The interpreter breaks with ``@triton.autotune`` over >= 2 configs: :func:`configs` returns one config there.
- The interpreter has no ``libdevice.rint``: round half to even with ``(y + 1.5·2²³) − 1.5·2²³`` (|y| < 2²²); on a
  GPU the kernels use ``libdevice.rint`` (``USE_RINT``).
- fp32 ``/`` lowers to an approximate ``div.full.f32`` on NVIDIA; the kernels use ``tl.math.div_rn`` (IEEE,
  what ``torch`` does) so codes and scales are bit-exact against the reference.
- bf16 arithmetic and bf16 ``tl.dot`` are broken in the interpreter: every load is cast to fp32 before math, and
  the 16-bit Hadamard path (:data:`ROT_PM1`) is used for bf16 only on a GPU.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

try:  # GPU rounding; the interpreter cannot run it (platform.md §2) and never takes that branch
    from triton.language.extra import libdevice as _libdevice
except Exception:  # pragma: no cover - very old triton
    _libdevice = None

from ..quant.hadamard import hadamard_matrix

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
USE_RINT = (not INTERPRET) and _libdevice is not None

# Rotation modes (constexpr ROT_MODE)
ROT_FP32 = 0  # x (fp32) · H (fp32, normalized), input_precision="ieee": no TF32 on the GPU
ROT_PM1 = 1   # x (fp16/bf16, exact) · S (±1 in the same dtype, exact), fp32 accumulate, then · 1/sqrt(g)

MAGIC = 12582912.0  # 1.5 * 2**23
NAN = tl.constexpr(float("nan"))


@triton.jit
def round_half_even(y, USE_RINT: tl.constexpr):
    """Round to nearest, ties to even (``torch.round``); exact for |y| < 2^22, passes ±inf and NaN through."""
    if USE_RINT:
        r = _libdevice.rint(y)
    else:
        r = (y + 12582912.0) - 12582912.0
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
def quantize_rows(xr, amax, QMAX: tl.constexpr, USE_RINT: tl.constexpr):
    """Codes (fp32 integer values) for ``xr`` [..., G] with row absmax ``amax`` [..., 1]; returns (codes, scale).

    Exactly ``quant.quantize_act``: ``s = amax / qmax``; ``c = round(x / s)`` clamped to ±qmax where ``s`` is
    finite and > 0; codes 0 in a group whose scale is 0 (all-zero) or non-finite (NaN/Inf inside).
    """
    s = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    ok = ((s - s) == 0.0) & (s > 0.0)  # finite and positive
    safe = tl.where(ok, s, 1.0)
    c = round_half_even(tl.math.div_rn(xr, safe), USE_RINT)
    c = tl.where(c > QMAX, QMAX, c)
    c = tl.where(c < -QMAX, -QMAX, c)
    c = tl.where(ok, c, 0.0)
    return c, s


@triton.jit
def row_absmax(xr, AXIS: tl.constexpr):
    """``max |x|`` along AXIS with NaN propagation made explicit (GPU ``max`` may drop NaN; torch keeps it)."""
    a = tl.max(tl.abs(xr), axis=AXIS)
    nan = tl.max((xr != xr).to(tl.int32), axis=AXIS)
    return tl.where(nan > 0, NAN, a)


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
    """(matrix, ROT_MODE, ROT_SCALE) for rotating ``x`` in a kernel."""
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
