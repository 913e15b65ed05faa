"""SmoothQuant planning: which quantized linears get smoothed, and by which ``s`` (used by recipe ``smoothquant``).

Linears that read one activation node share one ``s`` (from the calibration's per-channel activation range of that
input and the column maxima of all their weights), so the smoothed activation ``x·diag(s)⁻¹`` is computed and
quantized once. The weights become ``W·diag(s)`` before rotation and quantization (``WeightSpec.pre_scale``).

A group is left unsmoothed, with the reason in the compile report, when the artifact has no statistics for it
(the calibration run never reached the layer) or when one of its weights also serves a linear outside the group
(``s`` is a property of the input: a weight cannot carry two). A weight whose fingerprint differs from the one
the artifact recorded is an error: the artifact belongs to another model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import fx

from ..artifacts import Calibration
from ..errors import FreedWeightError
from ..quant.smooth import smooth_factors, weight_absmax
from ..state import STATE
from .plan import Draft, PlanContext


def scale_key(s: torch.Tensor) -> str:
    return hashlib.sha256(s.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass
class Smoothing:
    by_x: dict = field(default_factory=dict)  # activation node -> s [K]: the graph divides x by it
    by_w: dict = field(default_factory=dict)  # weight input index -> s [K]: the weight is quantized as W·diag(s)


def _column_absmax(w: torch.Tensor) -> torch.Tensor:
    """max |W[:, j]|, remembered per parameter and ``_version``: a recompile (new shape) after free_weights
    released the weight still needs its column ranges."""
    e = STATE.column_absmax.get(w)
    if e is not None and e[0] == w._version:
        return e[1]
    if w in STATE.freed:
        raise FreedWeightError("dvdquant free_weights: SmoothQuant needs the column ranges of a released weight "
                               "that were never recorded; restore the weights (dvdq_compile.restore_weights) "
                               "before compiling again")
    m = weight_absmax([w])
    STATE.column_absmax[w] = (w._version, m)
    return m


def plan_smoothing(ctx: PlanContext, cal: Calibration, alpha: float) -> Smoothing:
    """SmoothQuant factors for the groups of quantized linears that read one activation; notes reasons."""
    groups: dict[fx.Node, list[Draft]] = {}
    users: dict[int, set] = {}
    for d in ctx.drafts:
        if d.site.w_index is None or d.decision == "skip":
            continue
        users.setdefault(d.site.w_index, set()).add((d.site.x, d.decision))
        if d.decision == "quantize":
            groups.setdefault(d.site.x, []).append(d)
    out = Smoothing()
    for x, group in groups.items():
        for d in group:
            cal.check(d.name, ctx.weight(d))
        if any(users[d.site.w_index] != {(x, "quantize")} for d in group):
            for d in group:
                d.note("not smoothed: its weight also serves another input")
            continue
        stats = next((cal.stats[d.name] for d in group if d.name in cal.stats), None)
        if stats is None:
            for d in group:
                d.note("not smoothed: no calibration statistics for this layer")
            continue
        if stats.absmax.shape != (group[0].site.k,):
            raise ValueError(f"dvdquant option artifact: layer {group[0].name!r} has K={group[0].site.k} but its "
                             f"calibration statistics have {tuple(stats.absmax.shape)} channels")
        w_max = torch.stack([_column_absmax(ctx.weight(d)) for d in group]).amax(0)
        sf = smooth_factors(stats.absmax.to(w_max.device), w_max, float(alpha))
        out.by_x[x] = sf
        for d in group:
            out.by_w[d.site.w_index] = sf
            d.note(f"SmoothQuant alpha={alpha:g}")
    return out
