"""The Dynamo backend ``dvdquant`` (docs/architecture.md §2): options -> layer plan -> rewrite -> lowering ->
runtime wrapper.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml), so
``torch.compile(model, backend="dvdquant")`` works without importing this package. This module must not also call
``register_backend`` under the same name (Dynamo would raise "duplicate name"). Nothing here names a recipe: the
recipe plugin (``recipes/``) loads its artifacts and changes the plan.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import fx
from torch._guards import detect_fake_mode

from . import ops  # noqa: F401  (registers the dvdq ops)
from . import parallel
from .config import QuantConfig, recipe_for
from .errors import OptionError
from .kernels.dispatch import resolve
from .passes.find_linears import LinearSite, find_linears
from .passes.layer_names import frame_of
from .passes.model_checks import model_warnings
from .passes.plan import plan_layers
from .passes.rewrite import copy_graph, rewrite, weight_examples, weight_inputs
from .runtime.extras import ExtrasSource
from .runtime.graph import CompiledGraph
from .runtime.report import from_plan
from .state import STATE

log = logging.getLogger("dvdq_compile")

# diffusers' context-parallel hooks must be traceable before Dynamo traces a parallel model; this module is imported
# when torch.compile resolves backend="dvdquant", before any trace (parallel/compat.py)
parallel.compat.install()


def _input_named(gm: fx.GraphModule, names: tuple[str, ...], exact: bool = True) -> int | None:
    """Placeholder index of the tensor input passed as one of ``names`` (keyword or positional parameter name).
    Under dynamic shapes a size of that input is a placeholder too (source ``L['timestep'].size()[1]``): only
    tensor placeholders count."""
    for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if not isinstance(n.meta.get("example_value", torch.empty(())), torch.Tensor):
            continue
        ga = n.meta.get("grapharg")
        name = getattr(getattr(ga, "source", None), "name", "")
        src = name() if callable(name) else str(name)  # a method before torch 2.12, a property after
        for want in names:
            hit = src in (f"L['{want}']", f"L['kwargs']['{want}']") if exact else f"['{want}']" in src
            if hit or n.name in (f"l_kwargs_{want}_", f"l_{want}_"):
                return i
    return None


def _timestep_index(gm: fx.GraphModule) -> int | None:
    """Placeholder index of the ``timestep`` input (δ-GBS and step caching key their steps on it)."""
    return _input_named(gm, ("timestep",), exact=False)


LATENT_NAMES = ("hidden_states", "x", "sample", "latents")


def _latent_index(gm: fx.GraphModule) -> int | None:
    """Placeholder index of the latent input (step caching's input signal and residual reuse)."""
    return _input_named(gm, LATENT_NAMES)


def _device(sites: list[LinearSite], example_inputs) -> torch.device:
    """Where the graph's weights live (the kernels are chosen for it): the first parameter weight's device."""
    for s in sites:
        if s.is_param:
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


def _warn_once(owner, msg: str) -> None:
    seen = STATE.model(owner).setdefault("warned", set())
    if msg not in seen:
        seen.add(msg)
        log.warning("%s", msg)


def _compile(gm: fx.GraphModule, example_inputs, cfg: QuantConfig):
    t0 = time.perf_counter()
    recipe = recipe_for(cfg.recipe)
    artifacts = recipe.load_artifacts(cfg)
    frame = frame_of(gm, example_inputs)
    parallel.register(frame.owner)
    sites = find_linears(gm, example_inputs, frame)
    device = _device(sites, example_inputs)
    impl, why = resolve(cfg.kernels, device)
    plan = plan_layers(sites, cfg, recipe, artifacts, example_inputs, impl, why)
    msgs, mismatches = model_warnings(plan, cfg, frame)
    for msg in msgs:
        _warn_once(frame.owner, msg)
    weights = weight_inputs(plan, example_inputs, cfg)
    extras = plan.products.extras
    fake_mode = detect_fake_mode(example_inputs)
    examples = list(example_inputs) + weight_examples(weights, fake_mode) + _extras_examples(extras, fake_mode,
                                                                                              device)
    t_index = _timestep_index(gm)
    x_index = _latent_index(gm)
    if cfg.cache_policy.needs_input and x_index is None and t_index is not None:
        how = "residual" if cfg.cache_policy.residual else "output"
        raise OptionError(f"dvdquant option cache={cfg.cache!r} (reuse={how}) reads the model's latent input, but "
                          f"the compiled graph has no tensor input named one of {LATENT_NAMES}; use "
                          "cache='delta' with cache_reuse='output'")
    params = [i for i, t in enumerate(example_inputs) if isinstance(t, torch.nn.Parameter)]
    if weights:
        graphs = {bits: rewrite(gm, plan, weights, cfg, bits, t_index) for bits in cfg.act_variants}
    else:  # nothing to quantize in this graph: one plain variant
        graphs = {cfg.act_variants[-1]: copy_graph(gm)[0]}
    reads = frozenset().union(*(_param_reads(g, params) for g in graphs.values()))
    variants = {bits: _lower(g, examples, cfg) for bits, g in graphs.items()}
    report = from_plan(plan, example_inputs, cfg)
    report.compile_seconds = time.perf_counter() - t0
    log.info("%s", report.table() if log.isEnabledFor(logging.DEBUG) else report.summary())
    source = ExtrasSource(extras, weights) if extras is not None and extras.sites else None
    return CompiledGraph(variants, weights, cfg, report, t_index, params, checks=plan.products.checks,
                         extras=source, reads=reads, frame=frame, mismatches=mismatches,
                         row_locals={p.name: p.site.local for p in plan.layers}, plan=plan, input_index=x_index)


def _extras_examples(extras, fake_mode, device) -> list:
    if extras is None:
        return []
    if fake_mode is not None:
        with fake_mode:
            return _extras_examples(extras, None, device)
    return [torch.empty(e.shape, dtype=e.dtype, device=device) for e in extras.inputs]
