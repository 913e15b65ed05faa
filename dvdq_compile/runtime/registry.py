"""The compiled graphs alive in this process, and the δ controllers users shared across models.

A model never holds a reference to what the backend made for it (Dynamo owns the compiled code), so "what did the
backend do to this model?" is answered by finding the graphs whose bound parameters are the model's own.
"""
from __future__ import annotations

import itertools
import weakref

from .identity import IdentityMap

GRAPHS: "weakref.WeakSet" = weakref.WeakSet()  # every live runtime.graph.CompiledGraph
# parameter -> controller shared by the user across models (see dvdq_compile.share_controller).
SHARED_CONTROLLERS = IdentityMap()
SERIAL = itertools.count()  # creation order of graphs (a WeakSet iterates in address order)


def graphs_of(module) -> list:
    """``[(graph, {input index: parameter})]`` for every binding of a compiled graph to ``module``'s parameters,
    newest graph first (a block frame compiled once is bound once per block)."""
    ids = {id(p) for p in module.parameters()}
    out = []
    for g in sorted(GRAPHS, key=lambda g: g.serial, reverse=True):
        for refs in g.bound.values():
            params = {i: r() for i, r in refs.items()}
            if params and all(p is not None and id(p) in ids for p in params.values()):
                out.append((g, params))
    return out
