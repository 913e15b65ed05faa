"""bench/bgr_report.py: the --smoke run writes complete, finite results, and BGR is never worse than MinMax."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bgr_report.py"


def _load():
    spec = importlib.util.spec_from_file_location("bgr_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    mod = _load()
    out = tmp_path_factory.mktemp("bgr")
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--smoke", "--zoo", "v1", "--limit-rows", "4", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets 2 threads; the suite runs with 1
    return out, json.loads((out / "bgr_vs_minmax.json").read_text())


def test_outputs_and_metadata(report):
    out, res = report
    assert (out / "bgr_vs_minmax.md").read_text().startswith("# BGR vs MinMax weight MSE")
    assert (out / "bgr_vs_minmax.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["device"].startswith("CPU, ") and "threads" in res["device"]
    assert res["torch"] == torch.__version__ and res["date"] and res["explanation"]
    assert set(res["specs"]) == {"w4_rot", "w4_norot", "w3_rot"}
    assert res["specs"]["w4_rot"]["bits"] == 4 and res["specs"]["w4_rot"]["rotate"] == 128
    assert res["specs"]["w4_norot"]["rotate"] == 0 and res["specs"]["w3_rot"]["bits"] == 3
    kinds = {m["kind"] for m in res["models"].values()}
    assert kinds == {"zoo", "synthetic"}
    assert {"wan_zoo", "wan_zoo_low"} <= set(res["models"])
    assert any(k.startswith("gaussian") for k in res["models"]) and any(k.startswith("student_t3")
                                                                       for k in res["models"])


def test_layers_are_block_linears(report):
    _, res = report
    for name in ("wan_zoo", "wan_zoo_low"):
        layers = res["models"][name]["layers"]
        assert len(layers) == 2  # --smoke: two per expert
        assert all(rec["name"].startswith("blocks.0.") for rec in layers)


def test_reductions_finite_and_bgr_not_worse(report):
    _, res = report
    for mname, m in res["models"].items():
        for rec in m["layers"]:
            for key, s in rec["specs"].items():
                for field in ("mse_minmax", "mse_bgr", "reduction", "row_reduction_median"):
                    assert math.isfinite(s[field]), (mname, rec["name"], key, field)
                assert s["mse_bgr"] <= s["mse_minmax"] * (1 + 1e-6), (mname, rec["name"], key)
                assert 0.0 <= s["reduction"] < 1.0, (mname, rec["name"], key)
                assert s["row_reduction_min"] >= -1e-5 and s["rows_bgr_worse"] == 0, (mname, rec["name"], key)
                # The per-row sums recomputed by the script agree with quantize_weight's .stats.
                assert s["stats_rel_dev"] < 1e-4 and s["basis_rel_dev"] < 1e-4
        for key in ("w4_rot", "w4_norot", "w3_rot"):
            o = m["overall"][key]
            assert math.isfinite(o["reduction"]) and o["reduction"] >= 0.0, (mname, key)
            lo, hi = o["min_layer_reduction"], o["max_layer_reduction"]
            assert lo - 1e-12 <= o["mean_layer_reduction"] <= hi + 1e-12
    assert res["checks"]["rows_bgr_worse"] == 0


def test_limit_bounds_bgr(report):
    """The brute-force optimum is at least as good as BGR on every sampled row, and BGR at least as good as MinMax."""
    out, res = report
    for mname, m in res["models"].items():
        for key in ("w4_rot", "w4_norot", "w3_rot"):
            lim = m["overall"][key]["limit"]
            assert lim["rows"] > 0 and lim["rows_bgr_below_limit"] == 0, (mname, key)
            assert lim["opt"] <= lim["bgr"] * (1 + 1e-6) and lim["bgr"] <= lim["mm"] * (1 + 1e-6), (mname, key)
            assert 0.0 <= lim["share_of_limit"] <= 1.0 + 1e-6
    assert "brute-force per-row MSE-optimal" in (out / "bgr_vs_minmax.md").read_text()


def test_help_and_bad_args(capsys):
    mod = _load()
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        mod.main(["--max-layers", "0"])
    assert e.value.code == 2 and "--max-layers must be >= 1" in capsys.readouterr().err


def _exhaustive(w: torch.Tensor, bits: int) -> float:
    """The best ``Δ(q − z)`` fit of one short row over every code vector and zero point (least-squares Δ > 0)."""
    import itertools

    qmax = 2**bits - 1
    best = float((w.double() ** 2).sum())
    wd = w.double()
    for codes in itertools.product(range(qmax + 1), repeat=w.numel()):
        q = torch.tensor(codes, dtype=torch.float64)
        for z in range(qmax + 1):
            c = q - z
            den = float((c * c).sum())
            if den == 0:
                continue
            d = float((c * wd).sum()) / den
            if d > 0:
                best = min(best, float(((wd - d * c) ** 2).sum()))
    return best


def test_optimal_rows_reaches_the_exhaustive_optimum():
    mod = _load()
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(6, 6, generator=g)
    rows[0, 2] = 6.0  # an outlier: the optimum clips it
    rows[1] = rows[1].abs()  # one-signed: the zero point sits at an end
    got = mod.optimal_rows(rows, bits=2)
    for r in range(rows.shape[0]):
        want = _exhaustive(rows[r], 2)
        assert want - 1e-9 <= float(got[r]) <= want * (1 + 1e-3) + 1e-12, (r, float(got[r]), want)


def test_optimal_rows_bounds_minmax_and_bgr():
    mod = _load()
    from dvdq_compile.quant.bgr import bgr_rows
    from dvdq_compile.quant.minmax import codes_for, minmax_rows

    g = torch.Generator().manual_seed(6)
    rows = torch.randn(16, 256, generator=g) ** 3  # heavy-tailed rows
    opt = mod.optimal_rows(rows, bits=4)

    def err(d, z):  # in float64, as optimal_rows computes
        q = (codes_for(rows, d, z, 15) - z[:, None]).double()
        return ((rows.double() - d[:, None].double() * q) ** 2).sum(1)

    e_mm, e_bgr = err(*minmax_rows(rows, 4)), err(*bgr_rows(rows, 4))
    assert bool((opt <= e_bgr * (1 + 1e-9)).all()) and bool((e_bgr <= e_mm * (1 + 1e-9)).all())
    assert float(opt.sum()) < 0.95 * float(e_mm.sum())  # heavy tails: clipping pays (9% here)


def test_default_zoo_is_v2_and_names_its_outputs(tmp_path):
    mod = _load()
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--smoke", "--no-synthetic", "--experts", "low", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "bgr_vs_minmax_v2.json").read_text())
    assert list(res["models"]) == ["wan_zoo_v2_low"] and res["zoo"] == "v2"
