"""CUDA graphs (mode="reduce-overhead"): what Inductor is told about the inputs, checked on CPU.

Under CUDA graphs a non-static input is copied into graph-owned memory at every replay. The backend must hand
Inductor graphs in which the parameters (as Dynamo marked them) and every input it adds (packed weights, scales,
zero-points) are static, and the activations are not. The replay itself needs a GPU (bench/e2e.py).
"""
import pytest
import torch
import torch._inductor.compile_fx as cfx

import dvdq_compile
from dvdq_compile.runtime.graph import GRAPHS

from .helpers import TinyDiT, rel_err

X = torch.randn(2, 20, 24, generator=torch.Generator().manual_seed(1))
T = torch.tensor([500, 500])


@pytest.fixture
def inner_calls(monkeypatch):
    """(number of graph inputs, static input indices, cudagraphs on) for every variant Inductor compiles."""
    calls, sizes = [], []
    lower, static_idxs = dvdq_compile.backend._lower, cfx.get_static_input_idxs

    def spy_lower(gm, example_inputs, cfg):
        sizes.append(len(example_inputs))
        return lower(gm, example_inputs, cfg)

    def spy_static(num_fixed):  # looked up by name when compile_fx hands the forward graph to its inner compile
        out = static_idxs(num_fixed)
        calls.append((sizes[-1], set(out), bool(torch._inductor.config.triton.cudagraphs)))
        return out

    monkeypatch.setattr(dvdq_compile.backend, "_lower", spy_lower)
    monkeypatch.setattr(cfx, "get_static_input_idxs", spy_static)
    # a cache hit (AOTAutograd's) would skip the forward compile this spies on
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    return calls


def _compile(model, mode_kw: bool, **options):
    torch._dynamo.reset()
    options = {"lowering": "inductor", "kernels": "reference", "progress": False, **options}
    if mode_kw:  # torch.compile(mode=...) cannot come with options=: only the defaults, through the mode argument
        return torch.compile(model, backend="dvdquant", mode="reduce-overhead")
    return torch.compile(model, backend="dvdquant", options={**options, "mode": "reduce-overhead"})


def _newest_graph():
    return max(GRAPHS, key=lambda g: g.serial)


@pytest.mark.slow
@pytest.mark.parametrize("mode_kw", [False, True])
def test_parameters_and_quantized_weights_are_static(inner_calls, mode_kw):
    model = TinyDiT()
    with torch.no_grad():
        y = _compile(model, mode_kw, act_bits=8)(X, T)
        g = _newest_graph()
        torch._dynamo.reset()
        ref = torch.compile(model, backend="dvdquant", options={"lowering": "eager", "kernels": "reference",
                                                                "progress": False, "act_bits": 8})(X, T)
        fp = model(X, T)
    n_added = 3 * len(g.weights)
    assert n_added and inner_calls and len(inner_calls) == len(g.variants)  # mode_kw: the δ pair, A4 and A8
    for n_inputs, static, cudagraphs in inner_calls:
        n_orig = n_inputs - n_added
        assert cudagraphs
        assert static == set(g.param_indices) | set(range(n_orig, n_inputs)), (sorted(static), g.param_indices)
        assert 0 not in static  # the activation input is copied per replay, as it must be
    if not mode_kw:  # same options, eager lowering: the same numbers up to a few activation-code flips from
        # Inductor's fp32 order (test_backend.py bounds those against an ulp yardstick), far below quantization
        assert rel_err(y, ref) < 0.1 * rel_err(ref, fp), (rel_err(y, ref), rel_err(ref, fp))


@pytest.mark.slow
def test_graph_without_quantized_layers_keeps_parameters_static(inner_calls):
    model = TinyDiT()
    with torch.no_grad():
        _compile(model, False, exclude=["*"], act_bits=8)(X, T)
    g = _newest_graph()
    assert not g.weights and len(inner_calls) == 1
    n_inputs, static, _ = inner_calls[0]
    assert static == set(g.param_indices) and n_inputs > len(static)


def test_mode_option_errors():
    model = TinyDiT()
    bad = [({"mode": "fast"}, "mode='fast' is not allowed"),
           ({"mode": "reduce-overhead", "lowering": "eager"}, "needs lowering='inductor'")]
    for options, match in bad:
        torch._dynamo.reset()
        with pytest.raises(Exception, match=match), torch.no_grad():
            torch.compile(model, backend="dvdquant", options=options)(X, T)
    with pytest.raises(ValueError, match="disagree"):
        dvdq_compile.backend._config({"mode": "max-autotune"}, "reduce-overhead")
    assert dvdq_compile.backend._config({}, "reduce-overhead").mode == "reduce-overhead"
    assert dvdq_compile.backend._config({"mode": "default", "lowering": "eager"}, None).mode == "default"


@pytest.mark.slow
def test_artifact_inputs_are_static_too(inner_calls):
    """qvdit: the rank-1 branch tensors the artifact feeds are graph inputs the backend adds: static as well."""
    from .qvdit.test_backend import ALL, _inputs, _trained

    base, _, art = _trained(ALL)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(base, backend="dvdquant", options={"recipe": "qvdit", "artifact": art, "progress": False,
                                                         "mode": "reduce-overhead"})(**_inputs())
    g = _newest_graph()
    n_added = 3 * len(g.weights) + len(g.extras.plan.inputs)
    assert g.extras.plan.inputs and len(inner_calls) == len(g.variants) == 1
    n_inputs, static, cudagraphs = inner_calls[0]
    assert cudagraphs and static >= set(g.param_indices) | set(range(n_inputs - n_added, n_inputs))
    # the rest are the model's buffers (Dynamo marks them static too); only the three call tensors are copied
    assert len(set(range(n_inputs)) - static) == 3  # hidden_states, timestep, encoder_hidden_states
