"""free_weights: the 16-bit copies of quantized weights are released, the compiled model is unchanged, and every
path that could still read a released weight raises FreedWeightError instead of reading freed memory."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dvdq_compile
from dvdq_compile import FreedWeightError, calibrate
from tests.helpers import TinyDiT, compiled, rel_err

ROOT = Path(__file__).resolve().parents[2]
X = torch.randn(2, 20, 24, generator=torch.Generator().manual_seed(1))
T = torch.tensor([500, 500])
BLOCK_WEIGHTS = {f"blocks.{i}.{n}.weight" for i in range(2)
                 for n in ("to_q", "to_k", "to_v", "to_out", "ff1", "ff2", "norm1.linear")}


def storage(p) -> int:
    return p.untyped_storage().nbytes()


def test_released_and_output_unchanged():
    kept, model = TinyDiT(), TinyDiT()  # same seeded weights
    with torch.no_grad():
        want = compiled(kept, act_bits=8)(X, T)
        c = compiled(model, act_bits=8, free_weights=True)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        y1 = c(X, T)
        y2 = c(X, T)
    assert torch.equal(y1, want) and torch.equal(y2, want)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1  # freeing recompiled nothing
    released = dvdq_compile.freed_weights(model)
    assert set(released) == BLOCK_WEIGHTS  # the 14 quantized weights (q/k/v, out, ffn, modulation)
    params = dict(model.named_parameters())
    assert all(storage(params[n]) == 0 for n in released)
    assert all(storage(p) == p.numel() * 4 for n, p in params.items() if n not in released)
    assert sum(released.values()) == sum(params[n].numel() * 4 for n in released)
    rep = dvdq_compile.report(c)
    assert rep.freed_bytes == sum(released.values()) and "released" in rep.summary()
    assert {r.name for r in rep.layers if r.freed} == {n[:-len(".weight")] for n in released}


def test_new_shape_recompiles_from_the_cache():
    """A recompile for a new shape gets the released parameters as example inputs: it must not read them."""
    kept, model = TinyDiT(), TinyDiT()
    x2 = torch.randn(1, 12, 24)
    opts = dict(act_bits=8, lowering="eager", kernels="reference", progress=False)
    torch._dynamo.reset()
    # fullgraph: the eager-read guard (a global module hook) is traced on the recompile and must fold away
    c = torch.compile(model, backend="dvdquant", options=dict(opts, free_weights=True), dynamic=False,
                      fullgraph=True)
    r = torch.compile(kept, backend="dvdquant", options=opts, dynamic=False)
    with torch.no_grad():
        assert torch.equal(c(X, T), r(X, T))
        assert torch.equal(c(x2, T[:1]), r(x2, T[:1]))
    assert len(dvdq_compile.freed_weights(model)) == 14


def test_smoothquant_recompile_after_free():
    kept, model = TinyDiT(), TinyDiT()
    x2 = torch.randn(1, 24, 24)  # M = 24 > min_tokens: the layers stay smoothed (same spec, cache hit)
    cal = calibrate(model, lambda m: m(X, T))
    opts = dict(recipe="smoothquant", artifact=cal, act_bits=4, lowering="eager", kernels="reference",
                progress=False)
    torch._dynamo.reset()
    c = torch.compile(model, backend="dvdquant", options=dict(opts, free_weights=True), dynamic=False)
    r = torch.compile(kept, backend="dvdquant", options=opts, dynamic=False)
    with torch.no_grad():
        assert torch.equal(c(X, T), r(X, T))
        assert torch.equal(c(x2, T[:1]), r(x2, T[:1]))


def test_other_graphs_cannot_read_released_weights():
    model = TinyDiT()
    with torch.no_grad():
        compiled(model, act_bits=8, free_weights=True)(X, T)
        with pytest.raises(FreedWeightError, match=r"blocks\.\d\.\w+.*restore_weights"):
            compiled(model, weight_bits=8)(X, T)  # another weight spec: would quantize the released weights again
        with pytest.raises(FreedWeightError, match="keeps this weight in full precision"):
            compiled(model, exclude=["*"])(X, T)  # a full-precision graph reads the parameters
    with pytest.raises(FreedWeightError, match="restore_weights"):
        dvdq_compile.requantize(model)


def test_restore_weights(tmp_path):
    model = TinyDiT()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        fp = model(X, T)
        c = compiled(model, act_bits=8, free_weights=True)
        y = c(X, T)
    assert dvdq_compile.restore_weights(model, sd) == dict.fromkeys(BLOCK_WEIGHTS, False)
    assert dvdq_compile.freed_weights(model) == {}
    with torch.no_grad():
        assert torch.equal(model(X, T), fp)  # eager works again, with the original values
        assert torch.equal(c(X, T), y)  # same values: the cached quantized copies were kept
    assert len(dvdq_compile.freed_weights(model)) == 14  # the option stays on: released again

    # Restored with other values (from a file): those weights are requantized on the next call.
    sd["blocks.0.ff1.weight"] = sd["blocks.0.ff1.weight"] * 0.5
    torch.save(sd, tmp_path / "sd.pt")
    changed = dvdq_compile.restore_weights(model, tmp_path / "sd.pt")
    assert [k for k, v in changed.items() if v] == ["blocks.0.ff1.weight"]
    with torch.no_grad():
        y_new = c(X, T)
        want = compiled(TinyDiT().requires_grad_(False), act_bits=8)  # fresh model with the edited weight
        want._orig_mod.blocks[0].ff1.weight.mul_(0.5)
        assert torch.equal(y_new, want(X, T)) and rel_err(y_new, y) > 1e-3

    with pytest.raises(KeyError, match="lacks 14 released"):
        dvdq_compile.restore_weights(model, {})
    bad = dict(sd, **{"blocks.0.ff1.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"ff1\.weight has shape \(256, 128\), the value given has \(3, 3\)"):
        dvdq_compile.restore_weights(model, bad)
    assert len(dvdq_compile.freed_weights(model)) == 14  # nothing restored


def test_shared_storage_is_kept(caplog):
    model = TinyDiT()
    buf = torch.zeros(2, 128, 128)
    with torch.no_grad():
        buf[1].copy_(model.blocks[0].to_q.weight)
    model.blocks[0].to_q.weight = torch.nn.Parameter(buf[1])  # a view into a bigger buffer
    with torch.no_grad(), caplog.at_level("WARNING", logger="dvdq_compile"):
        compiled(model, act_bits=8, free_weights=True)(X, T)
    assert "blocks.0.to_q.weight" not in dvdq_compile.freed_weights(model)
    assert storage(model.blocks[0].to_q.weight) == buf.numel() * 4
    assert "storage is shared" in caplog.text and len(dvdq_compile.freed_weights(model)) == 13


def test_option_validation():
    with pytest.raises(ValueError, match="free_weights='yes' is not allowed; expected bool"):
        dvdq_compile.QuantConfig.from_options({"free_weights": "yes"})


EAGER_PATHS = textwrap.dedent("""
    import os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import dvdq_compile
    from tests.helpers import TinyDiT

    X, T = torch.randn(2, 20, 24), torch.tensor([500, 500])
    OPTS = {"act_bits": 8, "lowering": "eager", "kernels": "reference", "progress": False, "free_weights": True}

    def attempt(case, fn):
        try:
            fn()
            print(case, "no error", flush=True)
        except dvdq_compile.FreedWeightError as e:
            print(case, "FreedWeightError", "restore_weights" in str(e), flush=True)

    with torch.no_grad():
        model = TinyDiT()
        torch.compile(model, backend="dvdquant", options=OPTS)(X, T)
        attempt("uncompiled", lambda: model(X, T))

        # Past Dynamo's recompile limit the frame runs eagerly (docs/architecture.md §8).
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = 1
        model = TinyDiT()
        c = torch.compile(model, backend="dvdquant", options=OPTS, dynamic=False)
        c(X, T)
        attempt("recompile_limit", lambda: c(torch.randn(1, 7, 24), T[:1]))
        torch._dynamo.config.recompile_limit = 8

        # A graph break: each part is its own graph; the Python between them is eager.
        class Broken(TinyDiT):
            def forward(self, x, timestep):
                h = super().forward(x, timestep)
                torch._dynamo.graph_break()
                return self.blocks[0].ff2(torch.nn.functional.pad(h, (0, 232))) + h.sum()

        torch._dynamo.reset()
        model = Broken()
        c = torch.compile(model, backend="dvdquant", options=OPTS)
        ok = torch.equal(c(X, T), c(X, T))
        print("graph_break compiled", ok, sorted(dvdq_compile.freed_weights(model))[:2], flush=True)
        attempt("graph_break_eager", lambda: model(X, T))
""")


def test_eager_paths_raise_instead_of_reading_freed_memory():
    """Run in a child process: a regression here would be a segfault, which must fail this test, not the suite."""
    r = subprocess.run([sys.executable, "-c", EAGER_PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    out = r.stdout
    assert "uncompiled FreedWeightError True" in out, out
    assert "recompile_limit FreedWeightError True" in out, out
    assert "graph_break compiled True ['blocks.0.ff1.weight', 'blocks.0.ff2.weight']" in out, out
    assert "graph_break_eager FreedWeightError True" in out, out
