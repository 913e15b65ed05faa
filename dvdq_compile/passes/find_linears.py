"""Find the linears of a Dynamo graph: one ``LinearSite`` per ``torch._C._nn.linear(x, w, b)`` node, with the
facts the layer plan needs (``passes/plan.py`` decides what to do with each).

A weight is quantizable when it is a placeholder fed by a real 2-D ``nn.Parameter``, matched by identity through
``example_inputs`` (never by source-name strings). Names are the module paths in the model the user compiled
(``passes/layer_names.py``), also for a block Dynamo compiled as its own frame. Linears inside higher-order-op
subgraphs (``torch.cond`` branches) are listed too, marked ``in_branch``: their weights reach the branch as
operands, and the rewrite does not reach into them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..state import STATE
from .layer_names import Frame, frame_of, layer_name


@dataclass(frozen=True)
class LinearSite:
    node: fx.Node | None
    name: str
    x: fx.Node | None
    w: fx.Node | None
    b: fx.Node | None
    w_index: int | None  # position of the weight placeholder among the graph inputs
    n: int
    k: int
    m: int | None  # static token count (prod of leading dims), None when symbolic
    dtype: torch.dtype | None  # activation dtype
    device: torch.device | None = None
    w_dtype: torch.dtype | None = None  # the weight's dtype
    is_param: bool = False  # a 2-D nn.Parameter graph input (quantizable)
    local: str = ""  # the frame local the layer's module hangs off (passes/layer_names.py)
    # The token count the min_tokens rule reads: this layer's M at the first compile of its model (a size hint if
    # it was symbolic), so a later compile for other shapes (batch, text length) keeps the layer's decision.
    m_first: int | None = None
    in_branch: bool = False  # inside a torch.cond branch subgraph


def _example(node: fx.Node):
    return node.meta.get("example_value", node.meta.get("val"))


def _static_m(x_val) -> int | None:
    if x_val is None:
        return None
    dims = x_val.shape[:-1]
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    return None


def _hint_m(x_val) -> int | None:
    """The token count of this call, also when it is symbolic (its size hint: the value Dynamo traced with)."""
    if x_val is None:
        return None
    m = 1
    for d in x_val.shape[:-1]:
        if isinstance(d, torch.SymInt):
            hint = d.node.hint
            if hint is None:
                return None
            d = hint
        m *= int(d)
    return m


def _branch_linears(gm: fx.GraphModule, frame: Frame, prefix: str = ""):
    """Linears inside higher-order-op subgraphs (``torch.cond`` branches), recursively."""
    for attr, sub in gm.named_children():
        if not isinstance(sub, fx.GraphModule):
            continue
        for node in sub.graph.nodes:
            if node.op == "call_function" and node.target is torch._C._nn.linear:
                w = _example(node.args[1]) if isinstance(node.args[1], fx.Node) else None
                n_, k_ = (int(w.shape[0]), int(w.shape[1])) if w is not None and w.dim() == 2 else (0, 0)
                name, local = layer_name(node, frame, f"{prefix}{attr}.{node.name}")
                yield LinearSite(node=node, name=name, x=node.args[0], w=node.args[1], b=None, w_index=None,
                                 n=n_, k=k_, m=None, dtype=None, local=local, in_branch=True)
        yield from _branch_linears(sub, frame, f"{prefix}{attr}.")


def find_linears(gm: fx.GraphModule, example_inputs, frame: Frame | None = None) -> list[LinearSite]:
    """Every linear of ``gm`` (top level, then inside ``torch.cond`` branches), named in the model the user
    compiled (``frame``: see ``passes/layer_names.py``; found on the call stack when not given)."""
    frame = frame_of(gm, example_inputs) if frame is None else frame
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    index = {n: i for i, n in enumerate(placeholders)}
    first_m = STATE.model(frame.owner).setdefault("first_m", {})
    sites = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch._C._nn.linear:
            continue
        x, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        w_index = index.get(w) if isinstance(w, fx.Node) else None
        w_ex = example_inputs[w_index] if w_index is not None and w_index < len(example_inputs) else None
        is_param = isinstance(w_ex, torch.nn.Parameter) and type(w_ex.data) is torch.Tensor and w_ex.dim() == 2
        x_val = _example(x) if isinstance(x, fx.Node) else None
        w_val = w_ex if w_ex is not None else (_example(w) if isinstance(w, fx.Node) else None)
        n_, k_ = (int(w_val.shape[0]), int(w_val.shape[1])) if w_val is not None and w_val.dim() == 2 else (0, 0)
        name, local = layer_name(node, frame, node.name, w_ex)
        sites.append(LinearSite(
            node=node, name=name, x=x, w=w, b=b if isinstance(b, fx.Node) else None, w_index=w_index, n=n_, k=k_,
            m=_static_m(x_val), dtype=getattr(x_val, "dtype", None), device=getattr(w_ex, "device", None),
            w_dtype=w_ex.dtype if is_param else None, is_param=is_param, local=local,
            m_first=first_m.setdefault(name, _hint_m(x_val)) if is_param else _hint_m(x_val)))
    return sites + list(_branch_linears(gm, frame))
