"""Accessors for what the backend did to a model: report, δ controller, cache control."""
from __future__ import annotations

import torch

from .errors import FreedWeightError
from .runtime import free
from .runtime.cache import CACHE
from .runtime.delta import DeltaController
from .runtime.model_report import model_report
from .runtime.registry import graphs_of
from .runtime.report import CompileReport
from .state import STATE


def _module(model) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module (or the result of torch.compile on one), got {type(model)}")
    return getattr(model, "_orig_mod", model)


def report(model) -> CompileReport:
    """The per-layer compile report of ``model`` (after its first compiled call), with per-layer weight errors.

    Every linear of the model is listed: those of every graph Dynamo compiled for it (graph breaks split a model
    into several; a block compiled as its own frame is listed once per block, each named for its own instance),
    and those no graph covers (Dynamo ran them eagerly). ``warnings`` says when little or nothing was quantized.
    """
    rep = model_report(_module(model))
    if rep is None:
        raise RuntimeError("no dvdquant report for this model: it has not run through a graph compiled with "
                           "backend='dvdquant' yet (torch.compile compiles on the first call)")
    return rep


def controller(model):
    """The δ controller that drives ``model``'s per-step choice: A4/A8 (δ-GBS) and, with ``cache=...``, compute or
    reuse (None with fixed activation bits and no step caching)."""
    for g, params in graphs_of(_module(model)):
        if len(g.variants) > 1 or g.cache.on:
            key = params[g.weights[0].arg_index] if g.weights else params[min(params)]
            return g.controller_for(key)
    return None


def share_controller(*models, controller=None):
    """Make ``models`` (e.g. the two experts of a Wan 2.2 pipeline) share one δ controller; returns it. Without
    ``controller``, the new one takes its settings (delta, bits, min_high_steps, mode) from the options of the first
    compiled graph that uses it."""
    if controller is None:
        controller = DeltaController(adopt=True)
    for m in models:
        for p in _module(m).parameters():
            STATE.shared_controllers[p] = controller
    return controller


def requantize(model) -> int:
    """Drop ``model``'s cached quantized weights (e.g. after editing ``p.data``); returns how many were dropped."""
    released = freed_weights(model)
    if released:
        raise FreedWeightError(f"dvdq_compile.requantize: {len(released)} weight(s) of this model were released "
                                    f"by free_weights (e.g. {next(iter(released))}); their quantized copies are the "
                                    "only ones left. Call dvdq_compile.restore_weights(model, state_dict) first")
    return CACHE.drop_params(list(_module(model).parameters()))


def freed_weights(model) -> dict[str, int]:
    """``{parameter name: bytes}`` of ``model``'s weights whose 16-bit storage ``free_weights`` released."""
    return {name: STATE.freed.get(p).nbytes for name, p in _module(model).named_parameters() if p in STATE.freed}


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
