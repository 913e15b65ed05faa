import pytest
import torch

from dvdq_compile.config import QuantConfig, recipe_for
from dvdq_compile.passes.find_linears import find_linears
from dvdq_compile.passes.layer_names import source_path
from dvdq_compile.passes.plan import plan_layers
from tests.helpers import TinyDiT


@pytest.mark.parametrize("raw,expected", [
    ("L['self'].__dict__['_modules']['condition_embedder'].time_embedder.linear_1",
     ("self", "condition_embedder.time_embedder.linear_1")),
    ("L['self'].__dict__['_modules']['blocks']._modules['0'].attn1.to_q", ("self", "blocks.0.attn1.to_q")),
    ("L['self'].blocks[3].ffn.net[2]", ("self", "blocks.3.ffn.net.2")),
    ("L['fn']._modules['0']", ("fn", "0")),
    ("getattr(L['self'].blocks, '1').to_out", ("self", "blocks.1.to_out")),
    ("L['self']._modules['attn']._modules['to_q']._parameters['weight']", ("self", "attn.to_q.weight")),
    ("G['model'].proj", ("", "G.model.proj")),
])
def test_source_path(raw, expected):
    assert source_path(raw) == expected


def _plan(gm, example_inputs, options):
    cfg = QuantConfig.from_options(options)
    return plan_layers(find_linears(gm, example_inputs), cfg, recipe_for(cfg.recipe), [], example_inputs,
                       "reference", "test")


def _sites(model, inputs, **options):
    """The layer plans of ``model``'s graph, by name."""
    got = {}

    def backend(gm, example_inputs):
        got["plan"] = _plan(gm, example_inputs, options)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(*inputs)
    return {p.name: p for p in got["plan"].layers}


def _inputs():
    return torch.randn(2, 20, 24), torch.tensor([500, 500])


def test_policy_decisions_and_reasons():
    sites = _sites(TinyDiT(odd_k=True), _inputs())
    assert set(sites) == {"patch", "time", "proj_out", "blocks.0.odd"} | {
        f"blocks.{i}.{n}" for i in range(2) for n in ("norm1.linear", "to_q", "to_k", "to_v", "to_out", "ff1", "ff2")}
    for name in ("patch", "time", "proj_out"):
        assert sites[name].decision == "skip" and "outside transformer blocks" in sites[name].reason
    assert sites["blocks.0.odd"].decision == "skip" and "K=136 is not a multiple of group 128" in sites["blocks.0.odd"].reason
    assert sites["blocks.1.norm1.linear"].decision == "weight_only" and "modulation" in sites["blocks.1.norm1.linear"].reason
    for n in ("to_q", "to_k", "to_v", "to_out", "ff1", "ff2"):
        s = sites[f"blocks.0.{n}"]
        assert s.decision == "quantize", (n, s.reason)
        assert s.site.m == 40 and s.site.dtype == torch.float32
    assert (sites["blocks.0.ff2"].n, sites["blocks.0.ff2"].k) == (128, 256)


def test_weights_are_matched_by_identity():
    model = TinyDiT()
    got = {}

    def backend(gm, example_inputs):
        got["sites"], got["ex"] = find_linears(gm, example_inputs), example_inputs
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(*_inputs())
    by_name = dict(model.named_modules())
    for s in got["sites"]:
        assert got["ex"][s.w_index] is by_name[s.name].weight


def test_user_patterns_override_policy():
    sites = _sites(TinyDiT(), _inputs(), exclude=["blocks.0.to_*"], include=["proj_out"], weight_only=["*.ff2"])
    assert sites["blocks.0.to_q"].decision == "skip" and "excluded by pattern 'blocks.0.to_*'" in sites["blocks.0.to_q"].reason
    assert sites["blocks.1.to_q"].decision == "quantize"
    assert sites["proj_out"].decision == "quantize"
    assert sites["blocks.1.ff2"].decision == "weight_only" and "'*.ff2'" in sites["blocks.1.ff2"].reason


def test_include_does_not_override_group_divisibility():
    sites = _sites(TinyDiT(), _inputs(), include=["patch"])  # K=24
    assert sites["patch"].decision == "skip" and "K=24 is not a multiple of group 128" in sites["patch"].reason


def test_small_static_m_runs_weight_only():
    sites = _sites(TinyDiT(), (torch.randn(1, 8, 24), torch.tensor([500])))
    s = sites["blocks.0.to_q"]
    assert s.decision == "weight_only" and "M=8 <= min_tokens=16" in s.reason
    sites = _sites(TinyDiT(), (torch.randn(1, 8, 24), torch.tensor([500])), min_tokens=4)
    assert sites["blocks.0.to_q"].decision == "quantize"


def test_act_bits_16_is_weight_only_everywhere_in_blocks():
    sites = _sites(TinyDiT(), _inputs(), act_bits=16)
    assert {s.decision for n, s in sites.items() if n.startswith("blocks.")} == {"weight_only"}


def test_blocks_of_a_wrapped_model_are_found():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = TinyDiT()

        def forward(self, x, t):
            return self.transformer(x, t)

    sites = _sites(Wrapper(), _inputs())
    assert sites["transformer.blocks.0.to_q"].decision == "quantize"
    assert sites["transformer.proj_out"].decision == "skip"
