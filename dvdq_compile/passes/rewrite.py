"""Rewrite the selected linears into `dvdq` ops (DESIGN §3 step 3).

- Quantized weights enter the graph as **extra inputs** (packed codes, scale, zero-point per weight), appended after
  the original placeholders in the order of ``weight_inputs``; the runtime wrapper supplies them from its cache.
- Linears that read the same activation node (q/k/v, the FFN of a fused block) share one ``act_quant``.
- One call builds one variant (one activation bit width); ``bit_switch`` calls it once per variant on fresh copies
  of the graph, so every variant has the same extra inputs.

The GraphModule that Dynamo handed the backend is never edited (Dynamo still reads its placeholders' metadata).
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from ..codegen.dispatch import act_impl, gemm_variant, linear_impl
from ..config import QuantConfig
from ..quant.qweight import WeightSpec
from .find_linears import QUANTIZED, LinearSite


def assign_impls(sites: list[LinearSite], cfg: QuantConfig, impl: str) -> None:
    """Per-linear kernel choice (``site.impl``); a fallback to the reference is appended to the reason."""
    for s in sites:
        s.impl = "-"
        if s.decision == "weight_only" or (s.decision == "quantize" and cfg.act_scale == "channel"):
            s.impl = "reference"
        elif s.decision == "quantize":
            a_group = s.k if cfg.act_scale == "token" else cfg.group
            s.impl, why = linear_impl(impl, s.wbits(cfg), s.weight_groups, s.n, s.k, a_group, cfg.rotate_block)
            if why:
                s.reason += f"; {why}"


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
    source: str = "cache"  # "artifact": the quantized tensors come precomputed from the model's artifact (extras)


def weight_inputs(sites: list[LinearSite], example_inputs, cfg: QuantConfig,
                  pre_scales: dict[int, torch.Tensor] | None = None, extras=None) -> list[WeightInput]:
    from .smooth import scale_key

    out: dict[int, WeightInput] = {}
    spec = cfg.weight_spec()
    pre_scales = pre_scales or {}
    for s in sites:
        if s.decision not in QUANTIZED:
            continue
        if extras is not None and s.name in extras.weight_group:  # from the artifact (one user)
            sp = dataclasses.replace(spec, bits=s.wbits(cfg), method="minmax", rotate=0,
                                     group=extras.weight_group[s.name], pre_scale="artifact")
            out[s.w_index] = WeightInput(s.w_index, sp, s.n, s.k, example_inputs[s.w_index].device,
                                         source="artifact")
        if s.w_index not in out:
            ps = pre_scales.get(s.w_index)
            sp = dataclasses.replace(spec, pre_scale=scale_key(ps)) if ps is not None else spec
            out[s.w_index] = WeightInput(s.w_index, sp, s.n, s.k, example_inputs[s.w_index].device, pre_scale=ps)
        out[s.w_index].layers.append(s.name)
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
        kb = wi.k if wi.spec.bits == 8 else wi.k // 2
        g = 1 if not wi.spec.group else wi.k // wi.spec.group
        ex += [torch.empty(wi.n, kb, dtype=torch.uint8, device=wi.device),
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


def _device_of(node: fx.Node) -> torch.device | None:
    val = node.meta.get("example_value", node.meta.get("val"))
    return val.device if isinstance(val, torch.Tensor) else None


def _constant(new: fx.GraphModule, name: str, t: torch.Tensor, like: fx.Node) -> None:
    """A graph constant as a buffer of ``new`` on ``like``'s device (a CPU table next to CUDA activations would
    fail in the op), with a source for AOTAutograd, which lifts buffers as inputs of a Dynamo graph and wants each
    one's source (no guard is made from it)."""
    from torch._dynamo.source import ConstantSource

    new.register_buffer(name, t.to(_device_of(like) or t.device).contiguous())
    if hasattr(new, "_param_name_to_source"):
        new._param_name_to_source = {**new._param_name_to_source, name: ConstantSource(f"dvdq_const_{name}")}


def _smoothed(new: fx.GraphModule, x: fx.Node, s: torch.Tensor, dtype, before: fx.Node) -> fx.Node:
    """``x·diag(s)⁻¹`` in fp32, back in x's dtype: a graph constant and one pointwise op (Inductor fuses it)."""
    name = f"dvdq_smooth_{len([n for n, _ in new.named_buffers() if n.startswith('dvdq_smooth_')])}"
    _constant(new, name, 1.0 / s.to(torch.float32), x)
    g = new.graph
    with g.inserting_before(before):
        inv = g.get_attr(name)
        y = g.call_function(torch.mul, (x, inv))
        if dtype is not None and dtype != torch.float32:
            y = g.call_method("to", (y, dtype))
    return y


