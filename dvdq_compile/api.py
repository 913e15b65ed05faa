"""Accessors for what the backend did to a model: report, δ controller, cache control."""
from __future__ import annotations

import copy

import torch

from .runtime import free
from .runtime.cache import CACHE
from .runtime.graph import GRAPHS, SHARED_CONTROLLERS
from .runtime.report import CompileReport


def _module(model) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module (or the result of torch.compile on one), got {type(model)}")
    return getattr(model, "_orig_mod", model)


def _graphs_of(model):
    """(graph, params bound to it) for the compiled graphs this model has run through, newest graph first."""
    ids = {id(p) for p in _module(model).parameters()}
    out = []
    for g in sorted(GRAPHS, key=lambda g: g.serial, reverse=True):
        for refs in g.bound.values():
            params = {i: r() for i, r in refs.items()}
            if params and all(p is not None and id(p) in ids for p in params.values()):
                out.append((g, params))
    return out


def report(model) -> CompileReport:
    """The per-layer compile report of ``model`` (after its first compiled call), with per-layer weight errors.

    If Dynamo split the model into several graphs (graph breaks), their layers are concatenated in module order; a
    layer that appears in several graphs (recompiles for new shapes, or the model compiled again with other
    options) is listed once, from the newest graph.
    """
    graphs = _graphs_of(model)
    if not graphs:
        raise RuntimeError("no dvdquant report for this model: it has not run through a graph compiled with "
                           "backend='dvdquant' yet (torch.compile compiles on the first call)")
    merged = copy.deepcopy(graphs[0][0].report)
    merged.layers = []
    merged.graphs = len(graphs)
    seen = set()
    for g, params in graphs:
        by_name = {}
        for w in g.weights:
            for name in w.layers:
                by_name[name] = CACHE.stats_for(params[w.arg_index])
        freed = {name for w in g.weights if free.is_freed(params[w.arg_index]) for name in w.layers}
        for row in copy.deepcopy(g.report.layers):
            if row.name in seen:
                continue
            seen.add(row.name)
            stats = by_name.get(row.name, {})
            row.mse, row.mse_minmax = stats.get("mse"), stats.get("mse_minmax")
            row.freed = row.name in freed
            merged.layers.append(row)
    order = {name: i for i, (name, _) in enumerate(_module(model).named_modules())}
    merged.layers.sort(key=lambda r: order.get(r.name, len(order)))
    merged.compile_seconds = sum(g.report.compile_seconds for g, _ in graphs)
    merged.freed_bytes = sum(free.FREED.get(p).nbytes for p in _module(model).parameters() if free.is_freed(p))
    return merged


def controller(model):
    """The δ-GBS controller that drives ``model``'s A4/A8 choice (None with fixed activation bits)."""
    for g, params in _graphs_of(model):
        if len(g.variants) > 1:
            return g.controller_for(params[g.weights[0].arg_index])
    return None


def share_controller(*models, controller=None):
    """Make ``models`` (e.g. the two experts of a Wan 2.2 pipeline) share one δ controller; returns it."""
    if controller is None:
        from .runtime.delta import DeltaController
        controller = DeltaController()
    for m in models:
        for p in _module(m).parameters():
            SHARED_CONTROLLERS[p] = controller
    return controller


def requantize(model) -> int:
    """Drop ``model``'s cached quantized weights (e.g. after editing ``p.data``); returns how many were dropped."""
    released = freed_weights(model)
    if released:
        raise free.FreedWeightError(f"dvdq_compile.requantize: {len(released)} weight(s) of this model were released "
                                    f"by free_weights (e.g. {next(iter(released))}); their quantized copies are the "
                                    "only ones left. Call dvdq_compile.restore_weights(model, state_dict) first")
    return CACHE.drop_params(list(_module(model).parameters()))


def freed_weights(model) -> dict[str, int]:
    """``{parameter name: bytes}`` of ``model``'s weights whose 16-bit storage ``free_weights`` released."""
    return {name: free.FREED.get(p).nbytes for name, p in _module(model).named_parameters() if free.is_freed(p)}


def restore_weights(model, state_dict) -> dict[str, bool]:
    """Give the weights released by ``free_weights`` their storage and values back, from ``state_dict`` (a mapping
    of parameter names as in ``model.named_parameters()``, e.g. the checkpoint the model was loaded from, or the
    path of a ``.safetensors`` / ``torch.save`` file). Returns ``{name: values changed}``: a weight restored with the
    values it was quantized from keeps its cached quantized copy; one restored with other values is requantized on
    the next compiled call. The compiled model releases the storage again on its next call (the option stays on).
    """
    if isinstance(state_dict, (str, bytes)) or hasattr(state_dict, "__fspath__"):
        path = str(state_dict)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    todo = [(n, p) for n, p in _module(model).named_parameters() if free.is_freed(p)]
    missing = [n for n, _ in todo if n not in state_dict]
    if missing:
        raise KeyError(f"dvdq_compile.restore_weights: the state dict lacks {len(missing)} released weight(s), "
                       f"e.g. {missing[:3]}; keys must be the names of model.named_parameters()")
    for n, p in todo:  # all checked before any is restored: a bad entry leaves the model as it was
        if tuple(state_dict[n].shape) != tuple(p.shape):
            raise ValueError(f"dvdq_compile.restore_weights: {n} has shape {tuple(p.shape)}, the value given has "
                             f"{tuple(state_dict[n].shape)}")
    return {n: free.restore(p, state_dict[n].to(p.device, p.dtype), n) for n, p in todo}
