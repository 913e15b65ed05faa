"""Context parallelism (diffusers' Ulysses hooks) and CFG-parallel under the dvdquant backend, on 2 and 4 gloo ranks
spawned on this machine: same output as one process, same quantized layers, no graph breaks, no recompiles, one
δ decision for all ranks.

The bound: per-token activation scales (and per-row weight quantization) do not depend on which rank holds a token,
so a shard changes nothing but the order of floating-point sums in ops whose blocking depends on the token count M.
The Triton kernels (the default) rotate and quantize each token with the same arithmetic whatever M is, and
attention runs on the same full sequence after Ulysses' all-to-all: those cases must be bit-identical
(``diff == 0``). The reference kernels (``kernels="reference"``, used where the Triton interpreter would cost
minutes) rotate with a BLAS matmul whose summation order depends on M (measured in one process: batch 2 vs two
batch-1 calls, 1.7e-6 apart in fp32 eager), which can move an activation to the other side of a rounding tie:
one code step on one element. Measured in one process with no parallelism at all, batch 2 vs 2 x batch 1: 3.5e-5
relative, 1.5e-3 max abs on outputs of magnitude 3.5. Those cases allow ``REF_BOUND`` relative error, 6x that;
an unquantized or mis-sharded model is 1e-2 or more away.
"""
from __future__ import annotations

import pytest

from .spawn import run_ranks
from .workers import compare, controller_group

REF = {"kernels": "reference"}
REF_BOUND = 2e-4


def _steps(trace):
    return None if trace is None else [(step, bits) for step, bits, _ in trace]


def _same_everywhere(results, exact=True):
    r0 = results[0]
    assert r0["diff"] == 0.0 if exact else r0["rel"] <= REF_BOUND, (r0["diff"], r0["rel"])
    assert r0["bits"] == [None] * len(r0["bits"]) or [_steps(t) for t in r0["bits"]] == \
        [_steps(t) for t in r0["ref_bits"]], "the parallel model took other δ decisions than one process"
    for r in results:
        assert r["breaks"] == 0, r["breaks"]
        assert r["graphs"] == len(r["rows"]), "a second step recompiled"  # one graph per compiled model
        assert r["rows"] == r0["ref_rows"], "the parallel model quantizes other layers than one process"
        assert r["bits"] == r0["bits"], "ranks took different δ decisions"
        assert all(bool((o == o0).all()) for o, o0 in zip(r["out"], r0["out"]))  # every rank: the full output
    quantized = [row for rows in r0["rows"] for row in rows if row[1] == "quantize"]
    assert quantized and all(name.split(".")[0] in ("blocks", "transformer_blocks") for name, *_ in quantized)


def test_ulysses_matches_one_process_fullgraph():
    """The done-criterion: Wan, Ulysses over 2 ranks, fullgraph=True, default kernels, W4A8."""
    res = run_ranks(compare, 2, "wan", {"ulysses": 2}, {"act_bits": 8}, True, (900,))
    _same_everywhere(res)
    assert res[0]["calls"] == 2


def test_ulysses_two_experts_delta_switching():
    """Wan 2.2's two experts share a controller; A4/A8 switching; the default torch.compile (no fullgraph); every
    rank takes the single process's decisions, with at most one all-reduce per step."""
    opts = dict(REF, act_bits="auto", delta=2.0)
    steps = (900, 700, 500)
    res = run_ranks(compare, 2, "wan1", {"ulysses": 2}, opts, False, steps, False, True)
    _same_everywhere(res, exact=False)
    r = res[0]
    assert {b for _, b, _ in r["bits"][0]} == {4, 8}, r["bits"]  # the test exercises both variants
    assert 0 < r["reduces"] <= len(steps)


def test_cfg_parallel_batched():
    """CFG-parallel: cond and uncond stacked on dim 0, one half per rank, gathered (default kernels: exact).

    The reference is one process running each half as its own call, which is what each rank computes. One process
    running the batch of 2 differs from it by fp32 summation order (1.4e-6 max abs on this model) and, at t=500,
    by one activation code flipped at a rounding tie in the batch-2 run (7.3e-3 max abs, 2e-4 relative): batching,
    not parallelism, makes that difference."""
    res = run_ranks(compare, 2, "wan1", {"cfg": 2}, {"act_bits": 8}, True, (900, 500), True)
    _same_everywhere(res)


def test_ltx_ulysses():
    res = run_ranks(compare, 2, "ltx", {"ulysses": 2}, dict(REF, act_bits=8), True, (900,))
    _same_everywhere(res, exact=False)


def test_four_ranks_cfg_times_ulysses_free_weights():
    """CFG 2 x Ulysses 2; each rank quantizes its own full copy of the weights and free_weights frees it."""
    opts = dict(REF, act_bits="auto", delta=2.0, free_weights=True)
    res = run_ranks(compare, 4, "wan1", {"cfg": 2, "ulysses": 2}, opts, True, (900, 700, 500), True, timeout=600)
    _same_everywhere(res, exact=False)
    assert {b for _, b, _ in res[0]["bits"][0]} == {4, 8}, res[0]["bits"]
    quantized = sum(row[1] == "quantize" for row in res[0]["rows"][0])
    assert all(r["freed"] == [quantized] for r in res), [r["freed"] for r in res]


def test_controller_decides_once_for_all_ranks():
    res = run_ranks(controller_group, 2)
    assert res[0]["bits"] == res[1]["bits"]
    assert res[0]["l1"] == res[1]["l1"]
    assert 4 in res[0]["bits"] and 8 in res[0]["bits"][2:], res[0]["bits"]  # the summed signal switches
    assert res[0]["reduces"] == res[1]["reduces"] <= 6


@pytest.mark.parametrize("kwargs, match", [
    ({"ulysses": 0}, "ulysses=0"),
    ({"cfg": 1.5}, "cfg=1.5"),
])
def test_enable_rejects_bad_degrees(kwargs, match):
    import torch

    from dvdq_compile.parallel import enable
    with pytest.raises(ValueError, match=match):
        enable(torch.nn.Linear(2, 2), **kwargs)


def test_enable_needs_a_process_group():
    import torch

    from dvdq_compile.parallel import enable
    with pytest.raises(RuntimeError, match="init_process_group"):
        enable(torch.nn.Linear(2, 2), ulysses=2)


def test_cfg_split_refuses_an_odd_batch():
    import torch

    from dvdq_compile.parallel.cfg import CFGPlan, CFGSplitHook
    hook = CFGSplitHook(CFGPlan(degree=2, rank=0, group=None))
    with pytest.raises(ValueError, match=r"batch 3 of hidden_states \(3, 4\) is not divisible by cfg=2"):
        hook.pre_forward(None, hidden_states=torch.zeros(3, 4))
    args, kwargs = hook.pre_forward(None, hidden_states=torch.arange(4.0).reshape(4, 1), timestep=torch.arange(4.0),
                                    other=torch.zeros(3))
    assert kwargs["hidden_states"].flatten().tolist() == [0.0, 1.0] and kwargs["timestep"].tolist() == [0.0, 1.0]
    assert kwargs["other"].shape == (3,)  # not batch-shaped: left whole


def _world_size_error(rank, world):
    from dvdq_compile.parallel import enable
    try:
        enable(__import__("torch").nn.Linear(2, 2), ulysses=2)
    except ValueError as e:
        return str(e)
    return None


def test_enable_checks_the_world_size():
    (msg,) = run_ranks(_world_size_error, 1)
    assert msg is not None and "cfg*ring*ulysses = 1*1*2 = 2, but the world size is 1" in msg
