"""Plan a recipe's per-layer extras (``artifacts.Extras``: smoothing, precomputed or offset weight, per-layer bits,
low-rank branch, clip table) from its artifacts, as graph inputs the runtime feeds per model.

All of these tensors are **graph inputs fed by the runtime**, never constants: Wan 2.2's two experts share one
compiled graph (docs/architecture.md §2) and each expert has its own artifact. ``options={"artifact": [a, b]}``
lists them; at the first call of a model the runtime picks the artifact whose per-layer weight fingerprints match
that model's weights (an unmatched model is an error) and feeds its tensors from then on (``runtime/extras.py``).
The artifacts given to one compile must agree on structure (layers, shapes, ranks, bins): checked here, so a
mismatch fails at compile time, not at the second expert's first call.

Used by the recipes that have extras (``svdquant_gptq_ts``, ``qvdit``) from their ``plan`` hook; nothing here names
a recipe.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..artifacts import Extras, TimestepBins, matches
from ..quant.act import ACT_BITS
from ..quant.qweight import WEIGHT_BITS
from .find_linears import LinearSite
from .plan import QUANTIZED, PlanContext


@dataclass
class ExtrasInput:
    """One extra graph input: ``kind`` of site ``site`` (a layer name), fed from the model's artifact."""
    site: str
    kind: str
    shape: tuple
    dtype: torch.dtype


@dataclass
class ExtrasPlan:
    """What the rewrite needs per site, and the graph inputs in order (after the weight triples)."""
    sites: dict  # layer name -> (Extras of the planning artifact, group id)
    inputs: list  # ExtrasInput, in placeholder order
    bins: TimestepBins
    artifacts: list  # one per model (expert), each implementing artifacts.Artifact

    @property
    def has_clip(self) -> bool:
        return any(e.kind == "clip" for e in self.inputs)

    def index(self, site: str, kind: str) -> int:
        for i, e in enumerate(self.inputs):
            if e.site == site and e.kind == kind:
                return i
        raise KeyError((site, kind))

    def has(self, site: str, kind: str) -> bool:
        return any(e.site == site and e.kind == kind for e in self.inputs)


def _shapes(ex: Extras) -> dict:
    out = {}
    if ex.pre_scale is not None:
        out["inv_lam"] = (tuple(ex.pre_scale.shape), torch.float32)
    if ex.lowrank is not None:
        out["l1"] = (tuple(ex.lowrank[0].shape), None)
        out["l2"] = (tuple(ex.lowrank[1].shape), None)
    if ex.clip is not None:
        out["clip"] = (tuple(ex.clip.shape), torch.float32)
    return out


def _qshape(ex: Extras):
    off = None if ex.weight_offset is None else tuple(tuple(t.shape) for t in ex.weight_offset)
    q = None if ex.qweight is None else tuple(tuple(t.shape) for t in ex.qweight)
    return q, ex.offset_weight, off, ex.weight_bits, ex.act_bits


def _check_fits(s: LinearSite, ex: Extras, bins: TimestepBins) -> None:
    where = f"dvdquant option artifact: layer {s.name!r}"
    if ex.pre_scale is not None and ex.pre_scale.shape != (s.k,):
        raise ValueError(f"{where} has K={s.k} but its artifact smoothing factor has shape "
                         f"{tuple(ex.pre_scale.shape)}")
    if ex.qweight is not None and ex.qweight[1].shape[0] != s.n:
        raise ValueError(f"{where} has N={s.n} but its artifact weight scales have shape {tuple(ex.qweight[1].shape)}")
    if ex.weight_offset is not None and (ex.weight_offset[0].shape[0] != s.k or ex.weight_offset[1].shape[1] != s.n):
        raise ValueError(f"{where} is [N={s.n}, K={s.k}] but its weight offset factors have shapes "
                         f"{tuple(ex.weight_offset[0].shape)} and {tuple(ex.weight_offset[1].shape)} (B [K, r], "
                         "A [r, N])")
    if ex.lowrank is not None and (ex.lowrank[0].shape[0] != s.k or ex.lowrank[1].shape[1] != s.n):
        raise ValueError(f"{where} is [N={s.n}, K={s.k}] but its low-rank branch has shapes "
                         f"{tuple(ex.lowrank[0].shape)} and {tuple(ex.lowrank[1].shape)} (L1 [K, r], L2 [r, N])")
    if ex.clip is not None and ex.clip.shape != (bins.n,):
        raise ValueError(f"{where} clip table has shape {tuple(ex.clip.shape)}, expected ({bins.n},) timestep bins")
    if ex.weight_bits is not None and ex.weight_bits not in WEIGHT_BITS:
        raise ValueError(f"{where} has weight_bits={ex.weight_bits} in the artifact; expected one of {WEIGHT_BITS}")
    if ex.act_bits is not None and ex.act_bits not in (*ACT_BITS, 16):
        raise ValueError(f"{where} has act_bits={ex.act_bits} in the artifact; expected one of {(*ACT_BITS, 16)}")


