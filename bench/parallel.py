"""One GPU vs N: a transformer call timed on one process and under dvdq_compile.parallel (Ulysses, CFG-parallel),
bf16 (Inductor) and dvdquant W4A8, with the parallel output checked against the single one.

    torchrun --nproc-per-node 8 bench/parallel.py --config wan1.3b --ulysses 8 --out bench/results
    torchrun --nproc-per-node 8 bench/parallel.py --config wan14b --layers 12 --ulysses 4 --cfg 2
    python bench/parallel.py --cpu-ranks 2 --config smoke --ulysses 2      # gloo dry run on a CPU (tested)

Rank 0 times the single-process model while the others wait, then every rank times the parallel one. With
``--cfg 2`` each call carries cond and uncond stacked (batch 2), as CFG-parallel needs; the single-process row runs
the same batch-2 call. Writes ``parallel_<config>_<layout>.{json,md}`` with the device and versions; the standing
GPU run does this only on a machine with more than one GPU (``scripts/gpu_run.sh parallel``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="wan1.3b")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--ulysses", type=int, default=1)
    p.add_argument("--cfg", type=int, default=1, choices=(1, 2))
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--cpu-ranks", type=int, default=0, help="spawn this many gloo ranks on the CPU (dry run)")
    return p.parse_args(argv)


def _time(fn, iters, device) -> float:
    from e2e import sync
    with torch.no_grad():
        fn()  # compile + quantize
        sync(device)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(rank: int, world: int, args) -> list[dict] | None:
    import torch.distributed as dist
    from e2e import CONFIGS, build, device_name, inputs

    import dvdq_compile.parallel as par

    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    cfg = CONFIGS[args.config]
    inp = inputs(cfg, device)
    if args.cfg == 2:
        neg = inputs(cfg, device, seed=1)
        inp = {k: torch.cat([v, neg[k]]) if isinstance(v, torch.Tensor) else v for k, v in inp.items()}
    # a CPU dry run checks the plumbing, not speed: no Inductor C++ compiles (aot_eager, eager lowering, the
    # reference kernels); the table says which backends ran
    gpu = device.type == "cuda"
    bf16 = "inductor" if gpu else "aot_eager"
    q_opts = dict(act_bits=8) if gpu else dict(act_bits=8, kernels="reference", lowering="eager")
    rows = []
    for precision, backend, options in (("bf16", bf16, None), ("W4A8", "dvdquant", q_opts)):
        single_s = ref = None
        if rank == 0:
            m1 = torch.compile(build(cfg, args.layers, device), backend=backend, options=options)
            single_s = _time(lambda m=m1: m(**inp), args.iters, device)
            with torch.no_grad():
                ref = m1(**inp)[0].float()
            del m1
        dist.barrier()
        model = build(cfg, args.layers, device)
        par.enable(model, ulysses=args.ulysses, cfg=args.cfg)
        mp = torch.compile(model, backend=backend, options=options)
        par_s = _time(lambda m=mp: m(**inp), args.iters, device)
        with torch.no_grad():
            out = mp(**inp)[0].float()
        if rank == 0:
            rows.append(dict(precision=precision, backend=backend, options=options, gpus=world, ulysses=args.ulysses,
                             cfg=args.cfg,
                             single_ms=round(1e3 * single_s, 2), parallel_ms=round(1e3 * par_s, 2),
                             speedup=round(single_s / par_s, 3),
                             rel_err_vs_single=float((out - ref).norm() / ref.norm()),
                             device=device_name(device)))
        del mp, model
        dist.barrier()
    return rows if rank == 0 else None


def write(rows: list[dict], args, out: Path) -> Path:
    import triton
    stem = f"parallel_{args.config}{'' if args.layers is None else f'_{args.layers}blocks'}_u{args.ulysses}_c{args.cfg}"
    env = dict(torch=torch.__version__, triton=triton.__version__, device=rows[0]["device"], config=args.config,
               layers=args.layers, iters=args.iters)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(dict(environment=env, rows=rows), indent=1))
    lines = [f"# One vs {rows[0]['gpus']} processes: {args.config} (Ulysses {args.ulysses}, CFG {args.cfg})", "",
             f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; median of {args.iters} calls "
             "after one warm-up (compile + quantize).", "",
             "| precision | backend | processes | single ms | parallel ms | speedup | rel. error vs single |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['precision']} | {r['backend']} {r['options'] or ''} | {r['gpus']} | {r['single_ms']} | "
              f"{r['parallel_ms']} | {r['speedup']}x | {r['rel_err_vs_single']:.2e} |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out / f"{stem}.md"


def _cpu_rank(rank, world, port, args, box):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = run(rank, world, args)
        if rank == 0:
            box.put(rows)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_ranks:
        import socket

        import torch.multiprocessing as mp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        box = ctx.SimpleQueue()
        procs = mp.start_processes(_cpu_rank, args=(args.cpu_ranks, port, args, box), nprocs=args.cpu_ranks,
                                   join=False, start_method="spawn")
        rows = box.get()
        while not procs.join():
            pass
    else:
        import torch.distributed as dist
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rows = run(dist.get_rank(), dist.get_world_size(), args)
        dist.destroy_process_group()
        if rows is None:
            return 0
    print(write(rows, args, Path(args.out)).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
