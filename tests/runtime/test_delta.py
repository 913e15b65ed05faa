"""δ-GBS controller (dvdq_compile/runtime/delta.py): scripted outputs with hand-computed decisions.

Outputs are ±1 vectors of length N=200: flipping k entries between two steps gives
‖F_t − F_{t−1}‖₁ / ‖F_{t−1}‖₁ = 2k/200 = k/100 exactly (the fp32 sums are exact integers), so the expected bit
sequences below are computed by hand from the definition (δ = 0.09, A4/A8 unless said otherwise).
"""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from dvdq_compile.runtime import delta as delta_mod
from dvdq_compile.runtime.delta import SUPPORTED_BITS, DeltaController, StepRecord

N = 200
INF = math.inf


class Flipper:
    """Produces ±1 outputs whose relative L1 change per step is exactly k/100 (k = number of flipped entries)."""

    def __init__(self, n: int = N, scale: float = 1.0, dtype=torch.float32):
        self.f = torch.ones(n, dtype=torch.float32)
        self.pos = 0
        self.scale = scale
        self.dtype = dtype

    def first(self) -> torch.Tensor:
        return (self.f * self.scale).to(self.dtype)

    def next(self, l1: float) -> torch.Tensor:
        k = round(l1 * self.f.numel() / 2)
        assert math.isclose(2 * k / self.f.numel(), l1), "l1 must be a multiple of 2/N"
        for _ in range(k):
            self.f[self.pos % self.f.numel()] *= -1
            self.pos += 1
        return (self.f * self.scale).to(self.dtype)


def drive(ctrl: DeltaController, l1s, t0: float = 1000.0, dt: float = 10.0, flipper: Flipper | None = None):
    """One sampling run: step 0 then one step per entry of ``l1s``; returns the bits per step."""
    fl = flipper or Flipper()
    bits = []
    for i in range(len(l1s) + 1):
        bits.append(ctrl.begin_call(t0 - i * dt))
        ctrl.end_call(fl.first() if i == 0 else fl.next(l1s[i - 1]))
    return bits


# --------------------------------------------------------------------------------------------- decisions
def test_constant_005_alternates():
    # L1=0.05 per step, δ=0.09: step0 A8 (first step), step1 A8 (acc=+inf: no L1 yet, reset by step 0),
    # step2 acc=.05 -> A4; step3 acc=.10 -> A8 (reset to .05); step4 A4; ...
    c = DeltaController()
    bits = drive(c, [0.05] * 7)
    assert bits == [8, 8, 4, 8, 4, 8, 4, 8]
    accs = [r.acc for r in c.trace]
    assert accs[:2] == [INF, INF]
    assert accs[2:] == pytest.approx([0.05, 0.10, 0.05, 0.10, 0.05, 0.10])
    l1 = [r.l1 for r in c.trace]
    assert l1[0] is None and l1[1:] == pytest.approx([0.05] * 7)


def test_accumulates_until_delta():
    # L1=0.02: acc .02 .04 .06 .08 (all < .09 -> A4), .10 -> A8 resets to .02, ...
    c = DeltaController()
    assert drive(c, [0.02] * 11) == [8, 8, 4, 4, 4, 4, 8, 4, 4, 4, 4, 8]
    assert [r.acc for r in c.trace][2:7] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10])


def test_high_step_resets_to_its_own_l1():
    # L1: -, .05, .01, .20, .01, .01, .05
    # s0 A8; s1 A8 (inf) -> acc=.05; s2 A4 -> .06; s3 A4 -> .26; s4 A8 -> acc = L1_4 = .01 (not 0, not .27);
    # s5 A4 (.01) -> .02; s6 A4 (.02) -> .07; s7 A4 (.07)
    c = DeltaController()
    assert drive(c, [0.05, 0.01, 0.20, 0.01, 0.01, 0.05, 0.01]) == [8, 8, 4, 4, 8, 4, 4, 4]
    assert [r.acc for r in c.trace][2:] == pytest.approx([0.05, 0.06, 0.26, 0.01, 0.02, 0.07])


