"""Recipe svdquant_gptq_ts through the backend: reference numerics, timestep bins without recompiles, per-expert
artifacts in one shared graph, round trip, refusals, and its gain over plain W4A4."""
import dataclasses

import pytest
import torch
from torch import nn

from dvdq_compile import Calibration, SVDQuantTSConfig, calibrate, calibrate_svdquant_ts, report
from dvdq_compile.config import QuantConfig
from dvdq_compile.quant import NO_SIGNS, qlinear_ref, quantize_act
from tests.helpers import TinyDiT, compiled, rel_err

FAST = SVDQuantTSConfig(rank=8, alphas=(0.25, 0.5, 0.75), timestep_bins=2)


class One(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].lin = nn.Linear(128, 64)
        with torch.no_grad():
            self.blocks[0].lin.weight.copy_(torch.randn(64, 128, generator=g) / 128 ** 0.5)

    def forward(self, x, timestep):
        return self.blocks[0].lin(x) + 0 * timestep.reshape(-1, 1, 1)


def _xs(seed, n=4, outliers=True):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(1, 32, 128, generator=g) for _ in range(n)]
    if outliers:
        for x in xs:
            x[..., :3] *= 25
    return xs


def _run(xs, ts):
    def run(m):
        for x, t in zip(xs, ts):
            m(x, timestep=torch.tensor([t]))
    return run


def _ref_one(model, cal, x, t):
    """The recipe's numerics written out with the reference quantizers."""
    name = "blocks.0.lin"
    e = {k: cal.recipe_tensors[f"{name}::{k}"] for k in ("lam", "l1", "l2", "packed", "scale", "zero", "clip")}
    xh = torch.mul(x, 1.0 / e["lam"])
    c = e["clip"][cal.bins.index(t)]
    codes, scales = quantize_act(xh, 4, 64, 0, NO_SIGNS, clip=c)
    y = qlinear_ref(codes, scales, e["packed"], e["scale"], e["zero"], model.blocks[0].lin.bias, 4, torch.float32)
    return y + (xh @ e["l1"]) @ e["l2"]


def test_numerics_and_bins_without_recompiles():
    model = One()
    cal = calibrate_svdquant_ts(model, _run(_xs(0), [900.0, 100.0, 800.0, 200.0]), FAST)
    cal.recipe_tensors["blocks.0.lin::clip"] = torch.tensor([0.6, 1.0])  # make the two bins visibly different
    torch._dynamo.utils.counters.clear()
    f = compiled(model, recipe="svdquant_gptq_ts", artifact=cal)
    x = _xs(5, 1)[0]
    outs = {}
    for t in (900.0, 100.0, 700.0, 50.0):
        y = f(x, torch.tensor([t]))
        assert torch.equal(y, _ref_one(model, cal, x, t)), t
        outs[t] = y
    assert not torch.equal(outs[900.0], outs[100.0]) and torch.equal(outs[900.0], outs[700.0])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    row = next(r for r in report(model).layers if r.name == "blocks.0.lin")
    assert "low-rank r=8" in row.reason and "clip x2 bins" in row.reason


class PerTokenT(One):
    """Wan 2.2 TI2V style: a per-token timestep ``[B, tokens]`` whose first-frame tokens are at 0."""

    def forward(self, x, timestep):
        return self.blocks[0].lin(x) + 0 * timestep.amax()


def test_per_token_timestep_is_binned_by_its_max():
    model = PerTokenT()
    xs = _xs(0)
    per_token = [torch.tensor([[0.0] * 4 + [t] * 28]) for t in (900.0, 100.0, 800.0, 200.0)]

    def run(m):
        for x, t in zip(xs, per_token):
            m(x, timestep=t)
    st = calibrate(model, run, timestep_bins=2).stats["blocks.0.lin"]
    assert st.tokens_bins == [64, 64]  # by the first token every call would fall in bin 0
    cal = calibrate_svdquant_ts(model, run, FAST)
    cal.recipe_tensors["blocks.0.lin::clip"] = torch.tensor([0.6, 1.0])
    f = compiled(model, recipe="svdquant_gptq_ts", artifact=cal)
    x = _xs(5, 1)[0]
    for t in (900.0, 100.0):
        y = f(x, torch.tensor([[0.0] * 4 + [t] * 28]))
        assert torch.equal(y, _ref_one(model, cal, x, t)), t
    assert not torch.equal(f(x, torch.tensor([[0.0, 900.0]])), f(x, torch.tensor([[0.0, 100.0]])))


