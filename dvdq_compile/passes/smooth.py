"""SmoothQuant planning (recipe ``smoothquant``): which quantized linears get smoothed, and by which ``s``.

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

import torch
from torch import fx

from ..calibrate import Calibration
from ..config import QuantConfig
from ..quant.smooth import smooth_factors, weight_absmax
from ..runtime.free import FreedWeightError, is_freed
from ..runtime.identity import IdentityMap
from .find_linears import LinearSite


def scale_key(s: torch.Tensor) -> str:
    return hashlib.sha256(s.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


# parameter -> (_version, max |W_{:,j}| [K]): a recompile (new shape) after free_weights released the weight
# still needs its column ranges.
_COLUMN_ABSMAX = IdentityMap()


def _column_absmax(w: torch.Tensor) -> torch.Tensor:
    e = _COLUMN_ABSMAX.get(w)
    if e is not None and e[0] == w._version:
        return e[1]
    if is_freed(w):
        raise FreedWeightError("dvdquant free_weights: SmoothQuant needs the column ranges of a released weight "
                               "that were never recorded; restore the weights (dvdq_compile.restore_weights) "
                               "before compiling again")
    m = weight_absmax([w])
    _COLUMN_ABSMAX[w] = (w._version, m)
    return m


def plan_smoothing(sites: list[LinearSite], example_inputs, cfg: QuantConfig,
                   cal: Calibration) -> tuple[dict[fx.Node, torch.Tensor], dict[int, torch.Tensor]]:
    """``(s per activation node, s per weight input index)`` for the smoothed groups; notes reasons on sites."""
    groups: dict[fx.Node, list[LinearSite]] = {}
    users: dict[int, set] = {}
    for s in sites:
        if s.w_index is None or s.decision == "skip":
            continue
        users.setdefault(s.w_index, set()).add((s.x, s.decision))
        if s.decision == "quantize":
            groups.setdefault(s.x, []).append(s)
    by_x, by_w = {}, {}
    for x, group in groups.items():
        for s in group:
            cal.check(s.name, example_inputs[s.w_index])
        if any(users[s.w_index] != {(x, "quantize")} for s in group):
            for s in group:
                s.reason += "; not smoothed: its weight also serves another input"
            continue
        stats = next((cal.stats[s.name] for s in group if s.name in cal.stats), None)
        if stats is None:
            for s in group:
                s.reason += "; not smoothed: no calibration statistics for this layer"
            continue
        if stats.absmax.shape != (group[0].k,):
            raise ValueError(f"dvdquant option artifact: layer {group[0].name!r} has K={group[0].k} but its "
                             f"calibration statistics have {tuple(stats.absmax.shape)} channels")
        w_max = torch.stack([_column_absmax(example_inputs[s.w_index]) for s in group]).amax(0)
        sf = smooth_factors(stats.absmax.to(w_max.device), w_max, float(cfg.smooth_alpha))
        by_x[x] = sf
        for s in group:
            by_w[s.w_index] = sf
            s.reason += f"; SmoothQuant alpha={cfg.smooth_alpha:g}"
    return by_x, by_w
