"""δ-GBS sweep on the project's trained zoo model: average activation bits and error vs full precision.

For δ ∈ {0.03, 0.06, 0.09, 0.12, 0.18} plus fixed all-A4 / all-A8, sample the same classes, seed and steps with
the two-expert zoo pipeline (separate controllers per expert, the default), and report PSNR / relative L2 of the
videos vs full precision and the average activation bits over all steps of both experts. Writes
``bench/results/delta_sweep_<zoo>_<device>.{json,md}`` and a trace plot for δ = 0.09.

    python bench/delta_sweep.py [--steps 20] [--classes 0 3 6 9] [--out bench/results] [--zoo v1]

The default zoo is v2 (trained with real-DiT statistics); ``--zoo v1`` (the uniform-weights control) writes
``delta_sweep_<device>.*``, the names its earlier results have.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dvdq_compile
from dvdq_compile.metrics import psnr
from dvdq_compile.zoo import load_pipeline, sample
from dvdq_compile.zoo.model import DEFAULT_VERSION, VERSIONS, expert_stems

DELTAS = (0.03, 0.06, 0.09, 0.12, 0.18)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--classes", type=int, nargs="+", default=[0, 3, 6, 9])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--stem", default=None, help="output stem (default delta_sweep_<zoo>_<device>; v1: delta_sweep_<device>)")
    p.add_argument("--zoo", choices=sorted(VERSIONS), default=DEFAULT_VERSION,
                   help=f"zoo model version (default {DEFAULT_VERSION}; v1 is the uniform-weights control)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    lowering = "inductor" if device.type == "cuda" else "eager"
    pipe = load_pipeline(device=device, version=args.zoo)
    experts = [pipe.model, pipe.model_low]
    kw = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, progress=False)
    with torch.no_grad():
        fp = pipe(args.classes, **kw)
    rows, traces = [], {}
    settings = [("all-A8", {"act_bits": 8})] + [(f"δ={d}", {"delta": d}) for d in DELTAS] + [("all-A4", {"act_bits": 4})]
    for name, opts in settings:
        torch._dynamo.reset()
        comp = [torch.compile(m, backend="dvdquant", options={"lowering": lowering, "progress": False, **opts})
                for m in experts]
        t0 = time.perf_counter()
        with torch.no_grad():
            q = sample(comp[0], args.classes, model_low=comp[1], boundary=pipe.boundary, shift=pipe.shift,
                       table=pipe.table, data=pipe.data, **kw)
        wall = time.perf_counter() - t0
        bits = []
        for m in experts:
            ctrl = dvdq_compile.controller(m)
            if ctrl is not None:
                bits += [r.bits for r in ctrl.trace]
                traces.setdefault(name, []).append(ctrl)
        avg = sum(bits) / len(bits) if bits else float(opts["act_bits"])
        schedule = "".join(str(b) for b in bits) if bits else str(opts["act_bits"]) * args.steps
        rows.append({"setting": name, "avg_act_bits": avg, "psnr_db": psnr(q, fp),
                     "rel_l2": float((q - fp).norm() / fp.norm()),
                     "schedule": schedule, "wall_s": wall})
        print(f"{name:>8}: avg bits {avg:.2f}  PSNR {rows[-1]['psnr_db']:.2f} dB  rel-L2 {rows[-1]['rel_l2']:.4f}  "
              f"bits {schedule}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "cpu" if device.type == "cpu" else dev_name.lower().replace(" ", "_")
    if args.zoo != "v1":
        slug = f"{args.zoo}_{slug}"
    meta = {"device": dev_name, "torch": torch.__version__, "triton": _triton_version(), "lowering": lowering,
            "kernels": dvdq_compile.report(experts[0]).kernels, "model": f"zoo {args.zoo}: {' + '.join(expert_stems(args.zoo))} (two experts)",
            "steps": args.steps, "classes": args.classes, "seed": args.seed, "guidance": args.guidance,
            "note": "quality only: wall times on CPU run the PyTorch reference path and are not speed results"}
    stem = args.stem or f"delta_sweep_{slug}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# δ-GBS sweep on the zoo model ({dev_name}, torch {meta['torch']}, triton {meta['triton']})", "",
             f"{meta['model']}, {args.steps} steps, CFG {args.guidance}, classes {args.classes}, seed {args.seed}; "
             f"kernels {meta['kernels']}, lowering {lowering}. Bits: per step, high-noise expert then low-noise "
             "expert (separate controllers). " + meta["note"] + ".", "",
             "| setting | avg act bits | PSNR vs FP (dB) | rel-L2 vs FP | bits per step |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['avg_act_bits']:.2f} | {r['psnr_db']:.2f} | {r['rel_l2']:.4f} | `{r['schedule']}` |"
              for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    try:
        from delta_plot import plot_trace
        ctrl = traces["δ=0.09"][0]
        plot_trace(ctrl.trace, 0.09, out / f"{stem.replace('delta_sweep', 'delta_trace_zoo')}.png",
                   title="δ-GBS on the zoo model, high-noise expert, δ = 0.09")
    except Exception as e:  # the plot is optional (matplotlib)
        print(f"no trace plot: {e}")
    print(f"wrote {out / f'{stem}.md'}")
    return 0


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
