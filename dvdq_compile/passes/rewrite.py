"""Rewrite the planned linears into `dvdq` ops (docs/architecture.md §2, step 4), one activation variant at a time.

- Quantized weights enter the graph as **extra inputs** (packed codes, scale, zero-point per weight), appended after
  the original placeholders in the order of ``weight_inputs``; then the artifact extras' inputs. The runtime
  wrapper supplies them from its cache and the model's artifact.
- Each layer's op sequence comes from its plan (``passes/linear_ops.py``); layers that read the same activation
  node (q/k/v, the FFN of a fused block) share one ``act_quant``.
- A layer whose input is another rewritten layer's output reads the replacement (Cosmos's AdaLN-LoRA, PEFT's
  ``lora_A -> lora_B``).

The GraphModule that Dynamo handed the backend is never edited (Dynamo still reads its placeholders' metadata).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import fx

from ..config import QuantConfig
from ..quant.pack import packed_shape
from ..quant.qweight import WeightSpec
from .linear_ops import GraphBuilder, act_codes, emit, emit_extras
from .plan import Plan
from .producer import AttentionOut, GeluOfLinear, NormModulate, chain_op
from .smooth import scale_key


@dataclass
class WeightInput:
    """One quantized weight that the runtime feeds to the graph: three tensors after the original inputs."""
    arg_index: int  # index of the original parameter among the graph inputs
    spec: WeightSpec
    n: int
    k: int
    device: torch.device
    layers: list[str] = field(default_factory=list)
    pre_scale: torch.Tensor | None = None  # SmoothQuant's s [K]: the weight is quantized as W·diag(s)
    source: str = "cache"  # "artifact": the quantized tensors come from the model's artifact (runtime/extras.py)


def weight_inputs(plan: Plan, example_inputs, cfg: QuantConfig) -> list[WeightInput]:
    """The quantized weights of ``plan``'s layers, one per weight input (a weight used twice is quantized once)."""
    out: dict[int, WeightInput] = {}
    spec = cfg.weight_spec()
    smoothing = plan.products.smoothing
    for p in plan.quantized():
        i = p.site.w_index
        if i not in out:
            if p.weight_source == "artifact":
                sp = dataclasses.replace(spec, bits=p.weight_bits, method="minmax", rotate=0, group=p.weight_group,
                                         pre_scale="artifact")
                out[i] = WeightInput(i, sp, p.n, p.k, example_inputs[i].device, source="artifact")
            else:
                ps = smoothing.by_w.get(i) if smoothing is not None else None
                sp = dataclasses.replace(spec, pre_scale=scale_key(ps)) if ps is not None else spec
                out[i] = WeightInput(i, sp, p.n, p.k, example_inputs[i].device, pre_scale=ps)
        out[i].layers.append(p.name)
    return list(out.values())


def weight_examples(weights: list[WeightInput], fake_mode=None) -> list[torch.Tensor]:
    """Uninitialised stand-ins for the extra inputs (shapes/dtypes only: lowering never reads their data).

    Under Dynamo they are static-shape FakeTensors of its fake mode: real tensors would be fakified by Inductor
    with fresh symbolic sizes that have no source, which breaks Dynamo's shape guards.
    """
    if fake_mode is not None:
        with fake_mode:
            return weight_examples(weights)
    ex = []
    for wi in weights:
        g = 1 if not wi.spec.group else wi.k // wi.spec.group
        ex += [torch.empty(packed_shape(wi.n, wi.k, wi.spec.bits), dtype=torch.uint8, device=wi.device),
               torch.empty(wi.n, g, dtype=torch.float32, device=wi.device),
               torch.empty(wi.n, g, dtype=torch.int32, device=wi.device)]
    return ex


def copy_graph(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict]:
    """A copy of Dynamo's graph that AOTAutograd still recognises as one (its ``meta`` with the compile id, the
    placeholders' ``_dynamo_source``), so Inductor learns which inputs are static: under CUDA graphs
    (``mode="reduce-overhead"``) a non-static input is copied into graph-owned memory at every replay. A plain copy
    lost that, and every parameter — freed 16-bit weights included — would have been copied per step."""
    graph = fx.Graph()
    val_map: dict = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    new = fx.GraphModule(gm, graph)
    new.meta.update(gm.meta)
    if hasattr(gm, "_param_name_to_source"):
        new._param_name_to_source = gm._param_name_to_source
    for old, node in val_map.items():
        if old.op == "placeholder" and hasattr(old, "_dynamo_source"):
            node._dynamo_source = old._dynamo_source
    return new, val_map


def mark_static(node: fx.Node) -> None:
    """A placeholder the backend adds (quantized weights, artifact tensors): the same tensor at every call of a
    model, so CUDA graphs use it in place. No Dynamo source: Dynamo never saw it (the runtime wrapper feeds it)."""
    node._dynamo_source = None
    node.meta["tensor_dict"] = {"_dynamo_static_input_type": "unguarded"}


