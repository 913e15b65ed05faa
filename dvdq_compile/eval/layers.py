"""Per-layer output SQNR of a compiled model's quantized linears, on inputs captured from the full-precision model.

Each quantized layer is measured **in isolation**: its full-precision input ``x`` (captured by forward hooks on the
uncompiled model during a full-precision sampling run) goes through the layer's quantized path, and the output is
compared with ``F.linear(x, W, b)``. Errors of earlier layers do not accumulate, so the number says how lossy this
layer's quantization is, not how far the model has drifted (the video metrics say that).

The quantized path is rebuilt from what the backend actually used: the weight spec and SmoothQuant factors from the
compiled graph, the quantized weight from the cache (the same tensors the graph consumed), and the same ``dvdq``
reference ops (``act_quant`` → ``qlinear``; ``dq_linear`` for weight-only and per-channel fake-quant layers).
Captured rows are measured as one batch element: for the per-channel fake-quant ablation (scales per batch element
over its tokens) that pools the scale over all captured rows.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..eval.metrics import sqnr_db
from ..runtime.cache import CACHE


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


def _graph_weights(model):
    """``{layer name: (graph, WeightInput)}`` for the layers the compiled graphs of ``model`` quantize."""
    from ..runtime.registry import graphs_of

    out = {}
    for g, _params in graphs_of(getattr(model, "_orig_mod", model)):
        for w in g.weights:
            for name in w.layers:
                out.setdefault(name, (g, w))
    return out


def extras_output(x: torch.Tensor, lin: torch.nn.Linear, cfg, ex, act_bits: int, clip, qweight,
                  decision: str = "quantize") -> torch.Tensor:
    """The output of one extras layer (``passes/extras.py``: smoothing, artifact or offset weight ``qweight`` (the
    triple the graph consumed), per-layer bits, clip, low-rank branch), as the rewritten graph computes it."""
    ops = torch.ops.dvdq
    wbits = ex.weight_bits or cfg.weight_bits
    packed, scale, zero = (t.to(x.device) for t in qweight)

    def branch(y, u):
        return y if ex.lowrank is None else y + (u @ ex.lowrank[0].to(u)) @ ex.lowrank[1].to(u)

    if decision == "weight_only":
        return branch(ops.dq_linear(x, packed, scale, zero, lin.bias, wbits, 0, cfg.seed, "none", 16), x)
    xh = torch.mul(x, (1.0 / ex.pre_scale.float()).to(x.device)).to(x.dtype) if ex.pre_scale is not None else x
    c = None if clip is None else torch.as_tensor(clip, dtype=torch.float32).reshape(1)
    group = x.shape[-1] if cfg.act_scale == "token" else cfg.group
    codes, scales = ops.act_quant(xh, ex.act_bits or act_bits, group, 0, cfg.seed, "reference", c)
    y = ops.qlinear(codes, scales, packed, scale, zero, lin.bias, wbits, x.dtype, "reference")
    if ex.lowrank is not None and ex.lowrank_input == "xq":
        from ..passes.rewrite import _dequant_act
        return branch(y, _dequant_act(codes, scales, x.dtype))
    return branch(y, xh)


def quantized_output(x: torch.Tensor, lin: torch.nn.Linear, cfg, spec, pre_scale, decision: str, act_bits: int):
    """The output of one quantized linear on ``x`` [M, K], as the rewritten graph computes it."""
    ops = torch.ops.dvdq
    qw = CACHE.get_many([lin.weight], [spec], ["eval"], False, [pre_scale] if pre_scale is not None else None)[0]
    packed, scale, zero = qw.tensors()
    rot, seed = cfg.rotate_block, cfg.seed
    if decision == "weight_only":
        return ops.dq_linear(x, packed, scale, zero, lin.bias, cfg.weight_bits, rot, seed, "none", act_bits)
    if cfg.act_scale == "channel":
        return ops.dq_linear(x, packed, scale, zero, lin.bias, cfg.weight_bits, rot, seed, "channel", act_bits)
    if pre_scale is not None:
        x = torch.mul(x, (1.0 / pre_scale.to(torch.float32)).contiguous()).to(x.dtype)
    group = x.shape[-1] if cfg.act_scale == "token" else cfg.group
    codes, scales = ops.act_quant(x, act_bits, group, rot, seed, "reference")
    return ops.qlinear(codes, scales, packed, scale, zero, lin.bias, cfg.weight_bits, x.dtype, "reference")


@torch.no_grad()
def layer_sqnr(model, inputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """SQNR (dB) of every quantized layer of compiled ``model`` on the captured full-precision ``inputs``.

    A δ-switched graph ran two activation variants: the layer's SQNR is the average of the two variants' SQNR
    weighted by how many calls each variant served.
    """
    from ..api import report

    base = getattr(model, "_orig_mod", model)
    modules = dict(base.named_modules())
    rows = {r.name: r for r in report(model).layers}
    out = {}
    from ..runtime.registry import graphs_of

    bound = {id(g): params for g, params in graphs_of(base)}
    for name, (g, w) in _graph_weights(model).items():
        row, lin = rows.get(name), modules.get(name)
        if row is None or lin is None or name not in inputs or row.decision not in ("quantize", "weight_only"):
            continue
        x = torch.cat(inputs[name]).to(lin.weight.device)
        ref = F.linear(x, lin.weight, lin.bias)
        total = sum(g.calls.values())
        acc = 0.0
        for bits, calls in g.calls.items():
            if total and not calls:
                continue
            if w.source == "artifact":
                acc += _extras_sqnr(x, ref, lin, g, w, row.decision, bound[id(g)], bits) * (
                    (calls / total) if total else 1 / len(g.calls))
                continue
            y = quantized_output(x, lin, g.cfg, w.spec, w.pre_scale, row.decision, bits)
            acc += sqnr_db(y.float(), ref.float()) * ((calls / total) if total else 1 / len(g.calls))
        out[name] = acc
    return out


def _extras_sqnr(x, ref, lin, g, w, decision, params, bits) -> float:
    """An extras layer's SQNR. Captured inputs carry no timestep, so with a clip table it is the mean over the
    timestep bins of the SQNR with each bin's clip ratio (a bin the layer's expert never runs counts too)."""
    from ..passes.extras import extras_from_artifact

    key = params[g.param_indices[0]]
    triples, _ = g.extras.tensors(params, key)
    qweight = triples[next(i for i, v in enumerate(g.weights) if v is w)]
    ex = extras_from_artifact(g.extras.artifact(params, key), w.layers[0])
    clips = [None] if ex.clip is None else [float(c) for c in ex.clip]
    return sum(sqnr_db(extras_output(x, lin, g.cfg, ex, bits, c, qweight, decision).float(), ref.float())
               for c in clips) / len(clips)
