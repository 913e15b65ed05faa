"""The layer plan made from plain LinearSite facts, without Dynamo: policy, recipe overrides, kernel choice."""
import dataclasses

import pytest
import torch

from dvdq_compile.config import QuantConfig, recipe_for
from dvdq_compile.passes.find_linears import LinearSite
from dvdq_compile.passes.plan import Products, plan_layers
from dvdq_compile.recipes.base import Recipe


def site(name, n=256, k=256, m=64, x="x0", w_index=0, **kw) -> LinearSite:
    return LinearSite(node=None, name=name, x=x, w=None, b=None, w_index=w_index, n=n, k=k, m=m, m_first=m,
                      dtype=torch.float32, device=torch.device("cpu"), w_dtype=torch.float32, is_param=True, **kw)


SITES = [
    site("patch", k=24, x="in"),
    site("blocks.0.norm1.linear", m=1, x="temb", w_index=1),
    site("blocks.0.attn.to_q", w_index=2), site("blocks.0.attn.to_k", w_index=3),
    site("blocks.0.attn2.to_k", m=12, x="text", w_index=4),
    site("blocks.0.ff.odd", k=136, x="h", w_index=5),
    site("blocks.0.ff.net.2", k=512, x="g", w_index=6),
]


def _plan(options=None, recipe=None, impl="reference"):
    cfg = QuantConfig.from_options(options or {})
    return plan_layers(SITES, cfg, recipe or recipe_for(cfg.recipe), [], [None] * 8, impl, "test")


def test_policy_decides_every_layer_with_its_reason():
    plan = _plan()
    by = {p.name: p for p in plan.layers}
    assert [p.name for p in plan.layers] == [s.name for s in SITES]  # one plan per site, in order
    assert by["patch"].decision == "skip" and "outside transformer blocks" in by["patch"].reason
    assert by["blocks.0.norm1.linear"].decision == "weight_only" and "modulation" in by["blocks.0.norm1.linear"].reason
    assert by["blocks.0.attn2.to_k"].decision == "weight_only"
    assert "M=12 <= min_tokens=16" in by["blocks.0.attn2.to_k"].reason
    odd = by["blocks.0.ff.odd"]
    assert odd.decision == "skip" and "K=136 is not a multiple of group 128" in odd.reason
    q = by["blocks.0.attn.to_q"]
    assert (q.decision, q.weight_bits, q.act_bits, q.act_group, q.rotate, q.kernel, q.op) == \
        ("quantize", 4, None, 128, 128, "reference", "qlinear")
    assert q.abits(4) == 4 and q.abits(8) == 8 and plan.variants == (4, 8)
    assert by["blocks.0.norm1.linear"].op == "dq_linear" and by["patch"].op == "fp" and by["patch"].kernel == "-"


def test_plans_are_frozen():
    p = _plan().layers[2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.decision = "skip"


def test_options_change_the_plan():
    by = {p.name: p for p in _plan({"recipe": "minmax", "exclude": ["*.attn.to_k"], "min_tokens": 8}).layers}
    k = by["blocks.0.attn.to_k"]
    assert k.decision == "skip" and "excluded by pattern '*.attn.to_k'" in k.reason
    assert by["blocks.0.attn2.to_k"].decision == "quantize"  # 12 tokens > min_tokens=8
    q = by["blocks.0.attn.to_q"]
    assert (q.act_group, q.rotate, q.act_bits) == (256, 0, None)  # per-token scales (group = K), no rotation
    ch = {p.name: p for p in _plan({"recipe": "minmax", "act_scale": "channel"}).layers}["blocks.0.attn.to_q"]
    assert ch.op == "dq_channel" and ch.kernel == "reference"


class Fixed(Recipe):
    """A recipe that fixes one layer at W8A6 and makes another weight-only, with reasons."""
    name = "test_fixed"

    def plan(self, ctx):
        for d in ctx.drafts:
            if d.name == "blocks.0.attn.to_q":
                d.weight_bits, d.act_bits = 8, 6
                d.note("W8A6 by the test recipe")
            if d.name == "blocks.0.attn.to_k":
                d.decision = "weight_only"
                d.note("16-bit activations by the test recipe")
        return Products()


def test_a_recipe_overrides_bits_and_decisions_with_reasons():
    by = {p.name: p for p in _plan(recipe=Fixed()).layers}
    q, k = by["blocks.0.attn.to_q"], by["blocks.0.attn.to_k"]
    assert (q.weight_bits, q.act_bits, q.abits(4)) == (8, 6, 6)
    assert q.reason == "transformer-block linear; W8A6 by the test recipe"
    assert k.decision == "weight_only" and k.op == "dq_linear" and k.reason.endswith("by the test recipe")


def test_triton_falls_back_per_layer_with_the_reason():
    # a per-(row, 128) weight group: the Triton GEMM takes per-row scales only (kernels capability query)
    by = {p.name: p for p in _plan({"weight_group": 128}, impl="triton").layers}
    q = by["blocks.0.attn.to_q"]
    assert q.kernel == "reference" and "reference kernels:" in q.reason
    plain = {p.name: p for p in _plan(impl="triton").layers}["blocks.0.attn.to_q"]
    assert plain.kernel == "triton" and plain.act_kernel == "triton" and plain.reason == "transformer-block linear"