def test_big_change_forces_high_next_step():
    # acc .05 -> A4; L1_2 = .30 -> acc .35 -> A8 -> acc = L1_3 = .30 -> A8 -> .01 -> A4
    c = DeltaController()
    assert drive(c, [0.05, 0.30, 0.30, 0.01, 0.01]) == [8, 8, 4, 8, 8, 4]


def test_min_high_steps():
    c = DeltaController(min_high_steps=3)
    # steps 0..2 forced A8 (acc after step 2 = .05); s3 A4 (.05) -> .10; s4 A8; s5 A4
    assert drive(c, [0.05] * 5) == [8, 8, 8, 4, 8, 4]


def test_other_bit_pair_and_delta():
    c = DeltaController(delta=0.15, low=3, high=6)
    # .05 -> A3 (.05) -> .10 A3 -> .15 not < .15 -> A6 -> .05 -> A3
    assert drive(c, [0.05] * 5) == [6, 6, 3, 3, 6, 3]


def test_delta_extremes():
    assert drive(DeltaController(delta=1e-9), [0.01] * 5) == [8] * 6
    # δ→∞: all A4 after the two undefined-L1 steps
    assert drive(DeltaController(delta=1e9), [0.05] * 5) == [8, 8, 4, 4, 4, 4]


@pytest.mark.parametrize("mode,expected", [("low", [4] * 6), ("high", [8] * 6)])
def test_forced_modes_still_trace(mode, expected):
    c = DeltaController(mode=mode)
    assert drive(c, [0.05] * 5) == expected
    tr = c.trace
    assert [r.l1 for r in tr][1:] == pytest.approx([0.05] * 5)
    if mode == "high":  # every step high: acc is always the last L1
        assert [r.acc for r in tr][2:] == pytest.approx([0.05] * 4)
    else:  # every step low: acc keeps summing (+inf after the undefined first L1)
        assert all(r.acc == INF for r in tr)


def test_zero_change_and_zero_output():
    c = DeltaController()
    bits = []
    for i in range(5):
        bits.append(c.begin_call(float(100 - i)))
        c.end_call(torch.zeros(8))  # 0/0: unchanged output, L1 = 0
    assert bits == [8, 8, 4, 4, 4]
    assert [r.l1 for r in c.trace][1:] == [0.0] * 4


def test_nan_output_counts_as_inf():
    c = DeltaController()
    fl = Flipper()
    outs = [fl.first(), fl.next(0.02), torch.full((N,), math.nan), fl.next(0.02), fl.next(0.02)]
    bits = []
    for i, o in enumerate(outs):
        bits.append(c.begin_call(float(100 - i)))
        c.end_call(o)
    # s2 A4 (acc .02); its L1 is NaN -> acc +inf -> s3 A8; L1_3 vs NaN prev is NaN -> +inf -> s4 A8
    assert bits == [8, 8, 4, 8, 8]
    assert math.isnan(c.trace[2].l1)


# --------------------------------------------------------------------------------------------- CFG
def test_cfg_two_calls_same_bits_mean_l1():
    # call 0 changes by .02, call 1 by .06 (and is 1000x larger: a ratio of sums would give ~.06, a
    # cond-vs-uncond comparison something else); the step's L1 is the mean .04.
    # s0 A8, s1 A8 -> .04; s2 A4 -> .08; s3 A4 (.08) -> .12; s4 A8 -> .04; s5 A4
    c = DeltaController()
    cond, uncond = Flipper(), Flipper(scale=1000.0)
    pairs = []
    for i in range(6):
        t = torch.tensor([1000.0 - 50 * i])
        b0 = c.begin_call(t)
        c.end_call((cond.first() if i == 0 else cond.next(0.02),))
        b1 = c.begin_call(t)
        c.end_call((uncond.first() if i == 0 else uncond.next(0.06),))
        pairs.append((b0, b1))
    assert pairs == [(8, 8), (8, 8), (4, 4), (4, 4), (8, 8), (4, 4)]
    tr = c.trace
    assert [r.calls for r in tr] == [2] * 6
    assert [r.l1 for r in tr][1:] == pytest.approx([0.04] * 5)
    assert len(c._prev) == 2  # one previous output per call index, no more