def _fake_like(ref: fx.Node | None, t: torch.Tensor):
    """A FakeTensor for a new placeholder's metadata, in the graph's fake mode (if the graph has one)."""
    val = ref.meta.get("example_value", ref.meta.get("val")) if ref is not None else None
    mode = getattr(val, "fake_mode", None)
    if mode is None:
        return None
    with mode:
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _placeholder(g: fx.Graph, last: fx.Node, name: str, ref: fx.Node, like: torch.Tensor) -> fx.Node:
    with g.inserting_after(last):
        node = g.placeholder(name)
    mark_static(node)
    fake = _fake_like(ref, like)
    if fake is not None:
        node.meta["example_value"] = node.meta["val"] = fake
    return node


def _timestep_bin(b: GraphBuilder, t: fx.Node, edges: tuple) -> fx.Node:
    """``bucketize(t.reshape(-1).amax(0, keepdim=True), edges, right=True)`` (int64 [1]) in the graph: the timestep
    bin of this call, read by every clip-ratio lookup with no host sync and no recompilation per step. The key is
    the **max** over the timestep tensor, as for δ-GBS (``runtime/delta.py``): a per-token timestep (Wan 2.2 TI2V,
    first-frame tokens at 0) is binned by the step's noise level, not by its first token."""
    edges_n = b.constant(torch.tensor(edges, dtype=torch.float32), t)
    key = b.method(b.method(t, "reshape", -1), "amax", 0, True)
    return b.call(torch.bucketize, b.method(key, "to", torch.float32), edges_n, right=True)


def _norm_act_quant(b: GraphBuilder, p, val_map: dict, bits: int, seed: int):
    """(codes, scales) of the layer's input straight from its norm's input (``passes/producer.py``): the codes the
    layers reading that activation share."""
    m = p.producer
    x = val_map[m.x]
    one = lambda v: b.constant(torch.full((m.k,), v, dtype=torch.float32), x)  # noqa: E731
    mult = val_map[m.mult] if m.mult is not None else one(1.0)
    shift = val_map[m.shift] if m.shift is not None else one(0.0)
    aq = b.call(torch.ops.dvdq.norm_act_quant.default, x, mult, shift, m.eps, m.out_dtype, bits, p.act_group,
                p.rotate, seed, p.act_kernel)
    return b.item(aq, 0), b.item(aq, 1)


def _attn_act_quant(b: GraphBuilder, p, val_map: dict, variant: int, seed: int):
    """(codes, scales) of to_out's input from the attention itself (``passes/producer.py::assign_attention``)."""
    m = p.producer
    aq = b.call(torch.ops.dvdq.attn_act_quant.default, val_map[m.q], val_map[m.k], val_map[m.v], m.scale,
                m.out_dtype, p.abits(variant), p.act_group, p.rotate, seed, p.act_kernel)
    return b.item(aq, 0), b.item(aq, 1)


def _gelu_quant(b: GraphBuilder, up, down, x, weight: tuple, bias, variant: int, seed: int, shared: dict):
    """(codes, scales) of ``down``'s input from ``up``'s GEMM (``passes/producer.py::assign_gelu``): one
    ``dvdq::qlinear_gelu_quant`` on ``up``'s input codes (shared with the other readers of ``x``)."""
    packed, scale, zero = weight
    impl = "triton" if up.kernel == "triton" and down.act_kernel == "triton" else "reference"
    codes, scales = act_codes(b, up, x, variant, seed, shared, x)
    aq = b.call(torch.ops.dvdq.qlinear_gelu_quant.default, codes, scales, packed, scale, zero, bias, up.weight_bits,
                up.site.dtype, down.producer.approximate, down.abits(variant), down.act_group, down.rotate, seed, impl)
    return b.item(aq, 0), b.item(aq, 1)


def _erase_unused_chain(g: fx.Graph, node: fx.Node, stop: fx.Node) -> None:
    """Erase the norm → modulate → cast nodes that ``norm_act_quant`` replaced, from the cast back toward the norm's
    input ``stop``, as long as nothing else reads them (the eager lowering runs every node it is given)."""
    todo = [node]
    while todo:
        n = todo.pop()
        if n is stop or getattr(n, "_erased", False) or n.op not in ("call_function", "call_method") or n.users \
                or not chain_op(n):
            continue
        inputs = [a for a in n.all_input_nodes]
        g.erase_node(n)
        todo += inputs


def _erase_chain(g: fx.Graph, nodes: list, what: str) -> None:
    """Erase a producer chain a fused op replaced, last node first; each must have lost all its readers."""
    for n in nodes:
        if n.users:
            raise AssertionError(f"dvdquant: {n} ({what}) still has readers {list(n.users)} after the rewrite")
        g.erase_node(n)


