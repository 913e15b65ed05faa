"""The first GPU window: what the first lent GPU must tell us about the GEMM kernels, in under 8 minutes.

One script, a fixed plan, a JSON written after every step (a cut-off run keeps what it measured):

1. environment: device, torch/triton versions, SM / memory clocks and power before and after (``nvidia-smi``);
2. per Wan linear at M = 32760 tokens — (1536,1536), (8960,1536), (1536,8960), (5120,5120), (13824,5120) as
   (N, K) — bf16 ``F.linear`` (cuBLAS), ``torch._int_mm``, and ours: W4A8 with group-128 scales on int8-expanded
   weights, autotuned over a small config set (the winner recorded) and in two forced configs; the per-token-scale
   variant (the pure int8 loop); the packed-nibble loop it replaces; the expansion alone; ``act_quant`` alone as a
   share of the GEMM, and where K is the model dim the norm-fused quantization (``kernels/norm_quant.py``). Each with TOPS and GB/s from the cost model, and when the device is an H200, the H100 time
   projected from bytes (``t + bytes·(1/3.35 − 1/4.8 TB/s)``, an upper bound for memory-bound parts);
3. ``ncu`` speed-of-light of the W4A8 GEMM on one shape, when ``ncu`` is installed;
4. the GPU correctness tests of the GEMM kernels (``-m gpu -k "qlinear or partials or expanded"``);
5. the core end-to-end rows of ``bench/e2e.py`` with whatever time is left.

``--dry-run`` (CPU): prints the plan, the number of Triton compiles and the estimated wall time, then runs every
step's code on tiny shapes under ``TRITON_INTERPRET=1`` so the plumbing is checked before GPU time is spent.

    python bench/first_window.py --out "$OUT"          # on the GPU
    python bench/first_window.py --dry-run              # here
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

M_TOKENS = 32760
SHAPES = ((1536, 1536), (8960, 1536), (1536, 8960), (5120, 5120), (13824, 5120))
BUDGET_S = 480
# (BLOCK_M, BLOCK_N, warps, stages): the autotune set of this run, small on purpose (each config is a compile).
# 128x64 / 4 warps is the static instrument's best for the group-128 loop (bench/results/sass.md); 128x128 / 8
# warps the classic tile; 64x128 / 4 warps the other 2-CTA/SM shape.
CONFIGS = ((128, 64, 4, 4), (128, 128, 8, 3), (64, 128, 4, 4))
FORCED = ((128, 128, 8, 3), (128, 64, 4, 4))
GELU_CONFIG = (64, 128, 4, 4)   # the instrument's best for the epilogue kernel (BLOCK_N holds whole groups of 128)
# estimates for --dry-run: seconds per Triton compile on the GPU machine (bench/sass.py measured ~1.3 s offline
# for sm_90 on this CPU; doubled for the launcher and autotune bookkeeping), per timed measurement (do_bench
# warmup + rep windows + the first call), and fixed costs (imports, CUDA context, nvidia-smi, pytest start)
COMPILE_S, MEASURE_S, FIXED_S, NCU_S, TESTS_S = 3.0, 0.6, 25.0, 40.0, 120.0
HBM_H100, HBM_H200 = 3.35e12, 4.8e12


def plan() -> dict:
    """What the run does: measurements per shape and the distinct Triton compiles."""
    per_shape = ["bf16", "int_mm", "w4a8_auto", *(f"w4a8_forced_{c[0]}x{c[1]}" for c in FORCED), "w4a8_per_token",
                 "w4a8_packed", "expand", "act_quant", "norm_quant (K = model dim)",
                 "gelu_quant (FFN-up shapes: GEMM + GELU → rotate → quantize epilogue)"]
    compiles = {
        "qlinear group-128 expanded (autotune set)": len(CONFIGS),
        "qlinear per-token expanded (autotune set)": len(CONFIGS),
        "qlinear group-128 packed (one config)": 1,
        "expand": 1,
        "act_quant (one config)": 1,
        "norm_quant (autotune set of 3)": 3,
        "gelu_quant (one config)": 1,
    }
    n_meas = len(per_shape) * len(SHAPES)
    est = FIXED_S + COMPILE_S * sum(compiles.values()) + MEASURE_S * n_meas + NCU_S + TESTS_S
    return {"per_shape": per_shape, "measurements": n_meas, "compiles": compiles,
            "n_compiles": sum(compiles.values()), "estimated_s_before_e2e": round(est, 1), "budget_s": BUDGET_S,
            "e2e_s": max(0, round(BUDGET_S - est, 1))}


class Run:
    """Accumulates results and rewrites the JSON after every step."""

    def __init__(self, out: Path, dry: bool):
        self.path = out / ("first_window_dry.json" if dry else "first_window.json")
        self.data = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "dry_run": dry,
                     "plan": plan(), "steps": {}}
        self.t0 = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, value) -> None:
        self.data["steps"][name] = value
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        print(f"[{self.data['elapsed_s']:7.1f}s] {name}", flush=True)

    def left(self) -> float:
        return BUDGET_S - (time.perf_counter() - self.t0)


def smi() -> dict:
    if not shutil.which("nvidia-smi"):
        return {"nvidia-smi": "not installed"}
    q = "name,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,temperature.gpu"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    return dict(zip(q.split(","), (v.strip() for v in out.split(",")))) if out else {"nvidia-smi": "no output"}


def environment(dev: str) -> dict:
    import torch
    import triton
    env = {"torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0]}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), sms=p.multi_processor_count,
                   capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1), smi=smi())
    else:
        env.update(device="cpu (TRITON_INTERPRET=1: plumbing only, no timing is a measurement)")
    return env


def timer(dev: str, rep_ms: int):
    if dev == "cuda":
        import triton

        def t(fn):
            ms = triton.testing.do_bench(fn, warmup=10, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
            return {"ms": ms[0], "ms_p20": ms[1], "ms_p80": ms[2]}
    else:
        def t(fn):
            t0 = time.perf_counter()
            fn()
            return {"ms": (time.perf_counter() - t0) * 1e3, "note": "wall clock of one interpreter call"}
    return t


def tile(bm: int, bn: int, warps: int, stages: int):
    import triton
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=warps, num_stages=stages)


def set_configs(autotuner, configs) -> None:
    """Restrict an ``@triton.autotune`` kernel to ``configs`` for this run (and forget earlier choices)."""
    autotuner.configs = list(configs)
    autotuner.cache.clear()


def gemm_shapes(run: Run, dev: str, shapes, m: int, rep_ms: int) -> None:
    import torch
    import torch.nn.functional as F

    from dvdq_compile.kernels import act_quant as aq
    from dvdq_compile.kernels import cost
    from dvdq_compile.kernels import gelu_quant as gq
    from dvdq_compile.kernels import qlinear as ql
    from dvdq_compile.kernels.expand import expand_weight
    from dvdq_compile.kernels.norm_quant import norm_act_quant

    t = timer(dev, rep_ms)
    gen = torch.Generator(device=dev).manual_seed(0)
    set_configs(ql._qlinear_kernel, [tile(*c) for c in (CONFIGS if dev == "cuda" else CONFIGS[:1])])
    if dev == "cuda":
        import triton
        set_configs(aq._act_quant_kernel, [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=2)])
    xdt = torch.bfloat16 if dev == "cuda" else torch.float32
    h200 = "H200" in run.data["steps"].get("environment", {}).get("device", "")
    rows = []
    for n, k in shapes:
        x = torch.randn(m, k, device=dev, dtype=xdt, generator=gen)
        w16 = torch.randn(n, k, device=dev, dtype=xdt, generator=gen) * 0.02
        q = torch.randint(0, 16, (n, k), device=dev, generator=gen, dtype=torch.int64)
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8).contiguous()
        ws = torch.rand(n, 1, device=dev, generator=gen).float() * 0.01 + 1e-3
        wz = torch.randint(0, 16, (n, 1), device=dev, generator=gen, dtype=torch.int32)
        bias = torch.randn(n, device=dev, dtype=xdt, generator=gen)
        codes, scales = aq.act_quant(x, 8, 128, 128, 0)
        _, s_tok = aq.act_quant(x, 8, k, 0, 0)
        a8 = torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8, generator=gen)
        b8 = torch.randint(-127, 128, (k, n), device=dev, dtype=torch.int8, generator=gen).t().contiguous().t()
        w8 = expand_weight(packed, wz, 4)
        out = torch.empty(m, n, device=dev, dtype=xdt)
        r = {"M": m, "N": n, "K": k, "times": {}}
        r["times"]["bf16"] = t(lambda: F.linear(x, w16, bias))
        if dev == "cuda":
            r["times"]["int_mm"] = t(lambda: torch._int_mm(a8, b8))
        r["times"]["w4a8_auto"] = t(lambda: ql.qlinear(codes, scales, packed, ws, wz, bias, 4, xdt, expand=True))
        best = ql._qlinear_kernel.best_config
        r["w4a8_auto_config"] = str(best) if best is not None else None
        # single configs through the same launcher (expansion included, like the autotuned call)
        q = lambda cfg, expand=True: ql.qlinear(codes, scales, packed, ws, wz, bias, 4, xdt,  # noqa: E731
                                                 expand=expand, config=tile(*cfg), out=out)
        for cfg in FORCED if dev == "cuda" else FORCED[:1]:
            r["times"][f"w4a8_forced_{cfg[0]}x{cfg[1]}"] = t(lambda cfg=cfg: q(cfg))
        y_auto = ql.qlinear(codes, scales, packed, ws, wz, bias, 4, xdt, expand=True).float()
        r["forced_vs_auto_max_abs"] = float((q(FORCED[0]).float() - y_auto).abs().max())   # same loop order: 0
        r["packed_vs_expanded_max_abs"] = float((q(FORCED[0], False).float() - y_auto).abs().max())
        r["times"]["w4a8_per_token"] = t(lambda: ql.qlinear(codes, s_tok, packed, ws, wz, bias, 4, xdt,
                                                            expand=True))
        r["times"]["w4a8_packed"] = t(lambda: q(FORCED[0], False))
        r["times"]["expand"] = t(lambda: expand_weight(packed, wz, 4, out=w8))
        r["times"]["act_quant"] = t(lambda: aq.act_quant(x, 8, 128, 128, 0))
        if k == shapes[0][1] or k == 5120:   # K = model dim: the input can come from a norm (q/k/v, FFN-up)
            mult = torch.ones(1, 1, k, device=dev) + 0.1
            shift = torch.zeros(1, 1, k, device=dev)
            x3 = x.view(1, m, k)
            r["times"]["norm_quant"] = t(lambda: norm_act_quant(x3, mult, shift, 1e-6, xdt, 8, 128, 128, 0))
        if n > k or dev != "cuda":   # an FFN-up shape: its epilogue writes the FFN-down's codes (kernels/gelu_quant.py)
            g = gq.qlinear_gelu_quant
            cfg = tile(*GELU_CONFIG) if dev == "cuda" else None
            gg = 128 if n % 128 == 0 else 32     # the dry run's small N
            r["times"]["gelu_quant"] = t(lambda: g(codes, scales, packed, ws, wz, bias, 4, xdt, "tanh", 8, gg, gg, 0,
                                                   expand=True, config=cfg))
            r["gelu_quant_config"] = str(cfg)
        gemm = cost.qlinear_cost(m, n, k, 128, 4)
        by = cost.evaluate(gemm["bytes"])
        by_exp = by + 0.5 * n * k       # the GEMM reads int8 weights: N·K instead of N·K/2
        for name, v in r["times"].items():
            sec = v["ms"] * 1e-3
            if name in ("expand",):
                v["GB/s"] = round(1.5 * n * k / sec / 1e9, 1)
            elif name == "norm_quant":   # reads x, writes codes + scales (what act_quant writes)
                v["GB/s"] = round(cost.evaluate(cost.act_quant_cost(m, k, 128, 128)["bytes"]) / sec / 1e9, 1)
                v["share_of_w4a8_auto"] = round(v["ms"] / r["times"]["w4a8_auto"]["ms"], 3)
            elif name == "gelu_quant":   # the GEMM's time and bytes, the output written as codes + scales
                v["TOPS"] = round(2 * m * n * k / sec / 1e12, 1)
                v["share_of_w4a8_auto"] = round(v["ms"] / r["times"]["w4a8_auto"]["ms"], 3)
            elif name == "act_quant":
                v["GB/s"] = round(cost.evaluate(cost.act_quant_cost(m, k, 128, 128)["bytes"]) / sec / 1e9, 1)
                v["share_of_w4a8_auto"] = round(v["ms"] / r["times"]["w4a8_auto"]["ms"], 3)
            else:
                v["TOPS"] = round(2 * m * n * k / sec / 1e12, 1)
                v["GB/s"] = round((by_exp if "packed" not in name else by) / sec / 1e9, 1)
            if h200:
                b = 1.5 * n * k if name == "expand" else by_exp
                v["h100_ms_upper"] = round(v["ms"] + b * (1 / HBM_H100 - 1 / HBM_H200) * 1e3, 4)
        r["speedup_vs_bf16"] = round(r["times"]["bf16"]["ms"] / (r["times"]["w4a8_auto"]["ms"]
                                                                   + r["times"]["act_quant"]["ms"]), 3)
        rows.append(r)
        run.step(f"gemm {n}x{k}", r)


def ncu_step(run: Run, out: Path) -> None:
    ncu = shutil.which("ncu")
    if not ncu:
        run.step("ncu", "ncu not installed")
        return
    cmd = [ncu, "--section", "SpeedOfLight", "--kernel-name", "regex:_qlinear_kernel", "--launch-count", "1",
           "--csv", sys.executable, str(Path(__file__)), "--only-gemm", "--shape", "5120x5120", "--out",
           str(out / "ncu_child")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=NCU_S * 2)
    run.step("ncu", {"rc": p.returncode, "csv": p.stdout[-6000:], "stderr": p.stderr[-1500:]})


def tests_step(run: Run, dry: bool) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1" if dry else "0")
    sel = ["tests/kernels/test_expand.py", "-k", "partials"] if dry else \
        ["-m", "gpu", "tests/kernels/test_gpu.py", "-k", "partials or expanded or large_bf16"]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sel], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=TESTS_S * 2)
    run.step("gpu_tests" if not dry else "interpreter_tests", {"rc": p.returncode, "tail": p.stdout[-3000:]})


def e2e_step(run: Run, out: Path) -> None:
    left = int(run.left()) - 10
    if left < 60:
        run.step("e2e", f"skipped: {left + 10} s left of the {BUDGET_S} s budget")
        return
    cmd = [sys.executable, str(ROOT / "bench" / "e2e.py"), "--config", "wan1.3b", "--no-bgr", "--no-profile",
           "--iters", "3", "--warmup", "1", "--stem", "e2e_wan1.3b_first_window", "--out", str(out), "--rows",
           "inductor bf16", "dvdquant W4A8", "dvdquant W4A8 + CUDA graphs"]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
        run.step("e2e", {"rc": p.returncode, "tail": p.stdout[-3000:]})
    except subprocess.TimeoutExpired:
        run.step("e2e", f"cut off after {left} s (rows saved so far are in e2e_wan1.3b_first_window.json)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"))
    p.add_argument("--dry-run", action="store_true", help="CPU: print the plan and run every step on tiny shapes")
    p.add_argument("--only-gemm", action="store_true", help="(for ncu) one shape's GEMM rows, nothing else")
    p.add_argument("--shape", default=None, help="NxK for --only-gemm")
    p.add_argument("--rep", type=int, default=40, help="do_bench rep window, ms")
    a = p.parse_args(argv)
    out = Path(a.out)
    pl = plan()
    print(json.dumps(pl, indent=1))
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported
    import torch
    dev = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    if dev == "cpu" and not a.dry_run:
        print("no CUDA device: nothing measured (use --dry-run to check the plumbing)")
        return 0
    run = Run(out, a.dry_run)
    run.step("environment", environment(dev))
    shapes = SHAPES if dev == "cuda" else ((64, 256), (96, 128))
    m = M_TOKENS if dev == "cuda" else 40
    if a.only_gemm:
        n, k = (int(v) for v in a.shape.split("x")) if a.shape else SHAPES[0]
        gemm_shapes(run, dev, ((n, k),), m, a.rep)
        return 0
    gemm_shapes(run, dev, shapes, m, a.rep)
    if dev == "cuda":
        run.data["steps"]["environment"]["smi_after"] = smi()
        ncu_step(run, out)
    tests_step(run, a.dry_run)
    if dev == "cuda":
        e2e_step(run, out)
    run.step("done", {"elapsed_s": round(time.perf_counter() - run.t0, 1), "estimate": pl})
    return 0


if __name__ == "__main__":
    sys.exit(main())
