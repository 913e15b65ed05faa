"""CUDA graphs (mode="reduce-overhead"): what Inductor is told about the inputs, checked on CPU.

Under CUDA graphs a non-static input is copied into graph-owned memory at every replay. The backend must hand
Inductor graphs in which the parameters (as Dynamo marked them) and every input it adds (packed weights, scales,
zero-points) are static, and the activations are not. The replay itself needs a GPU (bench/e2e.py).
"""
import pytest
import torch
import torch._inductor.compile_fx as cfx

import dvdq_compile
from dvdq_compile.runtime.registry import graphs_of

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
    # A cache hit (AOTAutograd's) would skip the forward compile this spies on. Torch's config modules are patched
    # through their own context manager: pytest >= 9.2 undoes monkeypatch.setattr on them by deleting the setting.
    with torch._functorch.config.patch(enable_autograd_cache=False):
        yield calls


def _compile(model, mode_kw: bool, **options):
    torch._dynamo.reset()
    options = {"lowering": "inductor", "kernels": "reference", "progress": False, **options}
    if mode_kw:  # torch.compile(mode=...) cannot come with options=: only the defaults, through the mode argument
        return torch.compile(model, backend="dvdquant", mode="reduce-overhead")
    return torch.compile(model, backend="dvdquant", options={**options, "mode": "reduce-overhead"})


def _newest_graph(model):
    """The newest compiled graph bound to ``model``'s weights."""
    return graphs_of(model)[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("mode_kw", [False, True])
def test_parameters_and_quantized_weights_are_static(inner_calls, mode_kw):
    model = TinyDiT()
    with torch.no_grad():
        y = _compile(model, mode_kw, act_bits=8)(X, T)
        g = _newest_graph(model)
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
    g = _newest_graph(model)
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
    g = _newest_graph(base)
    n_added = 3 * len(g.weights) + len(g.extras.plan.inputs)
    assert g.extras.plan.inputs and len(inner_calls) == len(g.variants) == 1
    n_inputs, static, cudagraphs = inner_calls[0]
    assert cudagraphs and static >= set(g.param_indices) | set(range(n_inputs - n_added, n_inputs))
    # the rest are the model's buffers (Dynamo marks them static too); only the three call tensors are copied
    assert len(set(range(n_inputs)) - static) == 3  # hidden_states, timestep, encoder_hidden_states


def _zoo_steps(model, options, x, ctx, timesteps):
    """A sampling-like loop (one call per step, δ-GBS on): outputs cloned (a graph replay reuses its output
    buffers), the δ trace, the compiled model."""
    torch._dynamo.reset()
    # delta 0.3: this untrained model's step-to-step L1 is ~0.17-0.21, so the switch alternates A8/A4
    m = torch.compile(model, backend="dvdquant", options={"progress": False, "delta": 0.3, **options})
    outs = []
    with torch.no_grad():
        for t in timesteps:
            outs.append(m(hidden_states=x, timestep=t.reshape(1), encoder_hidden_states=ctx,
                          return_dict=False)[0].clone())
    return outs, [r.bits for r in dvdq_compile.controller(m).trace], m


@pytest.mark.gpu
def test_cuda_graph_replay_switches_variants_without_recapture(monkeypatch):
    """On a GPU: a δ-switched loop under CUDA graphs gives the non-graph run's outputs and decisions, records
    one graph per activation variant (no re-capture when the switch flips), and copies only the call tensors."""
    from torch._inductor import cudagraph_trees

    from dvdq_compile.zoo import build_model

    recorded = []
    record = cudagraph_trees.CUDAGraphTreeManager.record_function

    def spy(self, new_inputs, function_id):
        recorded.append(function_id)
        return record(self, new_inputs, function_id)

    monkeypatch.setattr(cudagraph_trees.CUDAGraphTreeManager, "record_function", spy)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model({"num_layers": 2, "ffn_dim": 256}).eval().requires_grad_(False).to(dev)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 4, 8, 8, generator=g).to(dev)
    ctx = torch.randn(1, 4, 128, generator=g).to(dev)
    timesteps = torch.linspace(950, 50, 10, device=dev)
    ref, bits_ref, _ = _zoo_steps(model, {}, x, ctx, timesteps)
    counters = torch._dynamo.utils.counters["inductor"]
    counters["cudagraph_recorded_non_static_inputs"] = 0
    outs, bits, m = _zoo_steps(model, {"mode": "reduce-overhead"}, x, ctx, timesteps)
    assert bits == bits_ref and {4, 8} <= set(bits), (bits, bits_ref)
    for a, b in zip(outs, ref):
        assert rel_err(a, b) < 1e-3, rel_err(a, b)
    assert len(recorded) == 2, recorded  # A8 and A4 once each, however often the switch flips
    # per recording, only the three call tensors are copied in (no parameter, no quantized weight)
    assert counters["cudagraph_recorded_non_static_inputs"] <= 2 * 3, counters


@pytest.mark.gpu
def test_cuda_graph_replay_with_freed_weights():
    """free_weights under CUDA graphs: the released 16-bit storage is never read by a replay (static inputs are
    not copied), the loop runs and matches the run that keeps its weights."""
    from dvdq_compile.zoo import build_model

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model({"num_layers": 2, "ffn_dim": 256}).eval().requires_grad_(False).to(dev)
    keep = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 4, 8, 8, generator=g).to(dev)
    ctx = torch.randn(1, 4, 128, generator=g).to(dev)
    timesteps = torch.linspace(950, 50, 6, device=dev)
    ref, bits_ref, _ = _zoo_steps(model, {"mode": "reduce-overhead"}, x, ctx, timesteps)
    outs, bits, _ = _zoo_steps(model, {"mode": "reduce-overhead", "free_weights": True}, x, ctx, timesteps)
    assert dvdq_compile.freed_weights(model) and bits == bits_ref and {4, 8} <= set(bits)
    for a, b in zip(outs, ref):
        assert rel_err(a, b) < 1e-3, rel_err(a, b)
    dvdq_compile.restore_weights(model, keep)
