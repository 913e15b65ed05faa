"""The Dynamo backend ``dvdquant``: options -> passes -> lowering -> runtime wrapper (DESIGN §3).

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml), so
``torch.compile(model, backend="dvdquant")`` works without importing this package. This module must not also call
``register_backend`` under the same name (Dynamo would raise "duplicate name").
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import re
import time

import torch
from torch import fx
from torch._guards import detect_fake_mode

from . import ops  # noqa: F401  (registers the dvdq ops)
from .calibrate import Calibration, as_calibration
from .codegen.dispatch import resolve
from .config import QuantConfig
from .errors import OptionError
from .passes.extras import plan_extras
from .passes.find_linears import LinearSite, find_linears, shared_frame_mismatches
from .passes.layer_names import frame_of
from .passes.owner import remembered
from .passes.rewrite import (
    QUANTIZED,
    assign_impls,
    copy_graph,
    rewrite,
    weight_examples,
    weight_inputs,
)
from .passes.smooth import plan_smoothing
from .quant.qweight import quantized_bytes
from .runtime.extras import ExtrasSource
from .runtime.graph import CompiledGraph
from .runtime.report import CompileReport, LayerReport

log = logging.getLogger("dvdq_compile")


def _timestep_index(gm: fx.GraphModule) -> int | None:
    """Placeholder index of the ``timestep`` input when the model is called with keywords (as pipelines do)."""
    for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        ga = n.meta.get("grapharg")
        name = getattr(getattr(ga, "source", None), "name", "")
        src = name() if callable(name) else str(name)  # a method before torch 2.12, a property after
        if "['timestep']" in src or n.name in ("l_kwargs_timestep_", "l_timestep_"):
            return i
    return None


def _device(sites: list[LinearSite], example_inputs) -> torch.device:
    for s in sites:
        if s.decision in QUANTIZED:
            return example_inputs[s.w_index].device
    return torch.device("cpu")


def _param_reads(gm: fx.GraphModule, params: list[int]) -> frozenset:
    """Indices of the parameter inputs that ``gm`` still uses (free_weights must keep them)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return frozenset(i for i in params if placeholders[i].users)


def _config(options: dict | None, mode: str | None) -> QuantConfig:
    """Options plus ``torch.compile(mode=...)``: torch.compile passes a backend one or the other, never both, so
    the mode can also come as the ``mode`` option; given both ways they must agree."""
    options = dict(options or {})
    if mode is not None:
        if options.get("mode", mode) != mode:
            raise OptionError(f"dvdquant: torch.compile mode={mode!r} and option mode={options['mode']!r} disagree")
        options["mode"] = mode
    return QuantConfig.from_options(options)


def _lower(gm: fx.GraphModule, example_inputs: list, cfg: QuantConfig):
    if cfg.lowering == "eager":
        return gm
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = list_mode_options(cfg.mode) if cfg.mode else {}
    with torch.no_grad():
        return compile_fx(gm, example_inputs, config_patches=patches)


def _report(sites, example_inputs, cfg: QuantConfig, impl: str, why: str) -> CompileReport:
    spec = cfg.weight_spec()
    act = "/".join(map(str, cfg.act_variants))
    rows = []
    for s in sites:
        w = example_inputs[s.w_index] if s.w_index is not None else s.w.meta.get("example_value")
        before = s.n * s.k * (w.element_size() if isinstance(w, torch.Tensor) else 2)
        q = s.decision in QUANTIZED
        sp = dataclasses.replace(spec, bits=s.wbits(cfg))
        rows.append(LayerReport(
            name=s.name, n=s.n, k=s.k, decision=s.decision, reason=s.reason,
            weight_bits=sp.bits if q else None,
            act_bits=("16" if s.decision == "weight_only" else str(s.act_bits or act)) if q else "-",
            kernel=s.impl,
            bytes_before=before, bytes_after=quantized_bytes(s.n, s.k, sp) if q else before))
    return CompileReport(layers=rows, kernels=impl, kernels_reason=why, variants=cfg.act_variants,
                         lowering=cfg.lowering, recipe=cfg.recipe)


