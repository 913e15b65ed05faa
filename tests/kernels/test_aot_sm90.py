"""GPU-compile check on the CPU machine: every kernel specialization compiles for sm_90 (see aot_sm90.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

SCRIPT = Path(__file__).with_name("aot_sm90.py")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="triton wheel without the NVIDIA backend / ptxas")
def test_kernels_compile_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert recs, proc.stderr[-2000:]
    failed = [r for r in recs if not r["ok"]]
    assert not failed, failed
    gemms = [r for r in recs if r["name"].startswith(("qlinear", "fused"))]
    assert gemms and all(r["wgmma"] > 0 for r in gemms), "int8 dots must lower to Hopper wgmma"
    rotations = [r for r in recs if r["name"].startswith(("act_quant bf16", "act_quant fp16"))
                 and " r0 " not in r["name"]]
    assert rotations and all(r["wgmma"] > 0 for r in rotations), "16-bit Hadamard dots should use tensor cores"
    main = [r for r in recs if r["name"] in ("qlinear g128 bk128 pt=False partials=False",
                                             "qlinear g128 bk128 pt=False partials=False expanded",
                                             "qlinear g3072 bk128 pt=True partials=False expanded")]
    assert len(main) == 3 and all(r.get("stack", 0) == 0 for r in main), main
    from dvdq_compile.kernels import gluon_ws as gws
    gluon = [r for r in recs if r["name"].startswith("gluon_")]
    assert len(gluon) == 7 + len(gws.MODES) * len(gws.UNROLLS) + 1, gluon   # + the wide tile
    # no spill, and ptxas kept wgmmas in flight under the rescale (it rewrites every wait to depth 0 when it
    # serializes them, warning C7514)
    assert all(r.get("stack", 0) == 0 and r["wgmma"] > 0 and r["async_waits"] > 0 for r in gluon), gluon
    # the warp-specialized kernel: each partition's code fits the registers setmaxnreg gives it
    ws = [r for r in recs if r["name"].startswith("gluon_ws")]
    assert ws and all(
        0 < r["consumer_regs"] <= gws.CONSUMER_REGS and 0 < r["loader_regs"] <= gws.LOADER_REGS for r in ws), ws
    attn = [r for r in recs if r["name"].startswith("attn_quant")]
    assert len(attn) == 2 and all(r["wgmma"] > 0 and r.get("stack", 0) == 0 for r in attn), attn
