"""How fast the tensor cores run int8, fp8 and bf16 wgmmas with nothing else to do: the ceiling under every GEMM.

No int8 GEMM on the H200, cuBLAS's included, got past ~1.2x the bf16 rate (bench/results/gpu_h200_2026-12-04.md),
where the datasheet promises 2x. L2 bounds the small tiles (bench/l2_probe.py) but not cuBLAS's 128x256 ones, so
this measures the tensor cores alone: each CTA (two warpgroups, a 128 x 256 tile) loads one A [128, K] and one
B [256, K] tile into shared memory once, then issues wgmmas on them in a loop (8 per wait, one accumulator), with
no global memory traffic in the loop. MACs per second = CTAs · iterations · 8 · 128 · 256 · K / time; with the
SM clock beside it (``nvidia-smi`` in the same run) it says whether int8 runs at twice bf16 under the 700 W cap.

    python bench/mma_peak.py           # on a GPU: JSON of TFLOP/s (TOPS) per dtype, one CTA per SM
"""
from __future__ import annotations

import json
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait

BM, BN = 128, 256
UNROLL = 8
# dtype: (K of the shared tiles (128 bytes per row), wgmma instruction K, instruction N). Triton lowers no int8
# wgmma wider than n128 (n256 fails its shape check; the PTX ISA allows it), so an int8 tile row is two instructions
DTYPES = {"int8": (torch.int8, 128, 32, 128), "fp8e4m3": (torch.float8_e4m3fn, 128, 32, 256),
          "bf16": (torch.bfloat16, 64, 16, 256)}


@gluon.jit
def _mma_loop(a_ptr, b_ptr, out_ptr, iters, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
              INSTR_K: gl.constexpr, INSTR_N: gl.constexpr, UNROLL: gl.constexpr, num_warps: gl.constexpr):
    dt: gl.constexpr = a_ptr.dtype.element_ty
    acc_dt: gl.constexpr = gl.int32 if dt == gl.int8 else gl.float32
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    ra = gl.arange(0, BM, layout=gl.SliceLayout(1, ld))
    rb = gl.arange(0, BN, layout=gl.SliceLayout(1, ld))
    ck = gl.arange(0, BK, layout=gl.SliceLayout(0, ld))
    a = gl.load(a_ptr + ra[:, None] * BK + ck[None, :])
    b = gl.load(b_ptr + rb[:, None] * BK + ck[None, :])
    a_s = gl.allocate_shared_memory(dt, [BM, BK], gl.NVMMASharedLayout.get_default_for([BM, BK], dt), a)
    b_s = gl.allocate_shared_memory(dt, [BN, BK], gl.NVMMASharedLayout.get_default_for([BN, BK], dt), b)
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, INSTR_N, INSTR_K])
    acc = gl.zeros((BM, BN), acc_dt, layout)
    for i in range(iters):
        for j in gl.static_range(UNROLL):   # one accumulator: the wgmmas chain in hardware
            acc = warpgroup_mma(a_s, b_s.permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))   # nothing in flight across the back-edge (ptxas)
    ro = gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    co = gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
    gl.store(out_ptr + gl.program_id(0) * BM * BN + ro[:, None] * BN + co[None, :], acc)


def offline_spec(dtype: str) -> tuple[dict, dict]:
    """(signature, constexprs) for an offline sm_90 compile (kernels/aot.py)."""
    sig_dt = {"int8": "i8", "fp8e4m3": "fp8e4nv", "bf16": "bf16"}[dtype]
    _, bk, ik, inn = DTYPES[dtype]
    acc = "i32" if dtype == "int8" else "fp32"
    return ({"a_ptr": f"*{sig_dt}", "b_ptr": f"*{sig_dt}", "out_ptr": f"*{acc}", "iters": "i32"},
            dict(BM=BM, BN=BN, BK=bk, INSTR_K=ik, INSTR_N=inn, UNROLL=UNROLL, num_warps=8))


def operands(dtype: str, device="cuda", seed: int = 0):
    """Small-valued A [BM, K], B [BN, K] (int8 in [-2, 2], floats in [-1, 1] on a grid exact in fp8 and bf16)."""
    tdt, bk = DTYPES[dtype][:2]
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-2, 3, (BM, bk), generator=g)
    b = torch.randint(-2, 3, (BN, bk), generator=g)
    if dtype != "int8":
        a, b = a / 2, b / 2
    return a.to(tdt).to(device), b.to(tdt).to(device)


def run(a: torch.Tensor, b: torch.Tensor, iters: int, ctas: int) -> torch.Tensor:
    """``ctas`` CTAs each accumulate ``iters · UNROLL`` times A @ Bᵀ; returns their [ctas, BM, BN] accumulators."""
    dtype = next(k for k, v in DTYPES.items() if v[0] == a.dtype)
    _, bk, ik, inn = DTYPES[dtype]
    out = torch.empty(ctas, BM, BN, device=a.device, dtype=torch.int32 if dtype == "int8" else torch.float32)
    _mma_loop[(ctas,)](a, b, out, iters, BM=BM, BN=BN, BK=bk, INSTR_K=ik, INSTR_N=inn, UNROLL=UNROLL, num_warps=8)
    return out


def expected(a: torch.Tensor, b: torch.Tensor, iters: int) -> torch.Tensor:
    """What each CTA must hold: iters · UNROLL · A @ Bᵀ (exact: small integers, or halves, summed in fp32)."""
    return (a.double().cpu() @ b.double().cpu().T) * (iters * UNROLL)


def measure(iters: int = 2000) -> dict:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
           "sms": sms, "tile": f"{BM}x{BN}, 8 warps, {UNROLL} wgmmas per wait", "TFLOPs": {}, "checked": {}}
    for name in DTYPES:
        try:
            a, b = operands(name)
            got = run(a, b, 3, 2)   # exact on small values: the kernel computes what it claims
            res["checked"][name] = bool(torch.equal(got.double().cpu(), expected(a, b, 3).expand(2, BM, BN)))
            # one CTA per SM: the 128x256 accumulator's registers (155 per thread) leave room for no second one
            ms = triton.testing.do_bench(lambda: run(a, b, iters, sms), warmup=5, rep=50)
            res["TFLOPs"][name] = {"1_cta_per_sm": round(2 * sms * iters * UNROLL * BM * BN * a.shape[1] / ms / 1e9, 1)}
        except Exception as e:   # noqa: BLE001  (a dtype this Triton cannot compile is a row, not a crash)
            res["TFLOPs"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return res


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (tests/bench/test_mma_peak.py compiles the kernel for sm_90)")
        return 0
    print(json.dumps(measure(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
