"""Per-layer output SQNR of a compiled model's quantized linears, on inputs captured from the full-precision model.

Each quantized layer is measured **in isolation**: its full-precision input ``x`` (captured by forward hooks on the
uncompiled model during a full-precision sampling run) goes through the layer's quantized path, and the output is
compared with ``F.linear(x, W, b)``. Errors of earlier layers do not accumulate, so the number says how lossy this
layer's quantization is, not how far the model has drifted (the video metrics say that).

The quantized path is the graph's own: the layer's plan and op sequence (``passes/linear_ops.py``, run eagerly on
tensors instead of inserted as nodes), the quantized weight and artifact tensors the graph consumed (the cache and
the model's artifact), with the kernels the plan chose. Captured rows are measured as one batch element: for the
per-channel fake-quant ablation (scales per batch element over its tokens) that pools the scale over all rows.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..metrics import sqnr_db
from ..passes.layer_names import rename
from ..passes.linear_ops import EagerBuilder, emit, emit_extras
from ..runtime.cache import CACHE
from ..runtime.model_report import prefixes_of
from ..runtime.registry import graphs_of


@contextmanager
def capture_inputs(model: torch.nn.Module, names: set[str] | None = None, rows_per_call: int = 64):
    """Record the inputs of ``model``'s ``nn.Linear`` layers while the block runs: ``{name: [x2d, ...]}``.

    Each call keeps ``rows_per_call`` evenly spaced token rows, so a sampling run contributes inputs from every
    denoising step (activation ranges change with the timestep) while memory grows only with the step count.
    """
    store: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or (names is not None and name not in names):
            continue

        def hook(_m, args, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            step = max(1, x.shape[0] // rows_per_call)
            store.setdefault(name, []).append(x[::step][:rows_per_call].clone())

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def layer_output(g, p, x: torch.Tensor, params: dict, bits: int, bias=None, clip=None) -> torch.Tensor:
    """Layer ``p`` (a plan of compiled graph ``g``, bound to the model through ``params``) on ``x`` [M, K] in the
    ``bits``-bit variant, through the graph's op sequence; ``bias``: the module's. ``clip``: the clip ratio to use
    for an artifact layer with a clip table (captured inputs carry no timestep)."""
    s = p.site
    w = next(w for w in g.weights if w.arg_index == s.w_index)
    b = EagerBuilder()
    extras = g.extras
    if extras is not None and p.name in extras.plan.sites:
        key = params[g.param_indices[0]]
        triples, tail = extras.tensors(params, key)
        weight = tuple(t.to(x.device) for t in triples[g.weights.index(w)])
        ex, _ = extras.plan.sites[p.name]
        inputs = {k: tail[extras.plan.index(p.name, k)].to(x.device) for k in ("inv_lam", "l1", "l2")
                  if extras.plan.has(p.name, k)}
        c = None if clip is None else torch.as_tensor(clip, dtype=torch.float32, device=x.device).reshape(1)
        return emit_extras(b, p, x, weight, bias, bits, g.cfg.seed, {}, ex, None, inputs, c)
    qw = CACHE.get_many([params[s.w_index]], [w.spec], [p.name], False,
                        [w.pre_scale] if w.pre_scale is not None else None)[0]
    smoothing = g.plan.products.smoothing
    sm = smoothing.by_w.get(s.w_index) if smoothing is not None else None
    return emit(b, p, x, qw.tensors(), bias, bits, g.cfg.seed, {}, sm)


@torch.no_grad()
def layer_sqnr(model, inputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """SQNR (dB) of every quantized layer of compiled ``model`` on the captured full-precision ``inputs``.

    A δ-switched graph ran two activation variants: the layer's SQNR is the average of the two variants' SQNR
    weighted by how many calls each variant served. A layer with a clip table per timestep bin gets the mean over
    the bins of its SQNR with each bin's ratio (a bin the layer's expert never runs counts too).
    """
    base = getattr(model, "_orig_mod", model)
    modules = dict(base.named_modules())
    out = {}
    for g, params in graphs_of(base):
        prefixes = prefixes_of(g, params, base)
        total = sum(g.calls.values())
        for p in g.plan.quantized():
            name = rename(p.name, g.prefixes.get(p.site.local, ""), prefixes.get(p.site.local, ""))
            lin = modules.get(name)
            if name in out or lin is None or name not in inputs:
                continue
            x = torch.cat(inputs[name]).to(lin.weight.device)
            ref = F.linear(x, lin.weight, lin.bias).float()
            extras = g.extras
            ex = extras.plan.sites[p.name][0] if extras is not None and p.name in extras.plan.sites else None
            clips = [None] if ex is None or ex.clip is None else [float(c) for c in ex.clip]
            acc = 0.0
            for bits, calls in g.calls.items():
                if total and not calls:
                    continue
                sq = sum(sqnr_db(layer_output(g, p, x, params, bits, lin.bias, c).float(), ref)
                         for c in clips) / len(clips)
                acc += sq * ((calls / total) if total else 1 / len(g.calls))
            out[name] = acc
    return out
