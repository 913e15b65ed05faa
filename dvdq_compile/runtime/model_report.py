"""The report of one model: the rows of every graph bound to it, each named for the instance that ran it, plus the
linears that no compiled graph covers (Dynamo ran their code eagerly), so every linear of the model is listed."""
from __future__ import annotations

import copy
import re
from collections import Counter

import torch

from ..passes.layer_names import rename
from ..passes.owner import name_of
from ..state import STATE
from .cache import CACHE
from .registry import graphs_of
from .report import CompileReport, LayerReport

NOT_COMPILED = ("not in any compiled graph: Dynamo ran this code eagerly (it skips a whole frame after a graph "
                "break inside a loop) or the layer was never called")


def prefixes_of(g, params: dict, module: torch.nn.Module) -> dict[str, str]:
    """Per frame local, the name prefix of the instance bound to ``g`` through ``params`` (a block or attention
    processor compiled as its own frame runs every instance); the compile's prefix where an anchor does not fit."""
    out = dict(g.prefixes)
    for local, (index, rel) in g.anchors.items():
        full = name_of(module, params[index]) if index in params else None
        if full is not None and (full == rel or full.endswith("." + rel)):
            out[local] = full[: len(full) - len(rel)]
    return out


def model_report(module: torch.nn.Module) -> CompileReport | None:
    """The merged report of ``module`` (None if no dvdquant graph ran with its parameters).

    Graph breaks split a model into several graphs: their rows are concatenated in module order. A layer in several
    graphs (recompiles for new shapes, or compiled again with other options) is listed once, from the newest."""
    graphs = graphs_of(module)
    if not graphs:
        return None
    merged = copy.deepcopy(graphs[0][0].report)
    merged.layers, merged.graphs = [], len({id(g) for g, _ in graphs})
    seen: set[str] = set()
    for g, params in graphs:
        prefixes = prefixes_of(g, params, module)
        stats, freed = {}, set()
        for w in g.weights:
            for name in w.layers:
                stats[name] = CACHE.stats_for(params[w.arg_index])
                if params[w.arg_index] in STATE.freed:
                    freed.add(name)
        for row in g.report.layers:
            local = g.row_locals.get(row.name, "")
            name = rename(row.name, g.prefixes.get(local, ""), prefixes.get(local, ""))
            if name in seen:
                continue
            seen.add(name)
            row = copy.deepcopy(row)
            st = stats.get(row.name, {})
            row.mse, row.mse_minmax, row.freed = st.get("mse"), st.get("mse_minmax"), row.name in freed
            own = g.mismatches.get(name)
            if own is not None:
                row.reason += (f"; runs the graph compiled for {row.name} (Dynamo compiled this module's forward as "
                               f"its own frame and reuses it for every instance): its own decision would be "
                               f"{own[0]} ({own[1]})")
            row.name = name
            merged.layers.append(row)
    for name, mod in module.named_modules():
        if isinstance(mod, torch.nn.Linear) and name not in seen:
            n, k = mod.weight.shape
            b = mod.weight.numel() * mod.weight.element_size()
            merged.layers.append(LayerReport(name=name, n=n, k=k, decision="skip", reason=NOT_COMPILED,
                                             weight_bits=None, act_bits="-", kernel="-", bytes_before=b,
                                             bytes_after=b))
    order = {name: i for i, (name, _) in enumerate(module.named_modules())}
    merged.layers.sort(key=lambda r: order.get(r.name, len(order)))
    merged.compile_seconds = sum(g.report.compile_seconds for g in {id(g): g for g, _ in graphs}.values())
    merged.freed_bytes = sum(STATE.freed.get(p).nbytes for p in module.parameters() if p in STATE.freed)
    msg = problem(merged, module, graphs[0][0].cfg.block_pattern)
    merged.warnings = [msg] if msg else []
    return merged


MIN_SHARE = 0.25  # warn below this share of the model's linears quantized (4/8-bit weights)


def problem(rep: CompileReport, module: torch.nn.Module, block_pattern: str | None = None) -> str | None:
    """The warning for ``rep`` (a model's merged report), or None. Two cases:

    - little or nothing quantized (fewer than ``MIN_SHARE`` of the model's linears), whatever the reason;
    - linears inside transformer blocks (``block_pattern``) that no compiled graph covers while Dynamo split the
      model into several graphs: their code ran eagerly after a graph break (Mochi's attention processor loops
      over the batch with a data-dependent op), so they stay in full precision although the policy quantizes
      them. With a single graph such linears were never called (a model's unused layers), which is no problem.
    """
    rows = rep.layers
    if not rows:
        return None
    quantized = [r for r in rows if r.decision in ("quantize", "weight_only")]
    eager_blocks = []
    if block_pattern is not None and rep.graphs > 1:
        eager_blocks = [r.name for r in rows if r.reason == NOT_COMPILED and re.search(block_pattern, r.name)]
    if quantized and len(quantized) >= MIN_SHARE * len(rows) and not eager_blocks:
        return None
    total = sum(r.bytes_before for r in rows)
    share = sum(r.bytes_before for r in quantized) / total if total else 0.0
    why = Counter()
    example = {}
    for r in rows:
        if r.decision == "skip":
            key = r.reason.split(";")[0].split(" (")[0].split(":")[0]
            why[key] += 1
            example.setdefault(key, r.name)
    parts = "; ".join(f"{n} x '{k}' (e.g. {example[k]})" for k, n in why.most_common(4))
    hints = []
    if eager_blocks:
        hints.append(f"{len(eager_blocks)} linears inside transformer blocks ran outside every compiled graph "
                     f"(e.g. {eager_blocks[0]}): Dynamo ran their code eagerly after a graph break (it skips a "
                     "frame with a break inside a loop); compile with fullgraph=True to have them in the graph, or "
                     "find the break with torch._dynamo.explain")
    if any(k.startswith("outside transformer blocks") for k in why) and len(quantized) < MIN_SHARE * len(rows):
        hints.append("name the layers to quantize with options={'include': ['<pattern>', ...]} or set "
                     "'block_pattern' to a regular expression matching this model's blocks")
    return (f"dvdquant: {type(module).__name__}: {len(quantized)} of {len(rows)} linears quantized "
            f"({100 * share:.0f}% of their weight bytes); kept in full precision: {parts}"
            + (". " + "; ".join(hints) if hints else ""))
