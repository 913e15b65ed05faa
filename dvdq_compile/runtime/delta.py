"""δ-guided bit switching (δ-GBS): the per-denoising-step A4/A8 controller (docs/algorithms.md §3).

One decision per denoising step for the whole network. With ``F_t`` the transformer output at step ``t``::

    L1_t = ‖F_t − F_{t−1}‖₁ / ‖F_{t−1}‖₁                 (undefined on the first step: counts as +inf)
    bits_t = low  if acc < δ  else high                     (acc = Σ L1 since the last high step)
    after step t:  acc = L1_t           if bits_t == high   (a high step resets the sum; undefined -> +inf)
                   acc = acc + L1_t     otherwise

so, for a run whose output changes by exactly 0.05 per step and δ = 0.09, the bits are
A8 (step 0: first step), A8 (acc = +inf: no L1 yet), A4 (0.05), A8 (0.10), A4 (0.05), A8 (0.10), …
The first ``min_high_steps`` steps of every run are high whatever the accumulator says.

Use from a runtime wrapper (what ``runtime/graph.py`` does)::

    bits = ctrl.begin_call(timestep)     # decides; on a new step it first finalizes the previous step's L1
    out = variants[bits](*args)
    ctrl.end_call(out)                   # records this call's output (a tuple/list: its first tensor)

Steps
    A new step is recognised by a change of the ``timestep`` value, so every call within a step gets the same
    bits. The timestep may be a python number, a 0-d/1-d tensor (a batch of equal values) or a per-token tensor
    (Wan 2.2 TI2V, ``[B, tokens]``, first-frame tokens at 0): it is reduced to one float key, its **max**.
    Consecutive calls with an equal key are one step. ``begin_call(None)`` joins the current step; call
    :meth:`DeltaController.step` to mark a step boundary when you drive the controller by hand (e.g. a model
    whose timestep input the backend could not find); ``step(t)`` also records ``t`` for the trace.

New sampling run
    The timestep jumping *up* (larger than the previous step's key: the schedules of diffusers video pipelines
    decrease) or an explicit :meth:`reset` starts a new run: previous outputs are dropped, the accumulator goes
    back to +inf, the step index to 0; the trace is kept and its rows carry the run index.

CFG: which output is used
    The wrapper never sees the guided prediction (it is formed by the pipeline after both calls), so the
    controller keeps the output of every call *index* within a step: call 0, call 1, … (Wan: cond then uncond;
    CogVideoX: one batched call whose output holds both halves). The step's L1 is the **mean over call indices j**
    of ``‖F_t^j − F_{t−1}^j‖₁ / ‖F_{t−1}^j‖₁``, over the j present in both steps with the same shape (none: the L1
    is undefined and counts as +inf). The paper's L1 is on the guided prediction for true-CFG Wan; the
    per-call mean is the closest signal visible from inside the compiled model, and with one batched call it is
    exactly the paper's whole-output L1.

Host syncs
    When a call ends, the L1 numerator ``‖F−P‖₁`` and the new denominator ``‖F‖₁`` are computed on the output's
    device in fp32 (no sync). They are read on the host only when a decision needs them, together with the
    timestep key in one ``tolist()``: at most one host read per step. A timestep tensor is re-read only if it is
    not the one read last (same storage/address, shape, stride, dtype and ``_version``; a strong reference keeps
    that address from being reused): Wan passes the same ``timestep`` tensor to its cond and uncond calls, so the
    second call costs no sync. Python-number timesteps cost nothing to read.

Memory
    One previous output per call index is kept: a detached clone (so in-place edits of the returned output or
    reused output buffers, e.g. CUDA graphs, cannot change it), in the output's own dtype and device.

Step caching (``cache=...``, ``runtime/step_cache.py``)
    With a cache policy on, a step can also be **reused**: no call runs, every call index gets the output of the
    last computed step (plus the input's change with ``reuse='residual'``; moved on linearly in the timestep from
    the last two computed steps with ``reuse='extrapolate'``), and the trace records bits 0 ('R' in
    the pattern). Reused steps leave the δ accumulator alone; the next computed step's L1 is measured against the
    last computed output, so it spans the reused steps. The first calls of a step decide for all of them (both
    CFG calls are reused or computed together). The cache signals are read with the timestep: still one host read
    per step.

Two models (the two experts of Wan 2.2)
    By default every compiled model gets its own controller. To make both experts share one, pass the same
    instance to both runtimes (``dvdq_compile.share_controller(pipe.transformer, pipe.transformer_2)``); a
    controller holds no per-model state, so sharing is just using one object. Wan 2.2 switches expert at a
    boundary timestep: a shared controller sees one continuous decreasing step sequence (the first low-noise
    step compares its output with the high-noise expert's last one); separate controllers each see their own
    part, and the low-noise expert's controller starts a fresh run (A8 first) at the boundary.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch

from .step_cache import REUSE, CachePolicy

__all__ = ["DeltaController", "StepRecord", "SUPPORTED_BITS", "DELTA_MODES", "bits_pattern"]

SUPPORTED_BITS = (3, 4, 5, 6, 7, 8)  # activation bit widths the kernels support (= quant.act.ACT_BITS)
DELTA_MODES = ("switch", "low", "high")
INF = math.inf


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"DeltaController option {name}={value!r} is not allowed; expected {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


GROUP_CALLS = 8  # call indices per step summed over a process group (CFG: 2 per expert)


def _ratio(n: float, d: float) -> float:
    """A relative L1 ``n / d`` read on the host: 0 for 0/0, +inf for x/0, NaN stays NaN."""
    return n / d if d > 0 else (0.0 if n == 0 else (math.nan if math.isnan(n) else INF))


def _host_read(t: torch.Tensor) -> list[float]:
    """The controller's only device->host read (tests count calls to this)."""
    return t.tolist()