def test_per_expert_artifacts_share_one_graph(tmp_path):
    """Two experts (same class, different weights) run through one compiled graph, each with its own artifact
    (picked by weight fingerprint); a third model with no artifact is refused."""
    hi, lo, other = One(0), One(1), One(2)
    cal_hi = calibrate_svdquant_ts(hi, _run(_xs(0), [900.0, 700.0, 950.0, 600.0]), FAST)
    cal_lo = calibrate_svdquant_ts(lo, _run(_xs(1), [100.0, 300.0, 50.0, 400.0]), FAST)
    p_lo = cal_lo.save(tmp_path / "lo.safetensors")
    opts = {"recipe": "svdquant_gptq_ts", "artifact": [cal_hi, str(p_lo)], "lowering": "eager",
            "kernels": "reference", "progress": False}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    f_hi = torch.compile(hi, backend="dvdquant", options=opts, fullgraph=True)
    f_lo = torch.compile(lo, backend="dvdquant", options=opts, fullgraph=True)
    x = _xs(7, 1)[0]
    for t in (900.0, 100.0):
        assert torch.equal(f_hi(x, torch.tensor([t])), _ref_one(hi, cal_hi, x, t))
        assert torch.equal(f_lo(x, torch.tensor([t])), _ref_one(lo, Calibration.load(p_lo), x, t))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph served both experts
    f_other = torch.compile(other, backend="dvdquant", options=opts, fullgraph=True)
    with pytest.raises(ValueError, match="matches none of the artifacts"):
        f_other(x, torch.tensor([100.0]))


def test_artifact_round_trip_bit_exact(tmp_path):
    model = One()
    cal = calibrate_svdquant_ts(model, _run(_xs(0), [900.0, 100.0, 800.0, 200.0]), FAST)
    back = Calibration.load(cal.save(tmp_path / "a.safetensors"))
    assert set(back.recipe_tensors) == set(cal.recipe_tensors)
    for k, v in cal.recipe_tensors.items():
        assert torch.equal(back.recipe_tensors[k], v) and back.recipe_tensors[k].dtype == v.dtype, k
    assert back.meta["recipe"] == "svdquant_gptq_ts" and back.bins == cal.bins
    x = _xs(3, 1)[0]
    y1 = compiled(model, recipe="svdquant_gptq_ts", artifact=cal)(x, torch.tensor([10.0]))
    y2 = compiled(model, recipe="svdquant_gptq_ts", artifact=str(tmp_path / "a.safetensors"))(x, torch.tensor([10.0]))
    assert torch.equal(y1, y2)


def test_refuses_another_models_artifact_at_compile():
    a, b = One(0), One(1)
    cal = calibrate_svdquant_ts(a, _run(_xs(0), [900.0, 100.0]), FAST)
    with pytest.raises(Exception, match="none of .* was made for this model"):
        compiled(b, recipe="svdquant_gptq_ts", artifact=cal)(_xs(1, 1)[0], torch.tensor([1.0]))


