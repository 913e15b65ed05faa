"""Compile one tiny diffusers video transformer with ``backend="dvdquant"``, under ``fullgraph=True`` and under the
default ``torch.compile``, and say what happened (used by ``tests/models/test_catalog.py`` and
``bench/models.py``)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

import dvdq_compile
from dvdq_compile.backend import dvdquant
from dvdq_compile.runtime.model_report import NOT_COMPILED
from tests.helpers import quantized_reference

from . import TinySpec

# W8A8 with MinMax weights: the survey checks which layers are quantized and that the output stays close; BGR's
# grid search at 8 bits would cost a minute per model on CPU and change nothing it measures
OPTIONS = {"weight_bits": 8, "act_bits": 8, "weight_method": "minmax", "lowering": "eager", "kernels": "reference",
           "progress": False}


@dataclass
class Compiled:
    ok: bool
    error: str = ""
    graphs: int = 0  # graphs Dynamo handed the backend (1 = no graph break)
    quantized: frozenset = frozenset()  # layers with 4/8-bit weights (quantize + weight_only)
    counts: dict = field(default_factory=dict)  # decision -> layers
    rel_err: float | None = None  # vs the full-precision output
    ref_err: float | None = None  # vs the quant reference composed over the layers it quantized (tests/helpers.py)
    warnings: list = field(default_factory=list)
    not_compiled: frozenset = frozenset()  # linears no graph covered (ran eagerly, or never called)


@dataclass
class Survey:
    name: str
    linears: int
    block_linears: frozenset  # linears inside the spec's block lists (what the layer policy should recognise)
    fullgraph: Compiled
    default: Compiled
    seconds: float = 0.0


def _first(out) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return getattr(out, "sample", out)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def compile_once(model, inputs, fullgraph: bool, ref: torch.Tensor, options: dict | None = None) -> Compiled:
    """``inputs()`` makes the forward kwargs anew for every call (same seed, same values): some hold state a forward
    changes (WanAnimate2's KV cache)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(1)
        return dvdquant(gm, example_inputs, options={**OPTIONS, **(options or {})})

    log = logging.getLogger("dvdq_compile")
    handler = _Collect()
    log.addHandler(handler)
    torch._dynamo.reset()
    try:
        c = torch.compile(model, backend=backend, fullgraph=fullgraph)
        with torch.no_grad():
            y = _first(c(**inputs()))
            _first(c(**inputs()))  # a second forward: the coverage check runs at its start
    except Exception as e:  # noqa: BLE001  (reported, not raised: the table lists every model)
        return Compiled(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}", graphs=len(graphs))
    finally:
        log.removeHandler(handler)
    rep = dvdq_compile.report(model)
    counts = {d: rep.count(d) for d in ("quantize", "weight_only", "skip")}
    quantized = frozenset(r.name for r in rep.layers if r.decision in ("quantize", "weight_only"))
    weight_only = [r.name for r in rep.layers if r.decision == "weight_only"]
    composed = quantized_reference(model, sorted(quantized), weight_only=weight_only, wbits=OPTIONS["weight_bits"],
                                   act_bits=OPTIONS["act_bits"], method=OPTIONS["weight_method"])
    with torch.no_grad():
        want = _first(composed(**inputs()))
    return Compiled(ok=True, graphs=len(graphs), quantized=quantized, counts=counts, rel_err=_rel(y, ref),
                    ref_err=_rel(y, want), warnings=handler.messages,
                    not_compiled=frozenset(r.name for r in rep.layers if r.reason == NOT_COMPILED))


def survey(name: str, spec: TinySpec, options: dict | None = None) -> Survey:
    t0 = time.perf_counter()
    model = spec.build()
    inputs = spec.inputs
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    in_blocks = frozenset(n for n in linears if any(n.startswith(b + ".") for b in spec.blocks))
    with torch.no_grad():
        ref = _first(model(**inputs()))
    full = compile_once(model, inputs, True, ref, options)
    default = compile_once(model, inputs, False, ref, options)
    return Survey(name, len(linears), in_blocks, full, default, time.perf_counter() - t0)