@dataclass(frozen=True)
class StepRecord:
    """One denoising step as the controller saw it.

    ``l1``: relative L1 change of this step's output w.r.t. the previous step (mean over call indices); None
    when undefined (first step of a run, no comparable previous output) and, for the step in progress, the
    value over the calls that have ended so far. ``acc``: the accumulator the decision was taken on (+inf: no
    reference since the last reset). ``calls``: how many model calls the step had.
    """

    run: int
    step: int
    timestep: float | None
    l1: float | None
    acc: float
    bits: int  # 0: reused (step caching)
    calls: int
    est: float | None = None  # step caching: the rule's estimated change for this step (None: not estimated)


class _Row:
    __slots__ = ("run", "step", "timestep", "acc", "bits", "calls", "l1s", "pending", "est")

    def __init__(self, run: int, step: int, timestep: float | None, acc: float, bits: int):
        self.run, self.step, self.timestep, self.acc, self.bits = run, step, timestep, acc, bits
        self.calls = 0
        self.est: float | None = None
        # call index -> host L1; call index -1: the latent input's change since the last computed step
        self.l1s: dict[int, float] = {}
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (call index, num, den) on device

    def l1(self) -> float | None:
        vals = [v for j, v in self.l1s.items() if j >= 0]
        if not vals:
            return None
        return sum(vals) / len(vals)

    def record(self) -> StepRecord:
        return StepRecord(self.run, self.step, self.timestep, self.l1(), self.acc, self.bits, self.calls, self.est)


