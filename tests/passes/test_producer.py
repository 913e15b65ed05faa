"""Activation quantization at its producer: layer norm → modulation → cast feeding only quantized linears becomes one
dvdq::norm_act_quant (passes/producer.py), with the same numbers as the unfused graph."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dvdq_compile
from dvdq_compile.errors import OptionError

K = 128


class Block(nn.Module):
    """Wan's shape of it: fp32 norm, (1 + scale) and shift from a per-batch table, cast back, three readers."""

    def __init__(self, affine=False, swap=False, extra_reader=False, plain=False):
        super().__init__()
        self.norm_w = nn.Parameter(1 + 0.1 * torch.randn(K)) if affine else None
        self.norm_b = nn.Parameter(0.1 * torch.randn(K)) if affine else None
        self.to_q, self.to_k, self.to_v = (nn.Linear(K, K) for _ in range(3))
        self.swap, self.extra_reader, self.plain = swap, extra_reader, plain

    def forward(self, x, scale, shift):
        w = self.norm_w.float() if self.norm_w is not None else None   # FP32LayerNorm's spelling
        b = self.norm_b.float() if self.norm_b is not None else None
        n = F.layer_norm(x.float(), (K,), w, b, 1e-6)
        if self.plain:   # no affine, no modulation: the op gets constant ones and zeros
            y = n
        elif self.norm_w is None:
            n = n.to(torch.float32)
            y = (shift + (1 + scale) * n) if self.swap else (n * (1 + scale) + shift)
        else:
            y = n
        y = y.type_as(x)
        out = self.to_q(y) + self.to_k(y) * self.to_v(y)
        return out + y.mean() if self.extra_reader else out


class Model(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.blocks = nn.ModuleList([Block(**kw)])

    def forward(self, x, scale, shift):
        return self.blocks[0](x, scale, shift)


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 40, K, generator=g) * (1 + 10 * (torch.rand(K, generator=g) > 0.95)) + 2).to(dtype)
    return x, 0.3 * torch.randn(2, 1, K, generator=g), 0.2 * torch.randn(2, 1, K, generator=g)


def _run(model, fuse, kernels="reference", fullgraph=True, dtype=torch.float32):
    torch._dynamo.reset()
    opts = {"act_bits": 8, "fuse_norm": fuse, "kernels": kernels, "lowering": "eager", "progress": False}
    with torch.no_grad():
        return torch.compile(model, backend="dvdquant", options=opts, fullgraph=fullgraph)(*_inputs(dtype=dtype))


def _producers(model):
    return {r.name: r for r in dvdq_compile.report(model).layers if r.decision == "quantize"}


@pytest.mark.parametrize("kw", [{}, {"swap": True}, {"plain": True}])
def test_fused_equals_unfused_with_reference_kernels(kw):
    """The reference op is the graph's own ops in their order: bit-identical outputs, and the report says so."""
    m = Model(**kw).eval()
    y0 = _run(m, "off")
    y1 = _run(m, "on")
    assert torch.equal(y0, y1)
    rep = _producers(m)
    assert {n: r.act_producer for n, r in rep.items()} == {f"blocks.0.to_{c}": "norm_modulate" for c in "qkv"}
    assert all("dvdq::norm_act_quant" in r.reason for r in rep.values())


def test_affine_norm_and_16_bit_graph():
    """An affine norm (no modulation) is fused with its weight and bias; fp16 activations cast back as the graph
    does; the reference composes norm and affine separately, so only rounding ties may differ."""
    m = Model(affine=True).eval().half()
    y0, y1 = _run(m, "off", dtype=torch.float16).float(), _run(m, "on", dtype=torch.float16).float()
    assert all(r.act_producer == "norm_modulate" for r in _producers(m).values())
    torch.testing.assert_close(y1, y0, rtol=2e-2, atol=2e-2 * float(y0.abs().max()))


def test_other_reader_is_not_fused():
    m = Model(extra_reader=True).eval()
    _run(m, "on")
    for r in _producers(m).values():
        assert r.act_producer == "" and "other readers" in r.reason


def test_auto_is_off_without_cuda_triton():
    """auto fuses only where the kernel pays (Triton on CUDA); elsewhere the plan is untouched, reasons included."""
    m = Model().eval()
    _run(m, "auto")
    for r in _producers(m).values():
        assert r.act_producer == "" and r.reason == "transformer-block linear"


def test_triton_kernel_in_the_graph_default_compile():
    """Interpreter kernels, default (non-fullgraph) compile: the fused op runs and stays close to the unfused graph
    (the kernel's layer norm sums in another order: ties may flip a code)."""
    m = Model().eval()
    y0 = _run(m, "off", kernels="triton", fullgraph=False)
    y1 = _run(m, "on", kernels="triton", fullgraph=False)
    assert all(r.act_producer == "norm_modulate" for r in _producers(m).values())
    err = float((y1 - y0).abs().max() / y0.abs().max())
    assert err < 1e-2, err


def test_option_is_validated():
    with pytest.raises(OptionError, match="fuse_norm"):
        dvdq_compile.config.QuantConfig.from_options({"fuse_norm": "yes"})


def test_wan_attention_and_ffn_inputs_are_fused():
    from tests.models import tiny
    m = tiny.wan(1)
    torch._dynamo.reset()
    opts = {"act_bits": 8, "fuse_norm": "on", "kernels": "reference", "progress": False}
    with torch.no_grad():
        torch.compile(m, backend="dvdquant", options=opts)(**tiny.wan_inputs())
    fused = {n for n, r in _producers(m).items() if r.act_producer}
    assert fused == {"blocks.0.attn1.to_q", "blocks.0.attn1.to_k", "blocks.0.attn1.to_v", "blocks.0.attn2.to_q",
                     "blocks.0.ffn.net.0.proj"}


def test_replaced_norm_nodes_are_erased(rewritten):
    """The eager lowering runs every node: the fused block's layer norm and modulation must be gone from the
    rewritten graph (and kept when fusion is off)."""
    seen = rewritten
    m = Model().eval()
    for fuse, has_norm in (("on", False), ("off", True)):
        seen.clear()
        _run(m, fuse)
        targets = [str(n.target) for g in seen for n in g.graph.nodes]
        assert seen and any("layer_norm" in t for t in targets) == has_norm, targets
        assert any("norm_act_quant" in t for t in targets) != has_norm
