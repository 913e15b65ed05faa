"""The compile report: what the backend did with every linear, and the weight memory before/after.

Made from the layer plan (``from_plan``): every field is a plan's, nothing is decided here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch

from ..passes.plan import Plan
from ..quant.qweight import quantized_bytes


@dataclass
class LayerReport:
    name: str
    n: int
    k: int
    decision: str  # quantize | weight_only | skip
    reason: str
    weight_bits: int | None
    act_bits: str  # "4/8" (switched), "8", "16", "-"
    kernel: str  # triton | reference | "-" (full precision)
    bytes_before: int
    bytes_after: int
    mse: float | None = None  # weight MSE of the chosen quantizer (rotated basis), after quantization
    mse_minmax: float | None = None  # MinMax weight MSE on the same rotated weight
    freed: bool = False  # free_weights released its 16-bit storage
    # where its activation is quantized when not by a separate act_quant (passes/producer.py): "norm_modulate" (the
    # norm's kernel), "ffn_up_epilogue" (the FFN-up GEMM's epilogue), "attention_epilogue" (the attention kernel's);
    # an FFN-up doing that says "writes <layer>"
    act_producer: str = ""


def _producer_label(p) -> str:
    from ..passes.producer import AttentionOut, GeluOfLinear, NormModulate

    if isinstance(p.producer, NormModulate):
        return "norm_modulate"
    if isinstance(p.producer, AttentionOut):
        return "attention_epilogue"
    if isinstance(p.producer, GeluOfLinear):
        return "ffn_up_epilogue"
    return f"writes {p.epilogue}" if p.epilogue else ""


@dataclass
class CompileReport:
    layers: list[LayerReport] = field(default_factory=list)
    kernels: str = ""
    kernels_reason: str = ""
    variants: tuple = ()
    lowering: str = ""
    recipe: str = ""
    compile_seconds: float = 0.0
    graphs: int = 1
    freed_bytes: int = 0  # 16-bit weight storage released by free_weights
    warnings: list = field(default_factory=list)  # e.g. "nothing quantized" (runtime/model_report.problem)

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def count(self, decision: str) -> int:
        return sum(r.decision == decision for r in self.layers)

    def summary(self) -> str:
        return (f"dvdquant [{self.recipe}]: {len(self.layers)} linears: {self.count('quantize')} quantized, "
                f"{self.count('weight_only')} weight-only, {self.count('skip')} skipped; activation variants "
                f"{list(self.variants)}; kernels: {self.kernels} ({self.kernels_reason}); lowering {self.lowering}; "
                f"linear weights {self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB "
                f"({self.ratio:.3f}x)" + (f", 16-bit copies released: {self.freed_bytes / 2**20:.2f} MiB"
                                          if self.freed_bytes else "") +
                f"; compile {self.compile_seconds:.1f} s")

    def table(self) -> str:
        head = f"{'layer':<48} {'N':>6} {'K':>6} {'decision':<11} {'W':>2} {'A':>5} {'kernel':<9} " \
               f"{'bytes':>10} {'-> bytes':>10} {'mse/minmax':>10}  reason"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            rel = f"{r.mse / r.mse_minmax:.3f}" if r.mse is not None and r.mse_minmax else "-"
            lines.append(f"{r.name[-48:]:<48} {r.n:>6} {r.k:>6} {r.decision:<11} {r.weight_bits or '-':>2} "
                         f"{r.act_bits:>5} {r.kernel:<9} {r.bytes_before:>10} {r.bytes_after:>10} {rel:>10}  "
                         f"{r.reason}")
        lines.append(self.summary())
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(bytes_before=self.bytes_before, bytes_after=self.bytes_after, ratio=self.ratio)
        return d

    def __str__(self) -> str:
        return self.table()


def from_plan(plan: Plan, example_inputs, cfg) -> CompileReport:
    """The report of one compiled graph: a row per planned linear, its weight bytes before and after (the
    quantized weight, plus the artifact tensors it reads: a 16-bit branch and tables are memory too)."""
    spec = cfg.weight_spec()
    variants = "/".join(map(str, plan.variants))
    extras = plan.products.extras
    rows = []
    for p in plan.layers:
        s = p.site
        w = example_inputs[s.w_index] if s.w_index is not None else (
            s.w.meta.get("example_value") if s.w is not None else None)
        before = s.n * s.k * (w.element_size() if isinstance(w, torch.Tensor) else 2)
        after = before
        if p.quantized:
            after = quantized_bytes(s.n, s.k, dataclasses.replace(spec, bits=p.weight_bits, group=p.weight_group))
            if extras is not None and p.name in extras.sites:
                after += sum(math.prod(e.shape) * e.dtype.itemsize for e in extras.inputs if e.site == p.name)
        act = {"weight_only": "16", "skip": "-"}.get(p.decision, str(p.act_bits or variants))
        rows.append(LayerReport(name=p.name, n=s.n, k=s.k, decision=p.decision, reason=p.reason,
                                weight_bits=p.weight_bits, act_bits=act, kernel=p.kernel, bytes_before=before,
                                bytes_after=after, act_producer=_producer_label(p)))
    return CompileReport(layers=rows, kernels=plan.impl, kernels_reason=plan.impl_reason, variants=plan.variants,
                         lowering=cfg.lowering, recipe=cfg.recipe)
