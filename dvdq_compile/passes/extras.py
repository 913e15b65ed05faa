"""Per-layer "extras": what a calibrated recipe adds around a quantized linear, planned from its artifact(s).

A quantized linear is ``y = Q(x)·Q(W)ᵀ + b``. A recipe may attach to a layer an :class:`Extras` record, any
subset of:

- ``pre_scale`` λ [K]: smoothing. The graph computes ``x̂ = x·diag(λ)⁻¹`` (fp32 multiply, back in x's dtype) and
  quantizes x̂; the weight side is ``W·diag(λ)``. Layers that read one activation node and carry the same λ (one
  artifact group) share one x̂ and one ``act_quant``.
- ``qweight``: the quantized weight (packed codes, scale, zero in kernel layout, per-row or group-wise scales)
  comes precomputed from the artifact (e.g. SVDQuant's GPTQ'd residual) instead of being quantized from W at run
  time; the 16-bit W is then never read by the graph.
- ``weight_offset`` (B [K, r], A [r, N]) with ``offset_weight=True`` (Q-VDiT's TQE): the weight is quantized at the
  model's first call by the runtime's weight source (``runtime/extras.py``, ``quant.offset_qweight``): (Δ, z) per
  row are MinMax of the model's own W, the codes those of ``W + (B A)ᵀ``; ``weight_offset`` None = no offset
  (RTN). The offset is folded into the codes, so the graph sees an ordinary quantized weight; exclusive with
  ``qweight``.
- ``weight_bits`` / ``act_bits``: this layer's bits when the artifact fixes them per layer (Q-VDiT's faithful
  setting keeps the MLP at W8A8 in a W3A6 model); ``act_bits=16`` makes the layer weight-only. They override the
  options and the default decision (noted in the report); None = the options' bits.
- ``lowrank`` L1 [K, r], L2 [r, N]: a 16-bit (the activation dtype) output branch ``y += (u·L1)·L2`` where the
  branch input ``u`` is x̂ (``lowrank_input="x"``: SVDQuant, the branch sees unquantized activations) or the
  dequantized quantized activation (``"xq"``: codes·scales, what the integer GEMM saw).
- ``clip`` [B]: activation clip ratio per timestep bin: the activation scale is ``c·absmax/qmax`` with
  ``c = clip[bin(t)]``; ``bin(t) = bucketize(t, edges, right=True)`` is computed inside the graph from the
  ``timestep`` input (edges a graph constant), and the ratio is read by ``act_quant`` from memory, so no step
  recompiles and no host sync happens.

All of these tensors are **graph inputs fed by the runtime**, never constants: Wan 2.2's two experts share one
compiled graph (DESIGN §3) and each expert has its own artifact. ``options={"artifact": [a, b]}`` lists them;
at the first call of a model the runtime picks the artifact whose per-layer weight fingerprints match that
model's weights (an unmatched model is an error) and feeds its tensors from then on. The artifacts given to one
compile must agree on structure (layers, shapes, ranks, bins).

The recipe-specific part is only :func:`extras_from_artifact` (``svdquant_gptq_ts`` calibrations, ``qvdit``
artifacts: ``QVDiTArtifact.layer_extras``); the planning, rewrite and runtime below are generic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..calibrate import Calibration, TimestepBins
from ..quant.act import ACT_BITS
from ..quant.qweight import WEIGHT_BITS
from .find_linears import QUANTIZED, LinearSite

KINDS = ("inv_lam", "l1", "l2", "clip")


@dataclass
class Extras:
    """One layer's extras as tensors (see the module docstring); None = not used."""
    pre_scale: torch.Tensor | None = None
    qweight: tuple | None = None  # (packed, scale, zero)
    lowrank: tuple | None = None  # (L1 [K, r], L2 [r, N])
    lowrank_input: str = "x"
    clip: torch.Tensor | None = None  # [B]
    weight_offset: tuple | None = None  # (B [K, r], A [r, N]), with offset_weight
    offset_weight: bool = False  # the weight is quantized at load on MinMax(W)'s grid, codes of W + (B A)ᵀ
    weight_bits: int | None = None
    act_bits: int | None = None  # 16: weight-only

    def __post_init__(self):
        if self.pre_scale is not None and self.qweight is None:
            raise ValueError("extras: a pre_scale needs the precomputed qweight (W·diag(λ) differs per expert, and "
                             "the run-time weight cache keys one smoothing per weight)")
        if self.lowrank_input not in ("x", "xq"):
            raise ValueError(f"extras: lowrank_input must be 'x' or 'xq', got {self.lowrank_input!r}")
        if self.offset_weight and self.qweight is not None:
            raise ValueError("extras: a layer's weight comes either precomputed (qweight) or from its offset, not both")
        if self.weight_offset is not None and not self.offset_weight:
            raise ValueError("extras: weight_offset needs offset_weight=True")
        if self.offset_weight and self.weight_bits is None:
            raise ValueError("extras: an offset weight needs its weight_bits")
        if self.act_bits == 16 and (self.pre_scale is not None or self.clip is not None or self.lowrank_input != "x"):
            raise ValueError("extras: a weight-only layer (act_bits=16) has no smoothing, clip table or branch on "
                             "quantized activations")


