"""Which compiled graphs a model's weights are bound to (the graphs live in ``STATE.graphs``).

A model never holds a reference to what the backend made for it (Dynamo owns the compiled code), so "what did the
backend do to this model?" is answered by finding the graphs whose bound parameters are the model's own.
"""
from __future__ import annotations

from ..state import STATE


def graphs_of(module) -> list:
    """``[(graph, {input index: parameter})]`` for every binding of a compiled graph to ``module``'s parameters,
    newest graph first (a block frame compiled once is bound once per block)."""
    ids = {id(p) for p in module.parameters()}
    out = []
    for g in sorted(STATE.graphs, key=lambda g: g.serial, reverse=True):
        for refs in g.bound.values():
            params = {i: r() for i, r in refs.items()}
            if params and all(p is not None and id(p) in ids for p in params.values()):
                out.append((g, params))
    return out
