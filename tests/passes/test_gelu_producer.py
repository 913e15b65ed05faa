"""The FFN-down's activation quantized in the FFN-up GEMM's epilogue: linear → GELU (→ identity dropout) → quantized
linear becomes one dvdq::qlinear_gelu_quant feeding the FFN-down's qlinear (passes/producer.py::assign_gelu), with
the same numbers as the unfused graph."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dvdq_compile
from dvdq_compile.errors import OptionError

K = 128


class FFN(nn.Module):
    """diffusers' FeedForward as Dynamo records it: linear → gelu(approximate) → dropout(p=0) → linear."""

    def __init__(self, approximate="tanh", extra_reader=False, up_reader=False):
        super().__init__()
        self.up, self.down = nn.Linear(K, 3 * K), nn.Linear(3 * K, K)
        self.approximate, self.extra_reader, self.up_reader = approximate, extra_reader, up_reader

    def forward(self, x):
        y = self.up(x)
        a = F.dropout(F.gelu(y, approximate=self.approximate), 0.0, False, False)
        out = self.down(a)
        if self.extra_reader:
            out = out + a.mean()
        if self.up_reader:
            out = out + y.mean()
        return out


class Model(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.blocks = nn.ModuleList([FFN(**kw)])

    def forward(self, x):
        return self.blocks[0](x)


def _x(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 40, K, generator=g) * (1 + 8 * (torch.rand(K, generator=g) > 0.95))).to(dtype)


def _run(model, fuse, kernels="reference", fullgraph=True, dtype=torch.float32, **extra):
    torch._dynamo.reset()
    opts = {"act_bits": 8, "fuse_gelu": fuse, "kernels": kernels, "lowering": "eager", "progress": False, **extra}
    with torch.no_grad():
        return torch.compile(model, backend="dvdquant", options=opts, fullgraph=fullgraph)(_x(dtype))


def _labels(model):
    return {r.name: (r.act_producer, r.reason) for r in dvdq_compile.report(model).layers if r.decision == "quantize"}


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_fused_equals_unfused_with_reference_kernels(approximate):
    """The reference op is the graph's own ops in their order: bit-identical outputs; the report names both ends."""
    m = Model(approximate=approximate).eval()
    y0 = _run(m, "off")
    y1 = _run(m, "on")
    assert torch.equal(y0, y1)
    lab = _labels(m)
    assert lab["blocks.0.up"][0] == "writes blocks.0.down" and "its own output is not written" in lab["blocks.0.up"][1]
    assert lab["blocks.0.down"][0] == "ffn_up_epilogue" and "dvdq::qlinear_gelu_quant" in lab["blocks.0.down"][1]


def test_triton_kernel_in_the_graph_default_compile():
    """Interpreter kernels, bf16 model, default (non-fullgraph) compile: the epilogue kernel runs and the output stays
    at the unfused graph's (GELU's tanh differs in fp32 ulps: a 16-bit value may round the other way)."""
    m = Model().eval().to(torch.bfloat16)
    y0 = _run(m, "off", kernels="triton", fullgraph=False, dtype=torch.bfloat16).float()
    y1 = _run(m, "on", kernels="triton", fullgraph=False, dtype=torch.bfloat16).float()
    assert _labels(m)["blocks.0.down"][0] == "ffn_up_epilogue"
    err = float((y1 - y0).abs().max() / y0.abs().max())
    assert err < 1e-2, err
    assert float((y1 != y0).float().mean()) < 0.05


@pytest.mark.parametrize("kw,why", [({"extra_reader": True}, "other readers"), ({}, "per-token")])
def test_not_fused_with_reason(kw, why):
    m = Model(**kw).eval()
    _run(m, "on", **({"act_scale": "token"} if why == "per-token" else {}))
    lab = _labels(m)
    assert lab["blocks.0.down"][0] == "" and why in lab["blocks.0.down"][1]
    assert lab["blocks.0.up"][0] == ""


class Chain(nn.Module):
    """linear → GELU → linear → GELU → linear: the middle linear is both an FFN-down and an FFN-up."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleList([nn.Linear(K, 2 * K), nn.Linear(2 * K, 2 * K),
                                                    nn.Linear(2 * K, K)])])

    def forward(self, x):
        a, b, c = self.blocks[0]
        return c(F.gelu(b(F.gelu(a(x), approximate="tanh")), approximate="tanh"))


def test_chain_fuses_one_link_and_says_why_not_the_next():
    m = Chain().eval()
    y0, y1 = _run(m, "off"), _run(m, "on")
    assert torch.equal(y0, y1)
    lab = _labels(m)
    assert lab["blocks.0.1"][0] == "ffn_up_epilogue" and lab["blocks.0.0"][0] == "writes blocks.0.1"
    assert lab["blocks.0.2"][0] == "" and "already reads its input from another FFN-up's epilogue" in lab["blocks.0.2"][1]


def test_up_output_with_other_reader_is_no_match():
    m = Model(up_reader=True).eval()
    y0, y1 = _run(m, "off"), _run(m, "on")
    assert torch.equal(y0, y1)
    assert all(p == "" for p, _ in _labels(m).values())


def test_auto_is_off_without_cuda_triton():
    m = Model().eval()
    _run(m, "auto")
    assert {n: r for n, (_, r) in _labels(m).items()} == {"blocks.0.up": "transformer-block linear",
                                                          "blocks.0.down": "transformer-block linear"}


def test_replaced_nodes_are_erased(rewritten):
    """The eager lowering runs every node: the FFN-up linear, its GELU and the dropout leave the rewritten graph."""
    seen = rewritten
    _run(Model().eval(), "on")
    targets = [str(n.target) for g in seen for n in g.graph.nodes if n.op == "call_function"]
    assert not any("gelu" in t and "dvdq" not in t for t in targets) and not any("dropout" in t for t in targets)
    assert not any(t.endswith("linear") and "dvdq" not in t for t in targets)
    assert sum("qlinear_gelu_quant" in t for t in targets) == len(seen)


def test_option_is_validated():
    with pytest.raises(OptionError, match="fuse_gelu"):
        dvdq_compile.config.QuantConfig.from_options({"fuse_gelu": "yes"})


def test_wan_ffn_with_norm_producer():
    """Tiny Wan, both producers on: the FFN-up reads the norm kernel's codes and writes the FFN-down's; same output as
    both off with reference kernels (eager lowering: Inductor would compile the unfused GELU its own way)."""
    from tests.models import tiny

    m = tiny.wan(1)
    outs = []
    for on in ("off", "on"):
        torch._dynamo.reset()
        opts = {"act_bits": 8, "fuse_norm": on, "fuse_gelu": on, "kernels": "reference", "lowering": "eager",
                "progress": False}
        with torch.no_grad():
            outs.append(torch.compile(m, backend="dvdquant", options=opts)(**tiny.wan_inputs())[0])
    assert torch.equal(outs[0], outs[1])
    lab = _labels(m)
    assert lab["blocks.0.ffn.net.2"][0] == "ffn_up_epilogue"
    assert lab["blocks.0.ffn.net.0.proj"][0] == "norm_modulate"
