"""Smoke test of the Q-VDiT rows of `dvdq eval` (one expert, 2 steps, 1 class) with a stand-in artifact.

The real rows load the artifacts `python -m dvdq_compile.qvdit.train` writes (README numbers); here the learned
tensors are small random perturbations, so the test checks the plumbing, per-layer bits and the error path, not
what training buys."""
import copy
import json
import math

import pytest
import torch

from dvdq_compile import cli
from dvdq_compile.eval import harness
from dvdq_compile.eval.harness import ROWS, EvalSetup, Evaluator, qvdit_paths
from dvdq_compile.qvdit import swap
from dvdq_compile.qvdit.artifact import QVDiTArtifact
from dvdq_compile.qvdit.train import SETTINGS


def test_rows_and_settings():
    q = {r.label: r.qvdit for r in ROWS if r.qvdit}
    assert q == {"Q-VDiT W3A6 (MLP W8A8)": "w3a6-faithful", "Q-VDiT W3A6": "w3a6", "Q-VDiT W4A6": "w4a6"}
    for r in ROWS:
        if r.qvdit:  # the row's bits are the artifact's: a mismatch would fail at compile time
            c = SETTINGS[r.qvdit]
            assert (r.options["weight_bits"], r.options["act_bits"]) == (c.weight_bits, c.act_bits)
    labels = [r.label for r in ROWS]
    for same_bits in ("MinMax W3A6", "BGR+ARQ W3A6", "MinMax W4A6", "BGR+ARQ W4A6"):
        assert same_bits in labels


def test_missing_artifacts_name_the_training_command(tmp_path, capsys):
    setup = EvalSetup(qvdit_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"python -m dvdq_compile.qvdit.train --setting w3a6 --out "):
        qvdit_paths(setup, "w3a6")
    argv = ["eval", "--rows", "Q-VDiT W3A6", "--qvdit-dir", str(tmp_path), "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "w3a6_high.safetensors" in capsys.readouterr().err


def test_faithful_row_runs_with_its_bits(tmp_path):
    setup = EvalSetup(classes=(2,), steps=2, two_experts=False, kernels="reference", rows=(),
                      qvdit_dir=str(tmp_path))
    ev = Evaluator(setup)
    cfg = SETTINGS["w3a6-faithful"]
    m = copy.deepcopy(ev.experts[0])
    layers = swap.install(m, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in layers.values():
            t.b1.add_(torch.randn(t.b1.shape, generator=g) * 1e-3)
    QVDiTArtifact.from_model(m, cfg).save(tmp_path / "w3a6-faithful_high.safetensors")
    (tmp_path / "w3a6-faithful_loss.json").write_text(json.dumps(
        {"summary": {"record_seconds": 2.0, "experts": {"high": {"seconds": 5.0}}}}))
    row = next(r for r in ROWS if r.qvdit == "w3a6-faithful")
    r = ev.run_row(row)
    rtn = ev.run_row(next(r for r in ROWS if r.label == "MinMax W3A6"))
    assert all(math.isfinite(v) for v in (r.psnr, r.ssim, r.sqnr_mean, r.sqnr_worst))
    assert r.calib_seconds == 7.0 and rtn.calib_seconds == 0
    # the MLP runs at A8 in the faithful setting: between 6 and 8 bits, N·K weighted
    assert 6.0 < r.avg_act_bits < 8.0 and rtn.avg_act_bits == 6.0
    # MLP at W8 and the rank-1 branch cost bytes; untrained (b1 ~ 0) the row is RTN with an 8-bit MLP: better
    assert r.weight_bytes > rtn.weight_bytes and r.psnr > rtn.psnr
    md = harness.markdown({"env": harness.environment(setup), "setup": vars(setup), "rows": [vars(r)]})
    assert "| Q-VDiT W3A6 (MLP W8A8) (train 7 s) |" in md


def test_default_table_leaves_out_untrained_qvdit_rows(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(setup, out, progress, stem):
        seen["rows"] = setup.rows
        raise FileNotFoundError("stop here")  # the CLI turns it into exit code 2

    monkeypatch.setattr(harness, "run", fake_run)
    (tmp_path / "w4a6_high.safetensors").write_bytes(b"")  # only w4a6 "trained"
    (tmp_path / "w4a6_low.safetensors").write_bytes(b"")
    assert cli.main(["eval", "--qvdit-dir", str(tmp_path), "--no-progress", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "leaving out row 'Q-VDiT W3A6 (MLP W8A8)'" in err and "leaving out row 'Q-VDiT W3A6'" in err
    assert "Q-VDiT W4A6" in seen["rows"] and "Q-VDiT W3A6" not in seen["rows"]
    assert len(seen["rows"]) == len(ROWS) - 2
