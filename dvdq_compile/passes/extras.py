"""Per-layer "extras": what a calibrated recipe adds around a quantized linear, planned from its artifact(s).

A quantized linear is ``y = Q(x)·Q(W)ᵀ + b``. A recipe may attach to a layer an :class:`Extras` record, any
subset of:

- ``pre_scale`` λ [K]: smoothing. The graph computes ``x̂ = x·diag(λ)⁻¹`` (fp32 multiply, back in x's dtype) and
  quantizes x̂; the weight side is ``W·diag(λ)``. Layers that read one activation node and carry the same λ (one
  artifact group) share one x̂ and one ``act_quant``.
- ``qweight``: the quantized weight (packed codes, scale, zero in kernel layout, per-row or group-wise scales)
  comes precomputed from the artifact (e.g. SVDQuant's GPTQ'd residual) instead of being quantized from W at run
  time; the 16-bit W is then never read by the graph.
- ``weight_offset`` ΔW [N, K] (designed, NOT implemented yet; Q-VDiT's TQE, issue #7): added to ``W·diag(λ)``
  before quantization at run time, for a recipe whose quantized weight is "W plus a correction" without
  precomputed codes. It belongs in the runtime's weight source (``runtime/extras.py``: quantize
  ``W·diag(λ) + ΔW`` with a spec key naming the artifact), not in the graph; exclusive with ``qweight``.
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

The recipe-specific part is only :func:`extras_from_artifact` (``svdquant_gptq_ts`` keys today); the planning,
rewrite and runtime below are generic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..calibrate import Calibration, TimestepBins
from .find_linears import LinearSite

KINDS = ("inv_lam", "l1", "l2", "clip")


@dataclass
class Extras:
    """One layer's extras as tensors (see the module docstring); None = not used."""
    pre_scale: torch.Tensor | None = None
    qweight: tuple | None = None  # (packed, scale, zero)
    lowrank: tuple | None = None  # (L1 [K, r], L2 [r, N])
    lowrank_input: str = "x"
    clip: torch.Tensor | None = None  # [B]

    def __post_init__(self):
        if self.pre_scale is not None and self.qweight is None:
            raise ValueError("extras: a pre_scale needs the precomputed qweight (W·diag(λ) differs per expert, and "
                             "the run-time weight cache keys one smoothing per weight)")
        if self.lowrank_input not in ("x", "xq"):
            raise ValueError(f"extras: lowrank_input must be 'x' or 'xq', got {self.lowrank_input!r}")


def extras_from_artifact(cal: Calibration, name: str) -> Extras | None:
    """The ``svdquant_gptq_ts`` tensors of layer ``name`` in ``cal`` as an :class:`Extras` (None: no entry)."""
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
    return None if ex.qweight is None else tuple(tuple(t.shape) for t in ex.qweight)


def plan_extras(sites: list[LinearSite], example_inputs, artifacts: list[Calibration]) -> ExtrasPlan:
    """Plan the extras of the ``quantize`` sites that the artifacts cover; notes reasons on the sites.

    The planning artifact is the one matching the weights being compiled; every other artifact must have the
    same structure (checked here, so a mismatch fails at compile time, not at the second expert's first call).
    """
    def matches(cal: Calibration) -> bool:
        for s in sites:
            if s.decision == "quantize" and s.name in cal.weights:
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
        if s.decision != "quantize":
            continue
        ex = extras_from_artifact(plan_cal, s.name)
        if ex is None:
            s.reason += "; no artifact entry: default path"
            continue
        if users.get(s.w_index, 0) > 1:
            s.reason += "; artifact entry ignored: its weight also serves another linear"
            continue
        shapes = _shapes(ex)
        for cal in artifacts:
            other = extras_from_artifact(cal, s.name)
            if other is None or _shapes(other) != shapes or _qshape(other) != _qshape(ex) or cal.bins != bins:
                raise ValueError(f"dvdquant option artifact: the artifacts disagree on layer {s.name!r} (entry, "
                                 "shapes, rank or timestep bins); one compiled graph serves all of them, so they "
                                 "must be made with the same recipe settings")
        if ex.pre_scale is not None and ex.pre_scale.shape != (s.k,):
            raise ValueError(f"dvdquant option artifact: layer {s.name!r} has K={s.k} but its artifact smoothing "
                             f"factor has shape {tuple(ex.pre_scale.shape)}")
        if ex.qweight is not None and ex.qweight[1].shape[0] != s.n:
            raise ValueError(f"dvdquant option artifact: layer {s.name!r} has N={s.n} but its artifact weight "
                             f"scales have shape {tuple(ex.qweight[1].shape)}")
        if ex.clip is not None and ex.clip.shape != (bins.n,):
            raise ValueError(f"dvdquant option artifact: layer {s.name!r} clip table has shape "
                             f"{tuple(ex.clip.shape)}, expected ({bins.n},) timestep bins")
        plan.sites[s.name] = (ex, gid.get(s.name, -1 - len(plan.sites)))
        for kind, (shape, dtype) in shapes.items():
            plan.inputs.append(ExtrasInput(s.name, kind, shape, dtype or s.dtype or torch.float32))
        if ex.qweight is not None:
            g = ex.qweight[1].shape[1]
            plan.weight_group[s.name] = 0 if g == 1 else s.k // g
            s.weight_groups = g
        parts = [p for p, on in (("smoothing", ex.pre_scale is not None),
                                 (f"low-rank r={ex.lowrank[0].shape[1]}" if ex.lowrank else "", ex.lowrank),
                                 (f"clip x{bins.n} bins", ex.clip is not None),
                                 ("artifact weight", ex.qweight is not None)) if on]
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
