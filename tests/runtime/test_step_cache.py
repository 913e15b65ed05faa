"""Step caching through the backend: a forced schedule reproduces the uncached outputs on computed steps and the
cached value on reused ones; CFG pairs, experts, run resets, whole-model check, host reads, option errors."""
import logging

import pytest
import torch
from torch import nn

import dvdq_compile
import dvdq_compile.runtime.delta as delta_mod
from dvdq_compile.errors import OptionError
from dvdq_compile.runtime.delta import DeltaController
from dvdq_compile.runtime.registry import graphs_of
from dvdq_compile.runtime.step_cache import REUSE, CachePolicy
from tests.helpers import TinyDiT, compiled

STEPS = 8
TS = [torch.tensor([1000.0 - 120 * i]) for i in range(STEPS)]


def inputs(seed=0):
    """A latent that drifts a little per step, as a sampler's does."""
    g = torch.Generator().manual_seed(seed)
    base, drift = torch.randn(1, 20, 24, generator=g), torch.randn(1, 20, 24, generator=g)
    return [base + 0.1 * s * drift for s in range(STEPS)]


def drive(f, xs, ts=TS, cfg=True):
    """Per step: a cond call on x and, with ``cfg``, an uncond call on 0.5·x (Wan-style two calls)."""
    outs = []
    with torch.no_grad():
        for x, t in zip(xs, ts):
            step = [f(x, timestep=t)]
            if cfg:
                step.append(f(0.5 * x, timestep=t))
            outs.append(step)
    return outs


@pytest.mark.parametrize("reuse", ["output", "residual", "extrapolate"])
def test_forced_schedule_computes_exactly_and_reuses_the_cached_value(reuse):
    model, xs = TinyDiT(), inputs()
    plain = drive(compiled(model, act_bits=8), xs)
    schedule = "CCRCRRCC"
    torch._dynamo.utils.counters.clear()
    cached = drive(compiled(model, act_bits=8, cache="schedule", cache_schedule=schedule, cache_reuse=reuse), xs)
    last = prev = None
    for s, kind in enumerate(schedule):
        if kind == "C":
            for j in range(2):
                assert torch.equal(cached[s][j], plain[s][j]), (s, j)
            last, prev = s, last
        else:
            for j, scale in enumerate((1.0, 0.5)):
                want = plain[last][j]
                if reuse == "residual":  # y_c + (x − x_c) on the call's own input
                    want = want + (scale * xs[s] - scale * xs[last])
                if reuse == "extrapolate":  # y_c + (y_c − y_p)·(t − t_c)/(t_c − t_p), linear in the timestep
                    t, t_c, t_p = (float(TS[i]) for i in (s, last, prev))
                    want = want + (want - plain[prev][j]) * ((t - t_c) / (t_c - t_p))
                assert torch.equal(cached[s][j], want), (s, j)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    ctrl = dvdq_compile.controller(model)
    assert "".join("R" if r.bits == REUSE else "C" for r in ctrl.trace) == schedule
    assert ctrl.computed_calls() == 2 * schedule.count("C") and ctrl.reuse_rate() == 3 / 8


def test_reused_output_is_a_fresh_tensor():
    model, xs = TinyDiT(), inputs()
    f = compiled(model, act_bits=8, cache="schedule", cache_schedule="CCRR")
    outs = drive(f, xs[:4], cfg=False)
    outs[2][0].add_(1.0)  # editing a reused output in place must not change the cache
    assert torch.equal(outs[3][0], outs[1][0])


@pytest.mark.parametrize("rule", ["delta", "easycache", "teacache"])
@pytest.mark.parametrize("fullgraph", [True, False])
def test_rules_skip_steps_without_graph_breaks_or_recompiles(rule, fullgraph):
    model, xs = TinyDiT(), inputs()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    opts = {"lowering": "eager", "kernels": "reference", "progress": False, "cache": rule, "cache_threshold": 1.0}
    f = torch.compile(model, backend="dvdquant", options=opts, fullgraph=fullgraph)
    drive(f, xs)
    drive(f, xs)  # a second run: the timestep jumps up
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    ctrl = dvdq_compile.controller(model)
    runs = {r.run for r in ctrl.trace}
    assert runs == {0, 1}
    for run in runs:  # warmup (2 steps) computed in every run, then the rule skips some steps
        pattern = [r.bits for r in ctrl.trace if r.run == run]
        assert REUSE not in pattern[:2] and REUSE in pattern[2:], pattern
        assert all(p != REUSE or q != REUSE or r != REUSE for p, q, r in zip(pattern, pattern[1:], pattern[2:]))
    assert "reused" in ctrl.summary() and ctrl.to_dict()["cache"]["reuse_rate"] > 0