def dvdquant(gm: fx.GraphModule, example_inputs, **kwargs):
    """Dynamo backend entry point: ``backend(gm, example_inputs, mode=..., options=...)``.

    A ``ValueError`` here is the user's to fix (an option, or an artifact that does not fit the model or the
    options): it reaches the caller as an ``OptionError``, not wrapped in Dynamo's ``BackendCompilerFailed``."""
    unknown = set(kwargs) - {"options", "mode"}
    if unknown:
        raise TypeError(f"dvdquant backend got unexpected arguments {sorted(unknown)}")
    try:
        return _compile(gm, example_inputs, _config(kwargs.get("options"), kwargs.get("mode")))
    except OptionError:
        raise
    except ValueError as e:
        raise OptionError(str(e)) from e


def _compile(gm: fx.GraphModule, example_inputs, cfg: QuantConfig):
    t0 = time.perf_counter()
    frame = frame_of(gm, example_inputs)
    sites = find_linears(gm, example_inputs, cfg, frame)
    mismatches = _check_owner(sites, cfg, frame)
    impl, why = resolve(cfg.kernels, _device(sites, example_inputs))
    extras = None
    if cfg.svdquant or cfg.qvdit:  # before assign_impls: an artifact weight's grouping and bits decide its kernel
        extras = plan_extras(sites, example_inputs, _artifacts(cfg))
    assign_impls(sites, cfg, impl)
    cal, smooth_x, smooth_w = None, {}, {}
    if cfg.smooth:
        cal = as_calibration(cfg.artifact)
        smooth_x, smooth_w = plan_smoothing(sites, example_inputs, cfg, cal)
    weights = weight_inputs(sites, example_inputs, cfg, smooth_w, extras)
    fake_mode = detect_fake_mode(example_inputs)
    examples = list(example_inputs) + weight_examples(weights, fake_mode) + _extras_examples(extras, fake_mode,
                                                                                              _device(sites,
                                                                                                      example_inputs))
    t_index = _timestep_index(gm)
    params = [i for i, t in enumerate(example_inputs) if isinstance(t, torch.nn.Parameter)]
    if weights:
        graphs = {bits: rewrite(gm, sites, weights, cfg, bits, impl, smooth_x, extras, t_index)
                  for bits in cfg.act_variants}
    else:  # nothing to quantize in this graph: one plain variant
        graphs = {cfg.act_variants[-1]: copy_graph(gm)[0]}
    reads = frozenset().union(*(_param_reads(g, params) for g in graphs.values()))
    variants = {bits: _lower(g, examples, cfg) for bits, g in graphs.items()}
    report = _report(sites, example_inputs, cfg, impl, why)
    if extras is not None:  # the 16-bit branch and tables are memory too
        for row in report.layers:
            if row.name in extras.sites:
                row.bytes_after += sum(math.prod(e.shape) * e.dtype.itemsize for e in extras.inputs
                                       if e.site == row.name)
    report.compile_seconds = time.perf_counter() - t0
    log.info("%s", report.table() if log.isEnabledFor(logging.DEBUG) else report.summary())
    source = ExtrasSource(extras, weights) if extras is not None and extras.sites else None
    return CompiledGraph(variants, weights, cfg, report, t_index, params, calibration=cal, extras=source,
                         reads=reads, frame=frame, mismatches=mismatches,
                         row_locals={s.name: s.local for s in sites})


_WARNED_NO_OWNER: set[str] = set()


def _warn_once(owner, msg: str) -> None:
    seen = remembered(owner).setdefault("warned", set()) if owner is not None else _WARNED_NO_OWNER
    if msg not in seen:
        seen.add(msg)
        log.warning("%s", msg)


