"""bench/quality_compare.py: ranks, the v2 questions and the paired noise, on hand-made eval documents."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "quality_compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("quality_compare", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(psnrs: dict, per_video: dict | None = None, seed=0):
    return {"env": {"device": "CPU (test)"}, "setup": {"classes": [0, 1, 2], "seed": seed, "steps": 2},
            "rows": [{"label": k, "psnr": v, "avg_act_bits": 7.0 if "δ" in k else 4.0,
                      "psnr_per_video": (per_video or {}).get(k, [])} for k, v in psnrs.items()]}


def test_ranks_questions_and_noise(tmp_path):
    mod = _load()
    v1 = _doc({"MinMax W4A4": 27.0, "QuaRot W4A4": 29.0, "BGR+ARQ W4A4": 28.0})
    v2 = _doc({"MinMax W4A4": 20.0, "QuaRot W4A4": 24.0, "BGR+ARQ W4A4": 25.0},
              {"MinMax W4A4": [19.0, 20.0, 21.0], "BGR+ARQ W4A4": [24.0, 26.0, 25.0]})
    rep = _doc({"MinMax W4A4": 21.0, "BGR+ARQ W4A4": 25.5}, seed=1)
    res = mod.compare(v1, v2, rep)
    t = {r["label"]: r for r in res["table"]}
    assert (t["BGR+ARQ W4A4"]["rank_v1"], t["BGR+ARQ W4A4"]["rank_v2"]) == (2, 1)
    q = {(x["a"], x["b"]): x for x in res["questions"]}
    mm = q[("BGR+ARQ W4A4", "MinMax W4A4")]
    assert mm["v2"] == pytest.approx(5.0) and mm["v1"] == pytest.approx(1.0) and mm["repeat"] == pytest.approx(4.5)
    # paired differences 5, 6, 4: mean 5, sample std 1, SE 1/sqrt(3)
    assert mm["paired"]["mean"] == pytest.approx(5.0) and mm["paired"]["se"] == pytest.approx(1 / math.sqrt(3))
    assert q[("BGR+ARQ W4A4", "QuaRot W4A4")]["paired"] is None  # no per-video PSNRs for QuaRot
    assert ("BGR+ARQ W4A4", "SmoothQuant W4A4") not in q  # absent rows are left out, not invented
    md = mod.markdown(res)
    assert "| BGR+ARQ W4A4 | MinMax W4A4 | **+5.00** | 0.58 | +4.50 | +1.00 |" in md


def test_cli_writes_files(tmp_path):
    mod = _load()
    for name, doc in (("a", _doc({"MinMax W4A4": 27.0})), ("b", _doc({"MinMax W4A4": 25.0}))):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    assert mod.main(["--v1", str(tmp_path / "a.json"), "--v2", str(tmp_path / "b.json"),
                     "--repeat", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "quality_v1_vs_v2.md").read_text().startswith("# Quality on zoo v1")
    assert mod.main(["--v1", str(tmp_path / "a.json"), "--v2", str(tmp_path / "b.json"), "--out", str(tmp_path),
                     "--repeat", str(tmp_path / "none.json"), "--stem", "other"]) == 0
    assert json.loads((tmp_path / "other.json").read_text())["table"][0]["label"] == "MinMax W4A4"
    with pytest.raises(SystemExit):
        mod.main(["--v1", str(tmp_path / "missing.json"), "--v2", str(tmp_path / "b.json")])
