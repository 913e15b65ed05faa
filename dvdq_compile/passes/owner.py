"""The model a compiled graph belongs to, found on the call stack, and the qualified names of its parameters.

Dynamo hands the backend a graph and its inputs, not the module the user compiled. The parameters among the inputs
are that module's own objects, and its ``forward`` is running on the Python call stack while Dynamo compiles (the
backend is called synchronously from the frame being compiled), so the owner is found there.
"""
from __future__ import annotations

import sys

import torch

from ..state import STATE


def unwrap(m: torch.nn.Module) -> torch.nn.Module:
    """The module inside torch.compile's ``OptimizedModule`` wrapper(s)."""
    while isinstance(getattr(m, "_orig_mod", None), torch.nn.Module):
        m = m._orig_mod
    return m


def param_names(root: torch.nn.Module) -> dict[int, str]:
    """``{id(parameter): qualified name}`` of ``root`` (cached per module; see ``owns`` for staleness)."""
    names = STATE.param_names.get(root)
    if names is None:
        names = {id(p): n for n, p in root.named_parameters()}
        STATE.param_names[root] = names
    return names


def name_of(root: torch.nn.Module, p: torch.Tensor) -> str | None:
    """The qualified name of parameter ``p`` in ``root``, or None (the name cache is rebuilt once on a miss:
    parameters may have been replaced since it was made)."""
    for _ in range(2):
        name = param_names(root).get(id(p))
        if name is not None:
            try:
                if root.get_parameter(name) is p:
                    return name
            except AttributeError:
                pass
        STATE.param_names.pop(root, None)
    return None


def find_owner(p: torch.Tensor) -> torch.nn.Module | None:
    """The model ``p`` belongs to, among the modules whose methods are on the call stack.

    Preference: the innermost module wrapped by ``torch.compile`` (an ``OptimizedModule``'s ``_orig_mod``: what the
    user compiled) that owns ``p``; else the outermost module on the stack that owns it (``module.compile()``, or a
    compiled function that calls the model). ``None`` if no module on the stack owns it (then a graph's names are
    relative to the module the user passed, which is what they were before a graph break could split it)."""
    compiled, outer = None, None
    seen: set[int] = set()
    f = sys._getframe(1)
    while f is not None:
        obj = f.f_locals.get("self") if "self" in f.f_code.co_varnames else None
        if isinstance(obj, torch.nn.Module) and id(obj) not in seen:
            seen.add(id(obj))
            mod = unwrap(obj)
            if name_of(mod, p) is not None:
                if mod is not obj and compiled is None:
                    compiled = mod
                outer = mod
        f = f.f_back
    return compiled if compiled is not None else outer