def _check_owner(sites: list[LinearSite], cfg: QuantConfig, frame) -> dict:
    """Compile-time warnings about the model as a whole (once per model and message); returns the layers of other
    instances of a submodule compiled as its own frame that would decide otherwise (see the report)."""
    owner = frame.owner
    if owner is None:
        return {}
    model = type(owner).__name__
    names = [n for n, _ in owner.named_modules()]
    for option in ("exclude", "include", "weight_only"):
        for pat in getattr(cfg, option):
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                _warn_once(owner, f"dvdquant option {option}: pattern {pat!r} matches no module of {model} (module "
                                  f"names look like {names[1:4] if len(names) > 1 else names})")
    if sites and not any(s.decision in QUANTIZED for s in sites) and not cfg.include and \
            not any(re.search(cfg.block_pattern, n) for n in names):
        _warn_once(owner, f"dvdquant: {model} has no module whose name matches block_pattern "
                          f"{cfg.block_pattern!r}, so none of its linears is quantized; pass options={{'include': "
                          f"['*']}} (every linear) or a block_pattern that matches its blocks")
    out = {}
    for name, decision, why in shared_frame_mismatches(sites, cfg, frame):
        out[name] = (decision, why)
    if out:
        first = next(iter(out))
        _warn_once(owner, f"dvdquant: {len(out)} layer(s) of {model} run a graph Dynamo compiled for another "
                          f"instance of the same module after a graph break, whose decision differs from their own "
                          f"(e.g. {first}: own decision {out[first][0]}, {out[first][1]}); options that single out "
                          "one instance need the whole model in one graph (fullgraph=True)")
    return out


def _artifacts(cfg: QuantConfig) -> list:
    """The ``artifact`` option as a list of Calibrations / qvdit artifacts (one per model/expert sharing the
    compiled graph)."""
    arts = cfg.artifact if isinstance(cfg.artifact, (list, tuple)) else [cfg.artifact]
    if cfg.qvdit:
        return [_qvdit_artifact(a, cfg) for a in arts]
    out = [as_calibration(a) for a in arts]
    for c in out:
        ag = (c.meta.get("config") or {}).get("act_group")
        if ag is not None and ag != cfg.group:
            raise OptionError(f"dvdquant option group={cfg.group} differs from the activation group {ag} the artifact "
                             f"{c.meta.get('path', '(in memory)')} was calibrated (clip ratios searched) with")
    return out


def _qvdit_artifact(a, cfg: QuantConfig):
    from .qvdit.artifact import QVDiTArtifact

    if not isinstance(a, QVDiTArtifact):
        if isinstance(a, Calibration):
            raise OptionError("dvdquant recipe 'qvdit' takes qvdit artifacts (python -m dvdq_compile.qvdit.train, "
                             "QVDiTArtifact.save), got a calibration (made by dvdq_compile.calibrate*)")
        a = QVDiTArtifact.load(a)
    c = a.cfg
    if (c.weight_bits, c.act_bits) != (cfg.weight_bits, cfg.act_bits):
        raise OptionError(f"dvdquant options weight_bits={cfg.weight_bits}, act_bits={cfg.act_bits} differ from the "
                         f"qvdit artifact {a.meta.get('path', '(in memory)')} trained at {c.label}; its estimator "
                         "only holds at those bits: pass "
                         f"options={{'weight_bits': {c.weight_bits}, 'act_bits': {c.act_bits}}}")
    if not c.act_sym:
        raise OptionError(f"dvdquant recipe 'qvdit': the artifact {a.meta.get('path', '(in memory)')} was trained with "
                         "asymmetric activations (act_sym=False), which the integer kernels do not run")
    return a


def _extras_examples(extras, fake_mode, device) -> list:
    if extras is None:
        return []
    if fake_mode is not None:
        with fake_mode:
            return _extras_examples(extras, None, device)
    return [torch.empty(e.shape, dtype=e.dtype, device=device) for e in extras.inputs]
