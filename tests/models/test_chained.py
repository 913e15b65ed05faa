"""A linear that feeds another linear directly: PEFT LoRA adapters (lora_A -> lora_B) inside blocks, unfused and
fused, Cosmos's AdaLN-LoRA (linear_1 -> linear_2), and a plain Linear -> Linear stack with include=['*']. Each one
compiles, and its output equals an independent composition of the quant reference (tests/helpers.py)."""
import pytest
import torch

import dvdq_compile
from tests.helpers import quantized_reference
from tests.models.catalog import SPECS
from tests.models.tiny import wan, wan_inputs

OPTS = {"lowering": "eager", "kernels": "reference", "progress": False, "act_bits": 8}


def _compile(model, fullgraph=True, **options):
    torch._dynamo.reset()
    return torch.compile(model, backend="dvdquant", options={**OPTS, **options}, fullgraph=fullgraph)


def _reference(model, **kw):
    """The quant reference composed over the layers the backend quantized (decisions are tested elsewhere)."""
    rep = dvdq_compile.report(model)
    names = [r.name for r in rep.layers if r.decision in ("quantize", "weight_only")]
    weight_only = [r.name for r in rep.layers if r.decision == "weight_only"]
    return quantized_reference(model, names, weight_only=weight_only, **kw), rep


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _lora_wan(rank=128):
    from peft import LoraConfig

    model = wan()
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # B starts at zero in PEFT: make the adapter change the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("fullgraph", [True, False])
def test_peft_lora_adapter_in_blocks(fullgraph):
    model, kw = _lora_wan(), wan_inputs()
    with torch.no_grad():
        y = _first(_compile(model, fullgraph)(**kw))
    ref, rep = _reference(model)
    lora = [r for r in rep.layers if ".lora_A." in r.name or ".lora_B." in r.name]
    assert len(lora) == 2 * 2 * 2 * 4 and all(r.decision == "quantize" for r in lora), rep.table()
    with torch.no_grad():
        want = _first(ref(**kw))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_peft_lora_adapter_after_fuse_lora():
    model, kw = _lora_wan(), wan_inputs()
    with torch.no_grad():
        before = _first(model(**kw))
        model.fuse_lora()
        after = _first(model(**kw))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)  # fusing keeps the function
    with torch.no_grad():
        y = _first(_compile(model)(**kw))
    ref, rep = _reference(model)
    assert not [r for r in rep.layers if r.decision == "quantize" and ".lora_" in r.name]  # merged into the base
    assert {r.name for r in rep.layers if r.decision == "quantize"} >= {"blocks.0.attn1.to_q.base_layer"}
    with torch.no_grad():
        torch.testing.assert_close(y, _first(ref(**kw)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fullgraph", [True, False])
def test_cosmos_adaln_lora_chain(fullgraph):
    spec = SPECS["CosmosTransformer3DModel"]
    model, kw = spec.build(), spec.inputs()
    with torch.no_grad():
        y = _first(_compile(model, fullgraph)(**kw))
    ref, rep = _reference(model)
    rows = {r.name: r for r in rep.layers}
    # AdaLN-LoRA: norm1.linear_1 feeds norm1.linear_2 directly; both modulation linears (weight-only)
    assert rows["transformer_blocks.0.norm1.linear_1"].decision == "weight_only"
    assert rows["transformer_blocks.0.norm1.linear_2"].decision == "weight_only"
    with torch.no_grad():
        torch.testing.assert_close(y, _first(ref(**kw)), rtol=1e-5, atol=1e-5)


def test_linear_stack_with_include_everything():
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 128), torch.nn.Linear(128, 128))
    x = torch.randn(2, 40, 256)
    with torch.no_grad():
        y = _compile(model, include=["*"])(x)
    ref, rep = _reference(model)
    assert [r.decision for r in rep.layers] == ["quantize"] * 3
    assert all(r.reason == "included by pattern '*'" for r in rep.layers)
    with torch.no_grad():
        torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
