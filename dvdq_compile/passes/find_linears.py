"""Find the linears of a Dynamo graph and decide, for each, what the backend does with it (DESIGN §5).

Each ``torch._C._nn.linear(x, w, b)`` node whose ``w`` is a placeholder fed by a real ``nn.Parameter`` (matched by
identity through ``example_inputs``, never by source-name strings) becomes a ``LinearSite`` with a decision:

- ``quantize``: W-bit weights, integer GEMM on rotated, per-(token, group) quantized activations;
- ``weight_only``: W-bit weights, 16-bit activations (adaLN/modulation linears, whose M is the batch size, linears
  with a static token count ``M <= min_tokens``, and ``weight_only`` patterns);
- ``skip``: kept in full precision, with the reason (outside transformer blocks: embedders and the final
  projection; excluded by a pattern; K not a multiple of the group; a weight that is not a parameter input; an
  unsupported dtype).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..config import QuantConfig
from .layer_names import Frame, frame_of, layer_name
from .owner import remembered

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANTIZED = ("quantize", "weight_only")  # the decisions whose weight the backend quantizes


@dataclass
class LinearSite:
    node: fx.Node
    name: str
    x: fx.Node
    w: fx.Node
    b: fx.Node | None
    w_index: int | None  # position of the weight placeholder among the graph inputs
    n: int
    k: int
    m: int | None  # static token count (prod of leading dims), None when symbolic
    dtype: torch.dtype | None  # activation dtype
    decision: str = "skip"
    reason: str = ""
    impl: str = "-"  # kernel that runs it: triton | reference | "-" (full precision); set by rewrite.assign_impls
    device: torch.device | None = None
    weight_groups: int = 1
    w_dtype: torch.dtype | None = None  # the weight's dtype (None: not a parameter input)
    local: str = ""  # the frame local the layer's module hangs off (passes/layer_names.py)
    # the token count the min_tokens rule reads: this layer's M at the first compile of its model (a size hint if it
    # was symbolic), so a later compile for other shapes (batch, text length) keeps the layer's decision
    m_first: int | None = None
    # per-layer bits fixed by an artifact (passes/extras.py); None = the options' weight_bits / act_bits variant
    weight_bits: int | None = None
    act_bits: int | None = None

    def wbits(self, cfg: QuantConfig) -> int:
        return self.weight_bits or cfg.weight_bits

    def abits(self, variant: int) -> int:
        return self.act_bits or variant


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


def _matches(name: str, patterns) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def decide(site: LinearSite, cfg: QuantConfig, is_param: bool, w_dtype: torch.dtype | None) -> tuple[str, str]:
    if not is_param:
        return "skip", "weight is not a parameter input (computed, a buffer or a tensor subclass)"
    if (p := _matches(site.name, cfg.exclude)):
        return "skip", f"excluded by pattern {p!r}"
    if w_dtype not in FLOAT_DTYPES:
        return "skip", f"weight dtype {w_dtype} is not one of fp32/fp16/bf16"
    if site.dtype not in FLOAT_DTYPES:
        return "skip", f"activation dtype {site.dtype} is not one of fp32/fp16/bf16"
    forced = _matches(site.name, cfg.include)
    if not forced and not re.search(cfg.block_pattern, site.name):
        return "skip", "outside transformer blocks (embedder or final projection)"
    if site.k % cfg.group:
        return "skip", f"K={site.k} is not a multiple of group {cfg.group}"
    if cfg.weight_group and site.k % cfg.weight_group:
        return "skip", f"K={site.k} is not a multiple of weight_group {cfg.weight_group}"
    if (p := _matches(site.name, cfg.weight_only)):
        return "weight_only", f"16-bit activations by pattern {p!r}"
    if re.search(cfg.modulation_pattern, site.name, flags=re.IGNORECASE):
        return "weight_only", "adaLN/modulation linear: 16-bit activations (M = batch)"
    if cfg.act_bits == 16:
        return "weight_only", "act_bits=16"
    if site.m_first is not None and site.m_first <= cfg.min_tokens:
        return "weight_only", f"M={site.m_first} <= min_tokens={cfg.min_tokens} at its first compile: 16-bit " \
                              "activations"
    return "quantize", f"included by pattern {forced!r}" if forced else "transformer-block linear"


def _branch_linears(gm: fx.GraphModule, frame: Frame, prefix: str = ""):
    """Linears inside higher-order-op subgraphs (``torch.cond`` branches), recursively: (name, n, k)."""
    for attr, sub in gm.named_children():
        if not isinstance(sub, fx.GraphModule):
            continue
        for node in sub.graph.nodes:
            if node.op == "call_function" and node.target is torch._C._nn.linear:
                w = _example(node.args[1]) if isinstance(node.args[1], fx.Node) else None
                n_, k_ = (int(w.shape[0]), int(w.shape[1])) if w is not None and w.dim() == 2 else (0, 0)
                yield layer_name(node, frame, f"{prefix}{attr}.{node.name}")[0], node, n_, k_
        yield from _branch_linears(sub, frame, f"{prefix}{attr}.")


def find_linears(gm: fx.GraphModule, example_inputs, cfg: QuantConfig, frame: Frame | None = None
                 ) -> list[LinearSite]:
    """Every linear of ``gm`` with its decision, named in the model the user compiled (``frame``: see
    ``passes/layer_names.py``). Linears inside ``torch.cond`` branches are listed as skipped: their weights reach
    the branch as cond operands, and rewriting them is not implemented yet."""
    frame = frame_of(gm, example_inputs) if frame is None else frame
    sites = _top_level(gm, example_inputs, cfg, frame)
    for name, node, n_, k_ in _branch_linears(gm, frame):
        sites.append(LinearSite(node=node, name=name, x=node.args[0], w=node.args[1], b=None, w_index=None,
                                n=n_, k=k_, m=None, dtype=None, decision="skip",
                                reason="inside a torch.cond branch: not rewritten (kept in full precision)"))
    return sites


def _top_level(gm: fx.GraphModule, example_inputs, cfg: QuantConfig, frame: Frame) -> list[LinearSite]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_m = remembered(frame.owner).setdefault("first_m", {})
    index = {n: i for i, n in enumerate(placeholders)}
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
        name, local = layer_name(node, frame, node.name)
        site = LinearSite(node=node, name=name, local=local, x=x, w=w,
                          b=b if isinstance(b, fx.Node) else None, w_index=w_index, n=n_, k=k_,
                          m=_static_m(x_val), dtype=getattr(x_val, "dtype", None),
                          device=getattr(w_ex, "device", None),
                          weight_groups=(k_ // cfg.weight_group) if cfg.weight_group and k_ else 1)
        site.m_first = first_m.setdefault(site.name, _hint_m(x_val)) if is_param else _hint_m(x_val)
        site.w_dtype = w_ex.dtype if is_param else None
        site.decision, site.reason = decide(site, cfg, is_param, site.w_dtype)
        sites.append(site)
    return sites


def shared_frame_mismatches(sites: list[LinearSite], cfg: QuantConfig, frame: Frame) -> list[tuple[str, str, str]]:
    """Layers of other instances of a submodule compiled as its own frame whose own decision differs from the one
    compiled: ``(layer, its own decision, why)``.

    Dynamo compiles the submodule's ``forward`` (or its attention processor) once and runs every instance of the
    class through that graph, so a pattern that singles out one instance (``exclude=["blocks.3.*"]``) cannot apply
    under a graph break: the decisions made for the instance traced first run for all of them."""
    if frame.owner is None:
        return []
    out = []
    for local, prefix in frame.prefix.items():
        if not prefix:
            continue
        try:
            traced = frame.owner.get_submodule(prefix.rstrip("."))
        except AttributeError:
            continue
        mine = [s for s in sites if s.local == local and s.w_index is not None and s.name.startswith(prefix)]
        for inst, mod in frame.owner.named_modules():
            if mod is traced or type(mod) is not type(traced):
                continue
            for s in mine:
                other = dataclasses.replace(s, name=f"{inst}.{s.name[len(prefix):]}")
                decision, reason = decide(other, cfg, s.w_dtype is not None, s.w_dtype)
                if decision != s.decision:
                    out.append((other.name, decision, reason))
    return out