def rewrite(gm: fx.GraphModule, plan: Plan, weights: list[WeightInput], cfg: QuantConfig, variant: int,
            timestep_index: int | None = None) -> fx.GraphModule:
    """A new GraphModule with ``plan``'s quantized layers at ``variant``-bit activations (where the plan does not
    fix a layer's bits)."""
    new, val_map = copy_graph(gm)
    g = new.graph
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    last = placeholders[-1]
    wnodes: dict[int, tuple[fx.Node, fx.Node, fx.Node]] = {}
    examples = weight_examples(weights)
    for j, wi in enumerate(weights):
        nodes = []
        for suffix, ex in zip(("packed", "scale", "zero"), examples[3 * j:3 * j + 3]):
            last = _placeholder(g, last, f"dvdq_w{wi.arg_index}_{suffix}", placeholders[0], ex)
            nodes.append(last)
        wnodes[wi.arg_index] = tuple(nodes)
    extras = plan.products.extras
    ext_nodes: list[fx.Node] = []
    if extras is not None:
        for e in extras.inputs:
            last = _placeholder(g, last, f"dvdq_x_{e.site.replace('.', '_')}_{e.kind}", placeholders[0],
                                torch.empty(e.shape, dtype=e.dtype, device="meta"))
            ext_nodes.append(last)
    b = GraphBuilder(new)
    clip_of = None
    if extras is not None and extras.has_clip:
        b.before = next(n for n in g.nodes if n.op != "placeholder")
        if extras.bins.n > 1:
            if timestep_index is None:
                raise ValueError("dvdquant: the artifact has per-timestep-bin clip ratios but the compiled graph has "
                                 "no `timestep` input (call the model with timestep=...); calibrate with "
                                 "timestep_bins=None for a model without one")
            tbin = _timestep_bin(b, placeholders[timestep_index], extras.bins.edges)
            clip_of = lambda node: b.call(torch.index_select, node, 0, tbin)  # noqa: E731
        else:
            clip_of = lambda node: node  # noqa: E731
    smoothing = plan.products.smoothing
    shared: dict = {}
    replaced: dict[fx.Node, fx.Node] = {}
    by_name = {p.name: p for p in plan.layers}
    for p in plan.quantized():
        s = p.site
        node = val_map[s.node]
        x = val_map[s.x]
        x = replaced.get(x, x)
        bias = val_map[s.b] if s.b is not None else None
        b.before = node
        if extras is not None and s.name in extras.sites:
            ex, gid = extras.sites[s.name]
            inputs = {k: ext_nodes[extras.index(s.name, k)] for k in ("inv_lam", "l1", "l2")
                      if extras.has(s.name, k)}
            clip = clip_of(ext_nodes[extras.index(s.name, "clip")]) if ex.clip is not None else None
            y = emit_extras(b, p, x, wnodes[s.w_index], bias, variant, cfg.seed, shared, ex, gid, inputs, clip)
        else:
            sm = smoothing.by_x.get(s.x) if smoothing is not None and p.decision == "quantize" else None
            if isinstance(p.producer, NormModulate) and x not in shared:
                shared[x] = _norm_act_quant(b, p, val_map, variant, cfg.seed)
            if isinstance(p.producer, AttentionOut):
                shared[x] = _attn_act_quant(b, p, val_map, variant, cfg.seed)
            if p.epilogue:   # an FFN-up that writes the FFN-down's codes: its own output goes with the GELU
                down = by_name[p.epilogue]
                shared[val_map[down.site.x]] = _gelu_quant(b, p, down, x, wnodes[s.w_index], bias, variant,
                                                           cfg.seed, shared)
                continue
            y = emit(b, p, x, wnodes[s.w_index], bias, variant, cfg.seed, shared, sm)
        y.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
        node.replace_all_uses_with(y)
        g.erase_node(node)
        replaced[node] = y
    for p in plan.quantized():
        if isinstance(p.producer, NormModulate):
            _erase_unused_chain(g, val_map[p.site.x], stop=val_map[p.producer.x])
        elif isinstance(p.producer, AttentionOut):   # the casts, the head merge, then the SDPA call itself
            _erase_chain(g, [val_map[c] for c in reversed(p.producer.chain)], f"attention chain of {p.name}")
        elif isinstance(p.producer, GeluOfLinear):   # dropout, GELU, then the FFN-up linear itself
            _erase_chain(g, [val_map[c] for c in reversed(p.producer.chain)] + [val_map[p.producer.y]],
                         f"FFN-up → GELU chain of {p.name}")
    g.lint()
    new.recompile()
    return new


__all__ = ["WeightInput", "copy_graph", "mark_static", "rewrite", "weight_examples", "weight_inputs"]
