"""Recipe ``smoothquant`` through the backend: exact numerics, the gain on outlier channels, artifact checks."""
import pytest
import torch
from torch import nn

from dvdq_compile import calibrate, report
from dvdq_compile.config import QuantConfig
from dvdq_compile.quant import (
    NO_SIGNS,
    qlinear_ref,
    quantize_act,
    quantize_weight,
    smooth_factors,
)
from tests.helpers import TinyDiT, compiled, rel_err


def _inputs(seed, n=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 32, 24, generator=g), torch.tensor([100.0 * (i + 1)])) for i in range(n)]


def _outlier_model():
    """TinyDiT whose hidden state has 4 channels ~40x larger than the rest (what SmoothQuant is for)."""
    m = TinyDiT()
    with torch.no_grad():
        m.patch.weight[:4] *= 40
    return m


def _cal(model, seed=0):
    return calibrate(model, lambda m: [m(x, t) for x, t in _inputs(seed, 4)])


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].lin = nn.Linear(128, 64)
        with torch.no_grad():
            self.blocks[0].lin.weight.copy_(torch.randn(64, 128) / 128 ** 0.5)

    def forward(self, x):
        return self.blocks[0].lin(x)


def test_numerics_are_the_reference():
    model = One()
    xs = torch.randn(2, 32, 128) * torch.linspace(0.1, 20, 128)
    cal = calibrate(model, lambda m: m(xs))
    y = compiled(model, recipe="smoothquant", artifact=cal, weight_bits=4, act_bits=4)(xs[:1])
    lin = model.blocks[0].lin
    s = smooth_factors(xs.abs().amax((0, 1)), lin.weight.abs().amax(0), 0.5)
    spec = QuantConfig.from_options({"recipe": "smoothquant", "artifact": cal, "weight_bits": 4}).weight_spec()
    import dataclasses

    from dvdq_compile.passes.smooth import scale_key
    qw = quantize_weight(lin.weight, dataclasses.replace(spec, pre_scale=scale_key(s)), pre_scale=s)
    codes, scales = quantize_act(torch.mul(xs[:1], 1.0 / s), 4, 128, 0, NO_SIGNS)
    want = qlinear_ref(codes, scales, *qw.tensors(), lin.bias, 4, torch.float32)
    assert torch.equal(y, want)


def test_smoothing_beats_plain_per_token_on_outlier_channels():
    model = _outlier_model()
    x, t = _inputs(7, 1)[0]
    with torch.no_grad():
        ref = model(x, t)
    cal = _cal(model)
    errs = {}
    for name, opts in {"minmax": {"recipe": "minmax"}, "smoothquant": {"recipe": "smoothquant", "artifact": cal}}.items():
        errs[name] = rel_err(compiled(model, weight_bits=8, act_bits=4, **opts)(x, t), ref)
    assert errs["smoothquant"] < 0.7 * errs["minmax"], errs
    rows = {r.name: r for r in report(model).layers}
    assert "SmoothQuant alpha=0.5" in rows["blocks.0.to_q"].reason
    assert "SmoothQuant" not in rows["blocks.0.norm1.linear"].reason  # weight-only: 16-bit activations


def test_artifact_path_and_missing_layers(tmp_path):
    model = TinyDiT()
    cal = calibrate(model, lambda m: [m(x, t) for x, t in _inputs(0)],
                    layers=lambda name, mod: not name.startswith("blocks.1."))
    path = cal.save(tmp_path / "sq.safetensors")
    x, t = _inputs(3, 1)[0]
    y = compiled(model, recipe="smoothquant", artifact=str(path))(x, t)
    assert torch.isfinite(y).all()
    rows = {r.name: r for r in report(model).layers}
    assert "SmoothQuant" in rows["blocks.0.ff1"].reason
    assert "not smoothed: no calibration statistics" in rows["blocks.1.ff1"].reason


def _edited():
    m = TinyDiT()
    with torch.no_grad():
        m.blocks[0].ff1.weight.mul_(1.5)
    return m


def test_refuses_another_models_artifact():
    a, b = TinyDiT(), _edited()
    cal = _cal(a)
    x, t = _inputs(3, 1)[0]
    with pytest.raises(Exception, match="different model"):
        compiled(b, recipe="smoothquant", artifact=cal)(x, t)


def test_shared_graph_checks_every_model():
    """Two instances of one class share Dynamo's graph: the second must not run with the first one's artifact."""
    a, b = TinyDiT(), _edited()
    x, t = _inputs(3, 1)[0]
    # Same options object => same backend => Dynamo reuses the compiled graph for b.
    opts = {"recipe": "smoothquant", "artifact": _cal(a), "lowering": "eager", "kernels": "reference",
            "progress": False}
    torch._dynamo.reset()
    fa = torch.compile(a, backend="dvdquant", options=opts, fullgraph=True)
    fb = torch.compile(b, backend="dvdquant", options=opts, fullgraph=True)
    fa(x, t)
    with pytest.raises(ValueError, match="different model"):
        fb(x, t)


def test_config_errors():
    with pytest.raises(ValueError, match="needs calibration statistics"):
        QuantConfig.from_options({"recipe": "smoothquant"})
    with pytest.raises(ValueError, match="smooth_alpha"):
        QuantConfig.from_options({"recipe": "smoothquant", "artifact": "x.safetensors", "smooth_alpha": 2})
    with pytest.raises(ValueError, match="artifact"):
        QuantConfig.from_options({"artifact": 3})
