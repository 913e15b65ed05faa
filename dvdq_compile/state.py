"""Everything the backend keeps between calls, owned by one object, ``STATE``.

A model never holds a reference to what the backend made for it (Dynamo owns the compiled code), so what the
backend knows about models lives here: the compiled graphs and which models' weights are bound to them, the
quantized-weight cache, the weights ``free_weights`` released, the δ controllers users shared, and per-model
memory of the compile passes (layer names, first-compile token counts, warnings given). Every module reads these
through ``STATE`` at call time, so ``fresh_state()`` gives a test (or a user who wants a clean slate) its own.
"""
from __future__ import annotations

import contextlib
import itertools
import weakref

from .identity import IdentityMap


class State:
    def __init__(self):
        self.graphs: weakref.WeakSet = weakref.WeakSet()  # live runtime.graph.CompiledGraph objects
        self.serial = itertools.count()  # creation order of graphs (a WeakSet iterates in address order)
        self.weights: dict = {}  # (id(param), WeightSpec) -> runtime.cache entry
        self.freed = IdentityMap()  # parameter -> runtime.free.Freed
        self.free_epoch = 0  # bumped on every free / restore: graphs skip their read check when unchanged
        self.shared_controllers = IdentityMap()  # parameter -> δ controller (dvdq_compile.share_controller)
        self.parallel_groups = IdentityMap()  # parameter -> process group running its model (dvdq_compile.parallel)
        self.column_absmax = IdentityMap()  # parameter -> (_version, max |W[:, j]|): SmoothQuant after free
        self.param_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {id(p): name}
        self.per_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: anything}

    def model(self, owner) -> dict:
        """The memory kept for one model (a throwaway dict when there is none)."""
        if owner is None:
            return {}
        return self.per_model.setdefault(owner, {})


STATE = State()


@contextlib.contextmanager
def fresh_state():
    """Run the block with an empty state (a new cache, no graphs, nothing freed), then restore the previous one."""
    saved = dict(vars(STATE))
    vars(STATE).update(vars(State()))
    try:
        yield STATE
    finally:
        vars(STATE).clear()
        vars(STATE).update(saved)
