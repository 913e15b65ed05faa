"""Smoke test of the svdquant_gptq_ts rows of `dvdq eval` on the zoo model (one expert, 2 steps, 1 class).

The calibration is shrunk (one α, rank 8, one calibration class) so that the test stays short; the rows' real
settings run in `dvdq eval` (README numbers)."""
import math

from dvdq_compile.eval import harness
from dvdq_compile.eval.harness import ROWS, EvalSetup, Evaluator, Row


def test_svdquant_rows_exist_and_run():
    labels = [r.label for r in ROWS if r.svdquant]
    assert labels == ["SVDQuant-GPTQ-TS W4A4", "SVDQuant-GPTQ-TS W4A4 (no timestep bins)",
                      "SVDQuant-GPTQ-TS W4A4 (no GPTQ)", "SVDQuant-GPTQ-TS W4A4 (no low-rank)",
                      "SVDQuant-GPTQ-TS W4A4 (no refit)"]
    assert {r.calib for r in ROWS if r.svdquant} == {(), (("timestep_bins", None),), (("gptq", False),),
                                                     (("rank", 0),), (("refit_iters", 0),)}
    setup = EvalSetup(classes=(2,), steps=2, calib_classes=(1,), calib_steps=2, two_experts=False,
                      kernels="reference", rows=())
    ev = Evaluator(setup)
    row = Row("smoke", {"recipe": "svdquant_gptq_ts", "act_bits": 4}, "peer", (("alphas", (0.5,)), ("rank", 8)))
    r = ev.run_row(row)
    mm = ev.run_row(Row("MinMax W4A4", {"recipe": "minmax", "act_bits": 4}, "baseline"))
    assert r.calib_seconds > 0 and mm.calib_seconds == 0
    assert all(math.isfinite(v) for v in (r.psnr, r.ssim, r.sqnr_mean, r.sqnr_worst))
    print(f"smoke: svdquant PSNR {r.psnr:.2f} SQNR {r.sqnr_mean:.2f}; minmax PSNR {mm.psnr:.2f} SQNR {mm.sqnr_mean:.2f}")
    assert r.psnr > mm.psnr + 3 and r.sqnr_mean > mm.sqnr_mean + 3, (r, mm)
    assert r.weight_bytes > mm.weight_bytes  # the 16-bit branch is counted
    md = harness.markdown({"env": harness.environment(setup), "setup": vars(setup), "rows": [vars(r)]})
    assert "| smoke (calib" in md
