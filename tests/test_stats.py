"""The statistics card: weight statistics against scipy and known distributions, activation statistics against
values computed by hand from the same inputs, targets, and the written card."""
import json

import pytest
import scipy.stats
import torch
from torch import nn

from dvdq_compile import stats


def _w(kind, n=256, k=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(n, k, generator=g)
    if kind == "uniform":
        return torch.rand(n, k, generator=g) * 2 - 1
    # Student-t, 3 degrees of freedom: heavy tails, as trained DiT weights
    return torch.distributions.StudentT(3.0).sample((n, k))


@pytest.mark.parametrize("kind", ["gauss", "uniform", "t3"])
def test_weight_moments_match_scipy(kind):
    torch.manual_seed(0)
    w = _w(kind)
    s = stats.weight_stats(w)
    flat = w.double().reshape(-1).numpy()
    assert s["kurtosis"] == pytest.approx(scipy.stats.kurtosis(flat, fisher=False), rel=1e-4)
    sd = flat.std()
    assert s["max_over_std"] == pytest.approx(abs(flat - flat.mean()).max() / sd, rel=1e-4)
    assert s["beyond_3sigma"] == pytest.approx((abs(flat - flat.mean()) > 3 * sd).mean(), abs=1e-6)


def test_known_distributions_land_where_they_should():
    torch.manual_seed(0)
    g, u, t = (stats.weight_stats(_w(k)) for k in ("gauss", "uniform", "t3"))
    assert abs(g["kurtosis"] - 3.0) < 0.1 and abs(u["kurtosis"] - 1.8) < 0.05 and t["kurtosis"] > 5
    assert 0.002 < g["beyond_3sigma"] < 0.0035  # 0.27% for a Gaussian
    # rotation: harmful on uniform rows, about neutral on Gaussian, helpful on heavy tails
    assert u["rotation_ratio"] > 1.5 and 0.8 < g["rotation_ratio"] < 1.25 and t["rotation_ratio"] < 0.8


def test_w4_error_is_the_minmax_reference_error():
    from dvdq_compile.quant.minmax import dequantize, minmax

    w = _w("gauss", 64, 256)
    codes, scale, zero = minmax(w, 4)
    want = ((dequantize(codes, scale, zero) - w) ** 2).sum() / (w ** 2).sum()
    assert stats.weight_stats(w)["w4_error"] == pytest.approx(float(want), rel=1e-6)
    assert stats.weight_stats(w[:, :200])["w4_error_rotated"] is None  # K not a multiple of 128: not rotated


class OneBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].to_q = nn.Linear(128, 64)
        self.head = nn.Linear(64, 8)  # outside the blocks: not in the card

    def forward(self, x, timestep):
        return self.head(self.blocks[0].to_q(x * (1 + timestep.reshape(-1, 1, 1) / 1000)))


def test_activation_statistics_by_hand():
    model = OneBlock()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 32, 128, generator=g) for _ in range(6)]
    for x in xs:
        x[..., 7] = 50.0 + x[..., 7].abs()  # a fixed outlier channel, largest on every token
    ts = [900.0, 900.0, 500.0, 500.0, 100.0, 100.0]  # 3 steps of two calls (CFG)

    def run(m):
        for x, t in zip(xs, ts):
            m(x, timestep=torch.tensor([t]))

    c = stats.card(model, run)
    assert list(c["weights"]) == ["blocks.0.to_q"] and list(c["activations"]) == ["blocks.0.to_q"]
    a = c["activations"]["blocks.0.to_q"]
    ins = [x * (1 + t / 1000) for x, t in zip(xs, ts)]
    chan = torch.stack([i.abs().reshape(-1, 128).amax(0) for i in ins]).amax(0)
    assert a["top_channel"] == 7 and a["top_is_token_max"] == 1.0 and a["tokens"] == 32 and a["steps"] == 3
    assert a["top_over_median"] == pytest.approx(float(chan[7] / chan.median()), rel=1e-6)
    per_step = [max(float(ins[i].abs().max()), float(ins[i + 1].abs().max())) for i in (0, 2, 4)]
    assert a["step_range"] == pytest.approx(max(per_step) / min(per_step), rel=1e-6)
    cols = model.blocks[0].to_q.weight.detach().norm(dim=0)
    assert a["top_column_over_median_column"] == pytest.approx(float(cols[7] / cols.median()), rel=1e-6)
    s = c["summary"]
    assert s["median_top_over_median_qkv_ffn_up"]["value"] == pytest.approx(a["top_over_median"])
    assert s["median_top_over_median_qkv_ffn_up"]["met"] is True and s["median_kurtosis"]["met"] is False