def test_batched_cfg_one_call():
    # CogVideoX: one call with [uncond; cond] in the batch: L1 over the whole output
    c = DeltaController()
    a, b = Flipper(), Flipper()
    bits = []
    for i in range(6):
        bits.append(c.begin_call(torch.full((2,), 900.0 - 100 * i)))
        out = torch.stack([a.first(), b.first()]) if i == 0 else torch.stack([a.next(0.02), b.next(0.04)])
        c.end_call(out)
    # whole-tensor L1 = (4 + 8) / 400 = .03: s2 A4 (.03) -> .06; s3 A4 -> .09; s4 A8 -> .03; s5 A4
    assert bits == [8, 8, 4, 4, 8, 4]
    assert [r.l1 for r in c.trace][1:] == pytest.approx([0.03] * 5)
    assert [r.calls for r in c.trace] == [1] * 6


def test_call_missing_in_one_step_uses_present_indices():
    c = DeltaController()
    a, b = Flipper(), Flipper()
    c.begin_call(3.0), c.end_call(a.first()), c.begin_call(3.0), c.end_call(b.first())
    c.begin_call(2.0), c.end_call(a.next(0.02))  # only call 0 this step
    c.begin_call(1.0)
    assert c.trace[1].l1 == pytest.approx(0.02)


# --------------------------------------------------------------------------------------------- runs, timesteps
def test_restart_when_timestep_jumps_up():
    c = DeltaController()
    fl = Flipper()
    drive(c, [0.05] * 3, t0=1000.0, flipper=fl)
    bits = drive(c, [0.05] * 3, t0=1000.0, flipper=fl)  # same schedule again: a new run
    assert bits == [8, 8, 4, 8]
    tr = c.trace
    assert [(r.run, r.step) for r in tr] == [(0, i) for i in range(4)] + [(1, i) for i in range(4)]
    assert tr[4].l1 is None and tr[4].acc == INF  # previous outputs dropped: no L1 across runs
    assert tr[5].acc == INF
    assert c.average_bits(run=0) == c.average_bits(run=1) == 7.0


def test_explicit_reset():
    c = DeltaController()
    fl = Flipper()
    drive(c, [0.05] * 3, t0=1000.0, flipper=fl)
    c.reset()
    # continues *down* the schedule: without reset() this would be step 4 of run 0
    bits = drive(c, [0.05] * 2, t0=500.0, flipper=fl)
    assert bits == [8, 8, 4]
    assert [(r.run, r.step) for r in c.trace][4:] == [(1, 0), (1, 1), (1, 2)]
    assert c.trace[3].l1 == pytest.approx(0.05)  # the last step of run 0 was finalized before the reset
    c.reset()
    c.reset()  # idempotent: no empty run
    c.begin_call(10.0)
    assert c.trace[-1].run == 2


def test_per_token_timestep_tensor():
    # Wan 2.2 TI2V: timestep [B, tokens], first-frame tokens at 0: the key is the max
    c = DeltaController()
    fl = Flipper()
    bits = []
    for i in range(6):
        t = 1000.0 - 100 * i
        ts = torch.full((2, 64), t)
        ts[:, :16] = 0.0
        bits.append(c.begin_call(ts))
        c.end_call(fl.first() if i == 0 else fl.next(0.05))
        bits.append(c.begin_call(ts.clone()))  # a second call with an equal (not the same) tensor
        c.end_call(fl.first() if i == 0 else fl.f.clone())
    assert bits[::2] == bits[1::2] == [8, 8, 4, 8, 4, 8]
    assert [r.timestep for r in c.trace] == [1000.0 - 100 * i for i in range(6)]


