"""bench/kernels.py: exits 0 without a GPU, and its plumbing (measure → JSON/MD/table) runs in --smoke mode."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "kernels.py"


def _run(args, interpret):
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_no_gpu_exits_zero():
    if torch.cuda.is_available():
        return
    p = _run([], interpret=False)
    assert p.returncode == 0 and "nothing was measured" in p.stdout


def test_smoke_plumbing(tmp_path):
    table = tmp_path / "table.json"
    p = _run(["--smoke", "--no-compile", "--out", str(tmp_path), "--write-table", "--table", str(table)],
             interpret=True)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(next(tmp_path.glob("kernels_*.json")).read_text())
    assert res["device"].startswith("cpu-smoke") and res["torch"] and res["triton"]
    times = res["shapes"][0]["times"]
    for name in ("bf16", "w4a8_split", "w4a8_fused", "w4a4_split", "w4a4_fused", "w8a8_split", "w8a8_fused",
                 "act_quant_a8"):
        assert name in times, (name, res["shapes"][0]["errors"])
    for bits in ("a8", "a4", "w8a8"):
        chk = res["correctness"]["64x256"][bits]
        assert chk["gemm_same_codes_max_abs_err"] == 0.0 and chk["code_max_diff"] <= 1, (bits, chk)
    assert next(tmp_path.glob("kernels_*.md")).read_text().startswith("# dvdq kernel benchmark")
    entries = json.loads(table.read_text())["entries"]
    assert {e["abits"] for e in entries} == {4, 8} and all(e["variant"] in ("fused", "split") for e in entries)
