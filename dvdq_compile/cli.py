"""The ``dvdq`` command.

    dvdq demo            sample the project's own trained video DiT in full precision and with backend="dvdquant"
                         (default: W4, δ-switched A4/A8), print the compile report and the error vs full precision,
                         write a frame grid PNG and a side-by-side GIF
    dvdq eval            the ablation table (MinMax, SmoothQuant, QuaRot, BGR/ARQ ablations, DVD-Quant) on the zoo
                         model: PSNR, SSIM, temporal consistency, layer SQNR, bits, weight bytes ->
                         bench/results/quality.{md,json,png}
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from .config import COMPILE_MODES, QuantConfig
from .zoo.model import DEFAULT_VERSION, VERSIONS


def _to_uint8(v: torch.Tensor) -> torch.Tensor:
    return ((v.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _labelled(img, row_labels: list[str], title: str, row_h: int, margin: int = 150):
    """``img`` (PIL) with a left column of row labels and a title line above it (PIL's built-in font)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    top = 14 * (title.count("\n") + 1) + 6
    title_w = ImageDraw.Draw(img.copy()).multiline_textbbox((0, 0), title, font=font)[2] + 8
    canvas = Image.new("RGB", (max(img.width + margin, title_w), img.height + top), (255, 255, 255))
    canvas.paste(img, (margin, top))
    d = ImageDraw.Draw(canvas)
    d.multiline_text((4, 3), title, fill=(0, 0, 0), font=font)
    for r, text in enumerate(row_labels):
        d.multiline_text((4, top + r * row_h + max(0, row_h // 2 - 12)), text, fill=(0, 0, 0), font=font)
    return canvas


def save_grid(fp: torch.Tensor, q: torch.Tensor, path: Path, scale: int = 4, names: list[str] | None = None,
              qlabel: str = "quantized", title: str = "") -> None:
    """PNG: for each sample, a row of FP frames above a row of quantized frames (videos ``[B, 3, F, H, W]``),
    each row labelled (sample name, full precision / ``qlabel`` with that sample's PSNR), ``title`` above."""
    from PIL import Image

    from . import metrics
    rows, labels = [], []
    for i in range(fp.shape[0]):
        name = names[i] if names else f"sample {i}"
        for v, lab in ((fp[i], f"{name}\nfull precision"),
                       (q[i], f"{name}\nquantized {qlabel}\nPSNR {metrics.psnr(q[i:i + 1], fp[i:i + 1]):.1f} dB")):
            rows.append(torch.cat(list(_to_uint8(v).permute(1, 2, 3, 0)), dim=1))  # F x [H, W, 3] -> [H, F*W, 3]
            labels.append(lab)
    img = torch.cat(rows, dim=0).numpy()
    big = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    _labelled(big, labels, title, fp.shape[3] * scale).save(path)


def save_gif(fp: torch.Tensor, q: torch.Tensor, path: Path, scale: int = 6, qlabel: str = "quantized",
             title: str = "") -> None:
    """Animated GIF: the samples side by side, FP on top and quantized below, rows labelled."""
    from PIL import Image
    frames = []
    for f in range(fp.shape[2]):
        top = torch.cat([_to_uint8(fp[i, :, f]) for i in range(fp.shape[0])], dim=2)
        bottom = torch.cat([_to_uint8(q[i, :, f]) for i in range(q.shape[0])], dim=2)
        arr = torch.cat([top, bottom], dim=1).permute(1, 2, 0).numpy()
        big = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
        frames.append(_labelled(big, ["full\nprecision", f"quantized\n{qlabel}"],
                                f"{title}\nframe {f + 1}/{fp.shape[2]}", fp.shape[3] * scale, margin=110))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=150, loop=0)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _act_bits(v: str):
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--act-bits must be 'auto' or an integer, got {v!r}") from None


def demo(args) -> int:
    from . import api, metrics
    from .zoo import class_names, load_pipeline, sample

    device = _device(args.device)
    lowering = args.lowering or ("inductor" if device.type == "cuda" else "eager")
    options = {"act_bits": args.act_bits, "lowering": lowering, "progress": not args.no_progress,
               "kernels": args.kernels}
    if args.delta is not None:
        options["delta"] = args.delta
    if args.mode is not None:
        options["mode"] = args.mode
    try:  # a bad combination is refused here, not as a compile-time traceback
        QuantConfig.from_options(options)
    except ValueError as e:
        print(f"dvdq demo: {e}", file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(two_experts=not args.one_expert, device=device, version=args.zoo)
    except FileNotFoundError as e:
        print(f"dvdq demo: {e}", file=sys.stderr)
        return 2
    n_cls = len(class_names())
    bad = [c for c in args.classes if not 0 <= c < n_cls]
    if bad:
        print(f"dvdq demo: --classes {bad} out of range; the zoo model has classes 0..{n_cls - 1}", file=sys.stderr)
        return 2
    print(f"dvdq demo: zoo model {args.zoo} ({'two experts' if pipe.model_low is not None else 'one expert'}), "
          f"classes {[class_names()[c] for c in args.classes]}, {args.steps} steps, CFG {args.guidance}, "
          f"seed {args.seed}, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    experts = [m for m in (pipe.model, pipe.model_low) if m is not None]

    t0 = time.perf_counter()
    with torch.no_grad():
        fp = pipe(args.classes, steps=args.steps, guidance=args.guidance, seed=args.seed, progress=not args.no_progress)
    t_fp = time.perf_counter() - t0

    torch._dynamo.reset()
    compiled = [torch.compile(m, backend="dvdquant", options=options) for m in experts]
    t0 = time.perf_counter()
    with torch.no_grad():
        q = sample(compiled[0], args.classes, steps=args.steps, guidance=args.guidance, seed=args.seed,
                   progress=not args.no_progress, model_low=compiled[1] if len(compiled) > 1 else None,
                   boundary=pipe.boundary, shift=pipe.shift, table=pipe.table, data=pipe.data)
    t_q = time.perf_counter() - t0

    rep = api.report(experts[0])
    print("\nCompile report (high-noise expert):")
    print(rep.table())
    bits = []
    for name, m in zip(("high-noise", "low-noise"), experts):
        ctrl = api.controller(m)
        if ctrl is not None and ctrl.trace:
            print(f"\nδ-GBS ({name} expert): {ctrl.summary()}")
            bits += [r.bits for r in ctrl.trace]
    avg_bits = sum(bits) / len(bits) if bits else float(args.act_bits)
    mem_before = sum(api.report(m).bytes_before for m in experts)
    mem_after = sum(api.report(m).bytes_after for m in experts)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    q = q.to(fp.device)
    qlabel = f"W4A{args.act_bits}" if args.act_bits != "auto" else f"W4 A4/A8 (avg {avg_bits:.1f})"
    title = (f"wan_zoo {args.zoo}: full precision vs backend='dvdquant' "
             f"{qlabel if args.act_bits != 'auto' else 'W4, delta-GBS A4/A8'}, {args.steps} steps, CFG "
             f"{args.guidance:g}, seed {args.seed}\nall samples: PSNR {metrics.psnr(q, fp):.2f} dB, "
             f"SSIM {metrics.ssim(q, fp):.4f}; {dev}, kernels {rep.kernels}")
    names = [class_names()[c] for c in args.classes]
    save_grid(fp, q, out / "grid.png", names=names, qlabel=qlabel, title=title)
    save_gif(fp, q, out / "side_by_side.gif", qlabel=qlabel, title=title)
    result = {"psnr": metrics.psnr(q, fp), "ssim": metrics.ssim(q, fp), "frame_diff_corr": metrics.frame_diff_corr(q, fp),
              "rel_l2": float((q - fp).norm() / fp.norm()), "avg_act_bits": avg_bits,
              "weight_bytes_before": mem_before, "weight_bytes_after": mem_after, "seconds_fp": t_fp,
              "seconds_quantized": t_q, "device": dev, "kernels": rep.kernels, "lowering": lowering,
              "steps": args.steps, "classes": list(args.classes), "seed": args.seed, "act_bits": args.act_bits}
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n| metric | value |\n|---|---|")
    print(f"| PSNR vs full precision (dB) | {result['psnr']:.2f} |")
    print(f"| SSIM vs full precision | {result['ssim']:.4f} |")
    print(f"| frame-difference correlation vs full precision | {result['frame_diff_corr']:.4f} |")
    print(f"| relative L2 error vs full precision | {result['rel_l2']:.4f} |")
    print(f"| average activation bits | {avg_bits:.2f} |")
    print(f"| linear weight memory | {mem_before / 2**20:.2f} MiB -> {mem_after / 2**20:.2f} MiB "
          f"({mem_after / mem_before:.3f}x) |")
    print(f"| wall time FP / quantized (incl. compile + weight quantization) | {t_fp:.1f} s / {t_q:.1f} s |")
    print(f"| device, kernels, lowering | {dev}, {rep.kernels}, {lowering} |")
    print(f"\nwrote {out / 'grid.png'} (rows: FP, quantized per sample), {out / 'side_by_side.gif'} and "
          f"{out / 'metrics.json'}")
    return 0


def eval_cmd(args) -> int:
    from .eval.harness import ROWS, EvalSetup, qvdit_paths, run, select_rows

    if args.list_rows:
        for r in ROWS:
            note = f" (artifacts: setting {r.qvdit!r} in --qvdit-dir)" if r.qvdit else ""
            print(f"{r.label!r}: {r.options}{note}")
        return 0
    rows = tuple(args.rows) if args.rows else tuple(r.label for r in ROWS)
    try:
        select_rows(rows)
    except ValueError as e:
        print(f"dvdq eval: {e}", file=sys.stderr)
        return 2
    device = _device(args.device)
    setup = EvalSetup(classes=tuple(args.classes), seed=args.seed, steps=args.steps, guidance=args.guidance,
                      calib_steps=args.calib_steps, two_experts=not args.one_expert, device=str(device),
                      lowering=args.lowering or ("inductor" if device.type == "cuda" else "eager"),
                      kernels=args.kernels, rows=rows, qvdit_dir=args.qvdit_dir, zoo=args.zoo)
    if not args.rows:  # the default table leaves out Q-VDiT rows whose artifacts were not trained (said here)
        keep = []
        for r in select_rows(rows):
            try:
                if r.qvdit:
                    qvdit_paths(setup, r.qvdit)
                keep.append(r.label)
            except FileNotFoundError as e:
                print(f"dvdq eval: leaving out row {r.label!r}: {e}", file=sys.stderr)
        setup.rows = tuple(keep)
    from .zoo import class_names
    bad = [c for c in setup.classes if not 0 <= c < len(class_names())]
    if bad:
        print(f"dvdq eval: --classes {bad} out of range; the zoo model has classes 0..{len(class_names()) - 1}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        doc = run(setup, Path(args.out), progress=not args.no_progress, stem=args.stem)
    except FileNotFoundError as e:
        print(f"dvdq eval: {e}", file=sys.stderr)
        return 2
    from .eval.harness import markdown
    print(markdown(doc))
    print(f"wrote {Path(args.out) / (args.stem + '.md')} (+ .json, .png) in {time.perf_counter() - t0:.0f} s")
    return 0


def stats_cmd(args) -> int:
    """The statistics card of each zoo expert: weights, and activations over a sampling run."""
    import platform

    from . import stats
    from .zoo import load_pipeline, sample

    try:
        pipe = load_pipeline(two_experts=not args.one_expert, version=args.zoo)
    except FileNotFoundError as e:
        print(f"dvdq stats: {e}", file=sys.stderr)
        return 2
    stem_base = args.stem or f"stats_zoo_{args.zoo}"
    title = args.name or f"wan_zoo {args.zoo}"
    env = {"device": f"CPU ({torch.get_num_threads()} threads)", "torch": torch.__version__, "steps": args.steps,
           "classes": args.classes, "python": platform.python_version()}
    experts = [("high", pipe.model)] + ([("low", pipe.model_low)] if pipe.model_low is not None else [])
    for tag, m in experts:
        def run(model, m=m):
            # the expert runs every step here (no boundary): its statistics over the whole schedule
            sample(model, args.classes, steps=args.steps, guidance=3.0, seed=args.seed, progress=False,
                   table=pipe.table, data=pipe.data)
        c = stats.card(m, run)
        stem = f"{stem_base}_{tag}"
        stats.write_card(c, Path(args.out), stem, f"{title} ({tag}-noise expert)", env)
        print(f"{stem}:")
        for k, s in c["summary"].items():
            v = s["value"]
            print(f"  {k:36s} {'-' if v is None else f'{v:.4g}':>10s}  target {s['target']:8s}  met {s['met']}")
    print(f"wrote {args.out}/{stem_base}_*.md/.json/.png")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dvdq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="sample the zoo model in full precision and with backend='dvdquant'",
                       description="Sample the project's trained video DiT in full precision and quantized "
                                   "(same seeds), print the compile report and the error, write PNG/GIF.")
    d.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    d.add_argument("--classes", type=int, nargs="+", default=[0, 5, 10], help="class ids to sample")
    d.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3.0)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--act-bits", type=_act_bits, default="auto", help="'auto' (δ-GBS A4/A8, default) or 4, 8, 16")
    d.add_argument("--delta", type=float, default=None, help="δ threshold (default 0.09)")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda")
    d.add_argument("--lowering", choices=("eager", "inductor"), default=None,
                   help="default: inductor on CUDA, eager on CPU")
    d.add_argument("--kernels", choices=("auto", "triton", "reference"), default="auto",
                   help="auto: Triton on CUDA, the PyTorch reference on CPU")
    d.add_argument("--mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode of the Inductor lowering (reduce-overhead: CUDA graphs)")
    d.add_argument("--one-expert", action="store_true", help="use only the main expert (no low-noise expert)")
    d.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    d.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("eval", help="the ablation table of quantization methods on the zoo model",
                       description="Score every method row against full precision on the same seeds: PSNR, SSIM, "
                                   "temporal consistency, layer SQNR, activation bits, weight bytes. Writes "
                                   "<out>/<stem>.md, .json and .png.")
    e.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    e.add_argument("--classes", type=int, nargs="+", default=list(range(16)), help="class ids (default all 16)")
    e.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3.0)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--calib-steps", type=int, default=8, help="steps of the SmoothQuant calibration run")
    e.add_argument("--rows", nargs="+", default=None, metavar="LABEL", help="row labels (default: all; "
                   "see --list-rows)")
    e.add_argument("--list-rows", action="store_true", help="print the row labels and their options, then exit")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--lowering", choices=("eager", "inductor"), default=None,
                   help="default: inductor on CUDA, eager on CPU")
    e.add_argument("--kernels", choices=("auto", "triton", "reference"), default="auto")
    e.add_argument("--one-expert", action="store_true", help="use only the main expert")
    e.add_argument("--out", default="bench/results", help="results directory (default bench/results)")
    e.add_argument("--stem", default="quality", help="results file name stem (default quality)")
    e.add_argument("--qvdit-dir", default="bench/results/qvdit",
                   help="where the Q-VDiT rows find their artifacts (python -m dvdq_compile.qvdit.train --out DIR)")
    e.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("stats", help="statistics card of the zoo experts (weights and activations)",
                       description="Per block linear: weight kurtosis, max|w|/std, share beyond 3 sigma, W4 error "
                                   "with and without rotation; activation top/median channel, per-step range. "
                                   "Writes <out>/<stem>_<expert>.md, .json and .png.")
    s.add_argument("--steps", type=int, default=10, help="denoising steps of the sampling run (default 10)")
    s.add_argument("--classes", type=int, nargs="+", default=[0, 5, 10])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--one-expert", action="store_true")
    s.add_argument("--out", default="bench/results")
    s.add_argument("--stem", default=None, help="file stem (default stats_zoo_<zoo>)")
    s.add_argument("--name", default=None, help="title (default 'wan_zoo <zoo>')")
    for sp in (d, e, s):
        sp.add_argument("--zoo", choices=sorted(VERSIONS), default=DEFAULT_VERSION,
                        help=f"zoo model version (default {DEFAULT_VERSION}): v1 = uniform weights (control), "
                        "v2 = trained with real-DiT statistics (bench/zoo/README.md)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    if args.cmd == "demo":
        return demo(args)
    if args.cmd == "eval":
        if args.calib_steps < 1:
            p.error("--calib-steps must be >= 1")
        return eval_cmd(args)
    if args.cmd == "stats":
        return stats_cmd(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