@pytest.mark.parametrize("make", [
    lambda t: t, lambda t: int(t), lambda t: torch.tensor(t), lambda t: torch.tensor([t, t, t]),
    lambda t: torch.tensor([int(t)]), lambda t: torch.tensor(t, dtype=torch.bfloat16),
], ids=["float", "int", "0d", "1d", "int64", "bf16"])
def test_timestep_kinds(make):
    c = DeltaController()
    fl = Flipper()
    bits = []
    for i in range(5):
        bits.append(c.begin_call(make(960.0 - 32 * i)))
        c.end_call(fl.first() if i == 0 else fl.next(0.05))
    assert bits == [8, 8, 4, 8, 4]
    assert [r.timestep for r in c.trace] == [960.0 - 32 * i for i in range(5)]


def test_manual_steps_with_none_timestep():
    c = DeltaController()
    cond, uncond = Flipper(), Flipper()
    bits = []
    for i in range(5):
        c.step()
        for fl in (cond, uncond):
            bits.append(c.begin_call(None))
            c.end_call(fl.first() if i == 0 else fl.next(0.05))
    assert bits == [8, 8, 8, 8, 4, 4, 8, 8, 4, 4]
    assert [r.timestep for r in c.trace] == [None] * 5
    # step(t) records t and detects a restart when t jumps up
    c.step(10.0), c.begin_call(None), c.end_call(cond.f)
    c.step(5.0), c.begin_call(None), c.end_call(cond.f)
    c.step(10.0), c.begin_call(None), c.end_call(cond.f)
    assert [(r.run, r.step, r.timestep) for r in c.trace][5:] == [(0, 5, 10.0), (0, 6, 5.0), (1, 0, 10.0)]


def test_none_timestep_without_step_joins_current_step():
    c = DeltaController()
    c.begin_call(1.0), c.end_call(torch.ones(4))
    assert c.begin_call(None) == 8
    c.end_call(torch.ones(4))
    assert len(c.trace) == 1 and c.trace[0].calls == 2


# --------------------------------------------------------------------------------------------- sharing
def _wan22(ctrls, steps=8, boundary=500.0, runs=2):
    """Two experts: A for t >= boundary, B below; CFG as two calls. ``ctrls`` = (ctrl of A, ctrl of B)."""
    fls = {("A", 0): Flipper(), ("A", 1): Flipper(), ("B", 0): Flipper(), ("B", 1): Flipper()}
    for _ in range(runs):
        for i in range(steps):
            t = 1000.0 - 125 * i  # 1000 .. 125; A: 1000..500 (5 steps), B: 375..125 (3 steps)
            e = "A" if t >= boundary else "B"
            ctrl = ctrls[0] if e == "A" else ctrls[1]
            ts = torch.tensor([t])
            for j in (0, 1):
                b = ctrl.begin_call(ts)
                fl = fls[("A", j)]  # one output stream: a shared controller compares across experts
                ctrl.end_call(fl.next(0.05) if i else fl.f.clone())
                assert b in (4, 8)


def test_shared_controller_between_experts():
    shared = DeltaController()
    _wan22((shared, shared))
    tr = shared.trace
    assert [(r.run, r.step) for r in tr] == [(0, i) for i in range(8)] + [(1, i) for i in range(8)]
    assert [r.bits for r in tr][:8] == [8, 8, 4, 8, 4, 8, 4, 8]  # continuous across the expert switch
    assert tr[5].l1 == pytest.approx(0.05)  # first B step compared with the last A step


def test_separate_controllers_per_expert():
    a, b = DeltaController(), DeltaController()
    _wan22((a, b))
    assert [(r.run, r.step, r.bits) for r in a.trace] == \
        [(0, 0, 8), (0, 1, 8), (0, 2, 4), (0, 3, 8), (0, 4, 4), (1, 0, 8), (1, 1, 8), (1, 2, 4), (1, 3, 8),
         (1, 4, 4)]
    # B starts its own run at the boundary (A8 first) and restarts when the next run's t jumps up
    assert [(r.run, r.step, r.bits) for r in b.trace] == \
        [(0, 0, 8), (0, 1, 8), (0, 2, 4), (1, 0, 8), (1, 1, 8), (1, 2, 4)]


