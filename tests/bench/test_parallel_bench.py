"""bench/parallel.py's CPU dry run: 2 gloo ranks, tiny Wan, both precisions, table written."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_dry_run_writes_both_rows(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "parallel.py"), "--cpu-ranks", "2", "--config", "smoke",
                        "--ulysses", "2", "--iters", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    data = json.loads((tmp_path / "parallel_smoke_u2_c1.json").read_text())
    rows = {r["precision"]: r for r in data["rows"]}
    assert set(rows) == {"bf16", "W4A8"} and all(r["gpus"] == 2 for r in rows.values())
    assert rows["bf16"]["rel_err_vs_single"] < 1e-5  # the same fp32 model, sharded
    assert rows["W4A8"]["rel_err_vs_single"] < 2e-4  # reference kernels: see tests/parallel/test_parallel.py
    assert (tmp_path / "parallel_smoke_u2_c1.md").read_text().count("| W4A8 |") == 1