def extras_from_artifact(cal, name: str) -> Extras | None:
    """Layer ``name``'s extras in artifact ``cal`` (None: no entry): a ``qvdit`` artifact converts itself
    (``layer_extras``); a Calibration holds ``svdquant_gptq_ts`` tensors."""
    if not isinstance(cal, Calibration):
        return cal.layer_extras(name)
    from ..recipes.svdquant_gptq_ts import layer_extras

    e = layer_extras(cal, name)
    if e is None:
        return None
    rank = e["l1"].shape[1]
    return Extras(pre_scale=e["lam"], qweight=(e["packed"], e["scale"], e["zero"]),
                  lowrank=(e["l1"], e["l2"]) if rank else None, clip=e["clip"])


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
    artifacts: list  # Calibration per model (expert)
    weight_group: dict  # layer name -> weight scale group of its precomputed qweight (0: per row)

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


def plan_extras(sites: list[LinearSite], example_inputs, artifacts: list[Calibration]) -> ExtrasPlan:
    """Plan the extras of the ``quantize`` sites that the artifacts cover; notes reasons on the sites.

    The planning artifact is the one matching the weights being compiled; every other artifact must have the
    same structure (checked here, so a mismatch fails at compile time, not at the second expert's first call).
    """
    def matches(cal: Calibration) -> bool:
        for s in sites:
            if s.decision in QUANTIZED and s.name in cal.weights:
                try:
                    cal.check(s.name, example_inputs[s.w_index])
                except ValueError:
                    return False
        return True

    plan_cal = next((c for c in artifacts if matches(c)), None)
    if plan_cal is None:
        names = [c.meta.get("path", f"artifact #{i}") for i, c in enumerate(artifacts)]
        raise ValueError(f"dvdquant option artifact: none of {names} was made for this model (per-layer weight "
                         "fingerprints differ); calibrate this model or pass its artifact")
    bins = plan_cal.bins
    users: dict[int, int] = {}
    for s in sites:
        if s.w_index is not None and s.decision != "skip":
            users[s.w_index] = users.get(s.w_index, 0) + 1
    plan = ExtrasPlan({}, [], bins, list(artifacts), {})
    gid = {n: i for i, g in enumerate(plan_cal.groups) for n in g}
    for s in sites:
        if s.decision not in QUANTIZED:
            continue
        ex = extras_from_artifact(plan_cal, s.name)
        if ex is None:
            s.reason += "; no artifact entry: default path"
            continue
        if ex.act_bits is None and s.decision != "quantize":
            continue  # calibrated activation extras (svdquant_gptq_ts) apply to activation-quantized layers only
        if users.get(s.w_index, 0) > 1:
            s.reason += "; artifact entry ignored: its weight also serves another linear"
            continue
        shapes = _shapes(ex)
        for cal in artifacts:
            other = extras_from_artifact(cal, s.name)
            if other is None or _shapes(other) != shapes or _qshape(other) != _qshape(ex) or cal.bins != bins:
                raise ValueError(f"dvdquant option artifact: the artifacts disagree on layer {s.name!r} (entry, "
                                 "shapes, rank, bits or timestep bins); one compiled graph serves all of them, so "
                                 "they must be made with the same recipe settings")
        _check_fits(s, ex, bins)
        if ex.act_bits is not None:  # the artifact fixes this layer's bits: they decide quantize / weight-only
            decision = "weight_only" if ex.act_bits == 16 else "quantize"
            if decision != s.decision:
                s.reason += f"; {'16-bit' if ex.act_bits == 16 else f'{ex.act_bits}-bit'} activations by the artifact"
                s.decision = decision
            s.act_bits = None if ex.act_bits == 16 else ex.act_bits
        if ex.weight_bits is not None:
            s.weight_bits = ex.weight_bits
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
            plan.weight_group[s.name] = 0 if g == 1 else s.k // g
            s.weight_groups = g
        elif ex.offset_weight:
            plan.weight_group[s.name] = 0
            s.weight_groups = 1
        parts = [p for p, on in (
            (f"W{ex.weight_bits}A{ex.act_bits}", ex.act_bits is not None and ex.weight_bits is not None),
            ("smoothing", ex.pre_scale is not None),
            (f"low-rank r={ex.lowrank[0].shape[1]}" if ex.lowrank else "", ex.lowrank),
            (f"clip x{bins.n} bins", ex.clip is not None),
            ("artifact weight", ex.qweight is not None),
            (f"weight offset r={ex.weight_offset[0].shape[1]} folded at load" if ex.weight_offset else
             "MinMax weight", ex.offset_weight)) if on]
        s.reason += "; extras: " + ", ".join(parts)
    return plan


def model_tensors(plan: ExtrasPlan, cal: Calibration, device: torch.device) -> list[torch.Tensor]:
    """The extra graph inputs of ``plan`` from artifact ``cal``, in placeholder order."""
    out = []
    cache: dict[str, Extras] = {}
    for e in plan.inputs:
        ex = cache.get(e.site) or cache.setdefault(e.site, extras_from_artifact(cal, e.site))
        if e.kind == "inv_lam":
            t = 1.0 / ex.pre_scale.float()
        elif e.kind in ("l1", "l2"):
            t = ex.lowrank[0 if e.kind == "l1" else 1]
        else:
            t = ex.clip
        out.append(t.to(device=device, dtype=e.dtype).contiguous())
    return out