def test_beats_plain_w4a4_on_outlier_activations():
    model = TinyDiT()
    with torch.no_grad():
        model.patch.weight[:4] *= 40  # loud hidden channels, as in real DiTs
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(1, 32, 24, generator=g), t) for t in (900.0, 700.0, 300.0, 100.0)]

    def run(m):
        for x, t in data:
            m(x, timestep=torch.tensor([t]))
    cal = calibrate_svdquant_ts(model, run, FAST)
    x, t = torch.randn(1, 32, 24, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        ref = model(x, t)
    e_svd = rel_err(compiled(model, recipe="svdquant_gptq_ts", artifact=cal)(x, t), ref)
    e_mm = rel_err(compiled(model, recipe="minmax", act_bits=4, act_scale="group", group=64)(x, t), ref)
    assert e_svd < 0.5 * e_mm, (e_svd, e_mm)


def test_config_errors():
    with pytest.raises(ValueError, match="needs its artifact"):
        QuantConfig.from_options({"recipe": "svdquant_gptq_ts"})
    with pytest.raises(ValueError, match="rotate=False"):
        QuantConfig.from_options({"recipe": "svdquant_gptq_ts", "artifact": "a.safetensors", "rotate": True})
    with pytest.raises(ValueError, match="artifact"):
        QuantConfig.from_options({"recipe": "svdquant_gptq_ts", "artifact": [3]})
    with pytest.raises(ValueError, match="clip_grid"):
        SVDQuantTSConfig(clip_grid=(1.2,))
    cfg = QuantConfig.from_options({"recipe": "svdquant_gptq_ts", "artifact": ["a", "b"]})
    assert cfg.artifact == ("a", "b") and hash(cfg)
    assert dataclasses.replace(FAST, timestep_bins=None).timestep_bins is None


def test_clip_search_picks_the_known_best_per_bin():
    """Bin 1 (t >= 500): Gaussian tokens; bin 0: the same plus one 40x spike per 64-group of every token, where
    clipping the spike pays off. The ratio chosen per bin must be the brute-force argmin of the measured output
    error over the grid on that bin's activations, and the two bins must differ (the constructed 'known best')."""
    model = One()
    g = torch.Generator().manual_seed(11)
    hi = [torch.randn(1, 64, 128, generator=g) for _ in range(2)]
    lo = [torch.randn(1, 64, 128, generator=g) for _ in range(2)]
    for x in lo:
        x[..., ::64] *= 40
    cfg = dataclasses.replace(FAST, rank=0, gptq=False, alphas=(0.0,))
    cal = calibrate_svdquant_ts(model, _run(hi + lo, [900.0, 800.0, 100.0, 200.0]), cfg)
    e = {k: cal.recipe_tensors[f"blocks.0.lin::{k}"] for k in ("lam", "packed", "scale", "zero", "clip")}
    from dvdq_compile.quant import dequantize_act
    from dvdq_compile.quant.minmax import dequantize
    from dvdq_compile.quant.pack import unpack
    r = dequantize(unpack(e["packed"], 4), e["scale"], e["zero"])
    w = model.blocks[0].lin.weight.detach()

    def best(xs):
        errs = []
        for c in cfg.clip_grid:
            err = 0.0
            for x in xs:
                x2 = x.reshape(-1, 128)
                xh = x2 / e["lam"]
                xq = dequantize_act(*quantize_act(xh, 4, 64, clip=torch.tensor([c], dtype=torch.float32)))
                err += float((x2 @ w.T - xq @ r.T).double().square().sum())
            errs.append(err)
        return cfg.clip_grid[min(range(len(errs)), key=errs.__getitem__)]
    want = [best(lo), best(hi)]
    assert e["clip"].tolist() == pytest.approx(want), (e["clip"], want)
    assert want[0] != want[1]


def test_layer_sqnr_measures_the_extras_path():
    """dvdq eval's per-layer SQNR rebuilds the recipe's path (smoothing, clip, low-rank): it must equal the SQNR of
    the reference written out here (mean over the clip table's bins)."""
    from dvdq_compile.eval.layers import layer_sqnr
    from dvdq_compile.metrics import sqnr_db

    model = One()
    cal = calibrate_svdquant_ts(model, _run(_xs(0), [900.0, 100.0, 800.0, 200.0]), FAST)
    x = _xs(4, 1)[0]
    compiled(model, recipe="svdquant_gptq_ts", artifact=cal)(x, torch.tensor([10.0]))
    x2 = x.reshape(-1, 128)
    with torch.no_grad():
        ref = model.blocks[0].lin(x2)
        want = sum(sqnr_db(_ref_one(model, cal, x2, t), ref) for t in (100.0, 900.0)) / 2
    got = layer_sqnr(model, {"blocks.0.lin": [x2]})["blocks.0.lin"]
    assert got == pytest.approx(want, rel=1e-6) and got > 15


def test_inductor_and_triton_kernels_match_the_reference():
    """Inductor lowering (bucketize/index_select of the bin lookup in the lowered graph) with the Triton kernels
    (interpreter): bit-equal to the reference, one graph across timesteps of both bins."""
    model = One()
    cal = calibrate_svdquant_ts(model, _run(_xs(0), [900.0, 100.0, 800.0, 200.0]), FAST)
    cal.recipe_tensors["blocks.0.lin::clip"] = torch.tensor([0.6, 1.0])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    f = torch.compile(model, backend="dvdquant", options={"recipe": "svdquant_gptq_ts", "artifact": cal,
                                                          "lowering": "inductor", "kernels": "triton",
                                                          "progress": False})
    x = _xs(5, 1)[0]
    with torch.no_grad():
        for t in (900.0, 100.0, 50.0):
            assert torch.equal(f(x, torch.tensor([t])), _ref_one(model, cal, x, t)), t
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert next(r for r in report(model).layers if r.name == "blocks.0.lin").kernel == "triton"


def test_no_timestep_bins_ablation():
    model = One()
    cfg = dataclasses.replace(FAST, timestep_bins=None)
    cal = calibrate_svdquant_ts(model, _run(_xs(0), [900.0, 100.0]), cfg)
    assert cal.bins.n == 1 and cal.recipe_tensors["blocks.0.lin::clip"].shape == (1,)
    x = _xs(2, 1)[0]
    f = compiled(model, recipe="svdquant_gptq_ts", artifact=cal)
    for t in (900.0, 10.0):
        assert torch.equal(f(x, torch.tensor([t])), _ref_one(model, cal, x, t))