class DeltaController:
    """Per-denoising-step activation bit choice (δ-GBS); see the module docstring for the exact semantics.

    ``mode``: ``"switch"`` (δ-guided), ``"low"`` / ``"high"`` (force every step to ``low`` / ``high`` bits; L1 and
    the accumulator are still traced, e.g. to pick δ from an all-A8 run).
    """

    def __init__(self, delta: float = 0.09, low: int = 4, high: int = 8, min_high_steps: int = 1,
                 mode: str = "switch", adopt: bool = False, cache: CachePolicy | None = None):
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not math.isfinite(delta) \
                or delta <= 0:
            _fail("delta", delta, "a finite number > 0 (threshold on the accumulated relative L1 change)")
        fixed = mode in ("low", "high") and low == high  # one compiled variant (e.g. W4A8 or weight-only + cache)
        for name, v in (("low", low), ("high", high)):
            if not _is_int(v) or (v not in SUPPORTED_BITS and not (fixed and v == 16)):
                _fail(name, v, f"an activation bit width in {SUPPORTED_BITS}")
        if low > high or (low == high and not fixed):
            raise ValueError(f"DeltaController options low={low!r}, high={high!r} are not allowed; expected "
                             f"low < high, both in {SUPPORTED_BITS} (equal only with mode 'low' or 'high')")
        if not _is_int(min_high_steps) or min_high_steps < 1:
            _fail("min_high_steps", min_high_steps, "an int >= 1 (steps that always run high bits at the start "
                                                    "of a sampling run)")
        if not isinstance(mode, str) or mode not in DELTA_MODES:
            _fail("mode", mode, f"one of {DELTA_MODES}")
        if cache is not None and not isinstance(cache, CachePolicy):
            _fail("cache", cache, "None or a dvdq_compile.runtime.step_cache.CachePolicy")
        self.delta = float(delta)
        self.low = int(low)
        self.high = int(high)
        self.min_high_steps = int(min_high_steps)
        self.mode = mode
        # adopt=True (dvdq_compile.share_controller without a controller): take the settings of the first compiled
        # graph that uses it (its delta, bits, min_high_steps, mode) instead of these defaults
        self.adopt = adopt
        self._rows: list[_Row] = []
        self._run = -1  # run index of the last step started (incremented when a run's first step starts)
        self._new_run = True  # the next step starts a run
        self._boundary = False  # step() was called: the next begin_call starts a step
        self._boundary_ts: float | None = None
        self._prev: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # call index -> (output clone, ‖out‖₁)
        self._acc = INF
        self._row: _Row | None = None  # the step in progress
        self._call: int | None = None  # call index of the open call (between begin_call and end_call)
        self._ts_tensor: torch.Tensor | None = None  # the timestep tensor read last (kept alive on purpose)
        self._ts_sig: tuple | None = None
        self._ts_key: float | None = None
        # step caching
        self.cache = cache if cache is not None else CachePolicy()
        self.cache_blocked: str | None = None  # why reuse is impossible for this model (set by the wrapper)
        # call index -> (model key, output clone, input clone or None, timestep); _kept_prev: the computed step
        # before (reuse='extrapolate' only)
        self._kept: dict[int, tuple] = {}
        self._kept_prev: dict[int, tuple] = {}
        self._prev_x: torch.Tensor | None = None  # latent input of the previous step's first call
        self._x_c: torch.Tensor | None = None  # latent input of the last computed step's first call
        self._skips = 0  # consecutive reused steps
        self._cacc = 0.0  # accumulated estimated change since the last computed step
        self._last_computed: int | None = None  # step index of the last computed step of this run
        self._out_rate: float | None = None  # relative output change per step between the last computed steps
        self._k: float | None = None  # EasyCache transformation rate (output change / input change)
        self._inp_terms: tuple | None = None  # (num, den) of this call's input change, before the decision
        self._inp: float | None = None
        # A torch.distributed process group whose ranks all run this model (context / CFG parallelism: set by the
        # backend from dvdq_compile.parallel.group_of). The step's L1 terms are summed over it by one all-reduce
        # per step, so every rank takes the same decision.
        self.group = None

    # ---------------------------------------------------------------------------------------------------- API
    def fit(self, delta: float, low: int, high: int, min_high_steps: int, mode: str,
            cache: CachePolicy | None = None) -> None:
        """Called by a compiled graph that uses this controller with its own options: an ``adopt`` controller
        takes them (once); any controller must choose between the two variants the graph compiled."""
        if self.adopt:
            self.delta, self.low, self.high, self.min_high_steps, self.mode = float(delta), low, high, \
                min_high_steps, mode
            if cache is not None:
                self.cache = cache
            self.adopt = False
        elif (self.low, self.high) != (low, high):
            raise ValueError(f"dvdquant: a shared δ controller chooses between A{self.low} and A{self.high}, but a "
                             f"model using it was compiled with the variants A{low} and A{high}; compile the "
                             "models that share a controller with the same act_bits_low / act_bits_high")

    def begin_call(self, timestep: Any = None, x: torch.Tensor | None = None, model: Any = None,
                   can_reuse: Any = None) -> int:
        """Start one model call; returns the activation bits it must run with, or 0 (``REUSE``): do not run the
        model, take :meth:`reuse_call`'s output.

        On a new step (the timestep key changed, or :meth:`step` was called) this finalizes the previous step
        (its L1 and the accumulators) and decides the new step; otherwise it returns the current decision.
        ``x``: the latent input (step caching's input signal and residual reuse); ``model``: an object that
        identifies the model making the call (reuse never hands one model another's output); ``can_reuse``: a
        callable returning False when this model cannot skip a call (it runs as several compiled graphs).
        """
        caching = self.cache.on
        self._inp = None
        # the input's change only matters on a step's first call: not computed when the timestep says same step
        wanted = caching and self.cache.input_signal and self._maybe_new_step(timestep)
        self._inp_terms = self._input_terms(x) if wanted else None
        key = self._timestep_key(timestep)
        row = self._row
        if key is None and self._boundary:
            key = self._boundary_ts
        new_step = row is None or self._new_run or self._boundary or (key is not None and key != row.timestep)
        if not new_step:
            # a call with a None timestep joins the step, and so does an equal key
            self._call = row.calls
            row.calls += 1
            if row.bits == REUSE and not self._reusable(self._call, x, model):
                raise RuntimeError(f"DeltaController: step {row.step} is reused but call {self._call} of it has no "
                                   "cached output of the same model and shape (the calls of a step changed between "
                                   "steps); call reset() when the call structure of a run changes")
            return row.bits
        self._boundary, self._boundary_ts = False, None
        if row is not None and not self._new_run:
            self._finish(row)
            if key is not None and row.timestep is not None and key > row.timestep:
                self._start_run()  # the timestep jumped up: a new sampling run
        if self._new_run:
            self._new_run = False
            self._run += 1
            step = 0
        else:
            step = row.step + 1
        if caching and self._inp_terms is not None and self._inp is None:
            self._inp = self._read_terms(*self._inp_terms)  # a number timestep: its own (single) read
        reuse, est = self._cache_decision(step, x, model, can_reuse) if caching else (False, None)
        if caching and self.cache.input_signal and x is not None:
            self._prev_x = x.detach().clone()
        self._inp = None
        if reuse:
            bits = REUSE
        elif self.mode == "low":
            bits = self.low
        elif self.mode == "high" or step < self.min_high_steps:
            bits = self.high
        else:
            bits = self.low if self._acc < self.delta else self.high
        row = _Row(self._run, step, key, self._acc, bits)
        row.est = est
        self._rows.append(row)
        self._row = row
        self._call = 0
        row.calls = 1
        return bits

    def reuse_call(self, x: torch.Tensor | None = None) -> Any:
        """The output of the call opened by the last :meth:`begin_call` that returned ``REUSE``: the cached
        output of the same call index (a fresh copy), plus ``x − x_c`` on tensors shaped like ``x`` with
        ``reuse='residual'``, or ``y_c + (y_c − y_p)·(t − t_c)/(t_c − t_p)`` with ``reuse='extrapolate'`` (the kept
        output alone until two steps of the same model were computed)."""
        if self._call is None or self._row is None or self._row.bits != REUSE:
            raise RuntimeError("DeltaController.reuse_call() without a begin_call() that returned REUSE")
        j = self._call
        self._call = None
        model, outs, x_c, t_c = self._kept[j]
        with torch.no_grad():
            if self.cache.residual and x is not None and x_c is not None:
                d = x.detach() - x_c
                return _map_tensors(outs, lambda t: t + d.to(t.dtype) if t.shape == d.shape else t.clone())
            prev = self._kept_prev.get(j)
            t_now = self._row.timestep
            if self.cache.extrapolate and prev is not None and prev[0] is model \
                    and None not in (t_now, t_c, prev[3]) and prev[3] != t_c:
                w = (t_now - t_c) / (t_c - prev[3])
                return _map2(outs, prev[1], lambda a, b: a + (a - b) * w if a.shape == b.shape else a.clone())
            return _map_tensors(outs, lambda t: t.clone())

    def end_call(self, output: Any, x: torch.Tensor | None = None, model: Any = None) -> None:
        """Record the output of the call opened by the last :meth:`begin_call` (a tuple/list, a dict-like
        diffusers output or an object with ``.sample``: its first tensor). With step caching on, ``x`` and
        ``model`` are the same as given to ``begin_call``."""
        if self._call is None or self._row is None:
            raise RuntimeError("DeltaController.end_call() without a matching begin_call()")
        j, row = self._call, self._row
        self._call = None
        if row.bits == REUSE:
            raise RuntimeError("DeltaController.end_call() on a reused step: take reuse_call()'s output instead")
        f = _first_tensor(output).detach()
        with torch.no_grad():
            f32 = f.float()  # L1 in fp32 whatever the output dtype (no copy for fp32 outputs)
            den = f32.abs().sum()
            prev = self._prev.get(j)
            if prev is not None and prev[0].shape == f.shape and prev[0].device == f.device:
                num = (f32 - prev[0].float()).abs().sum()
                row.pending.append((j, num, prev[1]))
            if self.cache.on:
                # the whole output is kept for reuse; the δ signal reads its first tensor (no second copy)
                outs = _map_tensors(output, lambda t: t.detach().clone())
                first = _first_tensor(outs)
                xc = x.detach().clone() if x is not None and self.cache.residual else None
                if j == 0 and x is not None and self.cache.rule == "easycache":  # its k: input change, computed steps
                    if self._x_c is not None and self._x_c.shape == x.shape:
                        xf, pf = x.detach().float(), self._x_c.float()
                        row.pending.append((-1, (xf - pf).abs().sum(), pf.abs().sum()))
                    self._x_c = x.detach().clone() if xc is None else xc
                if self.cache.extrapolate and j in self._kept:
                    self._kept_prev[j] = self._kept[j]
                self._kept[j] = (model, outs, xc, row.timestep)
                self._prev[j] = (first, den)
            else:
                # one previous output per call index: the old one is dropped here
                self._prev[j] = (f.clone(), den)

    def step(self, timestep: float | None = None) -> None:
        """Mark a step boundary: the next :meth:`begin_call` starts a new step (use with ``begin_call(None)``).

        ``timestep`` (optional) is recorded in the trace and used to detect a new run (a jump up)."""
        self._boundary = True
        self._boundary_ts = None if timestep is None else self._timestep_key(timestep)

    def reset(self) -> None:
        """Start a new sampling run: previous outputs dropped, accumulator +inf, step index 0; trace kept."""
        if self._row is not None and not self._new_run:
            self._resolve([self._row])
        self._start_run()
        self._boundary, self._boundary_ts = False, None

    @property
    def trace(self) -> list[StepRecord]:
        """Every step so far, all runs (reading it resolves pending L1 values: one host read). Under a process
        group the step in progress shows no L1 yet: its terms are summed over the ranks when it ends."""
        self._resolve([r for r in self._rows if self.group is None or r is not self._row])
        return [r.record() for r in self._rows]

    def average_bits(self, run: int | None = None) -> float:
        """Mean activation bits over the computed steps (of one ``run``, or all); NaN when there are none."""
        bits = [r.bits for r in self._rows if (run is None or r.run == run) and r.bits != REUSE]
        return sum(bits) / len(bits) if bits else math.nan

    def reuse_rate(self, run: int | None = None) -> float:
        """Share of the traced steps (of one ``run``, or all) that were reused; NaN when there are none."""
        rows = [r for r in self._rows if run is None or r.run == run]
        return sum(r.bits == REUSE for r in rows) / len(rows) if rows else math.nan

    def computed_calls(self, run: int | None = None) -> int:
        """Model calls that ran (reused steps' calls do not count)."""
        return sum(r.calls for r in self._rows if (run is None or r.run == run) and r.bits != REUSE)

    @property
    def bits(self) -> int | None:
        """Bits of the step in progress (None before the first call)."""
        return None if self._row is None else self._row.bits

    def summary(self) -> str:
        rows = self.trace
        if self.low == self.high:
            head = f"A{self.high} fixed"
        else:
            head = (f"δ-GBS delta={self.delta:g} A{self.low}/A{self.high} mode={self.mode} "
                    f"min_high_steps={self.min_high_steps}")
        if self.cache.on:
            head += f"; {self.cache.describe()}"
            if self.cache_blocked:
                head += f" (blocked: {self.cache_blocked})"
        if not rows:
            return head + ": no steps yet"
        runs = sorted({r.run for r in rows})
        n_low = sum(r.bits == self.low for r in rows)
        n_high = sum(r.bits == self.high for r in rows)
        mix = f"A{self.high} x{n_high}" if self.low == self.high else f"A{self.high} x{n_high}, A{self.low} x{n_low}"
        lines = [f"{head}: {len(runs)} run(s), {len(rows)} steps, average {self.average_bits():.2f} bits ({mix})"]
        if self.cache.on:
            lines[0] += (f"; {sum(r.bits == REUSE for r in rows)} reused ({self.reuse_rate():.0%}), "
                         f"{self.computed_calls()} model calls computed of {sum(r.calls for r in rows)}")
        for run in runs:
            rr = [r for r in rows if r.run == run]
            pattern = bits_pattern(rr)
            lines.append(f"  run {run}: {len(rr)} steps, average {self.average_bits(run):.2f} bits, "
                         f"bits {pattern}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Config and trace as plain python (non-finite floats, i.e. acc=+inf or undefined L1, become None)."""
        def clean(v):
            return v if not isinstance(v, float) or math.isfinite(v) else None

        return {
            "delta": self.delta, "low": self.low, "high": self.high, "min_high_steps": self.min_high_steps,
            "mode": self.mode, "average_bits": clean(self.average_bits()),
            "cache": {"policy": {k: v for k, v in asdict(self.cache).items()}, "blocked": self.cache_blocked,
                      "reuse_rate": clean(self.reuse_rate()), "computed_calls": self.computed_calls(),
                      "calls": sum(r.calls for r in self._rows)},
            "trace": [{k: clean(v) for k, v in asdict(r).items()} for r in self.trace],
        }

    def to_json(self, **kwargs) -> str:
        """:meth:`to_dict` as strict JSON (``null`` for +inf / NaN / undefined)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def __repr__(self) -> str:
        return (f"DeltaController(delta={self.delta:g}, low={self.low}, high={self.high}, "
                f"min_high_steps={self.min_high_steps}, mode={self.mode!r}; {len(self._rows)} steps traced)")

    # ------------------------------------------------------------------------------------------------ internals
    def _start_run(self) -> None:
        self._prev.clear()
        self._acc = INF
        self._new_run = True
        self._call = None
        self._kept.clear()
        self._kept_prev.clear()
        self._prev_x = self._x_c = None
        self._skips, self._cacc = 0, 0.0
        self._last_computed = self._out_rate = self._k = None

    def _finish(self, row: _Row) -> None:
        """Finalize a completed step: its L1 (host), the accumulator update of the pseudocode and, for step
        caching, the output's rate of change and EasyCache's k. A reused step changes none of them."""
        self._resolve([row])
        if row.bits == REUSE:
            return
        l1 = row.l1()
        if self.cache.on:
            gap = row.step - self._last_computed if self._last_computed is not None else None
            ok = l1 is not None and math.isfinite(l1) and gap
            self._out_rate = l1 / gap if ok else None
            dx = row.l1s.get(-1)
            self._k = l1 / dx if ok and dx is not None and math.isfinite(dx) and dx > 0 else None
            self._last_computed = row.step
        l1 = INF if l1 is None or math.isnan(l1) else l1  # undefined (or NaN) counts as +inf
        self._acc = l1 if row.bits == self.high else self._acc + l1

    def _maybe_new_step(self, ts: Any) -> bool:
        """False only when the timestep shows, without a host read, that this call joins the current step."""
        if self._row is None or self._new_run or self._boundary:
            return True
        if isinstance(ts, torch.Tensor):
            sig = self._ts_signature(ts)
            return sig is None or sig != self._ts_sig
        if isinstance(ts, numbers.Real) and not isinstance(ts, bool):
            return float(ts) != self._row.timestep
        return ts is not None

    def _input_terms(self, x: torch.Tensor | None) -> tuple | None:
        """(‖x − x_prev‖₁, ‖x_prev‖₁) on x's device, or None (no previous input of the same shape)."""
        prev = self._prev_x
        if x is None or prev is None or prev.shape != x.shape or prev.device != x.device:
            return None
        with torch.no_grad():
            xf, pf = x.detach().float(), prev.float()
            return (xf - pf).abs().sum(), pf.abs().sum()

    def _read_terms(self, num: torch.Tensor, den: torch.Tensor) -> float:
        dt = torch.float32 if num.device.type == "mps" else torch.float64
        n, d = _host_read(torch.stack([num.to(dt), den.to(dt)]))
        return n / d if d > 0 else (0.0 if n == 0 else INF)

    def _reusable(self, j: int, x: torch.Tensor | None, model: Any) -> bool:
        kept = self._kept.get(j)
        if kept is None or kept[0] is not model:
            return False
        if self.cache.residual:
            return x is not None and kept[2] is not None and kept[2].shape == x.shape
        return True

    def _cache_decision(self, step: int, x, model, can_reuse) -> tuple[bool, float | None]:
        """(reuse this step?, the rule's estimate). Updates the reuse accumulator and the skip count."""
        pol = self.cache
        forced = pol.forced(step, self._skips)
        est = None
        if forced is None:
            est = pol.estimate(self._out_rate, self._inp, self._k)
            reuse = est is not None and self._cacc + est < pol.threshold
        else:
            reuse = not forced
        if reuse and not self._reusable(0, x, model):
            reuse = False
        if reuse and can_reuse is not None and not can_reuse():
            reuse = False
        if reuse:
            self._skips += 1
            self._cacc += est if est is not None else 0.0
        else:
            self._skips, self._cacc = 0, 0.0
        return reuse, est

    def _resolve(self, rows: Iterable[_Row], extra: torch.Tensor | None = None):
        """Read all pending device terms of ``rows`` (plus ``extra``: a scalar, returned as a float, or a 1-D
        tensor, returned as a list) on the host: one ``tolist()`` per device, ``extra``'s device first."""
        rows = list(rows)
        items = [(row, j, num, den) for row in rows for (j, num, den) in row.pending]
        if not items and extra is None:
            return None
        if self.group is not None and items:
            return self._resolve_group(rows, items, extra)
        by_dev: dict[torch.device, list] = {}
        if extra is not None:
            by_dev[extra.device] = []
        for it in items:
            by_dev.setdefault(it[2].device, []).append(it)
        out = None
        for dev, its in by_dev.items():
            dt = torch.float32 if dev.type == "mps" else torch.float64
            n_extra = extra.numel() if (extra is not None and dev == extra.device) else 0
            parts = [extra.reshape(-1).to(dt)] if n_extra else []
            if its:
                parts.append(torch.stack([torch.stack([n.to(dt), d.to(dt)]) for _, _, n, d in its]).reshape(-1))
            vals = _host_read(torch.cat(parts))
            if n_extra:
                out, vals = (vals[0] if extra.dim() == 0 else vals[:n_extra]), vals[n_extra:]
            for k, (row, j, _, _) in enumerate(its):
                n, d = vals[2 * k], vals[2 * k + 1]
                row.l1s[j] = _ratio(n, d)
        for row in rows:
            row.pending.clear()
        return out

    def _resolve_group(self, rows: list[_Row], items: list, extra: torch.Tensor | None):
        """``_resolve`` for one row under a process group: the row's (num, den) per call index, summed over the
        group by one all-reduce of a fixed-size vector (the ranks' call structures match, their values need not),
        then one host read with ``extra``."""
        if len(rows) != 1:
            raise RuntimeError("DeltaController: under a process group, steps are resolved one at a time")
        dev = items[0][2].device
        if any(it[2].device != dev for it in items) or (extra is not None and extra.device != dev):
            raise RuntimeError("DeltaController: under a process group, the outputs and the timestep of a step "
                               "must be on one device")
        slots = GROUP_CALLS + 1  # slot 0: the input change (call index -1); slot j + 1: call j
        dt = torch.float32 if dev.type == "mps" else torch.float64
        vec = torch.zeros(3 * slots, dtype=dt, device=dev)
        for _, j, n, d in items:
            if j + 1 >= slots:
                raise RuntimeError(f"DeltaController: a step with more than {GROUP_CALLS} model calls under a "
                                   "process group")
            vec[3 * (j + 1)] = n.to(dt)
            vec[3 * (j + 1) + 1] = d.to(dt)
            vec[3 * (j + 1) + 2] = 1.0
        import torch.distributed as dist
        dist.all_reduce(vec, group=self.group)
        n_extra = extra.numel() if extra is not None else 0
        vals = _host_read(torch.cat([extra.reshape(-1).to(dt), vec]) if n_extra else vec)
        out, vals = ((vals[0] if extra.dim() == 0 else vals[:n_extra]), vals[n_extra:]) if n_extra else (None, vals)
        row = rows[0]
        for k in range(slots):
            n, d, count = vals[3 * k], vals[3 * k + 1], vals[3 * k + 2]
            if count > 0:
                row.l1s[k - 1] = _ratio(n, d)
        row.pending.clear()
        return out

    def _timestep_key(self, ts: Any) -> float | None:
        if ts is None:
            return None
        if isinstance(ts, torch.Tensor):
            if ts.numel() == 0:
                raise ValueError("DeltaController: empty timestep tensor")
            sig = self._ts_signature(ts)
            if sig is not None and sig == self._ts_sig:
                return self._ts_key  # the tensor read last, unchanged: no host read
            with torch.no_grad():
                t = ts.detach().max() if ts.numel() > 1 else ts.detach().reshape(())
                if not t.dtype.is_floating_point:
                    t = t.double() if t.device.type != "mps" else t.float()
            # bundle the step's pending L1 terms (and step caching's input change) with this read: one sync.
            # Under a process group the terms wait for the step's end (_finish): summing them over the ranks here
            # would cost a collective on every call that reads a new timestep tensor, not one per step.
            rows = [self._row] if self._row is not None and self.group is None else []
            terms = self._inp_terms
            if terms is not None and terms[0].device == t.device:
                dt = torch.float32 if t.device.type == "mps" else torch.float64
                vals = self._resolve(rows, extra=torch.stack([v.reshape(()).to(dt) for v in (t, *terms)]))
                n, d = vals[1], vals[2]
                self._inp = n / d if d > 0 else (0.0 if n == 0 else INF)
                key = float(vals[0])
            else:
                key = float(self._resolve(rows, extra=t))
            self._ts_tensor, self._ts_sig, self._ts_key = ts, sig, key
            return key
        if isinstance(ts, numbers.Real) and not isinstance(ts, bool):
            return float(ts)
        if hasattr(ts, "item") and hasattr(ts, "size"):  # numpy array / scalar
            import numpy as np
            return float(np.max(ts))
        raise TypeError(f"DeltaController: timestep must be a number, a tensor or None, got {type(ts).__name__}")

    @staticmethod
    def _ts_signature(ts: torch.Tensor) -> tuple | None:
        if ts.is_inference():
            return None  # no version counter: in-place edits cannot be detected, always read
        try:
            return (ts.data_ptr(), ts.device, ts.dtype, tuple(ts.shape), ts.stride(), ts._version)
        except RuntimeError:
            return None


def _map_tensors(output: Any, fn) -> Any:
    """``output`` with ``fn`` applied to every tensor in it (tuples, lists and dicts keep their type)."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, (tuple, list)):
        return type(output)(_map_tensors(o, fn) for o in output)
    if isinstance(output, dict):
        return type(output)((k, _map_tensors(v, fn)) for k, v in output.items())
    return output


def _map2(a: Any, b: Any, fn) -> Any:
    """``fn`` applied to the tensors of ``a`` and the tensors at the same places in ``b`` (same structure)."""
    if isinstance(a, torch.Tensor):
        return fn(a, b) if isinstance(b, torch.Tensor) else a.clone()
    if isinstance(a, (tuple, list)):
        return type(a)(_map2(x, y, fn) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(a)({k: _map2(v, b[k], fn) for k, v in a.items()})
    return _map_tensors(a, lambda t: t.clone())


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for o in output:
            if isinstance(o, torch.Tensor):
                return o
    elif isinstance(output, dict):
        for o in output.values():
            if isinstance(o, torch.Tensor):
                return o
    elif isinstance(getattr(output, "sample", None), torch.Tensor):
        return output.sample
    raise TypeError(f"DeltaController.end_call: expected a tensor or a tuple/list holding one, got "
                    f"{type(output).__name__}")


def bits_pattern(records: Sequence[StepRecord]) -> str:
    """Compact string of the bits per step, e.g. ``'88484R4…'`` (bits 3..8 are single digits; R: reused,
    W: weight-only 16-bit activations)."""
    return "".join("R" if r.bits == REUSE else "W" if r.bits == 16 else str(r.bits) for r in records)