def _timestep_bin(new: fx.GraphModule, t: fx.Node, edges: tuple, before: fx.Node) -> fx.Node:
    """``bucketize(t.flatten()[:1], edges, right=True)`` (int64 [1]) in the graph: the timestep bin of this call,
    read by every clip-ratio lookup with no host sync and no recompilation per step."""
    _constant(new, "dvdq_tbins", torch.tensor(edges, dtype=torch.float32), t)
    g = new.graph
    with g.inserting_before(before):
        flat = g.call_method("reshape", (t, -1))
        first = g.call_function(operator.getitem, (flat, slice(None, 1)))
        tf = g.call_method("to", (first, torch.float32))
        edges_n = g.get_attr("dvdq_tbins")
        return g.call_function(torch.bucketize, (tf, edges_n), {"right": True})


def _extras_placeholders(g: fx.Graph, last: fx.Node, ref: fx.Node, plan) -> tuple[list[fx.Node], fx.Node]:
    nodes = []
    for e in plan.inputs:
        with g.inserting_after(last):
            last = g.placeholder(f"dvdq_x_{e.site.replace('.', '_')}_{e.kind}")
        mark_static(last)
        fake = _fake_like(ref, torch.empty(e.shape, dtype=e.dtype, device="meta"))
        if fake is not None:
            last.meta["example_value"] = last.meta["val"] = fake
        nodes.append(last)
    return nodes, last


def rewrite(gm: fx.GraphModule, sites: list[LinearSite], weights: list[WeightInput], cfg: QuantConfig,
            act_bits: int, impl: str, smooth: dict[fx.Node, torch.Tensor] | None = None, extras=None,
            timestep_index: int | None = None) -> fx.GraphModule:
    """A new GraphModule with the quantized linears of ``sites`` at ``act_bits`` activations; activations in
    ``smooth`` (original graph nodes) are divided by their SmoothQuant factors first; sites in ``extras`` (a
    ``passes.extras.ExtrasPlan``) get their smoothing, clip-ratio and low-rank extras (see that module)."""
    new, val_map = copy_graph(gm)
    g = new.graph
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    last = placeholders[-1]
    extra: dict[int, tuple[fx.Node, fx.Node, fx.Node]] = {}
    examples = weight_examples(weights)
    for j, wi in enumerate(weights):
        nodes = []
        for t, (suffix, ex) in enumerate(zip(("packed", "scale", "zero"), examples[3 * j:3 * j + 3])):
            with g.inserting_after(last):
                last = g.placeholder(f"dvdq_w{wi.arg_index}_{suffix}")
            mark_static(last)
            fake = _fake_like(placeholders[0], ex)
            if fake is not None:
                last.meta["example_value"] = last.meta["val"] = fake
            nodes.append(last)
        extra[wi.arg_index] = tuple(nodes)
    ext_nodes: list[fx.Node] = []
    if extras is not None and extras.inputs:
        ext_nodes, last = _extras_placeholders(g, last, placeholders[0], extras)
    tbin = None
    if extras is not None and extras.bins.n > 1 and extras.has_clip:
        if timestep_index is None:
            raise ValueError("dvdquant: the artifact has per-timestep-bin clip ratios but the compiled graph has no "
                             "`timestep` input (call the model with timestep=...); calibrate with timestep_bins=None "
                             "for a model without one")
        first_use = next(n for n in g.nodes if n.op != "placeholder")
        tbin = _timestep_bin(new, placeholders[timestep_index], extras.bins.edges, first_use)

    seed, rot, wbits = cfg.seed, cfg.rotate_block, cfg.weight_bits
    consumers: dict[fx.Node, int] = {}
    for s in sites:
        if s.decision == "quantize":
            consumers[s.x] = consumers.get(s.x, 0) + 1
    shared: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    smoothed: dict[fx.Node, fx.Node] = {}
    ext_shared: dict[tuple, tuple[fx.Node, fx.Node, fx.Node]] = {}
    # A site's input may itself be a rewritten linear (Cosmos's AdaLN-LoRA, PEFT's lora_A -> lora_B, a plain
    # Linear -> Linear stack): resolve it to its replacement, never to the erased node.
    replaced: dict[fx.Node, fx.Node] = {}
    for s in sites:
        if s.decision not in QUANTIZED:
            continue
        node, x = val_map[s.node], val_map[s.x]
        x = replaced.get(x, x)
        if extras is not None and s.name in extras.sites:
            y = _extras_linear(new, s, node, x, extras, ext_nodes, ext_shared, tbin, extra[s.w_index],
                               val_map[s.b] if s.b is not None else None, cfg, s.abits(act_bits), impl)
            y.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
            node.replace_all_uses_with(y)
            g.erase_node(node)
            replaced[node] = y
            continue
        if smooth and s.x in smooth and s.decision == "quantize":
            if x not in smoothed:  # first quantized consumer in graph order: the mul goes before it
                smoothed[x] = _smoothed(new, x, smooth[s.x], s.dtype, node)
            x = smoothed[x]
        b = val_map[s.b] if s.b is not None else None
        packed, scale, zero = extra[s.w_index]
        a_group = s.k if cfg.act_scale == "token" else cfg.group
        with g.inserting_before(node):
            if s.decision == "weight_only" or cfg.act_scale == "channel":
                mode = "none" if s.decision == "weight_only" else "channel"
                y = g.call_function(torch.ops.dvdq.dq_linear.default,
                                    (x, packed, scale, zero, b, wbits, rot, seed, mode, act_bits))
            elif consumers[s.x] == 1 and s.impl == "triton" and gemm_variant(
                    s.impl, s.m, s.n, s.k, act_bits, s.device, a_group, rot, wbits, s.weight_groups) == "fused":
                y = g.call_function(torch.ops.dvdq.fused_qlinear.default,
                                    (x, packed, scale, zero, b, wbits, act_bits, a_group, rot, seed, s.impl))
            else:
                if x not in shared:  # sites come in graph order: this is x's first quantized consumer
                    aq = g.call_function(torch.ops.dvdq.act_quant.default,
                                         (x, act_bits, a_group, rot, seed, act_impl(impl, a_group, rot, s.k)))
                    shared[x] = (g.call_function(operator.getitem, (aq, 0)),
                                 g.call_function(operator.getitem, (aq, 1)))
                codes, scales = shared[x]
                y = g.call_function(torch.ops.dvdq.qlinear.default,
                                    (codes, scales, packed, scale, zero, b, wbits, s.dtype, s.impl))
        y.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
        node.replace_all_uses_with(y)
        g.erase_node(node)
        replaced[node] = y
    g.lint()
    new.recompile()
    return new


