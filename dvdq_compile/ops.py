"""`dvdq` custom ops (``torch.library.custom_op`` + ``register_fake``), dispatching to Triton or the reference.

``custom_op`` rather than ``triton_op``: under ``TRITON_INTERPRET=1`` only ``custom_op`` survives Dynamo/AOT
(docs/architecture.md §8); the op body runs the kernel launcher eagerly and Inductor sees one extern call.

Ops (shapes: ``x`` [..., K], weights [N, ·], M = prod(leading dims)):

- ``dvdq::act_quant(x, bits, group, rotate, sign_seed, impl, clip=None) -> (codes int8 [..., K], scales fp32
  [..., K/group])``; ``clip`` an optional one-element fp32 tensor c: scale = (absmax·c)/qmax (clip-ratio recipes)
- ``dvdq::norm_act_quant(x, mult, shift, eps, out_dtype, bits, group, rotate, sign_seed, impl) -> (codes,
  scales)``: ``act_quant`` of ``(layer_norm(x.float(), eps)·mult + shift).to(out_dtype)`` (quantization at its
  producer, inserted by ``passes/producer.py``)
- ``dvdq::attn_act_quant(q, k, v, scale?, out_dtype, bits, group, rotate, sign_seed, impl) -> (codes int8
  [B, Sq, H·D], scales fp32 [B, Sq, H·D/group])``: ``act_quant`` of the attention with its heads merged (to_out's
  input; ``quant/attn.py``, inserted by ``passes/producer.py``)
- ``dvdq::qlinear(codes, scales, packed, wscale, wzero, bias?, wbits, out_dtype, impl) -> y [..., N] out_dtype``
- ``dvdq::qlinear_gelu_quant(codes, scales, packed, wscale, wzero, bias?, wbits, out_dtype, approximate, bits, group,
  rotate, sign_seed, impl) -> (codes int8 [..., N], scales fp32 [..., N/group])``: ``act_quant`` of
  ``gelu(qlinear(...))``, the FFN-down's codes from the FFN-up GEMM's epilogue (inserted by ``passes/producer.py``)
- ``dvdq::fused_qlinear(x, packed, wscale, wzero, bias?, wbits, abits, group, rotate, sign_seed, impl) -> y``
  (rotate + quantize + GEMM in one launch; same numbers as act_quant → qlinear)
- ``dvdq::dq_linear(x, packed, wscale, wzero, bias?, wbits, rotate, sign_seed, act_mode, abits) -> y [..., N]``
  weight-only (``act_mode="none"``: 16-bit activations) or paper-literal per-channel fake-quant
  (``act_mode="channel"``); fp32 math, output in x's dtype. Reference only (M is tiny for modulation layers).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import quant
from .kernels.dispatch import IMPLS

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_x(x: Tensor, what: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"dvdq::{what}: activation dtype {x.dtype} is not supported; expected one of "
                        f"{[str(d) for d in FLOAT_DTYPES]}")


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"dvdq op impl must be one of {IMPLS}, got {impl!r}")


def _kernels():
    from .kernels import launch as kernels
    return kernels


@torch.library.custom_op("dvdq::act_quant", mutates_args=())
def act_quant(x: Tensor, bits: int, group: int, rotate: int, sign_seed: int, impl: str,
              clip: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    _check_x(x, "act_quant")
    _check_impl(impl)
    if impl == "triton":
        return _kernels().act_quant(x, bits, group, rotate, sign_seed, clip=clip)
    return quant.quantize_act(x, bits, group, rotate, sign_seed, clip=clip)


def _codes_like(x: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Fake (codes int8 [..., K], scales fp32 [..., K/group]) of an activation ``x``."""
    return (x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty((*x.shape[:-1], x.shape[-1] // group), dtype=torch.float32))


@act_quant.register_fake
def _(x, bits, group, rotate, sign_seed, impl, clip=None):
    return _codes_like(x, group)


@torch.library.custom_op("dvdq::norm_act_quant", mutates_args=())
def norm_act_quant(x: Tensor, mult: Tensor, shift: Tensor, eps: float, out_dtype: torch.dtype, bits: int, group: int,
                   rotate: int, sign_seed: int, impl: str) -> tuple[Tensor, Tensor]:
    """``act_quant(norm_modulate(x, mult, shift, eps, out_dtype), ...)`` in one op: quantization at its producer
    (``quant/norm.py``, ``kernels/norm_quant.py``)."""
    _check_x(x, "norm_act_quant")
    _check_impl(impl)
    if impl == "triton":
        from .kernels.norm_quant import norm_act_quant as kernel
        return kernel(x, mult, shift, eps, out_dtype, bits, group, rotate, sign_seed)
    return quant.quantize_act(quant.norm_modulate(x, mult, shift, eps, out_dtype), bits, group, rotate, sign_seed)


@norm_act_quant.register_fake
def _(x, mult, shift, eps, out_dtype, bits, group, rotate, sign_seed, impl):
    return _codes_like(x, group)


@torch.library.custom_op("dvdq::attn_act_quant", mutates_args=())
def attn_act_quant(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], out_dtype: torch.dtype, bits: int,
                   group: int, rotate: int, sign_seed: int, impl: str) -> tuple[Tensor, Tensor]:
    """``act_quant(sdpa(q, k, v).transpose(1, 2).flatten(2).to(out_dtype), ...)`` in one op: to_out's input quantized
    in the attention kernel's epilogue (``quant/attn.py``, ``kernels/attn_quant.py``)."""
    _check_x(q, "attn_act_quant")
    _check_impl(impl)
    if impl == "triton":
        from .kernels.attn_quant import attn_act_quant as kernel
        return kernel(q, k, v, scale, out_dtype, bits, group, rotate, sign_seed)
    return quant.attn_quant_ref(q, k, v, scale, out_dtype, bits, group, rotate, sign_seed)


@attn_act_quant.register_fake
def _(q, k, v, scale, out_dtype, bits, group, rotate, sign_seed, impl):
    b, h, sq, d = q.shape
    return (q.new_empty((b, sq, h * d), dtype=torch.int8), q.new_empty((b, sq, h * d // group), dtype=torch.float32))


@torch.library.custom_op("dvdq::qlinear", mutates_args=())
def qlinear(codes: Tensor, scales: Tensor, packed: Tensor, wscale: Tensor, wzero: Tensor, bias: Optional[Tensor],
            wbits: int, out_dtype: torch.dtype, impl: str) -> Tensor:
    _check_impl(impl)
    if impl == "triton":
        return _kernels().qlinear(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype)
    return quant.qlinear_ref(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype)


@qlinear.register_fake
def _(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype, impl):
    return codes.new_empty((*codes.shape[:-1], packed.shape[0]), dtype=out_dtype)


@torch.library.custom_op("dvdq::qlinear_gelu_quant", mutates_args=())
def qlinear_gelu_quant(codes: Tensor, scales: Tensor, packed: Tensor, wscale: Tensor, wzero: Tensor,
                       bias: Optional[Tensor], wbits: int, out_dtype: torch.dtype, approximate: str, bits: int,
                       group: int, rotate: int, sign_seed: int, impl: str) -> tuple[Tensor, Tensor]:
    """``act_quant(gelu(qlinear(...)), ...)`` in one op: the FFN-down's activation quantized in the FFN-up GEMM's
    epilogue (``quant/gelu.py``, ``kernels/gelu_quant.py``)."""
    _check_impl(impl)
    if impl == "triton":
        from .kernels.gelu_quant import qlinear_gelu_quant as kernel
        return kernel(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype, approximate, bits, group, rotate,
                      sign_seed)
    return quant.gelu_quant_ref(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype, approximate, bits,
                                group, rotate, sign_seed)


@qlinear_gelu_quant.register_fake
def _(codes, scales, packed, wscale, wzero, bias, wbits, out_dtype, approximate, bits, group, rotate, sign_seed,
      impl):
    n = packed.shape[0]
    return (codes.new_empty((*codes.shape[:-1], n), dtype=torch.int8),
            codes.new_empty((*codes.shape[:-1], n // group), dtype=torch.float32))


@torch.library.custom_op("dvdq::fused_qlinear", mutates_args=())
def fused_qlinear(x: Tensor, packed: Tensor, wscale: Tensor, wzero: Tensor, bias: Optional[Tensor], wbits: int,
                  abits: int, group: int, rotate: int, sign_seed: int, impl: str) -> Tensor:
    _check_x(x, "fused_qlinear")
    _check_impl(impl)
    if impl == "triton":
        return _kernels().fused_qlinear(x, packed, wscale, wzero, bias, wbits, abits, group, rotate, sign_seed)
    codes, scales = quant.quantize_act(x, abits, group, rotate, sign_seed)
    return quant.qlinear_ref(codes, scales, packed, wscale, wzero, bias, wbits, x.dtype)


@fused_qlinear.register_fake
def _(x, packed, wscale, wzero, bias, wbits, abits, group, rotate, sign_seed, impl):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.custom_op("dvdq::dq_linear", mutates_args=())
def dq_linear(x: Tensor, packed: Tensor, wscale: Tensor, wzero: Tensor, bias: Optional[Tensor], wbits: int,
              rotate: int, sign_seed: int, act_mode: str, abits: int) -> Tensor:
    _check_x(x, "dq_linear")
    if act_mode == "none":
        xr = quant.rotate(x, rotate, sign_seed) if rotate else x
    elif act_mode == "channel":
        xr = quant.fake_quant_per_channel(x, abits, rotate, sign_seed)
    else:
        raise ValueError(f"dvdq::dq_linear act_mode must be 'none' or 'channel', got {act_mode!r}")
    return quant.dequant_linear_ref(xr, packed, wscale, wzero, bias, wbits).to(x.dtype)


@dq_linear.register_fake
def _(x, packed, wscale, wzero, bias, wbits, rotate, sign_seed, act_mode, abits):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))
