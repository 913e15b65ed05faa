"""What each rank runs in tests/parallel (module-level functions: spawned processes import them by name).

Every worker builds the single-process compiled model first (same seed, same weights) as the reference, then the
parallel one, runs the same calls through both and returns plain data for the parent to compare across ranks."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from tests.models.tiny import gaussian_init, ltx, ltx_inputs, wan, wan_inputs


def wan1(seed=0):
    return wan(num_layers=1, seed=seed)


BUILD = {"wan": (wan, wan_inputs), "wan1": (wan1, wan_inputs), "ltx": (ltx, ltx_inputs)}


def _calls(name: str, timesteps, cfg_batch: bool):
    """The calls of a short CFG sampling loop: per step cond then uncond (sequential pipelines), or one call with
    the two stacked on dim 0 (cfg_batch)."""
    inp = BUILD[name][1]()
    if "encoder_attention_mask" in inp:
        # diffusers 0.42.1's Ulysses attention fails on LTX's encoder mask even eagerly (the mask reaches SDPA with
        # all heads while each rank holds H/N of them): no mask, which an all-ones mask equals
        inp["encoder_attention_mask"] = None
    g = torch.Generator().manual_seed(7)
    uncond = torch.randn(inp["encoder_hidden_states"].shape, generator=g)
    out = []
    for t in timesteps:
        cond = dict(inp, timestep=torch.tensor([t]))
        neg = dict(cond, encoder_hidden_states=uncond)
        if cfg_batch:
            out.append({k: torch.cat([v, neg[k]]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()})
        else:
            out += [cond, neg]
    return out


@contextlib.contextmanager
def count_all_reduce():
    """A list that gets one entry per ``torch.distributed.all_reduce`` call inside the block."""
    calls, real = [], dist.all_reduce

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    dist.all_reduce = counting
    try:
        yield calls
    finally:
        dist.all_reduce = real


def _counters():
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


def _rows(model):
    import dvdq_compile
    return [(r.name, r.decision, r.weight_bits, r.act_bits) for r in dvdq_compile.report(model).layers]


def _bits(model):
    import dvdq_compile
    c = dvdq_compile.controller(model)
    return None if c is None else [(r.step, r.bits, r.l1) for r in c.trace]


def compare(rank, world, name, layout, options, fullgraph=True, timesteps=(900, 600), cfg_batch=False,
            experts=False):
    """Single-process vs parallel compiled model on the same calls: outputs, report rows, δ trace, graph breaks,
    graphs compiled (a second step must not recompile), collectives of the δ controller."""
    import dvdq_compile
    import dvdq_compile.parallel as par
    from torch._dynamo.utils import counters

    build = BUILD[name][0]
    calls = _calls(name, timesteps, cfg_batch)
    boundary = len(calls) // 2  # two experts: the first model for the first half of the calls

    def run(models, halves=False):
        outs = []
        with torch.no_grad():
            for i, c in enumerate(calls):
                m = models[0] if (not experts or i < boundary) else models[1]
                if halves:  # what CFG-parallel computes: each half of the batch on its own
                    parts = [{k: v.chunk(2)[h] if isinstance(v, torch.Tensor) else v for k, v in c.items()}
                             for h in range(2)]
                    outs.append(torch.cat([m(**p)[0] for p in parts]))
                else:
                    outs.append(m(**c)[0])
        return outs

    ref = ref_rows = ref_bits = None
    if rank == 0:  # the other ranks' outputs are compared with rank 0's
        single = [torch.compile(build(seed=s), backend="dvdquant", options=options, fullgraph=fullgraph)
                  for s in ((0, 1) if experts else (0,))]
        if experts and options.get("act_bits", "auto") == "auto":
            dvdq_compile.share_controller(*single)
        ref = run(single, halves=cfg_batch)
        ref_rows, ref_bits = [_rows(m) for m in single], [_bits(m) for m in single]

    models = [build(seed=s) for s in ((0, 1) if experts else (0,))]
    lay = par.enable(models[0], **layout)
    for m in models[1:]:
        par.enable(m, mesh=lay.mesh, **layout)
    compiled = [torch.compile(m, backend="dvdquant", options=options, fullgraph=fullgraph) for m in models]
    if experts and options.get("act_bits", "auto") == "auto":
        dvdq_compile.share_controller(*compiled)
    counters.clear()
    with count_all_reduce() as reduces:
        out = run(compiled)
    breaks, graphs = _counters()
    return dict(
        diff=None if ref is None else max(float((o - r).abs().max()) for o, r in zip(out, ref)),
        rel=None if ref is None else max(float((o - r).norm() / r.norm()) for o, r in zip(out, ref)),
        rows=[_rows(m) for m in compiled], ref_rows=ref_rows,
        bits=[_bits(m) for m in compiled], ref_bits=ref_bits,
        breaks=breaks, graphs=graphs, reduces=len(reduces), calls=len(calls),
        freed=[len(dvdq_compile.freed_weights(m)) for m in compiled],
        out=out)


def controller_group(rank, world):
    """The δ controller under a process group, fed rank-dependent outputs: every rank must take the same
    decisions, from the L1 of the summed terms, with one all-reduce per step."""
    from dvdq_compile.runtime.delta import DeltaController

    ctrl = DeltaController(delta=0.15)
    ctrl.group = dist.group.WORLD
    g = torch.Generator().manual_seed(rank)
    base = torch.randn(64, generator=g)
    with count_all_reduce() as reduces:
        for step, t in enumerate([900.0, 800.0, 700.0, 600.0, 500.0, 400.0]):
            for _call in range(2):
                ctrl.begin_call(torch.tensor([t]))
                # rank 0's output barely changes, rank 1's changes a lot: alone they would decide differently
                scale = 0.01 if rank == 0 else 0.2
                ctrl.end_call((base * (1 + scale * step),))
        trace = ctrl.trace
    return dict(bits=[r.bits for r in trace], l1=[r.l1 for r in trace], reduces=len(reduces))
