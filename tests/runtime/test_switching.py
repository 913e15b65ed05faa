"""δ-GBS end to end: two compiled variants behind one guard, driven by a real scheduler loop."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import dvdq_compile
import dvdq_compile.runtime.delta
from dvdq_compile.backend import dvdquant
from dvdq_compile.runtime.registry import graphs_of
from tests.helpers import TinyDiT, compiled

X = torch.randn(1, 20, 24, generator=torch.Generator().manual_seed(3))


def counting_backend(calls, **options):
    opts = {"lowering": "eager", "kernels": "reference", "progress": False, **options}

    def backend(gm, ex, **kw):
        calls.append(gm)
        return dvdquant(gm, ex, options=opts)
    return backend


def sample(c, steps=20, cfg=True):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    x = X.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            tt = t.reshape(1)
            cond = c(x, timestep=tt)
            if cfg:
                unc = c(0.5 * x, timestep=tt)
                cond = unc + 2.0 * (cond - unc)
            x = sched.step(cond, t, x).prev_sample
    return x


def test_scheduler_loop_switches_variants_without_recompiles():
    model, calls = TinyDiT(), []
    torch._dynamo.reset()
    c = torch.compile(model, backend=counting_backend(calls, delta=0.5), fullgraph=True)
    sample(c)
    assert len(calls) == 1  # no Dynamo recompiles across 20 steps x 2 CFG calls
    ctrl = dvdq_compile.controller(c)
    rows = ctrl.trace
    assert len(rows) == 20 and all(r.calls == 2 for r in rows)
    bits = [r.bits for r in rows]
    assert bits[:2] == [8, 8] and 4 in bits and 8 in bits[2:], ctrl.summary()
    graph = next(g for g, _ in graphs_of(c._orig_mod) if len(g.variants) == 2)
    assert graph.calls[4] == 2 * bits.count(4) and graph.calls[8] == 2 * bits.count(8)
    # the decision of each step follows the accumulator recorded before it (exact rule: tests/runtime/test_delta.py)
    assert all(r.bits == (4 if r.acc < 0.5 else 8) for r in rows[1:])
    assert 4 < ctrl.average_bits() < 8


def test_second_run_restarts_controller():
    model, calls = TinyDiT(), []
    torch._dynamo.reset()
    c = torch.compile(model, backend=counting_backend(calls, delta=0.5))
    sample(c, steps=6, cfg=False)
    sample(c, steps=6, cfg=False)
    rows = dvdq_compile.controller(c).trace
    assert [r.run for r in rows] == [0] * 6 + [1] * 6 and rows[6].bits == 8 and rows[6].l1 is None
    assert len(calls) == 1


def test_forced_high_equals_fixed_w4a8_compile():
    model = TinyDiT()
    with torch.no_grad():
        forced = compiled(model, delta_mode="high")
        outs = [forced(X, timestep=torch.tensor([t])) for t in (900, 800, 700)]
        assert [r.bits for r in dvdq_compile.controller(forced).trace] == [8, 8, 8]
        fixed = compiled(model, act_bits=8)  # (resets Dynamo: the switching graph and its controller go away)
        for t, y in zip((900, 800, 700), outs):
            assert torch.equal(y, fixed(X, timestep=torch.tensor([t])))


def test_forced_low_uses_a4_everywhere():
    model = TinyDiT()
    with torch.no_grad():
        forced = compiled(model, delta_mode="low")
        y = forced(X, timestep=torch.tensor([900]))
        torch.testing.assert_close(y, compiled(model, act_bits=4)(X, timestep=torch.tensor([900])), rtol=0, atol=0)


def test_experts_get_separate_controllers_unless_shared():
    a, b = TinyDiT(), TinyDiT()
    torch._dynamo.reset()
    calls = []
    be = counting_backend(calls, delta=0.5)
    ca, cb = torch.compile(a, backend=be), torch.compile(b, backend=be)
    with torch.no_grad():
        ca(X, timestep=torch.tensor([900]))
        cb(X, timestep=torch.tensor([400]))
    assert dvdq_compile.controller(ca) is not dvdq_compile.controller(cb)
    shared = dvdq_compile.share_controller(a, b)
    with torch.no_grad():
        ca(X, timestep=torch.tensor([300]))
        cb(X, timestep=torch.tensor([200]))
    assert dvdq_compile.controller(ca) is shared is dvdq_compile.controller(cb)
    assert [r.timestep for r in shared.trace] == [300.0, 200.0]
    assert shared.delta == 0.5  # the compile's delta, not the controller default (0.09)


def test_a_shared_controller_must_fit_the_compiled_variants():
    a = TinyDiT()
    dvdq_compile.share_controller(a, controller=dvdq_compile.runtime.delta.DeltaController(low=3, high=8))
    with pytest.raises(ValueError, match=r"chooses between A3 and A8, but a model using it was compiled with the "
                                         r"variants A4 and A8"), torch.no_grad():
        compiled(a, delta=0.5)(X, timestep=torch.tensor([900]))


def test_positional_timestep_is_found_by_parameter_name():
    model = TinyDiT()
    with torch.no_grad():
        c = compiled(model, delta=0.5)
        c(X, torch.tensor([900]))
        c(X, torch.tensor([800]))
    assert [r.timestep for r in dvdq_compile.controller(c).trace] == [900.0, 800.0]


class StarArgs(torch.nn.Module):
    """forward(*args), as diffusers' decorated forwards look to Dynamo: a positional timestep is L['args'][1]."""

    def __init__(self):
        super().__init__()
        self.inner = TinyDiT()

    def forward(self, *args):
        return self.inner(*args)


def test_unfound_timestep_falls_back_to_manual_steps():
    """Documented fallback: with no timestep input found, calls join one step until ctrl.step() marks a boundary."""
    model = StarArgs()
    with torch.no_grad():
        c = compiled(model, delta=0.5)
        c(X, torch.tensor([900]))
        c(X, torch.tensor([800]))
        ctrl = dvdq_compile.controller(c)
        assert len(ctrl.trace) == 1 and ctrl.trace[0].calls == 2
        ctrl.step(700)
        c(X, torch.tensor([700]))
    assert [r.timestep for r in ctrl.trace][-1] == 700.0 and len(ctrl.trace) == 2


@pytest.mark.parametrize("opts,msg", [({"delta": 0}, "delta=0"), ({"act_bits_low": 8, "act_bits_high": 8}, "below"),
                                      ({"delta_mode": "mid"}, "delta_mode='mid'"), ({"act_bits_high": 9}, "act_bits_high=9")])
def test_bad_switch_options(opts, msg):
    with pytest.raises(Exception, match=msg), torch.no_grad():
        compiled(TinyDiT(), **opts)(X, timestep=torch.tensor([900]))
