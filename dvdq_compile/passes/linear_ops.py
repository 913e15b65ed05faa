"""The op sequence of one planned linear, written once and run two ways.

``emit`` builds a layer's ops from its :class:`~dvdq_compile.passes.plan.LayerPlan` through a builder: the rewrite
uses :class:`GraphBuilder` (FX nodes in the compiled graph), the per-layer SQNR uses :class:`EagerBuilder` (the
same ops called on tensors), so what the evaluation measures is what the graph runs.

The sequences (``dvdq`` ops, ``ops.py``):

- ``qlinear`` layers: ``act_quant`` (shared by the layers that read one activation) → ``qlinear``; or
  ``fused_qlinear`` for the variants the plan fuses. SmoothQuant divides ``x`` by its factor first.
- ``dq_linear`` / ``dq_channel``: one ``dq_linear`` with 16-bit activations or the per-channel fake-quant.
- layers with artifact extras: ``x̂ = x·λ⁻¹`` → ``act_quant`` with the clip ratio of this call's timestep bin →
  ``qlinear`` [+ ``(u·L1)·L2``, ``u`` = x̂ or the dequantized activation]; a weight-only one: ``dq_linear``
  [+ ``(x·L1)·L2``].
"""
from __future__ import annotations

import operator

import torch
from torch import fx


class EagerBuilder:
    """Runs each op at once on tensors."""

    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def method(self, obj, name: str, *args):
        return getattr(obj, name)(*args)

    def item(self, obj, i):
        return obj[i]

    def constant(self, t: torch.Tensor, like):
        return t.to(like.device)


class GraphBuilder:
    """Inserts each op into ``gm``'s graph before ``self.before`` (set per layer: its linear node)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.g = gm, gm.graph
        self.before: fx.Node | None = None
        self._consts = 0

    def call(self, fn, *args, **kwargs):
        with self.g.inserting_before(self.before):
            return self.g.call_function(fn, args, kwargs)

    def method(self, obj, name: str, *args):
        with self.g.inserting_before(self.before):
            return self.g.call_method(name, (obj, *args))

    def item(self, obj, i):
        with self.g.inserting_before(self.before):
            return self.g.call_function(operator.getitem, (obj, i))

    def constant(self, t: torch.Tensor, like: fx.Node):
        name = f"dvdq_const_{self._consts}"
        self._consts += 1
        add_constant(self.gm, name, t, like)
        with self.g.inserting_before(self.before):
            return self.g.get_attr(name)


def _device_of(node: fx.Node) -> torch.device | None:
    val = node.meta.get("example_value", node.meta.get("val"))
    return val.device if isinstance(val, torch.Tensor) else None


def add_constant(gm: fx.GraphModule, name: str, t: torch.Tensor, like: fx.Node) -> None:
    """A graph constant as a buffer of ``gm`` on ``like``'s device (a CPU table next to CUDA activations would
    fail in the op), with a source for AOTAutograd, which lifts buffers as inputs of a Dynamo graph and wants each
    one's source (no guard is made from it)."""
    from torch._dynamo.source import ConstantSource

    gm.register_buffer(name, t.to(_device_of(like) or t.device).contiguous())
    if hasattr(gm, "_param_name_to_source"):
        gm._param_name_to_source = {**gm._param_name_to_source, name: ConstantSource(f"dvdq_const_{name}")}