def test_threshold_orders_the_reuse_rate():
    rates = []
    for thr in (0.05, 0.5, 5.0):
        model = TinyDiT()
        drive(compiled(model, act_bits=8, cache="easycache", cache_threshold=thr, cache_max_skips=8), inputs())
        rates.append(dvdq_compile.controller(model).reuse_rate())
    assert rates[0] <= rates[1] <= rates[2] and rates[0] < rates[2]


def test_last_steps_are_computed_when_the_run_length_is_known():
    model = TinyDiT()
    drive(compiled(model, act_bits=8, cache="delta", cache_threshold=100.0, cache_max_skips=8, cache_steps=STEPS,
                   cache_last=2), inputs())
    bits = [r.bits for r in dvdq_compile.controller(model).trace]
    assert bits[:2] == [8, 8] and bits[-2:] == [8, 8] and all(b == REUSE for b in bits[2:-2])


class Expert(TinyDiT):
    pass


def test_shared_controller_never_reuses_the_other_experts_output():
    hi, lo = Expert(), Expert()
    with torch.no_grad():
        for p in lo.parameters():
            p.mul_(1.1)
    ctrl = dvdq_compile.share_controller(hi, lo)
    f_hi = compiled(hi, act_bits=8, cache="schedule", cache_schedule="CCRRRR")
    f_lo = torch.compile(lo, backend="dvdquant", fullgraph=True,
                         options={"lowering": "eager", "kernels": "reference", "progress": False, "act_bits": 8,
                                  "cache": "schedule", "cache_schedule": "CCRRRR"})
    xs = inputs()
    with torch.no_grad():
        y = [f_hi(xs[s], timestep=TS[s]) for s in range(3)]  # C C R
        y += [f_lo(xs[s], timestep=TS[s]) for s in range(3, 5)]  # the boundary: R by schedule, computed
    assert [r.bits for r in ctrl.trace] == [8, 8, REUSE, 8, REUSE]
    assert torch.equal(y[2], y[1]) and not torch.equal(y[3], y[1]) and torch.equal(y[4], y[3])


def test_a_model_that_runs_as_several_graphs_computes_every_step(caplog):
    class Broken(TinyDiT):
        def forward(self, x, timestep):
            temb = torch.nn.functional.silu(self.time(timestep.reshape(-1, 1) / 1000))
            h = self.patch(x)
            torch._dynamo.graph_break()
            for b in self.blocks:
                h = b(h, temb)
            return self.proj_out(h)

    model = Broken()
    torch._dynamo.reset()
    f = torch.compile(model, backend="dvdquant", options={"lowering": "eager", "kernels": "reference",
                                                          "progress": False, "cache": "schedule",
                                                          "cache_schedule": "CCRRRR", "act_bits": 8})
    with caplog.at_level(logging.WARNING, logger="dvdq_compile"):
        drive(f, inputs(), cfg=False)
    ctrl = next(g.controller_for(p[g.weights[0].arg_index] if g.weights else p[min(p)])
                for g, p in graphs_of(model) if g.timestep_index is not None)
    assert all(r.bits != REUSE for r in ctrl.trace)
    assert "compiled graphs" in (ctrl.cache_blocked or "") and "no step can be skipped" in caplog.text


def test_one_host_read_per_step(monkeypatch):
    reads = []
    real = delta_mod._host_read
    monkeypatch.setattr(delta_mod, "_host_read", lambda t: reads.append(t.numel()) or real(t))
    model = TinyDiT()
    drive(compiled(model, cache="easycache", cache_threshold=1.0), inputs())
    assert len(reads) <= STEPS


def test_option_errors():
    for opts, msg in (({"cache": "fast"}, "cache='fast'"),
                      ({"cache": "delta", "cache_threshold": 0}, "cache_threshold"),
                      ({"cache": "delta", "cache_max_skips": 0}, "cache_max_skips"),
                      ({"cache": "schedule"}, "needs cache_schedule"),
                      ({"cache": "delta", "cache_schedule": "CR"}, "only read with cache='schedule'"),
                      ({"cache": "schedule", "cache_schedule": "CX"}, "cache_schedule"),
                      ({"cache": "teacache", "cache_coefficients": ()}, "cache_coefficients"),
                      ({"cache": "delta", "cache_reuse": "mean"}, "cache_reuse")):
        with pytest.raises(OptionError, match=msg):
            compiled(TinyDiT(), **opts)(inputs()[0], TS[0])


