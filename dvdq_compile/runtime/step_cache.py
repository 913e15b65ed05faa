"""Step caching: per denoising step, reuse the transformer's last prediction instead of calling it.

The δ controller (``runtime/delta.py``) makes one decision per step: compute at A-low, compute at A-high, or
**reuse**. This module holds the caching policy (options, validation) and the rules that turn the controller's
signals into an estimate of how much the output would have changed; the controller accumulates the estimates of
consecutive reused steps and computes again when the sum reaches ``threshold``.

Signals, all relative L1 (``‖a − b‖₁ / ‖b‖₁``), read on the host once per step together with the timestep:

- ``out``: change of the output between the last two computed steps, per step in between (δ-GBS's L1 / gap);
- ``inp``: change of the transformer's latent input (``hidden_states``) from the previous step to this one;
- ``k``: EasyCache's transformation rate, output change ÷ input change between the last two computed steps.

Rules (each step's estimate ``e``; a step is reused while ``acc + e < threshold``, then ``acc += e``):

- ``delta`` (ours): ``e = out``: the δ signal itself, extrapolated: a step is reused while the output's measured
  rate of change says the accumulated change stays below the threshold. Needs no input signal.
- ``easycache``: ``e = k · inp`` (EasyCache, Zhou et al. 2025: runtime-adaptive, no calibration). Reuse adds the
  input's change to the cached transformation: ``y = y_c + (x − x_c)`` (``reuse='residual'``).
- ``teacache``: ``e = poly(inp)`` with ``coefficients`` fitted offline (TeaCache, Liu et al. 2024). TeaCache reads
  the timestep-modulated input of the first block, which lives inside the compiled graph; here its signal is the
  latent input the graph receives (a deviation: the polynomial absorbs the difference when it is fitted).
- ``schedule``: a fixed pattern per step index (``'C'`` compute, ``'R'`` reuse): tests and ablations.

Reuse modes: ``output`` (the kept output as is), ``residual`` (plus the input's change, EasyCache's), and
``extrapolate``: the first-order Taylor step of TaylorSeer (Liu et al. 2025) applied to the whole prediction,
``y = y_c + (y_c − y_p) · (t − t_c) / (t_c − t_p)`` from the last two computed steps ``c`` and ``p`` of the same call
index and model (the kept output alone while there is only one).

Always computed: the first ``warmup`` steps of a run, the last ``last`` steps when the run length ``steps`` is
known, a step after ``max_skips`` consecutive reused steps, a step whose signals are undefined (too few computed
steps yet), and a step that would reuse another model's output (a shared controller across Wan 2.2's experts).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..errors import OptionError

CACHE_RULES = ("off", "delta", "easycache", "teacache", "schedule")
REUSE_MODES = ("auto", "output", "residual", "extrapolate")
REUSE = 0  # the "bits" of a reused step in the controller's trace

ALLOWED = {
    "cache": f"one of {CACHE_RULES}: reuse the transformer's prediction on steps the rule says change little",
    "cache_threshold": "a finite float > 0: the accumulated estimated relative output change that ends a reuse run",
    "cache_max_skips": "an int >= 1: most consecutive reused steps",
    "cache_warmup": "an int >= 1: steps always computed at the start of a run",
    "cache_steps": "None or an int >= 1: steps per sampling run (enables cache_last)",
    "cache_last": "an int >= 0: steps always computed at the end of a run (needs cache_steps)",
    "cache_reuse": f"one of {REUSE_MODES}: reuse the output, the output plus the input's change (residual), or "
                   "the output extrapolated linearly in the timestep from the last two computed steps "
                   "(extrapolate); 'auto': extrapolate for delta, residual for easycache, output otherwise",
    "cache_coefficients": "a tuple of floats: teacache polynomial in the input change, highest power first",
    "cache_schedule": "a string of 'C' (compute) and 'R' (reuse) per step index (cache='schedule')",
}


def _fail(name, value):
    raise OptionError(f"dvdquant option {name}={value!r} is not allowed; expected {ALLOWED[name]}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class CachePolicy:
    rule: str = "off"
    threshold: float = 0.1
    max_skips: int = 2
    warmup: int = 2
    steps: int | None = None
    last: int = 1
    reuse: str = "auto"
    coefficients: tuple = (1.0, 0.0)
    schedule: str = ""

    def __post_init__(self):
        if self.rule not in CACHE_RULES:
            _fail("cache", self.rule)
        if not _is_real(self.threshold) or self.threshold <= 0:
            _fail("cache_threshold", self.threshold)
        if not _is_int(self.max_skips) or self.max_skips < 1:
            _fail("cache_max_skips", self.max_skips)
        if not _is_int(self.warmup) or self.warmup < 1:
            _fail("cache_warmup", self.warmup)
        if self.steps is not None and (not _is_int(self.steps) or self.steps < 1):
            _fail("cache_steps", self.steps)
        if not _is_int(self.last) or self.last < 0:
            _fail("cache_last", self.last)
        if self.reuse not in REUSE_MODES:
            _fail("cache_reuse", self.reuse)
        if not isinstance(self.coefficients, tuple) or not self.coefficients or \
                not all(_is_real(c) for c in self.coefficients):
            _fail("cache_coefficients", self.coefficients)
        if not isinstance(self.schedule, str) or set(self.schedule) - {"C", "R"}:
            _fail("cache_schedule", self.schedule)
        if self.rule == "schedule" and not self.schedule:
            raise OptionError("dvdquant option cache='schedule' needs cache_schedule (e.g. 'CCRCRC')")
        if self.schedule and self.rule != "schedule":
            raise OptionError(f"dvdquant option cache_schedule is only read with cache='schedule' "
                              f"(got cache={self.rule!r})")

    @property
    def on(self) -> bool:
        return self.rule != "off"

    @property
    def needs_input(self) -> bool:
        """Whether the rule or the reuse mode reads the latent input (``hidden_states``)."""
        return self.rule in ("easycache", "teacache") or self.residual

    @property
    def input_signal(self) -> bool:
        """Whether the rule estimates from the input's change between consecutive steps."""
        return self.rule in ("easycache", "teacache")

    @property
    def residual(self) -> bool:
        return self.reuse == "residual" or (self.reuse == "auto" and self.rule == "easycache")

    def forced(self, step: int, skips: int) -> bool | None:
        """True: must compute; False: must reuse (schedule); None: the rule decides."""
        if self.rule == "schedule":
            return self.schedule[step] != "R" if step < len(self.schedule) else True
        if step < self.warmup or skips >= self.max_skips:
            return True
        if self.steps is not None and step >= self.steps - self.last:
            return True
        return None

    def estimate(self, out: float | None, inp: float | None, k: float | None) -> float | None:
        """This step's estimated relative output change (None: undefined, compute)."""
        if self.rule == "delta":
            return out
        if self.rule == "easycache":
            return None if k is None or inp is None else k * inp
        if self.rule == "teacache":
            if inp is None:
                return None
            e = 0.0
            for c in self.coefficients:  # Horner, highest power first
                e = e * inp + c
            return max(e, 0.0)
        return None

    def describe(self) -> str:
        if not self.on:
            return "cache off"
        if self.rule == "schedule":
            return f"cache schedule {self.schedule!r}"
        tail = f" steps={self.steps} last={self.last}" if self.steps is not None else ""
        return (f"cache {self.rule} threshold={self.threshold:g} max_skips={self.max_skips} warmup={self.warmup}"
                f"{tail} reuse={self.reuse_mode}")

    @property
    def extrapolate(self) -> bool:
        # the default for the δ rule: on the zoo at 50 steps it is worth 3-8 dB over plain output reuse at the
        # same number of calls (bench/results/cache.md)
        return self.reuse == "extrapolate" or (self.reuse == "auto" and self.rule == "delta")

    @property
    def reuse_mode(self) -> str:
        return "residual" if self.residual else ("extrapolate" if self.extrapolate else "output")
