"""bench/e2e.py: the CPU smoke run keeps the harness working (no GPU numbers are produced or checked here)."""
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("e2e", ROOT / "bench" / "e2e.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["e2e"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ROWS = ["eager bf16", "inductor bf16 + CUDA graphs", "dvdquant W4A8", "dvdquant W4A8 per-token",
        "dvdquant W4A8 free_weights", "dvdquant delta (A4/A8)", "dvdquant W4A8 + cache delta"]  # in the script's row order


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    assert _load().main(["--smoke", "--rows", *ROWS, "--out", str(out), "--stem", "smoke"]) == 0
    return out, json.loads((out / "smoke.json").read_text())


def test_smoke_rows(result):
    out, res = result
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ROWS and not any("error" in r for r in rows.values()), rows
    assert res["device"].startswith("CPU") and res["torch"] == torch.__version__ and res["triton"]
    assert "GPU memory" in res["not_measured"] and res["tokens"] == 2 * 8 * 8
    assert rows["inductor bf16 + CUDA graphs"]["skipped"] == "needs a CUDA GPU"
    for label in ROWS[:1] + ROWS[2:]:  # the step time is the median of the timed steps
        r = rows[label]
        assert r["step_ms"] == pytest.approx(statistics.median(r["step_ms_all"]), rel=1e-12), r
        assert min(r["step_ms_all"]) > 0, r
    for label in ROWS[2:]:  # a compiled row's first call compiles and quantizes: slower than a timed step
        assert rows[label]["step_ms"] < 1000 * rows[label]["first_call_s"], rows[label]
    q, f = rows["dvdquant W4A8"], rows["dvdquant W4A8 free_weights"]
    assert q["quantized_layers"] == f["quantized_layers"] > 0
    # the released 16-bit copies are exactly what the resident weights lose
    assert f["freed_gib"] > 0 and f["resident_weight_gib"] == pytest.approx(q["resident_weight_gib"] - f["freed_gib"])
    assert f["resident_weight_gib"] < rows["eager bf16"]["resident_weight_gib"] < q["resident_weight_gib"]
    d = rows["dvdquant delta (A4/A8)"]
    assert d["steps"] == 4 and len(d["step_ms_all"]) == 4 and 4 <= d["avg_act_bits"] <= 8
    c = rows["dvdquant W4A8 + cache delta"]  # warmup: the first 2 of 4 steps are computed
    assert c["steps"] == 4 and 0 <= c["reuse_rate"] <= 0.5 and c["computed_calls"] == round(4 * (1 - c["reuse_rate"]))
    assert c["loop_ms"] == pytest.approx(sum(c["step_ms_all"]))
    md = (out / "smoke.md").read_text()
    assert "| dvdquant W4A8 free_weights |" in md and "released" in md and "Not measured here" in md


def test_bad_args(capsys):
    mod = _load()
    with pytest.raises(SystemExit):
        mod.main(["--rows", "nope"])
    assert "unknown rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--config", "wan14b"])  # full size on CPU
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bgr_only(tmp_path):
    """--bgr-only runs on CPU; fewer blocks than the config -> the whole-model time is marked as an estimate,
    scaled by the block-linear weight count."""
    mod = _load()
    assert mod.main(["--config", "smoke", "--bgr-only", "--layers", "1", "--out", str(tmp_path), "--stem", "b"]) == 0
    b = json.loads((tmp_path / "b.json").read_text())["bgr"]
    assert b["layers"] == 10 and sum(r["layers"] for r in b["shapes"].values()) == 10  # one Wan block's linears
    assert b["estimated"] and b["full_model_weights"] == 2 * b["weights"]             # the config has 2 blocks
    assert b["full_model_seconds_est"] == pytest.approx(2 * b["seconds"]) and b["us_per_weight"] > 0
    md = (tmp_path / "b.md").read_text()
    assert "estimated at the same rate" in md and "| 128x128 | 8 |" in md


def test_every_row_builds_its_compiled_callable():
    """torch.compile validates its arguments eagerly (e.g. it refuses mode= next to options=): every dvdquant and
    Inductor row, the GPU-only ones included, must get past it (the compile itself stays lazy, nothing runs)."""
    mod = _load()
    model = torch.nn.Linear(4, 4)
    for row in mod.ROWS:
        if row.kind in ("dvdquant", "inductor"):
            assert callable(mod.prepare(row, model)), row.label
    cg = next(r for r in mod.ROWS if r.kind == "dvdquant" and r.mode)
    assert cg.mode == "reduce-overhead"


def test_backend_without_the_installed_entry_point(monkeypatch):
    """On the GPU machine the package is only on PYTHONPATH (no entry point): the harness passes the callable."""
    import torch._dynamo

    from dvdq_compile.backend import dvdquant

    e2e = _load()
    assert e2e.backend() == "dvdquant"   # installed here (pip install -e .)
    monkeypatch.setattr(torch._dynamo, "list_backends", lambda *a, **k: ["inductor"])
    assert e2e.backend() is dvdquant