def test_rule_needing_the_latent_input_refuses_a_model_without_one():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(128, 128)])

        def forward(self, feats, timestep):
            return self.blocks[0](feats) * timestep

    with pytest.raises(OptionError, match="latent input"):
        compiled(Named(), cache="easycache")(torch.randn(1, 32, 128), torch.tensor([1.0]))
    compiled(Named(), cache="delta")(torch.randn(1, 32, 128), torch.tensor([1.0]))  # output reuse needs none


def test_policy_rules():
    assert CachePolicy(rule="easycache").estimate(out=None, inp=0.1, k=2.0) == pytest.approx(0.2)
    assert CachePolicy(rule="easycache").estimate(out=0.3, inp=0.1, k=None) is None
    assert CachePolicy(rule="teacache", coefficients=(2.0, 1.0, 0.5)).estimate(None, 0.1, None) == \
        pytest.approx(2 * 0.01 + 0.1 + 0.5)
    assert CachePolicy(rule="teacache", coefficients=(1.0, -1.0)).estimate(None, 0.1, None) == 0.0  # clamped
    assert CachePolicy(rule="delta").estimate(out=0.07, inp=None, k=None) == 0.07
    p = CachePolicy(rule="delta", warmup=2, max_skips=2, steps=10, last=1)
    assert p.forced(1, 0) is True and p.forced(2, 0) is None and p.forced(3, 2) is True and p.forced(9, 0) is True
    assert CachePolicy(rule="schedule", schedule="CR").forced(1, 0) is False
    assert CachePolicy(rule="schedule", schedule="CR").forced(5, 0) is True  # past the pattern: compute
    assert CachePolicy(rule="easycache").residual and not CachePolicy(rule="delta").residual
    assert CachePolicy(rule="delta").extrapolate and not CachePolicy(rule="delta", reuse="output").extrapolate


def test_controller_by_hand_with_a_plain_model():
    """The controller drives any callable: the API a pipeline-side wrapper uses (bench/cache.py does)."""
    model = TinyDiT()
    ctrl = DeltaController(low=8, high=8, mode="high", cache=CachePolicy(rule="schedule", schedule="CCR"))
    xs, outs = inputs(), []
    with torch.no_grad():
        for s in range(3):
            bits = ctrl.begin_call(TS[s], x=xs[s], model=model)
            if bits == REUSE:
                outs.append(ctrl.reuse_call(xs[s]))
            else:
                y = model(xs[s], TS[s])
                ctrl.end_call(y, x=xs[s], model=model)
                outs.append(y)
    assert torch.equal(outs[2], outs[1])
    with pytest.raises(RuntimeError, match="reuse_call"):
        ctrl.reuse_call()


def test_misuse_of_a_reused_step_is_a_clear_error():
    model = TinyDiT()
    ctrl = DeltaController(low=8, high=8, mode="high", cache=CachePolicy(rule="schedule", schedule="CCR"))
    xs = inputs()
    with torch.no_grad():
        for s in range(2):  # computed steps keep call 0 only
            assert ctrl.begin_call(TS[s], x=xs[s], model=model) == 8
            ctrl.end_call(model(xs[s], TS[s]), x=xs[s], model=model)
        assert ctrl.begin_call(TS[2], x=xs[2], model=model) == REUSE
        with pytest.raises(RuntimeError, match="end_call\\(\\) on a reused step"):
            ctrl.end_call(model(xs[2], TS[2]))
        with pytest.raises(RuntimeError, match="call 1 of it has no cached output"):
            ctrl.begin_call(TS[2], x=xs[2], model=model)  # a second call in a step whose structure changed


def test_the_input_change_is_computed_once_per_step(monkeypatch):
    calls = []
    real = DeltaController._input_terms
    monkeypatch.setattr(DeltaController, "_input_terms", lambda self, x: calls.append(1) or real(self, x))
    drive(compiled(TinyDiT(), act_bits=8, cache="easycache", cache_threshold=1.0), inputs())  # CFG: 2 calls a step
    assert len(calls) == STEPS
