"""FFN-up GEMM whose epilogue applies GELU, rotates and quantizes: the FFN-down's activation codes written by the
kernel that produces the activation.

Reference: :func:`dvdq_compile.quant.gelu_quant_ref` (the specification; docs/numerics.md §5)::

    y = qlinear_ref(codes, scales, packed, Δ, z, bias, wbits, out_dtype)     # the FFN-up output, graph dtype
    a = F.gelu(y, approximate=approximate)                                    # the graph's own op, in out_dtype
    codes2, scales2 = quantize_act(a, bits, group, rotate, sign_seed)         # the FFN-down's input codes

Why: in a DiT FFN (``linear → GELU → linear``, every diffusers video model) the FFN-down input is the widest
activation of the block (N_up = 4-6x the model dim). Quantized as written it takes three passes: the FFN-up GEMM
writes the 16-bit ``y`` (``e·M·N``), GELU reads and writes it, ``act_quant`` reads it and writes codes — on Wan's
(1536, 8960) FFN-down the separate pass alone moves 2.1x the FFN-down GEMM's own bytes (``bench/results/sass.md``).
Here the GEMM's output tile goes through GELU, the rotation and the quantizer in registers and only the codes
(``M·N``) and scales (``4·M·N/g``) reach memory: the activation quantization adds no bytes (it removes ``e·M·N −
M·N − 4·M·N/g`` written and ``2·e·M·N`` read).

Launch: the ``qlinear`` grid and K loop (:func:`.qlinear.accumulate`); BLOCK_N is a multiple of the group (and so
of the Hadamard block), so a tile holds whole groups of whole rows: one rotation ``[BM·BN/r, r] @ [r, r]`` and one
absmax per (row, group) per tile, no cross-tile reduction.

Numerics: the GEMM part is ``qlinear``'s (bit-equal in the interpreter, §6); the casts to ``out_dtype`` round to
nearest even (:func:`.tl_common.round_to`: the native cast on a GPU, bf16 on the bits in the interpreter); GELU is
:func:`.tl_common.gelu` in fp32, a few fp32 ulps from torch's, so a 16-bit ``a`` can round the other way (one ulp) and codes then differ by one at rounding ties (tests bound how often; scales within one ulp of
``out_dtype``).

Cost: FLOPs ``2·M·N·K`` (int8) + ``2·M·N·r`` (rotation, 16-bit MMA) + ``≈20·M·N`` (GELU, quantize); bytes as
``qlinear`` with the output ``e·M·N`` replaced by ``M·N + 4·M·N/g``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant.act import qmax_for
from ..quant.hadamard import NO_SIGNS
from . import gluon_qlinear as GQL
from . import gluon_ws as GWS
from .qlinear import _check, accumulate, operands, with_config
from .tl_common import (
    OUT_CODES,
    USE_RINT,
    configs,
    gelu,
    gemm_grid,
    hadamard_for,
    load_hadamard,
    m_bucket,
    output_tile,
    quantize_groups,
    rotated,
    round_to,
    scale_bias,
)

APPROX = {"none": 0, "tanh": 1}
GROUP_MAX = 256


def _gpu_configs():
    # qlinear's tiles whose BLOCK_N can hold whole groups (checked offline for sm_90: bench/results/sass.md)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=st)
            for bm, bn, w, st in ((128, 128, 8, 3), (128, 128, 8, 4), (64, 128, 4, 4), (128, 256, 8, 3),
                                  (64, 256, 8, 3))]


def _prune(cfgs, named_args, **kwargs):
    """Only the tiles whose BLOCK_N is a multiple of the activation group (a tile must hold whole groups)."""
    group = kwargs.get("GROUP", named_args.get("GROUP"))
    kept = [c for c in cfgs if c.kwargs["BLOCK_N"] % group == 0]
    if not kept:
        raise ValueError(f"gelu_quant: no tile config holds whole groups of {group} (BLOCK_N <= {GROUP_MAX})")
    return kept


_CONFIGS = configs(_gpu_configs(), triton.Config({"BLOCK_M": 32, "BLOCK_N": GROUP_MAX, "GROUP_M": 4},
                                                 num_warps=4, num_stages=1))


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "GROUP_K", "PER_TOKEN", "PACK", "EXPANDED", "GROUP",
                                        "ROT", "OUT", "APPROX"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _gelu_quant_kernel(
    a_ptr, s_ptr, w_ptr, ws_ptr, wz_ptr, bias_ptr, h_ptr, c_ptr, cs_ptr,
    M, N, K, M_BUCKET,
    stride_am, stride_sm, stride_wn, stride_cm, stride_csm,
    GROUP_K: tl.constexpr, BLOCK_K: tl.constexpr, PER_TOKEN: tl.constexpr, PACK: tl.constexpr,
    HAS_BIAS: tl.constexpr, EXPANDED: tl.constexpr, OUT: tl.constexpr, APPROX: tl.constexpr,
    QMAX: tl.constexpr, GROUP: tl.constexpr, ROT: tl.constexpr, ROT_MODE: tl.constexpr, ROT_SCALE: tl.constexpr,
    USE_RINT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = accumulate(a_ptr, s_ptr, w_ptr, wz_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, N, K,
                     stride_am, stride_sm, stride_wn, GROUP_K, BLOCK_K, PER_TOKEN, PACK, False, EXPANDED,
                     BLOCK_M, BLOCK_N)
    y = round_to(scale_bias(acc, ws_ptr, bias_ptr, offs_n, mask_n, HAS_BIAS), OUT)   # the FFN-up output y
    a = round_to(gelu(y.to(tl.float32), APPROX), OUT)                               # the FFN-down input a
    h = load_hadamard(h_ptr, ROT)
    ar = rotated(a, h, BLOCK_M, BLOCK_N, ROT, ROT_MODE, ROT_SCALE)
    c, s = quantize_groups(ar, None, BLOCK_M, BLOCK_N, GROUP, QMAX, USE_RINT, False)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], c, mask=mask_m[:, None] & mask_n[None, :])
    offs_g = tl.min(tl.reshape(offs_n, (BLOCK_N // GROUP, GROUP)), axis=1) // GROUP
    tl.store(cs_ptr + offs_m[:, None] * stride_csm + offs_g[None, :], s,
             mask=mask_m[:, None] & (offs_g < N // GROUP)[None, :])


# ----------------------------------------------------------------------------------------------------------------
# host side

def unsupported_reason(n: int, group: int, rotate: int, out_dtype: torch.dtype, approximate: str) -> str | None:
    """Why the epilogue cannot quantize this FFN-up output (None: it can); the GEMM's own cases are ``qlinear``'s."""
    if approximate not in APPROX:
        return f"GELU approximate={approximate!r} (the epilogue computes 'none' and 'tanh')"
    if out_dtype not in OUT_CODES:
        return f"output dtype {out_dtype} (the epilogue casts to fp32/fp16/bf16)"
    if group < 16 or group > GROUP_MAX or group & (group - 1) or n % group:
        return (f"activation group {group} with N={n}: the epilogue takes a power-of-two group in [16, {GROUP_MAX}] "
                f"dividing N (a per-token scale spans tiles)")
    if rotate and (rotate & (rotate - 1) or rotate < 16 or rotate > group):
        return f"Hadamard block {rotate}: the epilogue takes a power of two in [16, group={group}]"
    return None


def qlinear_gelu_quant(codes: torch.Tensor, scales: torch.Tensor, packed: torch.Tensor, wscale: torch.Tensor,
                       wzero: torch.Tensor, bias: torch.Tensor | None, wbits: int, out_dtype: torch.dtype,
                       approximate: str, bits: int, group: int, rotate: int = 0, sign_seed: int = NO_SIGNS,
                       expand: bool | None = None, config: triton.Config | None = None):
    """Triton twin of :func:`quant.gelu_quant_ref`: ``(codes int8 [..., N], scales fp32 [..., N/group])`` of
    ``gelu(qlinear(...))``. ``expand`` / ``config`` as for :func:`.qlinear.qlinear`."""
    _check(codes, scales, packed, wscale, wzero, wbits)
    n, k = packed.shape[0], codes.shape[-1]
    why = unsupported_reason(n, group, rotate, out_dtype, approximate)
    if why:
        raise ValueError(f"Triton qlinear_gelu_quant: {why}")
    qmax = qmax_for(bits)
    lead = codes.shape[:-1]
    out_c = torch.empty((*lead, n), dtype=torch.int8, device=codes.device)
    out_s = torch.empty((*lead, n // group), dtype=torch.float32, device=codes.device)
    if out_c.numel() == 0:
        return out_c, out_s
    if config is not None and config.kwargs["BLOCK_N"] % group:
        raise ValueError(f"config BLOCK_N={config.kwargs['BLOCK_N']} does not hold whole groups of {group}")
    o = operands(codes, scales, packed, wscale, wzero, bias, wbits, expand)
    # the rotation reads the rounded 16-bit a: its matrix and mode follow out_dtype, as act_quant's follow its input
    h, mode, rscale = hadamard_for(rotate, sign_seed, torch.empty(0, dtype=out_dtype, device=codes.device))
    if config is None and GQL.use_gluon() and GWS.supported_gelu(n, k, o.ga, o.expanded, group, rotate, out_dtype,
                                                                  approximate) is None:
        # opt-in (DVDQ_GLUON=1): the warp-specialized Gluon FFN-up with this epilogue (kernels/gluon_ws.py)
        GWS.ffn_up_gelu_quant(o.a, o.s, o.w, o.ws, o.b if bias is not None else None, h,
                              out_c.view(o.m, n), out_s.view(o.m, n // group), o.ga == o.k, rscale, qmax)
        return out_c, out_s
    if not rotate:
        h = o.ws   # never read (ROT = 0)
    c2, s2 = out_c.view(o.m, n), out_s.view(o.m, n // group)
    kernel, forced = with_config(_gelu_quant_kernel, config)
    kernel[gemm_grid(o.m, n)](
        o.a, o.s, o.w, o.ws, o.wz, o.b, h, c2, s2, o.m, n, k, m_bucket(o.m),
        o.a.stride(0), o.s.stride(0), o.w.stride(0), c2.stride(0), s2.stride(0),
        GROUP_K=o.ga, BLOCK_K=o.bk, PER_TOKEN=o.per_token, PACK=o.pack, HAS_BIAS=bias is not None,
        EXPANDED=o.expanded, OUT=OUT_CODES[out_dtype], APPROX=APPROX[approximate], QMAX=qmax, GROUP=group,
        ROT=rotate, ROT_MODE=mode, ROT_SCALE=rscale, USE_RINT=USE_RINT, **forced,
    )
    return out_c, out_s
