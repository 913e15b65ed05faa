"""The layer plan: what the backend does with every linear, decided in one place.

``plan_layers`` turns (the graph's linears, the options, the recipe and its artifacts, the device) into one frozen
:class:`LayerPlan` per linear: the decision and every reason for it, weight and activation bits, groups, where the
quantized weight comes from, the kernel and, per compiled activation variant, the op sequence. The rewrite, the
report and the per-layer SQNR read plans; none of them decides anything again.

The steps, in order (each appends its reason):

1. the layer policy (:func:`policy`): transformer-block linears are quantized; modulation linears, short token
   counts and ``weight_only`` patterns keep 16-bit activations; the rest stays in full precision, with why;
2. the recipe's overrides (``Recipe.plan``: an artifact's per-layer bits and extras, SmoothQuant's smoothing);
3. the kernel: Triton where the capability query says it runs the layer, else the PyTorch reference, with why;
   fused (one launch) or split (``act_quant`` + ``qlinear``) per activation variant.

Everything here works on plain ``LinearSite`` facts, so a plan can be made and tested without Dynamo.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import torch

from ..config import QuantConfig
from ..kernels.dispatch import act_impl, gemm_variant, linear_impl
from . import producer
from .find_linears import LinearSite

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANTIZED = ("quantize", "weight_only")  # the decisions whose weight the backend quantizes


@dataclass(frozen=True)
class LayerPlan:
    site: LinearSite
    decision: str  # quantize | weight_only | skip
    reason: str  # every reason, in the order the steps gave them, joined by "; "
    weight_bits: int | None  # None: not quantized
    act_bits: int | None  # fixed for this layer (an artifact's); None: the compiled variant's bits
    act_group: int  # activation scale group along K (K: per token); 0 when activations stay 16-bit
    rotate: int  # Hadamard block of this layer's activations and weight (0: none)
    weight_group: int  # (Δ, z) group along K: 0 = one per output row
    weight_source: str  # cache (quantized at run time) | artifact (precomputed or folded at load) | -
    kernel: str  # triton | reference | - (full precision)
    act_kernel: str  # what runs act_quant: triton | reference | -
    op: str  # qlinear | dq_linear (16-bit activations) | dq_channel (per-channel fake-quant) | fp
    fused: frozenset = frozenset()  # the activation variants (bits) that run fused_qlinear instead of the split pair
    producer: object = None  # passes.producer.NormModulate / GeluOfLinear / AttentionOut: quantized where it is made
    epilogue: str = ""  # an FFN-up whose GEMM epilogue writes this FFN-down's input codes (passes/producer.py)

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def n(self) -> int:
        return self.site.n

    @property
    def k(self) -> int:
        return self.site.k

    @property
    def quantized(self) -> bool:
        return self.decision in QUANTIZED

    @property
    def weight_groups(self) -> int:
        """How many (Δ, z) per output row."""
        return self.k // self.weight_group if self.weight_group else 1

    def abits(self, variant: int) -> int:
        """This layer's activation bits in the compiled variant of ``variant`` bits."""
        return self.act_bits or variant


@dataclass
class Products:
    """What a recipe's ``plan`` hook hands the passes besides its per-layer changes (all optional)."""
    extras: object = None  # passes.extras.ExtrasPlan: per-layer artifact tensors fed as graph inputs, per model
    smoothing: object = None  # passes.smooth.Smoothing: SmoothQuant factors (graph constants + weight pre-scales)
    checks: list = field(default_factory=list)  # artifacts every model bound to the graph must match


@dataclass
class Plan:
    layers: list[LayerPlan]
    products: Products
    impl: str  # the graph-level kernel choice (triton | reference)
    impl_reason: str
    variants: tuple  # the activation bit widths that get a compiled variant

    def quantized(self) -> list[LayerPlan]:
        return [p for p in self.layers if p.quantized]


@dataclass
class Draft:
    """A layer's plan while it is being made (``plan_layers`` freezes it)."""
    site: LinearSite
    decision: str
    reasons: list = field(default_factory=list)
    weight_bits: int | None = None
    act_bits: int | None = None
    weight_group: int = 0
    weight_source: str = "cache"

    @property
    def name(self) -> str:
        return self.site.name

    def note(self, reason: str) -> None:
        self.reasons.append(reason)


@dataclass
class PlanContext:
    """What a recipe's ``plan`` sees and changes: the drafts (in graph order), the options, its artifacts, and the
    graph's example inputs (the real parameters, for fingerprints and column ranges)."""
    drafts: list[Draft]
    cfg: QuantConfig
    artifacts: list
    example_inputs: list

    def weight(self, d: Draft) -> torch.Tensor:
        return self.example_inputs[d.site.w_index]


