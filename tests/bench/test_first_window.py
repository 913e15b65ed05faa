"""bench/first_window.py --dry-run: the first GPU window's plan fits its budget and every step runs (interpreter)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "first_window.py"), "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    d = json.loads((tmp_path / "first_window_dry.json").read_text())
    plan = d["plan"]
    # a small fixed set of compiles (the Gluon kernels, the attention kernel, the L2 and tensor-core probes) within
    # the budget
    assert plan["n_compiles"] <= 25 and plan["estimated_s_before_e2e"] <= plan["budget_s"] == 480
    gemms = [v for k, v in d["steps"].items() if k.startswith("gemm ")]
    assert len(gemms) == 2
    for g in gemms:
        # a forced config and the packed loop compute the same numbers as the autotuned expanded call
        assert g["agreement"] == {"forced_vs_auto_max_abs": 0.0, "packed_vs_expanded_max_abs": 0.0}
        assert not [k for k, v in g["times"].items() if "error" in v], g["times"]
        assert set(g["times"]) >= {"bf16", "w4a8_auto", "w4a8_per_token", "w4a8_packed", "expand", "act_quant",
                                   "gelu_quant"}
        # the Gluon rows' plumbing (their Triton twins stand in on the CPU): an error here once cost a GPU window
        # its GEMM measurements; the FFN-up rows are timed after every shape's other rows
        gl = {"gluon_g128", "gluon_g128_coop", "gluon_g128_128x64", "gluon_per_token", "gluon_per_token_128x128", "gluon_gelu_quant",
              "gluon_gelu_quant_coop"}
        assert set(g["times"]) >= gl and all("L2_TB/s" in g["times"][k] for k in gl)
        assert all(g[f"{k}_bit_exact"] is True for k in gl if "gelu" not in k)
        assert list(g["times"])[-2:] == ["gluon_gelu_quant_coop", "gluon_gelu_quant"]
        assert "BLOCK_M" in g["w4a8_auto_config"] and "BLOCK_M" in g["w4a8_per_token_config"]
    att = d["steps"]["attention"]   # the attention kernel of fuse_attn, beside SDPA and SDPA + act_quant
    assert not [k for k, v in att["times"].items() if "error" in v] and att["agreement"]["max_code_diff"] <= 1
    assert d["steps"]["interpreter_tests"]["rc"] == 0
    assert "done" in d["steps"]
    md = (tmp_path / "first_window_dry.md").read_text()   # the markdown report, one row per shape in each table
    # four tables: times, shares, the Gluon kernels, and the L2 → shared-memory traffic of the GEMMs whose tile is
    # known
    assert md.count("| 64x256 |") == 4 and md.count("| 96x128 |") == 4 and "L2 → shared-memory traffic" in md
    assert "Gluon FFN-up codes and scales against the Triton" in md
    assert all(any("L2_TB/s" in v for v in g["times"].values()) for g in gemms)


def test_a_failing_measurement_is_recorded_and_the_run_goes_on():
    sys.path.insert(0, str(ROOT / "bench"))
    import first_window

    def boom():
        raise RuntimeError("no such PTX instruction")
    assert first_window.safe(boom)() == {"error": "RuntimeError: no such PTX instruction"}
