"""The per-layer SQNR path runs exactly what the compiled graph computes (the layer's planned op sequence)."""
import pytest
import torch
from torch import nn

from dvdq_compile import calibrate
from dvdq_compile.eval.layers import capture_inputs, layer_output, layer_sqnr
from dvdq_compile.metrics import sqnr_db
from dvdq_compile.runtime.registry import graphs_of
from tests.helpers import compiled


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].lin = nn.Linear(256, 96)
        with torch.no_grad():
            self.blocks[0].lin.weight.copy_(torch.randn(96, 256) / 16)

    def forward(self, x):
        return self.blocks[0].lin(x)


@pytest.mark.parametrize("opts", [
    {"recipe": "minmax", "act_bits": 4},
    {"recipe": "dvdquant", "act_bits": 8, "bgr_n": 8, "bgr_max_iter": 4},
    {"recipe": "quarot", "act_bits": 4, "group": 64},
    {"recipe": "smoothquant", "act_bits": 4},
    {"recipe": "minmax", "act_scale": "channel", "act_bits": 6},
])
def test_quantized_output_is_the_graphs(opts):
    model = One()
    x = torch.randn(3, 40, 256) * torch.linspace(0.2, 8, 256)
    if opts["recipe"] == "smoothquant":
        opts = dict(opts, artifact=calibrate(model, lambda m: m(x)))
    with torch.no_grad():
        y = compiled(model, **opts)(x)
    ((g, params),) = graphs_of(model)
    (p,) = g.plan.quantized()
    want = layer_output(g, p, x, params, g.cfg.act_variants[0], model.blocks[0].lin.bias)
    assert torch.equal(y, want)


def test_layer_sqnr_on_captured_inputs():
    model = One()
    xs = [torch.randn(1, 32, 256) for _ in range(3)]
    with capture_inputs(model, rows_per_call=8) as store, torch.no_grad():
        for x in xs:
            model(x)
    assert [t.shape for t in store["blocks.0.lin"]] == [(8, 256)] * 3
    c = compiled(model, recipe="minmax", act_bits=4, weight_bits=8)
    with torch.no_grad():
        c(xs[0])
    s4 = layer_sqnr(model, store)["blocks.0.lin"]
    x = torch.cat(store["blocks.0.lin"])
    lin = model.blocks[0].lin
    ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    # independent of dvdq_compile: per-row asymmetric W8 MinMax (range widened to include 0), symmetric per-token A4,
    # both rounded half to even, in float64
    w = lin.weight.double()
    lo, hi = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
    d = (hi - lo) / 255
    z = torch.round(-lo / d)
    w_hat = d * (torch.clamp(torch.round(w / d) + z, 0, 255) - z)
    s = x.double().abs().amax(1, keepdim=True) / 7
    x_hat = torch.round(x.double() / s).clamp(-7, 7) * s
    want = torch.nn.functional.linear(x_hat, w_hat, lin.bias.double()).float()
    assert s4 == pytest.approx(sqnr_db(want, ref), abs=0.01)
    c8 = compiled(model, recipe="minmax", act_bits=8, weight_bits=8)
    with torch.no_grad():
        c8(xs[0])
    assert layer_sqnr(model, store)["blocks.0.lin"] > s4 + 10  # with W8, A8 is far better than A4 (~6 dB/bit)
