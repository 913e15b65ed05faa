"""Kernel benchmark: dvdq W4A8 / W4A4 Triton kernels vs bf16 cuBLAS, int8 `_int_mm` and FP8 `_scaled_mm`.

Runs only on a CUDA GPU (on CPU it prints that nothing was measured and exits 0). For each video-DiT linear shape
(M tokens × N outputs × K inputs) it times, with ``triton.testing.do_bench`` (median of the rep window):

- ``bf16``: ``F.linear`` (cuBLAS), the baseline every speedup is relative to;
- ``int8_unfused``: per-token int8 quantization in eager torch ops + ``torch._int_mm`` + rescale (the unfused
  torchao-style pipeline); ``int8_compiled``: the same function under ``torch.compile``; ``int8_mm``: the
  ``_int_mm`` alone (mat2 column-major: ``w.contiguous().t()``);
- ``fp8_rowwise``: per-token e4m3 quantization + ``torch._scaled_mm`` with row-wise scales (if available);
  ``fp8_mm``: the ``_scaled_mm`` alone;
- ours: ``w4a8_split`` / ``w4a4_split`` (``act_quant`` + ``qlinear``), ``w4a8_fused`` / ``w4a4_fused`` (one
  launch), ``w4a8_gemm`` (``qlinear`` alone) and ``act_quant_a8`` (rotate + quantize alone; its share of the
  split time is reported).

TOPS use the cost model (``dvdq_compile.kernels.cost``: 2·M·N·K per linear); "% peak" is against the int8 peak
measured here with ``_int_mm`` on 8192³. It also checks correctness on the GPU against the reference
(``quant.quantize_act`` + ``quant.qlinear_ref``) on fresh random bf16 data and records the errors.

Writes ``<out>/kernels_<device-slug>.json`` and ``.md`` (+ ``.png`` if matplotlib is installed), with the device
name and torch/triton versions. ``--write-table`` stores the measured fused-vs-split winner per shape in
``dvdq_compile/kernels/table.json`` (read by ``choose_variant``).

    python bench/kernels.py [--quick] [--out DIR] [--write-table] [--group 128] [--rotate 128]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

M_LIST = (4096, 17550, 32760, 75600)
NK = {
    "wan-1.3b": ((1536, 1536), (8960, 1536), (1536, 8960)),
    "wan-14b": ((5120, 5120), (13824, 5120), (5120, 13824)),
    "hunyuanvideo": ((3072, 3072), (12288, 3072), (3072, 12288), (3072, 15360)),
}
QUICK_M = (4096, 32760)
QUICK_NK = {"wan-1.3b": ((1536, 1536),), "hunyuanvideo": ((3072, 3072), (12288, 3072))}
CHECK_M = 2048  # rows used for the correctness check (reference cost grows with M·N·K/g)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output directory")
    p.add_argument("--write-table", action="store_true", help="write fused/split decisions to the table")
    p.add_argument("--table", default=None, help="decision table path (default: dvdq_compile/kernels/table.json)")
    p.add_argument("--group", type=int, default=128, help="activation scale group (0: per-token)")
    p.add_argument("--rotate", type=int, default=128, help="Hadamard block (0: none)")
    p.add_argument("--rep", type=int, default=100, help="do_bench rep window (ms)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile int8 baseline")
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check on CPU under TRITON_INTERPRET=1: one tiny shape, wall-clock timing, "
                        "results marked as not a measurement")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# baselines

def int8_quant_per_token(x):
    import torch
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 127.0
    q = torch.round(x.float() / s).clamp_(-127, 127).to(torch.int8)
    return q, s


def int8_unfused(x, w_t, w_s):
    """Per-token int8 activations × per-channel int8 weights: quantize, ``_int_mm``, rescale (eager)."""
    import torch
    q, s = int8_quant_per_token(x)
    y = torch._int_mm(q, w_t)
    return (y.float() * s * w_s).to(x.dtype)


def fp8_rowwise(x, w_t, w_s):
    import torch
    s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448.0
    q = (x.float() / s).to(torch.float8_e4m3fn)
    return torch._scaled_mm(q, w_t, scale_a=s, scale_b=w_s, out_dtype=x.dtype)


# ----------------------------------------------------------------------------------------------------------------

SMOKE = False


def sync():
    import torch
    if not SMOKE:
        torch.cuda.synchronize()


def bench(fn, rep):
    if SMOKE:  # wall clock, one call: tests the plumbing only
        import time
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return {"ms": ms, "ms_p20": ms, "ms_p80": ms}
    import triton
    ms = triton.testing.do_bench(fn, warmup=25, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return {"ms": ms[0], "ms_p20": ms[1], "ms_p80": ms[2]}


def measure_int8_peak(rep):
    import torch
    n = 8192
    a = torch.randint(-127, 128, (n, n), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 128, (n, n), dtype=torch.int8, device="cuda").t()  # column-major
    r = bench(lambda: torch._int_mm(a, b), rep)
    return 2 * n**3 / (r["ms"] * 1e-3) / 1e12


def make_weights(n, k, dev, gen, bits=4):
    import torch
    q = torch.randint(0, 2**bits, (n, k), device=dev, generator=gen, dtype=torch.int64)
    if bits == 8:
        packed = q.to(torch.uint8)                                   # quant.pack(q, 8): one code per byte
    else:
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)  # quant.pack_int4 layout: low nibble = even k
    ws = (torch.rand(n, 1, device=dev, generator=gen) * 0.01 + 1e-3).float()
    wz = torch.randint(0, 2**bits, (n, 1), device=dev, generator=gen, dtype=torch.int32)
    return packed.contiguous(), ws, wz


def correctness(n, k, args, dev, gen):
    """Fresh bf16 data, M = CHECK_M: ours vs the reference (same quantization semantics)."""
    import torch

    from dvdq_compile import quant
    from dvdq_compile.kernels import launch as kernels
    out = {}
    x = torch.randn(CHECK_M, k, device=dev, generator=gen).to(torch.bfloat16)
    x[:, :: max(1, k // 16)] *= 8.0  # outlier channels
    weights = {4: make_weights(n, k, dev, gen), 8: make_weights(n, k, dev, gen, bits=8)}
    bias = torch.randn(n, device=dev, generator=gen).to(torch.bfloat16)
    group = args.group or k
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for wbits, abits in ((4, 8), (4, 4), (8, 8)):
            packed, ws, wz = weights[wbits]
            rc, rs = quant.quantize_act(x, abits, group, args.rotate, 0)
            yr = quant.qlinear_ref(rc, rs, packed, ws, wz, bias, wbits, torch.bfloat16).float()
            big = float(yr.abs().max())
            c, s = kernels.act_quant(x, abits, group, args.rotate, 0)
            d = (c.int() - rc.int()).abs()
            rec = {"code_mismatch_frac": float((d > 0).float().mean()), "code_max_diff": int(d.max()),
                   "scale_max_rel_err": float(((s - rs).abs() / rs.abs().clamp_min(1e-30)).max())}
            ys = kernels.qlinear(c, s, packed, ws, wz, bias, wbits, torch.bfloat16).float()
            yg = kernels.qlinear(rc, rs, packed, ws, wz, bias, wbits, torch.bfloat16).float()
            rec["gemm_same_codes_max_abs_err"] = float((yg - yr).abs().max())
            rec["split_max_abs_err"] = float((ys - yr).abs().max())
            rec["split_max_rel_err"] = float((ys - yr).abs().max()) / big
            if kernels.supports(wbits, tuple(ws.shape), group, k, rotate=args.rotate, variant="fused"):
                yf = kernels.fused_qlinear(x, packed, ws, wz, bias, wbits, abits, group, args.rotate, 0).float()
                rec["fused_max_abs_err"] = float((yf - yr).abs().max())
                rec["fused_max_rel_err"] = float((yf - yr).abs().max()) / big
            # quantization noise vs the unquantized activation (same quantized weight), for context
            xr = quant.rotate(x, args.rotate, 0) if args.rotate else x.float()
            w_hat = quant.dequantize(quant.unpack(packed, wbits), ws, wz)
            y32 = xr @ w_hat.T + bias.float()
            rec["sqnr_db_vs_unquantized_act"] = float(10 * torch.log10(y32.square().sum() /
                                                                       (ys - y32).square().sum()))
            rec["reference_max_abs"] = big
            out[f"a{abits}" if wbits == 4 else f"w{wbits}a{abits}"] = rec
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    return out


def run_shape(m, n, k, args, dev, gen, peak, compiled_int8):
    import torch
    import torch.nn.functional as F

    from dvdq_compile.kernels import cost
    from dvdq_compile.kernels import launch as kernels
    group = args.group or k
    r = {"M": m, "N": n, "K": k, "group": group, "rotate": args.rotate, "times": {}, "errors": {}}
    x = torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16)
    w = (torch.randn(n, k, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
    b = torch.randn(n, device=dev, generator=gen).to(torch.bfloat16)
    packed, ws, wz = make_weights(n, k, dev, gen)
    w8 = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8, generator=gen)
    w8_t = w8.contiguous().t()
    w8_s = (torch.rand(1, n, device=dev, generator=gen) * 1e-3).float()

    def t(name, fn):
        try:
            fn()  # warm up / autotune / compile outside the timed window
            sync()
            r["times"][name] = bench(fn, args.rep)
        except Exception as e:  # one failing method must not end the run
            r["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            sync()

    t("bf16", lambda: F.linear(x, w, b))
    q8, _s8 = int8_quant_per_token(x)
    t("int8_mm", lambda: torch._int_mm(q8, w8_t))
    t("int8_unfused", lambda: int8_unfused(x, w8_t, w8_s))
    if compiled_int8 is not None:
        t("int8_compiled", lambda: compiled_int8(x, w8_t, w8_s))
    if hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm"):
        wf = w.float()
        wsf = (wf.abs().amax(1).clamp_min(1e-12) / 448.0)[None, :].contiguous()
        w_fp8_t = (wf / wsf.T).to(torch.float8_e4m3fn).contiguous().t()
        xs = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448.0
        xq = (x.float() / xs).to(torch.float8_e4m3fn)
        t("fp8_mm", lambda: torch._scaled_mm(xq, w_fp8_t, scale_a=xs, scale_b=wsf, out_dtype=torch.bfloat16))
        t("fp8_rowwise", lambda: fp8_rowwise(x, w_fp8_t, wsf))
        del wf
    weights = {4: (packed, ws, wz), 8: make_weights(n, k, dev, gen, bits=8)}
    # W8A8 on the same kernels (byte layout + the q − 128 zero-point correction) next to the int8 baselines
    for wbits, abits in ((4, 8), (4, 4), (8, 8)):
        pk, wsc, wzp = weights[wbits]
        tag = f"w{wbits}a{abits}"
        c, s = kernels.act_quant(x, abits, group, args.rotate, 0)
        if wbits == 4:
            t(f"act_quant_a{abits}", lambda: kernels.act_quant(x, abits, group, args.rotate, 0))
        t(f"{tag}_gemm", lambda: kernels.qlinear(c, s, pk, wsc, wzp, b, wbits, torch.bfloat16))
        t(f"{tag}_split", lambda: kernels.qlinear(*kernels.act_quant(x, abits, group, args.rotate, 0),
                                                  pk, wsc, wzp, b, wbits, torch.bfloat16))
        if kernels.supports(wbits, tuple(wsc.shape), group, k, rotate=args.rotate, variant="fused"):
            t(f"{tag}_fused", lambda: kernels.fused_qlinear(x, pk, wsc, wzp, b, wbits, abits, group,
                                                            args.rotate, 0))
        del c, s
    del weights

    # derived numbers
    ops = 2.0 * m * n * k
    bf16_ms = r["times"].get("bf16", {}).get("ms")
    for name, tm in r["times"].items():
        ms = tm["ms"]
        if name.startswith("act_quant"):
            c = cost.act_quant_cost(m, k, group, args.rotate, "bfloat16")
            tm["GBps"] = float(c["bytes"]) / (ms * 1e-3) / 1e9
            gemm = r["times"].get(name.replace("act_quant_a", "w4a") + "_split", {}).get("ms")
            if gemm:
                tm["share_of_split"] = ms / gemm
            continue
        tm["TOPS"] = ops / (ms * 1e-3) / 1e12
        if peak:
            tm["pct_int8_peak"] = 100.0 * tm["TOPS"] / peak
        if bf16_ms:
            tm["speedup_vs_bf16"] = bf16_ms / ms
    for abits in (8, 4):
        sp, fu = r["times"].get(f"w4a{abits}_split"), r["times"].get(f"w4a{abits}_fused")
        if sp and fu:
            r[f"variant_a{abits}"] = "fused" if fu["ms"] < sp["ms"] else "split"
    del x, w, packed, w8, w8_t, q8
    if not SMOKE:
        torch.cuda.empty_cache()
    return r


def write_markdown(res, path):
    lines = [f"# dvdq kernel benchmark — {res['device']}", "",
             f"torch {res['torch']}, triton {res['triton']}, CUDA {res['cuda']}, {res['date']}. "
             f"Activation group {res['group']}, Hadamard block {res['rotate']}. "
             f"Measured int8 peak (`_int_mm` 8192³): **{res['int8_peak_tops']:.0f} TOPS**. "
             "Times: median ms (`triton.testing.do_bench`); TOPS = 2·M·N·K / time; speedup vs bf16 `F.linear`.",
             ""]
    if not res.get("complete", True):
        lines += ["**Incomplete: the run was cut short (time limit); the shapes below are the ones it finished.**", ""]
    cols = ["bf16", "int8_mm", "int8_unfused", "int8_compiled", "fp8_mm", "fp8_rowwise", "w4a8_gemm",
            "w4a8_split", "w4a8_fused", "w4a4_split", "w4a4_fused", "w8a8_split", "w8a8_fused"]
    present = [c for c in cols if any(c in r["times"] for r in res["shapes"])]
    lines.append("| model | M | N | K | " + " | ".join(present) + " | act_quant A8 (share of split) |")
    lines.append("|---|---:|---:|---:|" + "---:|" * len(present) + "---:|")
    for r in res["shapes"]:
        cells = []
        for c in present:
            tm = r["times"].get(c)
            if not tm:
                cells.append("err" if c in r["errors"] else "–")
                continue
            sp = tm.get("speedup_vs_bf16")
            cells.append(f"{tm['ms']:.3f} ms · {tm['TOPS']:.0f} T ({tm.get('pct_int8_peak', 0):.0f}%)"
                         + (f" · {sp:.2f}×" if sp and c != "bf16" else ""))
        aq = r["times"].get("act_quant_a8")
        aqs = f"{aq['ms']:.3f} ms · {aq['GBps']:.0f} GB/s ({100 * aq.get('share_of_split', 0):.0f}%)" if aq else "–"
        lines.append(f"| {r['model']} | {r['M']} | {r['N']} | {r['K']} | " + " | ".join(cells) + f" | {aqs} |")
    lines += ["", "## Correctness on this GPU (fresh bf16 data, M = %d, vs quant reference)" % CHECK_M, "",
              "| N | K | bits | code mismatch | scale rel err | GEMM same codes max abs | split max abs (rel) | "
              "fused max abs (rel) | SQNR vs unquantized act (dB) |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for key, chk in res["correctness"].items():
        n, k = key.split("x")
        if "error" in chk:
            lines.append(f"| {n} | {k} | – | error: {chk['error'][:80]} |||||")
            continue
        for bits, c in chk.items():
            fu = (f"{c['fused_max_abs_err']:.3g} ({c['fused_max_rel_err']:.2g})" if "fused_max_abs_err" in c
                  else "–")
            label = bits.upper() if bits.startswith("w") else f"W4{bits.upper()}"
            lines.append(f"| {n} | {k} | {label} | {c['code_mismatch_frac']:.2e} | "
                         f"{c['scale_max_rel_err']:.2e} | {c['gemm_same_codes_max_abs_err']:.3g} | "
                         f"{c['split_max_abs_err']:.3g} ({c['split_max_rel_err']:.2g}) | {fu} | "
                         f"{c['sqnr_db_vs_unquantized_act']:.1f} |")
    errs = [(r["M"], r["N"], r["K"], k, v) for r in res["shapes"] for k, v in r["errors"].items()]
    if errs:
        lines += ["", "## Failures", ""] + [f"- M={m} N={n} K={k} `{name}`: {msg}" for m, n, k, name, msg in errs]
    Path(path).write_text("\n".join(lines) + "\n")


def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    names = ["int8_unfused", "int8_compiled", "fp8_rowwise", "w4a8_split", "w4a8_fused", "w4a4_split",
             "w4a4_fused", "w8a8_fused"]
    labels = [f"{r['M']}×{r['N']}×{r['K']}" for r in res["shapes"]]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(labels)), 5))
    for nm in names:
        ys = [r["times"].get(nm, {}).get("speedup_vs_bf16", math.nan) for r in res["shapes"]]
        if not all(math.isnan(y) for y in ys):
            ax.plot(range(len(labels)), ys, marker="o", label=nm)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=75, fontsize=7)
    ax.set_ylabel("speedup vs bf16 F.linear")
    ax.set_title(f"{res['device']} · torch {res['torch']} · triton {res['triton']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench/kernels.py: torch is not installed; nothing was measured.")
        return 0
    global SMOKE, CHECK_M
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            print("bench/kernels.py --smoke needs TRITON_INTERPRET=1 (CPU interpreter).")
            return 1
        SMOKE, CHECK_M = True, 40
    elif not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device; nothing was measured (the kernels are tested on CPU by "
              "tests/kernels under TRITON_INTERPRET=1).")
        return 0
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench/kernels.py: TRITON_INTERPRET is set; unset it to benchmark compiled kernels. Nothing measured.")
        return 0
    import triton

    from dvdq_compile.kernels import variant

    dev = torch.device("cpu" if SMOKE else "cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    name = "cpu-smoke (not a measurement)" if SMOKE else torch.cuda.get_device_name(dev)
    res = {"device": name, "device_slug": slug(name), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "group": args.group or "per-token", "rotate": args.rotate, "quick": args.quick,
           "shapes": [], "correctness": {}}
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{name}: torch {torch.__version__}, triton {triton.__version__}")
    peak = 1.0 if SMOKE else measure_int8_peak(args.rep)
    res["int8_peak_tops"] = peak
    print(f"int8 peak (_int_mm 8192^3): {peak:.0f} TOPS")

    compiled_int8 = None
    if not args.no_compile:
        try:
            compiled_int8 = torch.compile(int8_unfused, dynamic=True)
        except Exception as e:
            res["compile_error"] = str(e)[:300]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"kernels_{res['device_slug']}{'_quick' if args.quick else ''}"

    def save():  # after every shape: a run cut short by its time limit keeps what it measured
        res["complete"] = done
        Path(str(stem) + ".json").write_text(json.dumps(res, indent=1) + "\n")
        write_markdown(res, str(stem) + ".md")

    done = False
    models = QUICK_NK if args.quick else NK
    ms = QUICK_M if args.quick else M_LIST
    if SMOKE:
        models, ms, compiled_int8 = {"smoke": ((64, 256),)}, (40,), None
    for model, nks in models.items():
        for n, k in nks:
            key = f"{n}x{k}"
            if key not in res["correctness"]:
                try:
                    res["correctness"][key] = correctness(n, k, args, dev, gen)
                except Exception as e:
                    res["correctness"][key] = {"error": f"{type(e).__name__}: {e}"[:500]}
                    traceback.print_exc()
                print(f"check {key}: {json.dumps(res['correctness'][key])[:300]}")
            for m in ms:
                r = run_shape(m, n, k, args, dev, gen, peak, compiled_int8)
                r["model"] = model
                res["shapes"].append(r)
                summary = "  ".join(
                    f"{nm}={tm['ms']:.3f}ms"
                    + (f"/{tm['TOPS']:.0f}T/{tm.get('pct_int8_peak', 0):.0f}%" if "TOPS" in tm else "")
                    + (f"/{tm['speedup_vs_bf16']:.2f}x" if "speedup_vs_bf16" in tm else "")
                    + (f"/{100 * tm['share_of_split']:.0f}%split" if "share_of_split" in tm else "")
                    for nm, tm in r["times"].items())
                print(f"M={m} N={n} K={k}: {summary}" + (f"  errors: {list(r['errors'])}" if r["errors"] else ""))
                save()

    done = True
    save()
    png = plot(res, str(stem) + ".png")
    print(f"wrote {stem}.json, {stem}.md" + (f", {stem}.png" if png else ""))

    if args.write_table:
        entries = []
        for r in res["shapes"]:
            for abits in (8, 4):
                v = r.get(f"variant_a{abits}")
                if v:
                    entries.append({"device": name, "abits": abits, "N": r["N"], "K": r["K"], "M": r["M"],
                                    "group": r["group"], "rotate": r["rotate"], "variant": v,
                                    "split_ms": r["times"][f"w4a{abits}_split"]["ms"],
                                    "fused_ms": r["times"][f"w4a{abits}_fused"]["ms"],
                                    "torch": res["torch"], "triton": res["triton"]})
        p = variant.write_table(entries, args.table)
        print(f"wrote {len(entries)} decisions to {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