# --------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,match", [
    (dict(delta=0), r"delta=0 .*finite number > 0"),
    (dict(delta=-0.1), r"delta=-0\.1 .*finite number > 0"),
    (dict(delta=math.nan), r"delta=nan .*finite number > 0"),
    (dict(delta=math.inf), r"delta=inf .*finite number > 0"),
    (dict(delta="0.09"), r"delta='0\.09' .*finite number > 0"),
    (dict(delta=True), r"delta=True .*finite number > 0"),
    (dict(low=8, high=8), r"low=8, high=8 .*low < high"),
    (dict(low=8, high=4), r"low=8, high=4 .*low < high"),
    (dict(low=2), r"low=2 .*\(3, 4, 5, 6, 7, 8\)"),
    (dict(high=16), r"high=16 .*\(3, 4, 5, 6, 7, 8\)"),
    (dict(low=4.0), r"low=4\.0 .*\(3, 4, 5, 6, 7, 8\)"),
    (dict(min_high_steps=0), r"min_high_steps=0 .*int >= 1"),
    (dict(min_high_steps=1.5), r"min_high_steps=1\.5 .*int >= 1"),
    (dict(mode="auto"), r"mode='auto' .*\('switch', 'low', 'high'\)"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match) as ei:
        DeltaController(**kwargs)
    assert "DeltaController option" in str(ei.value)


def test_supported_bits_match_quant():
    from dvdq_compile.quant import act

    assert tuple(act.ACT_BITS) == SUPPORTED_BITS


def test_call_protocol_errors():
    c = DeltaController()
    with pytest.raises(RuntimeError, match="without a matching begin_call"):
        c.end_call(torch.ones(2))
    c.begin_call(1.0)
    with pytest.raises(TypeError, match="expected a tensor"):
        c.end_call(("not a tensor",))
    with pytest.raises(TypeError, match="timestep"):
        c.begin_call("999")
    with pytest.raises(ValueError, match="empty timestep"):
        c.begin_call(torch.tensor([]))


# --------------------------------------------------------------------------------------------- outputs, memory
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_outputs_l1_in_fp32(dtype):
    c = DeltaController()
    assert drive(c, [0.05] * 3, flipper=Flipper(dtype=dtype, scale=3.0)) == [8, 8, 4, 8]
    assert [r.l1 for r in c.trace][1:] == pytest.approx([0.05] * 3)
    (prev, den), = c._prev.values()
    assert prev.dtype == dtype and den.dtype == torch.float32


def test_output_forms_and_detached_clone():
    class Out:  # like Transformer2DModelOutput(sample=...)
        def __init__(self, s):
            self.sample = s

    c = DeltaController()
    x = torch.ones(N, requires_grad=True)
    c.begin_call(2.0)
    out = x * 1.0
    c.end_call([out])
    prev, _ = c._prev[0]
    assert not prev.requires_grad and prev.grad_fn is None
    with torch.no_grad():
        out.mul_(5.0)  # the caller edits its output in place: the stored copy must not change
    assert torch.equal(prev, torch.ones(N))
    fl = Flipper()
    c.begin_call(1.0), c.end_call({"sample": fl.next(0.05)})
    c.begin_call(0.5), c.end_call(Out(fl.next(0.05)))
    c.begin_call(0.2)
    assert [r.l1 for r in c.trace][1:3] == pytest.approx([0.05, 0.05])


def test_shape_change_gives_undefined_l1():
    c = DeltaController()
    fl = Flipper()
    c.begin_call(3.0), c.end_call(fl.first())
    c.begin_call(2.0), c.end_call(fl.next(0.02))
    c.begin_call(1.0), c.end_call(torch.ones(10))  # A4 step; no comparable previous output
    assert c.begin_call(0.5) == 8  # undefined L1 counts as +inf
    assert c.trace[2].l1 is None