def test_written_card(tmp_path):
    model = OneBlock()
    c = stats.card(model, lambda m: m(torch.randn(1, 16, 128), timestep=torch.tensor([10.0])))
    stats.write_card(c, tmp_path, "card", "one block", {"device": "CPU"})
    d = json.loads((tmp_path / "card.json").read_text())
    assert d["environment"] == {"device": "CPU"} and d["weights"]["blocks.0.to_q"]["shape"] == [64, 128]
    md = (tmp_path / "card.md").read_text()
    assert "| blocks.0.to_q | 64x128 |" in md and "median_kurtosis" in md and "head" not in md


class WanLike(nn.Module):
    """attn1 (self, post-modulation), attn2 (cross: text keys) and FFN-up, named as in diffusers' Wan block."""

    def __init__(self):
        super().__init__()
        blk = nn.Module()
        blk.attn1, blk.attn2, blk.ffn = nn.Module(), nn.Module(), nn.Module()
        blk.attn1.to_q = nn.Linear(128, 128, bias=False)
        blk.attn2.to_k = nn.Linear(128, 128, bias=False)
        blk.ffn.net = nn.ModuleList([nn.Module()])
        blk.ffn.net[0].proj = nn.Linear(128, 256, bias=False)
        self.blocks = nn.ModuleList([blk])

    def forward(self, x, text, timestep):
        b = self.blocks[0]
        return b.attn1.to_q(x).sum() + b.attn2.to_k(text).sum() + b.ffn.net[0].proj(x).sum()


def test_summary_activation_targets_are_post_modulation_and_fixed_channels():
    torch.manual_seed(0)
    model = WanLike()
    with torch.no_grad():
        model.blocks[0].attn1.to_q.weight[:, 5] *= 0.1  # the outlier channel's column: 0.1x its neighbours
    x = torch.randn(1, 64, 128)
    x[..., 5] = 80.0  # fixed: the largest channel on every token, ~30x the median channel's absmax
    text = torch.randn(1, 8, 128)
    text[..., 9] *= 500  # a huge text channel: cross-attention is not post-modulation, so it must not count
    c = stats.card(model, lambda m: m(x, text, timestep=torch.tensor([1.0])))
    s, a = c["summary"], c["activations"]
    post = [a["blocks.0.attn1.to_q"], a["blocks.0.ffn.net.0.proj"]]
    assert a["blocks.0.attn2.to_k"]["top_over_median"] > 100  # listed in the card ...
    assert s["max_top_over_median_qkv_ffn_up"]["value"] == pytest.approx(max(p["top_over_median"] for p in post))
    assert s["median_top_over_median_qkv_ffn_up"]["value"] == pytest.approx(
        sum(p["top_over_median"] for p in post) / 2)  # ... but not in the targets
    cols = [p["top_column_over_median_column"] for p in post]
    assert s["min_outlier_column"]["value"] == pytest.approx(min(cols)) and min(cols) < 0.15
    assert s["min_outlier_column"]["met"] is False and s["max_outlier_column"]["met"] is True
    # a channel that is large on only some tokens is not a fixed channel
    x2 = torch.randn(1, 64, 128)
    x2[0, :8, 5] = 200.0
    c2 = stats.card(WanLike(), lambda m: m(x2, text, timestep=torch.tensor([1.0])))
    assert c2["activations"]["blocks.0.attn1.to_q"]["top_over_median"] > 30
    assert c2["summary"]["max_top_over_median_qkv_ffn_up"]["value"] is None
