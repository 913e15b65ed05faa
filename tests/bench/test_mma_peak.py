"""bench/mma_peak.py compiles for sm_90 on the CPU machine (Gluon has no interpreter; its numbers, and the check of
its accumulators against A @ Bᵀ, come from a GPU: tests/kernels/test_gpu.py and the GPU window)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[2]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
SCRIPT = """
import json, re, sys
sys.path[:0] = [{root!r}, {bench!r}]
from dvdq_compile.kernels import aot
import mma_peak as P
for name in P.DTYPES:
    sig, const = P.offline_spec(name)
    k = aot.compile_sm90(P._mma_loop, sig, const, const["num_warps"], 1)
    ptx = k.asm["ptx"]
    print(json.dumps({{"dtype": name, **aot.resources(k), "wgmma": len(re.findall(r"wgmma.mma_async[.\\w]*", ptx)),
                      "kinds": sorted(set(re.findall(r"wgmma.mma_async.sync.aligned.(m64n\\d+k\\d+.[\\w.]+)", ptx)))}}))
"""


@pytest.mark.skipif(not PTXAS.exists(), reason="triton wheel without the NVIDIA backend / ptxas")
def test_compiles_to_the_wgmmas_it_claims():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = SCRIPT.format(root=str(ROOT), bench=str(ROOT / "bench"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    recs = {r["dtype"]: r for r in (json.loads(line) for line in p.stdout.splitlines() if line.startswith("{"))}
    assert set(recs) == {"int8", "fp8e4m3", "bf16"}, p.stderr[-3000:]
    for name, r in recs.items():
        # 8 wgmma calls per iteration, each over the shared tile's K in instruction-K steps (128/32 or 64/16 = 4),
        # and int8 in two n128 halves of the tile's 256 columns
        n = 128 if name == "int8" else 256
        assert r["stack"] == 0 and r["wgmma"] == 8 * 4 * (256 // n), r
        kind = {"int8": "s32.s8.s8", "fp8e4m3": "f32.e4m3.e4m3", "bf16": "f32.bf16.bf16"}[name]
        assert r["kinds"] == [f"m64n{n}k{32 if name != 'bf16' else 16}.{kind}"], r


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["int8", "fp8e4m3", "bf16"])
def test_accumulators_equal_the_reference(dtype):
    """On a GPU (compiled, TRITON_INTERPRET=0): each CTA's accumulator is iters · UNROLL · A @ Bᵀ, computed in
    float64 on the CPU from the same operands (exact: small integers or halves), so the timed loop does the work
    it is credited with."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("Gluon kernels need compiled Triton: run with TRITON_INTERPRET=0")
    sys.path.insert(0, str(ROOT / "bench"))
    import mma_peak
    import torch
    a, b = mma_peak.operands(dtype)
    got = mma_peak.run(a, b, 3, 4).double().cpu()
    ref = (a.double().cpu() @ b.double().cpu().T) * (3 * mma_peak.UNROLL)
    assert torch.equal(got, ref.expand(4, -1, -1))