def plan_extras(ctx: PlanContext) -> ExtrasPlan:
    """Plan the extras of the quantized layers the artifacts cover; changes their drafts (decision and bits when
    the artifact fixes them, weight source and groups when it brings the weight) and notes every reason.

    The planning artifact is the one matching the weights being compiled; every other artifact must have the same
    structure."""
    drafts, artifacts = ctx.drafts, ctx.artifacts
    weights = {d.name: ctx.weight(d) for d in drafts if d.decision in QUANTIZED}
    plan_art = next((a for a in artifacts if matches(a, weights)), None)
    if plan_art is None:
        names = [a.meta.get("path", f"artifact #{i}") for i, a in enumerate(artifacts)]
        raise ValueError(f"dvdquant option artifact: none of {names} was made for this model (per-layer weight "
                         "fingerprints differ); calibrate this model or pass its artifact")
    bins = plan_art.bins
    users: dict[int, int] = {}
    for d in drafts:
        if d.site.w_index is not None and d.decision != "skip":
            users[d.site.w_index] = users.get(d.site.w_index, 0) + 1
    plan = ExtrasPlan({}, [], bins, list(artifacts))
    gid = {n: i for i, g in enumerate(plan_art.groups) for n in g}
    for d in drafts:
        s = d.site
        if d.decision not in QUANTIZED:
            continue
        ex = plan_art.layer_extras(s.name)
        if ex is None:
            d.note("no artifact entry: default path")
            continue
        if ex.act_bits is None and d.decision != "quantize":
            continue  # calibrated activation extras (smoothing, clip) apply to activation-quantized layers only
        if users.get(s.w_index, 0) > 1:
            d.note("artifact entry ignored: its weight also serves another linear")
            continue
        shapes = _shapes(ex)
        for art in artifacts:
            other = art.layer_extras(s.name)
            if other is None or _shapes(other) != shapes or _qshape(other) != _qshape(ex) or art.bins != bins:
                raise ValueError(f"dvdquant option artifact: the artifacts disagree on layer {s.name!r} (entry, "
                                 "shapes, rank, bits or timestep bins); one compiled graph serves all of them, so "
                                 "they must be made with the same recipe settings")
        _check_fits(s, ex, bins)
        if ex.act_bits is not None:  # the artifact fixes this layer's bits: they decide quantize / weight-only
            decision = "weight_only" if ex.act_bits == 16 else "quantize"
            if decision != d.decision:
                d.note(f"{'16-bit' if ex.act_bits == 16 else f'{ex.act_bits}-bit'} activations by the artifact")
                d.decision = decision
            d.act_bits = None if ex.act_bits == 16 else ex.act_bits
        if ex.weight_bits is not None:
            d.weight_bits = ex.weight_bits
        key = gid.get(s.name)
        if key is None:
            # no shared smoothing: layers reading one activation at the same bits share its act_quant, unless a
            # clip table (per layer) makes their codes differ
            key = ("plain", ex.act_bits) if ex.pre_scale is None and ex.clip is None else -1 - len(plan.sites)
        plan.sites[s.name] = (ex, key)
        for kind, (shape, dtype) in shapes.items():
            plan.inputs.append(ExtrasInput(s.name, kind, shape, dtype or s.dtype or torch.float32))
        if ex.qweight is not None:
            g = ex.qweight[1].shape[1]
            d.weight_group, d.weight_source = (0 if g == 1 else s.k // g), "artifact"
        elif ex.offset_weight:
            d.weight_group, d.weight_source = 0, "artifact"
        parts = [p for p, on in (
            (f"W{ex.weight_bits}A{ex.act_bits}", ex.act_bits is not None and ex.weight_bits is not None),
            ("smoothing", ex.pre_scale is not None),
            (f"low-rank r={ex.lowrank[0].shape[1]}" if ex.lowrank else "", ex.lowrank),
            (f"clip x{bins.n} bins", ex.clip is not None),
            ("artifact weight", ex.qweight is not None),
            (f"weight offset r={ex.weight_offset[0].shape[1]} folded at load" if ex.weight_offset else
             "MinMax weight", ex.offset_weight)) if on]
        d.note("extras: " + ", ".join(parts))
    return plan


def model_tensors(plan: ExtrasPlan, art, device: torch.device) -> list[torch.Tensor]:
    """The extra graph inputs of ``plan`` from artifact ``art``, in placeholder order."""
    out = []
    cache: dict[str, Extras] = {}
    for e in plan.inputs:
        ex = cache.get(e.site) or cache.setdefault(e.site, art.layer_extras(e.site))
        if e.kind == "inv_lam":
            t = 1.0 / ex.pre_scale.float()
        elif e.kind in ("l1", "l2"):
            t = ex.lowrank[0 if e.kind == "l1" else 1]
        else:
            t = ex.clip
        out.append(t.to(device=device, dtype=e.dtype).contiguous())
    return out
