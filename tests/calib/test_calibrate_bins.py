"""calibrate(timestep_bins=...): per-bin statistics from the model's timestep, shared-input groups, extras."""
import pytest
import torch

from dvdq_compile import Calibration, calibrate
from dvdq_compile.calibrate import TimestepBins
from tests.helpers import TinyDiT


def _run(ts, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(1, 16, 24, generator=g) * (1 + i) for i in range(len(ts))]

    def run(m):
        for x, t in zip(xs, ts):
            m(x, timestep=torch.tensor([t]))
    return xs, run


def test_bins_index():
    b = TimestepBins.uniform(4)
    assert b.edges == (250.0, 500.0, 750.0) and b.n == 4
    assert [b.index(t) for t in (0, 249.9, 250, 999, 1000)] == [0, 0, 1, 3, 3]
    edges = torch.tensor(b.edges)
    for t in (0.0, 249.9, 250.0, 600.0, 999.0):  # the graph's bucketize agrees with the host lookup
        assert int(torch.bucketize(torch.tensor([t]), edges, right=True)) == b.index(t)
    with pytest.raises(ValueError, match="strictly increasing"):
        TimestepBins((5.0, 1.0))
    with pytest.raises(ValueError, match="timestep_bins"):
        TimestepBins.of(0)


def test_per_bin_statistics_follow_the_timestep():
    model = TinyDiT()
    seen = []
    h = model.blocks[0].ff1.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    _, run = _run([900.0, 100.0, 950.0])
    cal = calibrate(model, run, timestep_bins=2)
    h.remove()
    st = cal.stats["blocks.0.ff1"]
    assert st.absmax_bins.shape == (2, 128) and st.tokens_bins == [16, 32]
    want_hi = torch.maximum(seen[0].abs().amax((0, 1)), seen[2].abs().amax((0, 1)))
    torch.testing.assert_close(st.absmax_bins[1], want_hi)
    torch.testing.assert_close(st.absmax_bins[0], seen[1].abs().amax((0, 1)))
    torch.testing.assert_close(st.absmax, torch.maximum(want_hi, st.absmax_bins[0]))
    assert cal.bins.edges == (500.0,)


def test_groups_and_round_trip(tmp_path):
    model = TinyDiT()
    _, run = _run([900.0, 100.0])
    calls = []
    cal = calibrate(model, run, hessian=True, timestep_bins=(300.0, 600.0),
                    observers=lambda n, x, b: calls.append((n, b)))
    assert ["blocks.0.to_k", "blocks.0.to_q", "blocks.0.to_v"] in cal.groups
    assert ["blocks.0.ff1"] in cal.groups and ["blocks.0.to_out"] in cal.groups
    assert ("blocks.1.ff2", 2) in calls and ("blocks.1.ff2", 0) in calls
    cal.recipe_tensors["x::y"] = torch.arange(6.0).reshape(2, 3)
    back = Calibration.load(cal.save(tmp_path / "c.safetensors"))
    assert back.bins == cal.bins and back.groups == cal.groups and torch.equal(back.recipe_tensors["x::y"], cal.recipe_tensors["x::y"])
    for name, st in cal.stats.items():
        b = back.stats[name]
        assert torch.equal(b.absmax_bins, st.absmax_bins) and b.tokens_bins == st.tokens_bins
        assert torch.equal(b.xtx, st.xtx)


def test_missing_timestep_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="without a `timestep`"):
        calibrate(model, lambda m: m(torch.ones(2, 4)), timestep_bins=2)
