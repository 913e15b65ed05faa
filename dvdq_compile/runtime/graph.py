"""What the backend returns: a callable that feeds cached quantized weights to the lowered variants.

On each call: map the runtime weight arguments to their quantized tensors (``CACHE``, keyed by parameter identity
and ``_version``), ask the δ controller which activation variant runs (one decision per denoising step, keyed by the
``timestep`` input), run it, and hand the output back to the controller (docs/architecture.md §2, §7).
"""
from __future__ import annotations

import logging
import weakref
from typing import Callable

import torch

from ..config import QuantConfig
from ..errors import FreedWeightError
from ..identity import IdentityMap
from ..passes.owner import find_owner, name_of
from ..state import STATE
from . import coverage, free
from .cache import CACHE
from .delta import DeltaController
from .registry import graphs_of
from .report import CompileReport
from .step_cache import REUSE

log = logging.getLogger("dvdq_compile")


class CompiledGraph:
    def __init__(self, variants: dict[int, Callable], weights, cfg: QuantConfig, report: CompileReport,
                 timestep_index: int | None, param_indices: list[int], checks=(), extras=None,
                 reads: frozenset = frozenset(), frame=None, mismatches: dict | None = None,
                 row_locals: dict | None = None, plan=None, input_index: int | None = None):
        self.variants = variants
        self.plan = plan  # passes.plan.Plan: the layer plans the variants were rewritten from
        self.weights = weights
        self.cfg = cfg
        self.report = report
        self.timestep_index = timestep_index
        self.input_index = input_index  # the latent input (hidden_states): step caching's signal and residual
        self.cache = cfg.cache_policy
        self._whole = IdentityMap()  # first parameter of a model -> whether the model runs as this one graph
        self._specs = [w.spec for w in weights]
        self._names = [", ".join(w.layers) for w in weights]
        self._pre_scales = [w.pre_scale for w in weights] if any(w.pre_scale is not None for w in weights) else None
        self.checks = list(checks)  # artifacts every model bound must match (on its smoothed weights)
        self.extras = extras  # runtime.extras.ExtrasSource: per-model artifact tensors (svdquant_gptq_ts, ...)
        self._cached = [i for i, w in enumerate(weights) if w.source != "artifact"]
        self.param_indices = param_indices  # graph inputs that are nn.Parameters
        # parameter inputs the lowered graph still reads (full-precision layers, other uses): never freed here,
        # and a call with one of them freed (by another graph) raises instead of reading released memory.
        self.reads = reads
        # first parameter of a model -> free.epoch() when its weights were last freed / its reads last checked
        self._freed_at = IdentityMap()
        self._checked_at = IdentityMap()
        # first parameter input -> {input index: weakref(param)}: which models ran through this graph.
        self.bound = IdentityMap()
        self.controllers = IdentityMap()  # first weight parameter of a model -> its controller
        self._warned_grad = False
        self.calls = {b: 0 for b in variants}
        if self.cache.on:
            self.calls[REUSE] = 0
        # layer names (passes/layer_names.py): per frame local, the prefix of the instance the graph was traced for
        # and an anchor parameter that gives any other bound instance's prefix; each report row's local
        self.prefixes = dict(frame.prefix) if frame is not None else {}
        self.anchors = dict(frame.anchors) if frame is not None else {}
        self.row_locals = dict(row_locals or {})
        self.mismatches = mismatches or {}  # other instance's layer -> (its own decision, why): see model_report
        self.owners = IdentityMap()  # first parameter input -> weakref to its model
        if frame is not None and frame.owner is not None and param_indices:
            self._compile_owner = weakref.ref(frame.owner)
        else:
            self._compile_owner = None
        # creation order: STATE.graphs is a WeakSet (iteration order follows addresses), and a model compiled again
        # with other options must be reported with its newest graph.
        self.serial = next(STATE.serial)
        STATE.graphs.add(self)

    # -- δ controller per model (two experts sharing this graph get one each unless shared) ------------------
    def controller_for(self, key_param: torch.Tensor):
        c = self.cfg
        if len(self.variants) > 1:
            settings = dict(delta=c.delta, low=c.act_bits_low, high=c.act_bits_high,
                            min_high_steps=c.min_high_steps, mode=c.delta_mode, cache=self.cache)
        else:  # one variant (fixed bits) with step caching: the controller only decides compute / reuse
            (bits,) = self.variants
            settings = dict(delta=c.delta, low=bits, high=bits, min_high_steps=c.min_high_steps, mode="high",
                            cache=self.cache)
        group = STATE.parallel_groups.get(key_param)
        shared = STATE.shared_controllers.get(key_param)
        if shared is not None:
            shared.fit(**settings)
            shared.group = group if group is not None else shared.group
            return shared
        ctrl = self.controllers.get(key_param)
        if ctrl is None:
            ctrl = DeltaController(**settings)
            ctrl.group = group
            self.controllers[key_param] = ctrl
        return ctrl

    def _check_artifacts(self, params) -> None:
        """A graph shared by several models (Wan 2.2's experts) must not apply one model's calibration to
        another: the artifact's per-layer weight fingerprints must match every model that runs through it."""
        for w, p in zip(self.weights, params):
            if w.pre_scale is not None:
                for name in w.layers:
                    for art in self.checks:
                        art.check(name, p)

    def _free(self, params) -> None:
        """Release the storage of this model's quantized weights (their quantized copies are cached now)."""
        total = 0
        for w, p, name in zip(self.weights, params, self._names):
            if w.arg_index not in self.reads:
                total += free.free(p, name)
        if total:
            log.info("dvdquant free_weights: released %.1f MiB of 16-bit weights", total / 2**20)
        self._freed_at[params[0]] = free.epoch()

    def _check_reads(self, args) -> None:
        key = args[self.param_indices[0]]
        if self._checked_at.get(key) == free.epoch():
            return
        for i in sorted(self.reads):
            info = free.info(args[i])
            if info is not None:
                raise FreedWeightError(free.message(info.name, "a compiled graph that keeps this weight in "
                                                                    "full precision (other options, or a layer "
                                                                    "this graph does not quantize)"))
        self._checked_at[key] = free.epoch()

    def __call__(self, *args):
        args = list(args)
        extra: list[torch.Tensor] = []
        tail: list[torch.Tensor] = []
        if self.weights:
            params = [args[w.arg_index] for w in self.weights]
            if self.checks and args[self.param_indices[0]] not in self.bound:
                self._check_artifacts(params)
            triples: dict[int, tuple] = {}
            if self.extras is not None:
                got, tail = self.extras.tensors(args, args[self.param_indices[0]])
                triples = dict(got)  # the source's per-model dict stays as it is
            idx = self._cached
            pre = [self._pre_scales[i] for i in idx] if self._pre_scales is not None else None
            qws = CACHE.get_many([params[i] for i in idx], [self._specs[i] for i in idx],
                                 [self._names[i] for i in idx], self.cfg.progress, pre,
                                 bgr_impl="reference" if self.cfg.kernels == "reference" else "auto")
            triples.update({i: q.tensors() for i, q in zip(idx, qws)})
            for i in range(len(self.weights)):
                extra += triples[i]
            extra += tail
            if self.cfg.free_weights and self._freed_at.get(params[0]) != free.epoch():
                self._free(params)
        if STATE.freed.nonempty() and self.reads and self.param_indices:
            self._check_reads(args)
        key = args[self.param_indices[0]] if self.param_indices else None
        if key is not None and key not in self.bound:
            self.bound[key] = {i: weakref.ref(args[i]) for i in self.param_indices}
            self.owners[key] = self._owner_of(key)
        if torch.is_grad_enabled() and not self._warned_grad and \
                any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            self._warned_grad = True
            log.warning("dvdquant is inference-only: the compiled model runs under no_grad and its outputs carry "
                        "no autograd history (call it under torch.no_grad() to silence this)")
        ctrl = x = model = None
        if len(self.variants) > 1 or self.cache.on:
            model = args[self.weights[0].arg_index] if self.weights else key
        if (len(self.variants) > 1 or self.cache.on) and model is not None:
            ctrl = self.controller_for(model)
            t = args[self.timestep_index] if self.timestep_index is not None else None
            x = args[self.input_index] if self.input_index is not None else None
            bits = ctrl.begin_call(t, x=x, model=model, can_reuse=lambda: self._whole_model(key, ctrl))
        else:
            (bits,) = self.variants
        self.calls[bits] += 1
        if bits == REUSE:
            out = ctrl.reuse_call(x)
        else:
            with torch.no_grad():
                out = self.variants[bits](*args, *extra)  # unboxed, as Dynamo calls it
            if ctrl is not None:
                ctrl.end_call(out, x=x, model=model)
        if key is not None:
            ref = self.owners.get(key)
            coverage.after_call(self, key, ref() if ref is not None else None)
        return out

    def _whole_model(self, key, ctrl) -> bool:
        """Whether the model is this one graph (so skipping this call skips the whole transformer call). A model
        that runs as several compiled graphs (graph breaks, blocks compiled as frames) cannot skip a step from
        one of them: it computes every step, and the controller's summary says why (warned once)."""
        if key is None:
            return True
        got = self._whole.get(key)
        if got is None:
            ref = self.owners.get(key)
            owner = ref() if ref is not None else None
            n = len(graphs_of(owner)) if owner is not None else 1
            got = n <= 1
            if not got:
                ctrl.cache_blocked = f"the model runs as {n} compiled graphs"
                log.warning("dvdquant cache=%r: %s runs as %d compiled graphs (graph breaks or blocks compiled as "
                            "their own frames), so no step can be skipped from one of them: every step is "
                            "computed. Compile with fullgraph=True (or remove the breaks) to use step caching.",
                            self.cache.rule, type(owner).__name__, n)
            self._whole[key] = got
        return got

    def _owner_of(self, key: torch.Tensor):
        """A weakref to the model ``key`` belongs to (the compile's owner, else found on the call stack)."""
        owner = self._compile_owner() if self._compile_owner is not None else None
        if owner is None or name_of(owner, key) is None:
            owner = find_owner(key)
        return weakref.ref(owner) if owner is not None else None