# --------------------------------------------------------------------------------------------- trace, stats
def test_trace_rows_average_summary_json():
    c = DeltaController()
    drive(c, [0.05] * 3, t0=900.0, dt=100.0)
    tr = c.trace
    assert all(isinstance(r, StepRecord) for r in tr)
    assert tr[0] == StepRecord(run=0, step=0, timestep=900.0, l1=None, acc=INF, bits=8, calls=1)
    assert (tr[2].run, tr[2].step, tr[2].timestep, tr[2].bits, tr[2].calls) == (0, 2, 700.0, 4, 1)
    assert tr[2].acc == pytest.approx(0.05) and tr[2].l1 == pytest.approx(0.05)
    assert c.average_bits() == (8 + 8 + 4 + 8) / 4
    assert math.isnan(DeltaController().average_bits())
    s = c.summary()
    assert "delta=0.09" in s and "8848" in s and "7.00" in s
    d = json.loads(c.to_json())
    assert d["delta"] == 0.09 and d["low"] == 4 and d["high"] == 8 and d["mode"] == "switch"
    assert d["trace"][0] == {"run": 0, "step": 0, "timestep": 900.0, "l1": None, "acc": None, "bits": 8,
                             "calls": 1, "est": None}
    assert d["cache"]["policy"]["rule"] == "off" and d["cache"]["computed_calls"] == 4
    assert d["trace"][3]["l1"] == pytest.approx(0.05)
    assert d["average_bits"] == 7.0


def test_last_step_l1_shows_in_trace():
    c = DeltaController()
    drive(c, [0.05, 0.02])
    assert c.trace[-1].l1 == pytest.approx(0.02)  # resolved when the trace is read


# --------------------------------------------------------------------------------------------- host syncs
class SyncCounter:
    """Counts device->host reads made by the controller: its single read point ``_host_read`` is counted, and
    any other tensor->host conversion (item/tolist/float/int/bool/cpu/numpy) while a controller method runs
    fails the test."""

    def __init__(self, monkeypatch, ctrl):
        self.n = 0
        self.inside = False
        self.reading = False
        real = delta_mod._host_read

        def host_read(t):
            self.n += 1
            self.reading = True
            try:
                return real(t)
            finally:
                self.reading = False

        monkeypatch.setattr(delta_mod, "_host_read", host_read)
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
            def wrapped(t, *a, _orig=getattr(torch.Tensor, name), _name=name, **k):
                if self.inside and not self.reading:
                    raise AssertionError(f"controller called Tensor.{_name} outside _host_read")
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)
        for meth in ("begin_call", "end_call"):
            def w(*a, _orig=getattr(ctrl, meth), **k):
                self.inside = True
                try:
                    return _orig(*a, **k)
                finally:
                    self.inside = False

            setattr(ctrl, meth, w)


@pytest.mark.parametrize("kind", ["tensor", "float"])
def test_at_most_one_host_read_per_step_with_cfg(monkeypatch, kind):
    c = DeltaController()
    cnt = SyncCounter(monkeypatch, c)
    cond, uncond = Flipper(), Flipper()
    steps = 12
    for i in range(steps):
        t = 1000.0 - 80 * i
        ts = torch.tensor([t]) if kind == "tensor" else t
        before = cnt.n
        for fl in (cond, uncond):  # Wan: the same timestep tensor for both calls
            c.begin_call(ts)
            c.end_call(fl.first() if i == 0 else fl.next(0.05))
        assert cnt.n - before <= 1
    assert cnt.n <= steps
    assert [r.bits for r in c.trace] == [8, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8]