def _matches(name: str, patterns) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def policy(site: LinearSite, cfg: QuantConfig) -> tuple[str, str]:
    """The layer policy: ``(decision, reason)`` from the options alone."""
    if site.in_branch:
        return "skip", "inside a torch.cond branch: not rewritten (kept in full precision)"
    if not site.is_param:
        return "skip", "weight is not a parameter input (computed, a buffer or a tensor subclass)"
    if (p := _matches(site.name, cfg.exclude)):
        return "skip", f"excluded by pattern {p!r}"
    if site.w_dtype not in FLOAT_DTYPES:
        return "skip", f"weight dtype {site.w_dtype} is not one of fp32/fp16/bf16"
    if site.dtype not in FLOAT_DTYPES:
        return "skip", f"activation dtype {site.dtype} is not one of fp32/fp16/bf16"
    forced = _matches(site.name, cfg.include)
    if not forced and not re.search(cfg.block_pattern, site.name):
        return "skip", "outside transformer blocks (embedder or final projection)"
    if site.k % cfg.group:
        return "skip", f"K={site.k} is not a multiple of group {cfg.group}"
    if cfg.weight_group and site.k % cfg.weight_group:
        return "skip", f"K={site.k} is not a multiple of weight_group {cfg.weight_group}"
    if (p := _matches(site.name, cfg.weight_only)):
        return "weight_only", f"16-bit activations by pattern {p!r}"
    if re.search(cfg.modulation_pattern, site.name, flags=re.IGNORECASE):
        return "weight_only", "adaLN/modulation linear: 16-bit activations (M = batch)"
    if cfg.act_bits == 16:
        return "weight_only", "act_bits=16"
    if site.m_first is not None and site.m_first <= cfg.min_tokens:
        return "weight_only", f"M={site.m_first} <= min_tokens={cfg.min_tokens} at its first compile: 16-bit " \
                              "activations"
    return "quantize", f"included by pattern {forced!r}" if forced else "transformer-block linear"


def _draft(site: LinearSite, cfg: QuantConfig) -> Draft:
    decision, reason = policy(site, cfg)
    return Draft(site, decision, [reason], weight_bits=cfg.weight_bits, weight_group=cfg.weight_group)


def _freeze(d: Draft, cfg: QuantConfig, impl: str, consumers: dict, products: Products) -> LayerPlan:
    s = d.site
    if d.decision not in QUANTIZED:
        return LayerPlan(s, d.decision, "; ".join(d.reasons), None, None, 0, 0, 0, "-", "-", "-", "fp")
    extras = products.extras is not None and s.name in products.extras.sites
    rot = 0 if extras else cfg.rotate_block  # artifact layers are unrotated (their factors are for plain x)
    if d.decision == "weight_only":
        return LayerPlan(s, d.decision, "; ".join(d.reasons), d.weight_bits, d.act_bits, 0, rot, d.weight_group,
                         d.weight_source, "reference", "-", "dq_linear")
    if cfg.act_scale == "channel":
        return LayerPlan(s, d.decision, "; ".join(d.reasons), d.weight_bits, d.act_bits, 0, rot, d.weight_group,
                         d.weight_source, "reference", "-", "dq_channel")
    a_group = s.k if cfg.act_scale == "token" else cfg.group
    groups = s.k // d.weight_group if d.weight_group else 1
    kernel, why = linear_impl(impl, d.weight_bits, groups, s.n, s.k, a_group, cfg.rotate_block)
    if why:
        d.note(why)
    fused = frozenset()
    if not extras and consumers.get(s.x, 0) == 1 and kernel == "triton":
        fused = frozenset(b for b in cfg.act_variants if gemm_variant(
            kernel, s.m, s.n, s.k, b, s.device, a_group, rot, cfg.weight_bits, groups) == "fused")
    return LayerPlan(s, d.decision, "; ".join(d.reasons), d.weight_bits, d.act_bits, a_group, rot, d.weight_group,
                     d.weight_source, kernel, act_impl(impl, a_group, rot, s.k), "qlinear", fused)


def plan_layers(sites: list[LinearSite], cfg: QuantConfig, recipe, artifacts: list, example_inputs,
                impl: str, impl_reason: str) -> Plan:
    """One ``LayerPlan`` per site (same order): policy, then the recipe's overrides, then the kernel choice."""
    drafts = [_draft(s, cfg) for s in sites]
    ctx = PlanContext(drafts, cfg, list(artifacts), list(example_inputs))
    products = recipe.plan(ctx)
    consumers: dict = {}
    for d in drafts:
        if d.decision == "quantize":
            consumers[d.site.x] = consumers.get(d.site.x, 0) + 1
    layers = [_freeze(d, cfg, impl, consumers, products) for d in drafts]
    if products.smoothing is None and products.extras is None:   # their layers rescale x before quantizing
        layers = producer.assign(layers, cfg.fuse_norm)
        layers = producer.assign_gelu(layers, cfg.fuse_gelu)
        layers = producer.assign_attention(layers, cfg.fuse_attn)
    return Plan(layers, products, impl, impl_reason, cfg.act_variants)