def dequant_act(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes·scales per group, in ``dtype``: what the integer GEMM saw (a low-rank branch on ``xq`` reads it)."""
    k, gn = codes.shape[-1], scales.shape[-1]
    c = codes.to(torch.float32).reshape(*codes.shape[:-1], gn, k // gn)
    return (c * scales[..., None]).reshape(codes.shape).to(dtype)


def act_codes(b, p, x, bits: int, seed: int, shared: dict, key, clip=None, extras: bool = False):
    """(codes, scales) of ``x``, made once per ``key`` (the layers that read one activation share them)."""
    if key not in shared:
        args = (x, bits, p.act_group, p.rotate, seed, p.act_kernel) + ((clip,) if extras else ())
        aq = b.call(torch.ops.dvdq.act_quant.default, *args)
        shared[key] = (b.item(aq, 0), b.item(aq, 1))
    return shared[key]


def emit(b, p, x, weight: tuple, bias, variant: int, seed: int, shared: dict, smooth=None):
    """The output of layer ``p`` (a non-extras layer) on ``x`` in the ``variant``-bit compiled variant.

    ``weight``: (packed, scale, zero); ``smooth``: SmoothQuant's factor s [K] for ``x`` (None: none); ``shared``:
    what layers reading one activation share (keyed by ``x``)."""
    ops = torch.ops.dvdq
    packed, scale, zero = weight
    if p.op in ("dq_linear", "dq_channel"):
        mode = "none" if p.op == "dq_linear" else "channel"
        return b.call(ops.dq_linear.default, x, packed, scale, zero, bias, p.weight_bits, p.rotate, seed, mode,
                      variant)
    key = x
    if smooth is not None:
        if ("smooth", key) not in shared:  # the first quantized consumer in graph order builds x·s⁻¹
            xs = b.call(torch.mul, x, b.constant(1.0 / smooth.to(torch.float32), x))
            if p.site.dtype is not None and p.site.dtype != torch.float32:
                xs = b.method(xs, "to", p.site.dtype)
            shared[("smooth", key)] = xs
        x = shared[("smooth", key)]
    if variant in p.fused:
        return b.call(ops.fused_qlinear.default, x, packed, scale, zero, bias, p.weight_bits, variant, p.act_group,
                      p.rotate, seed, p.kernel)
    codes, scales = act_codes(b, p, x, variant, seed, shared, x)
    return b.call(ops.qlinear.default, codes, scales, packed, scale, zero, bias, p.weight_bits, p.site.dtype,
                  p.kernel)


def emit_extras(b, p, x, weight: tuple, bias, variant: int, seed: int, shared: dict, ex, group_key, inputs: dict,
                clip=None):
    """The output of layer ``p`` with artifact extras ``ex`` (``artifacts.Extras``); ``inputs``: its extra tensors
    (``inv_lam``, ``l1``, ``l2``) as graph nodes or tensors; ``clip``: this call's clip ratio (node, tensor or
    None); ``group_key``: layers with one key share x̂ and its codes. Artifact layers are unrotated."""
    ops = torch.ops.dvdq
    packed, scale, zero = weight
    bits = p.abits(variant)

    def branch(y, u):
        lr = b.call(torch.matmul, b.call(torch.matmul, u, inputs["l1"]), inputs["l2"])
        return b.call(torch.add, y, lr)

    if p.decision == "weight_only":
        y = b.call(ops.dq_linear.default, x, packed, scale, zero, bias, p.weight_bits, 0, seed, "none", bits)
        return branch(y, x) if ex.lowrank is not None else y
    key = (x, group_key)
    if key not in shared:  # the group's first consumer in graph order builds x̂ and its codes
        xh = x
        if ex.pre_scale is not None:
            xh = b.call(torch.mul, x, inputs["inv_lam"])
            if p.site.dtype is not None and p.site.dtype != torch.float32:
                xh = b.method(xh, "to", p.site.dtype)
        codes, scales = act_codes(b, p, xh, bits, seed, {}, None, clip, extras=True)
        shared[key] = (xh, codes, scales)
    xh, codes, scales = shared[key]
    y = b.call(ops.qlinear.default, codes, scales, packed, scale, zero, bias, p.weight_bits, p.site.dtype, p.kernel)
    if ex.lowrank is not None:
        u = b.call(dequant_act, codes, scales, p.site.dtype) if ex.lowrank_input == "xq" else xh
        y = branch(y, u)
    return y
