"""The ``dvdq`` command end to end on reduced settings: the demo's metrics clear a floor that a broken quantizer
fails, ``dvdq eval`` writes its table, bad arguments give clear errors."""
import dataclasses
import json

import pytest

from dvdq_compile import cli
from dvdq_compile.runtime import cache

# Floors for 2 steps, W4 δ-switched A4/A8 on zoo v1, which these demo tests pin (measured: PSNR ~35 dB, SSIM ~0.99;
# the default v2, with its outlier channels, gives 29.9 dB / 0.909). A quantizer with zeroed weight scales scores
# 8.6 dB / SSIM -0.20 (test below).
PSNR_FLOOR, SSIM_FLOOR = 25.0, 0.9
DEMO = ["demo", "--zoo", "v1", "--steps", "2", "--classes", "0", "3", "--one-expert", "--kernels", "reference",
        "--no-progress"]


def _demo(tmp_path, *extra):
    assert cli.main([*DEMO, "--out", str(tmp_path), *extra]) == 0
    return json.loads((tmp_path / "metrics.json").read_text())


def test_demo_end_to_end_above_floor(tmp_path, capsys):
    m = _demo(tmp_path)
    assert m["psnr"] > PSNR_FLOOR and m["ssim"] > SSIM_FLOOR, m
    assert 4 <= m["avg_act_bits"] <= 8 and m["weight_bytes_after"] < 0.3 * m["weight_bytes_before"]
    from PIL import Image

    from dvdq_compile.zoo import DEFAULT_DATA
    f, h, w = DEFAULT_DATA.frames, DEFAULT_DATA.height, DEFAULT_DATA.width
    b = len(m["classes"])
    with Image.open(tmp_path / "side_by_side.gif") as gif, Image.open(tmp_path / "grid.png") as grid:
        # one GIF frame per video frame: B samples x W wide, 2 x H high (x6), plus a label column and a title
        # (wider if the title is: it is never cut)
        assert gif.n_frames == f and gif.size[0] >= 110 + 6 * b * w and gif.size[1] == 48 + 12 * h
        # the PNG: F frames wide, an FP and a quantized row per sample (x4), label column and title
        assert grid.size[0] >= 150 + 4 * f * w and grid.size[1] == 34 + 4 * 2 * b * h
        g = grid.convert("L")
        labels = g.crop((0, 34, 150, grid.size[1]))
        assert min(labels.getdata()) < 128  # text in the label column
        assert min(g.crop((0, 0, grid.size[0], 34)).getdata()) < 128  # and in the title
    out = capsys.readouterr().out
    assert "Compile report" in out and "PSNR vs full precision" in out


def test_demo_floor_catches_a_broken_quantizer(tmp_path, monkeypatch):
    real = cache.quantize_weight

    def broken(w, spec, with_stats=False, pre_scale=None, rows_fn=None):
        qw = real(w, dataclasses.replace(spec, method="minmax"), with_stats, pre_scale)  # minmax: fast
        qw.scale.zero_()
        return qw

    monkeypatch.setattr(cache, "quantize_weight", broken)
    cache.CACHE._entries.clear()
    m = _demo(tmp_path, "--act-bits", "8")
    cache.CACHE._entries.clear()
    assert not (m["psnr"] > PSNR_FLOOR and m["ssim"] > SSIM_FLOOR), m


def test_eval_writes_the_table(tmp_path):
    rows = ["W8A8 MinMax (control)", "MinMax W4A4"]
    argv = ["eval", "--steps", "2", "--classes", "2", "--one-expert", "--kernels", "reference", "--no-progress",
            "--out", str(tmp_path), "--stem", "q", "--rows", *rows]
    assert cli.main(argv) == 0
    doc = json.loads((tmp_path / "q.json").read_text())
    got = {r["label"]: r for r in doc["rows"]}
    assert list(got) == rows
    w8, w4 = got[rows[0]], got[rows[1]]
    for r in (w8, w4):
        assert all(r[k] == r[k] for k in ("psnr", "ssim", "frame_diff_corr", "relation_kl", "sqnr_mean"))  # no NaN
        assert r["sqnr_worst"] <= r["sqnr_mean"] and r["sqnr_worst_layer"].startswith("high:blocks.")
    # The near-lossless control must beat W4A4 on every fidelity metric.
    assert w8["psnr"] > w4["psnr"] + 5 and w8["ssim"] > w4["ssim"] and w8["sqnr_mean"] > w4["sqnr_mean"] + 10
    assert w8["weight_bytes"] > w4["weight_bytes"]
    assert "| MinMax W4A4 |" in (tmp_path / "q.md").read_text() and doc["env"]["device"].startswith("CPU")


def test_bad_arguments(capsys):
    assert cli.main(["eval", "--rows", "nope"]) == 2
    assert "unknown eval row" in capsys.readouterr().err
    assert cli.main(["demo", "--classes", "99", "--one-expert"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli.main(["demo", "--mode", "reduce-overhead", "--device", "cpu", "--one-expert"]) == 2
    assert "mode='reduce-overhead' is an Inductor mode; it needs lowering='inductor'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--steps", "0"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--zoo", "v9"])
    assert cli.main(["eval", "--list-rows"]) == 0
    assert "DVD-Quant" in capsys.readouterr().out


def test_stats_writes_the_card_named_by_zoo_version(tmp_path, capsys):
    argv = ["stats", "--zoo", "v1", "--steps", "2", "--classes", "0", "--one-expert", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    d = json.loads((tmp_path / "stats_zoo_v1_high.json").read_text())
    assert set(d["summary"]) >= {"median_kurtosis", "min_outlier_column", "max_top_over_median_qkv_ffn_up"}
    assert (tmp_path / "stats_zoo_v1_high.md").read_text().startswith("# Statistics card: wan_zoo v1 (high-noise")
    assert "median_kurtosis" in capsys.readouterr().out
