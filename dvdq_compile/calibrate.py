"""``calibrate``: run a model eagerly on a few inputs and record per-``nn.Linear`` input statistics.

DVD-Quant itself is data-free; its peers are not. ``calibrate`` hooks every ``nn.Linear`` and keeps **running**
statistics only (memory is bounded by the layer sizes, never by the number of tokens seen); the result is a
:class:`~dvdq_compile.artifacts.Calibration` (``artifacts/calibration.py``: what is stored, how it is saved).
The backend takes it as ``options={"artifact": calibration_or_path}`` and refuses it for a model whose weights do
not match the per-layer fingerprints stored in it.

Layer names are module paths relative to the model passed in (``blocks.0.attn1.to_q``): the names the backend's
compile report uses for a ``torch.compile``-d model.

Timestep bins (``timestep_bins=``, for recipes whose activation handling depends on the denoising step): the
current timestep is read from each top-level model call (its ``timestep`` argument, by keyword or position) and
every layer also keeps ``absmax`` and token counts per bin. Recipes can pass ``observers`` (called with ``(layer
name, input, bin)`` from the same hooks) to accumulate their own bounded statistics, and store their products in
``Calibration.recipe_tensors``. ``Calibration.groups`` lists the layers seen reading the same input tensor
(q/k/v), which share one quantized activation in the compiled graph.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import torch

from .artifacts import (
    Calibration,
    LayerStats,
    TimestepBins,
    as_calibration,
    weight_fingerprint,
)

__all__ = ["Calibration", "LayerStats", "TimestepBins", "as_calibration", "calibrate", "weight_fingerprint"]


def _timestep_of(model: torch.nn.Module):
    """A function (args, kwargs) -> the ``timestep`` argument of ``model.forward`` (keyword or positional)."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    pos = params.index("timestep") if "timestep" in params else None

    def get(args, kwargs):
        if "timestep" in kwargs:
            return kwargs["timestep"]
        if pos is not None and pos < len(args):
            return args[pos]
        raise ValueError("calibrate(timestep_bins=...): the model was called without a `timestep` argument "
                         f"(forward parameters: {params}); timestep bins need it")
    return get


def _timestep_key(t) -> float:
    """The value that decides a call's bin: the max over the timestep (as in the compiled graph and δ-GBS)."""
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            raise ValueError("calibrate(timestep_bins=...): empty timestep tensor")
        return float(t.detach().reshape(-1).max())
    return float(t)


@torch.no_grad()
def calibrate(model: torch.nn.Module, run_fn: Callable[[torch.nn.Module], object], *, hessian: bool = False,
              layers: Callable[[str, torch.nn.Linear], bool] | None = None, meta: dict | None = None,
              timestep_bins=None, observers: Callable[[str, torch.Tensor, int], None] | None = None,
              progress: bool = False) -> Calibration:
    """Run ``run_fn(model)`` eagerly and record per-``nn.Linear`` input statistics.

    Args:
        model: the (uncompiled) model; a ``torch.compile`` wrapper is unwrapped.
        run_fn: calls the model on the calibration inputs, e.g. ``lambda m: sample(m, [1, 2], steps=8)``.
        hessian: also accumulate ``XᵀX`` (GPTQ).
        layers: optional filter ``(name, module) -> bool``; default: every ``nn.Linear``.
        meta: extra JSON-able facts stored in the manifest (data, seeds, steps).
        timestep_bins: None (no per-bin statistics), an int n (n uniform bins over [0, 1000)), a sequence of bin
            edges or a :class:`TimestepBins`: also keep per-bin ``absmax``/token counts, the bin read from each
            model call's ``timestep``. The max over the timestep decides its bin (a per-token timestep is binned by its noise level).
        observers: optional ``fn(layer name, input, bin)`` called for every recorded layer input (bin 0 without
            bins): recipes accumulate their own running statistics with it.
        progress: a progress bar counting model calls.
    """
    model = getattr(model, "_orig_mod", model)
    bins = TimestepBins.of(timestep_bins) if timestep_bins is not None else None
    stats: dict[str, LayerStats] = {}
    weights: dict[str, str] = {}
    handles = []
    state = {"bin": None, "live": {}}  # live: id(input) -> (input, names) within one model call
    groups: dict[str, set] = {}

    def link(name: str, x: torch.Tensor) -> None:
        entry = state["live"].setdefault(id(x), (x, set()))  # the tensor is kept alive: its id cannot be reused
        entry[1].add(name)

    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or (layers is not None and not layers(name, mod)):
            continue
        weights[name] = weight_fingerprint(mod.weight)

        def hook(_mod, args, name=name, k=mod.in_features):
            st = stats.get(name)
            if st is None:
                st = stats[name] = LayerStats(torch.zeros(k, dtype=torch.float32))
            b = state["bin"]
            st.update(args[0], hessian, b, bins.n if bins is not None else 1)
            link(name, args[0])
            if observers is not None:
                observers(name, args[0], 0 if b is None else b)

        handles.append(mod.register_forward_pre_hook(hook))
    if not handles:
        raise ValueError("calibrate: the model has no nn.Linear layers (after the `layers` filter)")
    get_t = _timestep_of(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="dvdq calibrate", unit="call", leave=False)

    def enter(_mod, args, kwargs):
        state["live"].clear()
        if bins is not None:
            state["bin"] = bins.index(_timestep_key(get_t(args, kwargs)))

    def leave(_mod, _args, _kwargs, _out):
        for _, names in state["live"].values():
            merged = set(names)
            for n in names:
                merged |= groups.get(n, set())
            for n in merged:
                groups[n] = merged
        state["live"].clear()
        if bar is not None:
            bar.update(1)

    handles.append(model.register_forward_pre_hook(enter, with_kwargs=True))
    handles.append(model.register_forward_hook(leave, with_kwargs=True))
    t0 = time.perf_counter()
    try:
        run_fn(model)
    finally:
        for h in handles:
            h.remove()
        state["live"].clear()
        if bar is not None:
            bar.close()
    if not stats:
        raise ValueError("calibrate: run_fn did not call any nn.Linear of the model")
    info = dict(meta or {})
    info.update(seconds=round(time.perf_counter() - t0, 3), hessian=hessian)
    seen, group_list = set(), []
    for name in stats:
        if name not in seen:
            g = sorted(groups.get(name, {name}))
            seen.update(g)
            group_list.append(g)
    return Calibration(stats, {k: v for k, v in weights.items() if k in stats}, info,
                       bins if bins is not None else TimestepBins(), group_list)