def test_in_place_timestep_update_is_seen(monkeypatch):
    # a persistent timestep buffer filled in place each step (version counter changes): re-read, new step
    c = DeltaController()
    ts = torch.zeros(2)
    fl = Flipper()
    for i in range(4):
        ts.fill_(100.0 - i)
        c.begin_call(ts)
        c.end_call(fl.first() if i == 0 else fl.next(0.05))
    assert [r.timestep for r in c.trace] == [100.0, 99.0, 98.0, 97.0]


@pytest.mark.gpu
def test_cuda_bf16_at_most_one_sync_per_step():
    """On CUDA, the sync debug mode flags every synchronizing call: at most one per step (CFG, two calls)."""
    dev = torch.device("cuda")
    c = DeltaController()
    cond, uncond = Flipper(dtype=torch.bfloat16), Flipper(dtype=torch.bfloat16, scale=4.0)
    outs = [(cond.first(), uncond.first())] + [(cond.next(0.05), uncond.next(0.05)) for _ in range(7)]
    outs = [(a.to(dev), b.to(dev)) for a, b in outs]
    timesteps = torch.linspace(1000, 100, 8, device=dev)
    torch.cuda.synchronize()
    syncs, bits = [], []
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for i in range(8):
            ts = timesteps[i].expand(2)  # a view: no sync
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                b0 = c.begin_call(ts)
                c.end_call((outs[i][0],))
                b1 = c.begin_call(ts)
                c.end_call((outs[i][1],))
            syncs.append(sum("synchroniz" in str(x.message).lower() for x in w))
            bits.append((b0, b1))
    finally:
        torch.cuda.set_sync_debug_mode(old)
    assert max(syncs) <= 1, syncs
    assert bits == [(b, b) for b in [8, 8, 4, 8, 4, 8, 4, 8]]
    assert [r.l1 for r in c.trace][1:] == pytest.approx([0.05] * 7)
    (p0, _), (p1, _) = c._prev[0], c._prev[1]
    assert p1.device.type == "cuda"
    assert p0.device.type == "cuda" and p0.dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------- scheduler loop
def _delta_plot():
    """bench/delta_plot.py (its synthetic CFG sampling loop and its plotting)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "delta_plot.py"
    spec = importlib.util.spec_from_file_location("_delta_plot", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scheduler_loop(monkeypatch):
    c = DeltaController(delta=0.09)
    cnt = SyncCounter(monkeypatch, c)
    _, sched = _delta_plot().run_fake(0.09, steps=20, ctrl=c)  # Euler flow matching, CFG 3 as two calls per step
    assert cnt.n <= 20  # at most one host read per step (the first step has nothing to read)
    tr = c.trace
    assert len(tr) == 20 and all(r.calls == 2 for r in tr) and {r.run for r in tr} == {0}
    assert [r.timestep for r in tr] == pytest.approx(sched.timesteps.tolist())
    assert {r.bits for r in tr} == {4, 8}
    assert tr[0].bits == tr[1].bits == 8
    assert 4 < c.average_bits() < 8
    # consistency of the recorded decisions with the definition
    acc = INF
    for i, r in enumerate(tr):
        assert r.acc == pytest.approx(acc) if math.isfinite(acc) else r.acc == INF
        assert r.bits == (8 if i < 1 or not acc < 0.09 else 4)
        l1 = INF if r.l1 is None else r.l1
        acc = l1 if r.bits == 8 else acc + l1


def test_plot_trace_smoke(tmp_path):
    mod = _delta_plot()
    c = DeltaController()
    fl = Flipper()
    drive(c, [0.05] * 4, flipper=fl)
    drive(c, [0.02] * 4, flipper=fl)  # a second run: drawn after a separator
    from PIL import Image
    out = mod.plot_trace(c.trace, c.delta, str(tmp_path / "t.png"))
    out_j = mod.plot_trace(json.loads(c.to_json())["trace"], c.delta, str(tmp_path / "j.png"))  # JSON rows
    with Image.open(out) as a, Image.open(out_j) as b:  # the same trace given both ways draws the same picture
        assert a.size == b.size and a.size[0] > 200 and list(a.getdata()) == list(b.getdata())