def _extras_linear(new, s, node, x, plan, ext_nodes, ext_shared, tbin, wnodes, b, cfg, act_bits, impl):
    """The quantized linear of an extras site: [x̂ = x·λ⁻¹] → act_quant [clip c(bin)] → qlinear [+ (u·L1)·L2];
    a weight-only site: dq_linear [+ (x·L1)·L2]. Artifact layers are unrotated."""
    g = new.graph
    ex, gid = plan.sites[s.name]
    wbits = s.wbits(cfg)
    packed, scale, zero = wnodes

    def inp(kind):
        return ext_nodes[plan.index(s.name, kind)]

    def branch(y, u):
        lr = g.call_function(torch.matmul, (g.call_function(torch.matmul, (u, inp("l1"))), inp("l2")))
        return g.call_function(torch.add, (y, lr))

    if s.decision == "weight_only":
        with g.inserting_before(node):
            y = g.call_function(torch.ops.dvdq.dq_linear.default,
                                (x, packed, scale, zero, b, wbits, 0, cfg.seed, "none", act_bits))
            return branch(y, x) if ex.lowrank is not None else y
    a_group = s.k if cfg.act_scale == "token" else cfg.group
    key = (x, gid)
    with g.inserting_before(node):
        if key not in ext_shared:  # sites come in graph order: the group's first consumer builds x̂ and its codes
            xh = x
            if ex.pre_scale is not None:
                xh = g.call_function(torch.mul, (x, inp("inv_lam")))
                if s.dtype is not None and s.dtype != torch.float32:
                    xh = g.call_method("to", (xh, s.dtype))
            clip = None
            if ex.clip is not None:
                clip = inp("clip") if tbin is None else g.call_function(torch.index_select, (inp("clip"), 0, tbin))
            aq = g.call_function(torch.ops.dvdq.act_quant.default,
                                 (xh, act_bits, a_group, 0, cfg.seed, act_impl(impl, a_group, 0, s.k), clip))
            ext_shared[key] = (xh, g.call_function(operator.getitem, (aq, 0)),
                               g.call_function(operator.getitem, (aq, 1)))
        xh, codes, scales = ext_shared[key]
        y = g.call_function(torch.ops.dvdq.qlinear.default,
                            (codes, scales, packed, scale, zero, b, wbits, s.dtype, s.impl))
        if ex.lowrank is not None:
            u = xh
            if ex.lowrank_input == "xq":  # what the integer GEMM saw: codes·scales per group, in x's dtype
                u = g.call_function(_dequant_act, (codes, scales, s.dtype))
            y = branch(y, u)
    return y


def _dequant_act(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    k, gn = codes.shape[-1], scales.shape[-1]
    c = codes.to(torch.float32).reshape(*codes.shape[:-1], gn, k // gn)
    return (c * scales[..., None]).reshape(codes.shape).to(dtype)
