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
# estimates for --dry-run: seconds per Triton compile on the GPU machine, per timed measurement (do_bench warmup +
# rep windows + the first call), and fixed costs (imports, CUDA context, nvidia-smi, pytest start). Measured on an
# H200 (2026-12-04, 16 CPU cores): the 13 compiles and 55 measurements took 27 s in all, the GPU tests ~7 s each
COMPILE_S, MEASURE_S, FIXED_S, NCU_S, TESTS_S = 1.0, 0.2, 10.0, 40.0, 240.0
HBM_H100, HBM_H200 = 3.35e12, 4.8e12


def plan() -> dict:
    """What the run does: measurements per shape and the distinct Triton compiles."""
    per_shape = ["bf16", "int_mm", "w4a8_auto", *(f"w4a8_forced_{c[0]}x{c[1]}" for c in FORCED), "w4a8_per_token",
                 "gluon_g128", "gluon_g128_coop", "gluon_g128_128x64", "gluon_per_token", "gluon_per_token_128x128",
                 "gluon_gelu_quant + _coop (FFN-up shapes)",
                 "w4a8_packed", "expand", "act_quant", "norm_quant (K = model dim)",
                 "gelu_quant (FFN-up shapes: GEMM + GELU → rotate → quantize epilogue)"]
    compiles = {
        "l2_probe (bench/l2_probe.py) and mma_peak (bench/mma_peak.py: int8, fp8, bf16)": 4,
        "qlinear group-128 expanded (autotune set)": len(CONFIGS),
        "qlinear per-token expanded (autotune set)": len(CONFIGS),
        "qlinear group-128 packed (one config)": 1,
        "gluon_qlinear group-128 (128x64), per-token (256x128 and 128x128)": 3,
        "gluon_ws group-128 GEMM (wide, cooperative), FFN-up with the GELU epilogue (ping-pong, cooperative)": 4,
        "attn_quant (the attention step: SDPA, SDPA + act_quant, the fused kernel)": 1,
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
    return safe(t)


def safe(fn):
    """``fn`` that records an exception as ``{"error": ...}`` instead of ending the run: a kernel that fails to
    compile on the lent machine's Triton must not cost the other measurements."""
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:   # noqa: BLE001  (recorded, printed, the run goes on)
            msg = f"{type(e).__name__}: {e}"[:2000]
            print("  error:", msg.splitlines()[0] if msg else type(e).__name__, flush=True)
            return {"error": msg}
    return call


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

    from dvdq_compile import quant
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
    rows, later = [], []
    for n, k in shapes:
        x = torch.randn(m, k, device=dev, dtype=xdt, generator=gen)
        w16 = torch.randn(n, k, device=dev, dtype=xdt, generator=gen) * 0.02
        q = torch.randint(0, 16, (n, k), device=dev, generator=gen, dtype=torch.int64)
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8).contiguous()
        ws = torch.rand(n, 1, device=dev, generator=gen).float() * 0.01 + 1e-3
        wz = torch.randint(0, 16, (n, 1), device=dev, generator=gen, dtype=torch.int32)
        bias = torch.randn(n, device=dev, dtype=xdt, generator=gen)
        r = {"M": m, "N": n, "K": k, "times": {}}
        try:   # the inputs of the GEMM rows come from our kernels; the reference if those fail on this machine
            codes, scales = aq.act_quant(x, 8, 128, 128, 0)
            _, s_tok = aq.act_quant(x, 8, k, 0, 0)
        except Exception as e:   # noqa: BLE001
            r["setup_error"] = f"act_quant: {type(e).__name__}: {e}"[:2000]
            codes, scales = quant.quantize_act(x, 8, 128, 128, 0)
            _, s_tok = quant.quantize_act(x, 8, k, 0, 0)
        a8 = torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8, generator=gen)
        b8 = torch.randint(-127, 128, (k, n), device=dev, dtype=torch.int8, generator=gen).t().contiguous().t()
        try:
            w8 = expand_weight(packed, wz, 4)
        except Exception as e:   # noqa: BLE001
            r["setup_error_expand"] = f"expand_weight: {type(e).__name__}: {e}"[:2000]
            w8 = torch.empty(n, k, device=dev, dtype=torch.int8)
        out = torch.empty(m, n, device=dev, dtype=xdt)
        r["times"]["bf16"] = t(lambda: F.linear(x, w16, bias))
        if dev == "cuda":
            r["times"]["int_mm"] = t(lambda: torch._int_mm(a8, b8))
        r["times"]["w4a8_auto"] = t(lambda: ql.qlinear(codes, scales, packed, ws, wz, bias, 4, xdt, expand=True))
        best = getattr(ql._qlinear_kernel, "best_config", None)
        r["w4a8_auto_config"] = str(best) if best is not None else None
        # single configs through the same launcher (expansion included, like the autotuned call)
        q = lambda cfg, expand=True: ql.qlinear(codes, scales, packed, ws, wz, bias, 4, xdt,  # noqa: E731
                                                 expand=expand, config=tile(*cfg), out=out)
        for cfg in FORCED if dev == "cuda" else FORCED[:1]:
            r["times"][f"w4a8_forced_{cfg[0]}x{cfg[1]}"] = t(lambda cfg=cfg: q(cfg))
        r["agreement"] = safe(agreement)(ql, q, codes, scales, packed, ws, wz, bias, xdt)
        r["times"]["w4a8_per_token"] = t(lambda: ql.qlinear(codes, s_tok, packed, ws, wz, bias, 4, xdt,
                                                            expand=True))
        best = getattr(ql._qlinear_kernel, "best_config", None)   # the per-token call's own autotune winner
        r["w4a8_per_token_config"] = str(best) if best is not None else None
        o = dict(codes=codes, scales=scales, s_tok=s_tok, packed=packed, ws=ws, wz=wz, bias=bias, xdt=xdt, w8=w8)
        gemms, ffn = gluon_calls(dev, o, ffn_up=n > k or dev != "cuda")
        for name, (call, sc) in gemms.items():
            r["times"][name] = t(call)
            r[f"{name}_bit_exact"] = safe(lambda call=call, sc=sc: torch.equal(
                call(), ql.qlinear(codes, sc, packed, ws, wz, bias, 4, xdt, expand=True)))()
        if ffn:   # timed after every shape's other rows: ping-pong's first timing must not cost them (main)
            later.append((r, f"gemm {n}x{k}", ffn))
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
            if "error" in v:
                continue
            sec = v["ms"] * 1e-3
            if name in ("expand",):
                v["GB/s"] = round(1.5 * n * k / sec / 1e9, 1)
            elif name == "norm_quant":   # reads x, writes codes + scales (what act_quant writes)
                v["GB/s"] = round(cost.evaluate(cost.act_quant_cost(m, k, 128, 128)["bytes"]) / sec / 1e9, 1)
                v["share_of_w4a8_auto"] = share(v, r)
            elif name == "gelu_quant":   # the GEMM's time and bytes, the output written as codes + scales
                v["TOPS"] = round(2 * m * n * k / sec / 1e12, 1)
                v["share_of_w4a8_auto"] = share(v, r)
            elif name == "act_quant":
                v["GB/s"] = round(cost.evaluate(cost.act_quant_cost(m, k, 128, 128)["bytes"]) / sec / 1e9, 1)
                v["share_of_w4a8_auto"] = share(v, r)
            else:
                v["TOPS"] = round(2 * m * n * k / sec / 1e12, 1)
                v["GB/s"] = round((by_exp if "packed" not in name else by) / sec / 1e9, 1)
            bt = l2_tile(name, r)
            if bt:   # what its tiles read from L2 into shared memory (each its K strips of codes and int8 weights)
                v["L2_TB/s"] = round(-(-m // bt[0]) * -(-n // bt[1]) * k * (bt[0] + bt[1]) / sec / 1e12, 2)
            if h200:
                b = 1.5 * n * k if name == "expand" else by_exp
                v["h100_ms_upper"] = round(v["ms"] + b * (1 / HBM_H100 - 1 / HBM_H200) * 1e3, 4)
        ok = all("ms" in r["times"].get(n_, {}) for n_ in ("bf16", "w4a8_auto", "act_quant"))
        r["speedup_vs_bf16"] = round(r["times"]["bf16"]["ms"] / (r["times"]["w4a8_auto"]["ms"]
                                                                   + r["times"]["act_quant"]["ms"]), 3) if ok else None
        rows.append(r)
        run.step(f"gemm {n}x{k}", r)
    for r, step, ffn in later:
        for name, (call, check) in ffn.items():
            r["times"][name] = t(call)
            r[f"{name}_codes_vs_triton"] = safe(check)()
            if "ms" in r["times"][name]:
                r["times"][name]["TOPS"] = round(2 * r["M"] * r["N"] * r["K"] / r["times"][name]["ms"] / 1e9, 1)
                bt = l2_tile(name, r)
                r["times"][name]["L2_TB/s"] = round(-(-r["M"] // bt[0]) * -(-r["N"] // bt[1]) * r["K"] * sum(bt)
                                                    / r["times"][name]["ms"] / 1e9, 2)
        run.step(step, r)


def gluon_calls(dev: str, o: dict, ffn_up: bool) -> tuple[dict, dict]:
    """The Gluon kernels timed on one shape's operands ``o``: ({GEMM name: (call, the activation scales of its
    Triton twin, for the bit-for-bit check)}, {FFN-up name: (call, check)}), the FFN-up with the GELU epilogue only
    where ``ffn_up``. The group-128 GEMM runs warp-specialized on the wide cooperative 128x192 tile (the
    dispatch's), the cooperative 128x128 one and gluon_qlinear's 128x64 one; per-token on 256x128 (the dispatch's)
    and 128x128; the FFN-up cooperatively (the dispatch's), then in ping-pong, last (its first GPU run hung;
    kernels/gluon_ws.py now orders its K loops). ``check`` compares the FFN-up's codes with the Triton epilogue kernel's
    (``kernels/gelu_quant.py``). Gluon has no interpreter: on the CPU (``--dry-run``) every call is its Triton twin,
    so the plumbing still runs."""
    import torch

    from dvdq_compile.kernels import gelu_quant as gq
    from dvdq_compile.kernels import qlinear as ql
    c, sc, st, w8, bias, xdt = o["codes"], o["scales"], o["s_tok"], o["w8"], o["bias"], o["xdt"]
    m, n = c.shape[0], w8.shape[0]
    gg = 128 if n % 128 == 0 else 32     # the dry run's small N
    tri = lambda s: ql.qlinear(c, s, o["packed"], o["ws"], o["wz"], bias, 4, xdt, expand=True)  # noqa: E731
    cfg = tile(*GELU_CONFIG) if dev == "cuda" else None    # the timed Triton twin's config: no autotune compiles
    tri_gelu = lambda: gq.qlinear_gelu_quant(c, sc, o["packed"], o["ws"], o["wz"], bias, 4, xdt,  # noqa: E731
                                             "tanh", 8, gg, gg, 0, expand=True, config=cfg)
    names = (("gluon_g128", sc), ("gluon_g128_coop", sc), ("gluon_g128_128x64", sc), ("gluon_per_token", st),
             ("gluon_per_token_128x128", st))
    modes = (("gluon_gelu_quant_coop", True), ("gluon_gelu_quant", False)) if ffn_up else ()
    if dev != "cuda":
        gemms = {name: (lambda s=s: tri(s), s) for name, s in names}
        return gemms, {name: (tri_gelu, lambda: {"dry_run": "the Triton twin itself"}) for name, _ in modes}
    from dvdq_compile.kernels import gluon_qlinear as gql
    from dvdq_compile.kernels import gluon_ws as gws
    from dvdq_compile.kernels.tl_common import hadamard_for
    ws1 = o["ws"].reshape(-1).float().contiguous()
    out = torch.empty(m, n, device=c.device, dtype=xdt)
    gemms = {"gluon_g128": (lambda: gws.ws_qlinear(c, sc, w8, ws1, bias, out, False, wide=True), sc),
             "gluon_g128_coop": (lambda: gws.ws_qlinear(c, sc, w8, ws1, bias, out, False), sc),
             "gluon_g128_128x64": (lambda: gql.gluon_qlinear(c, sc, w8, ws1, bias, out, False), sc),
             "gluon_per_token": (lambda: gql.gluon_qlinear(c, st, w8, ws1, bias, out, True), st),
             "gluon_per_token_128x128": (lambda: gql.gluon_qlinear(c, st, w8, ws1, bias, out, True,
                                                                   gql.PER_TOKEN_TILE_SQUARE), st)}
    hm, _, rsc = hadamard_for(128, 0, torch.empty(0, dtype=xdt, device=c.device))
    codes = torch.empty(m, n, dtype=torch.int8, device=c.device)
    scales = torch.empty(m, n // 128, dtype=torch.float32, device=c.device)

    def check(coop):
        gws.ffn_up_gelu_quant(c, sc, w8, ws1, bias, hm, codes, scales, False, rsc, 127, coop)
        tc, ts = tri_gelu()
        return {"codes_max_diff": int((codes.int() - tc.int()).abs().max()),
                "scales_equal": bool(torch.equal(scales, ts))}
    ffn = {name: (lambda coop=coop: gws.ffn_up_gelu_quant(c, sc, w8, ws1, bias, hm, codes, scales, False, rsc, 127,
                                                          coop), lambda coop=coop: check(coop))
           for name, coop in modes}
    return gemms, ffn


def l2_tile(name: str, r: dict) -> tuple[int, int] | None:
    """(BLOCK_M, BLOCK_N) of a timed int8-native GEMM whose tile is known (forced, the autotune winner, the Gluon
    kernels'), None otherwise: for its L2 → shared-memory traffic. The instrument has no L2 bound; these rates say
    whether the small Gluon tiles are held back by L2 (bench/results/sass.md, the L2→SM column)."""
    from dvdq_compile.kernels import gluon_qlinear as gql
    from dvdq_compile.kernels import gluon_ws as gws
    known = {f"w4a8_forced_{c[0]}x{c[1]}": c[:2] for c in FORCED}
    known.update(gluon_g128=(2 * gws.BLOCK_M, gws.BLOCK_N + gws.BLOCK_N2), gluon_g128_coop=(2 * gws.BLOCK_M, gws.BLOCK_N),
                 gluon_g128_128x64=gql.GROUPED_TILES[0][:2],
                 gluon_per_token=gql.PER_TOKEN_TILE[:2], gluon_per_token_128x128=gql.PER_TOKEN_TILE_SQUARE[:2],
                 gluon_gelu_quant=(gws.BLOCK_M, gws.BLOCK_N), gluon_gelu_quant_coop=(2 * gws.BLOCK_M, gws.BLOCK_N),
                 gelu_quant=GELU_CONFIG[:2])
    if name == "w4a8_auto" and r.get("w4a8_auto_config"):
        import re
        dims = re.findall(r"BLOCK_[MN]: (\d+)", r["w4a8_auto_config"])
        return (int(dims[0]), int(dims[1])) if len(dims) == 2 else None
    return known.get(name)


def render(data: dict) -> str:
    """The run's JSON as a markdown report (``--render``): environment, then one table of times and rates per
    Wan shape, then the shares of the quantization kernels."""
    env = data["steps"].get("environment", {})
    smi0, smi1 = env.get("smi", {}), env.get("smi_after", {})
    out = [f"# First GPU window: GEMM kernels on the Wan linear shapes ({env.get('device', '?')})", "",
           f"{data['date']} · torch {env.get('torch')} · triton {env.get('triton')} · {env.get('sms')} SMs · "
           f"clocks SM {smi0.get('clocks.sm')} idle → {smi1.get('clocks.sm')} after the GEMMs (max "
           f"{smi1.get('clocks.max.sm')}), memory {smi1.get('clocks.mem')}, power {smi1.get('power.draw')} of "
           f"{smi1.get('power.limit')} after. `bench/first_window.py`; do_bench median (ms), M = {M_TOKENS} tokens, "
           "random inputs. TOPS = 2·M·N·K / time for every GEMM row (bf16 rows: TFLOP/s).", "",
           "| N x K | bf16 cuBLAS | `_int_mm` (int8 cuBLAS) | W4A8 g128 autotuned | forced 128x128/8w | forced "
           "128x64/4w | W4A8 per-token | W4A8 packed nibbles | autotune winner |",
           "|---|---|---|---|---|---|---|---|---|"]
    steps = [r for n, r in data["steps"].items() if n.startswith("gemm ")]

    def cell(r, c):
        v = r["times"].get(c, {})
        if "ms" not in v:
            return "error" if "error" in v else "-"
        return f"{v['ms']:.3f} ({v['TOPS']:.0f})" if "TOPS" in v else f"{v['ms']:.3f}"
    for r in steps:
        best = (r.get("w4a8_auto_config") or "").split(",")
        out.append(f"| {r['N']}x{r['K']} | " + " | ".join(cell(r, c) for c in (
            "bf16", "int_mm", "w4a8_auto", "w4a8_forced_128x128", "w4a8_forced_128x64", "w4a8_per_token",
            "w4a8_packed")) + f" | {','.join(b.split(':')[1].strip() for b in best[:2] if ':' in b)}"
            f"/{(best[3].split(':')[1].strip() + 'w') if len(best) > 3 else ''} |")
    out += ["", "Speed relative to bf16 cuBLAS (time ratio; > 1 is faster) and the quantization kernels' cost "
            "relative to the W4A8 GEMM's time:", "",
            "| N x K | W4A8 GEMM | W4A8 GEMM + act_quant | per-token GEMM | `_int_mm` | act_quant ms (GB/s, share) | "
            "norm_quant ms (share) | GEMM + GELU→A8 epilogue ms (share) | expand ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in steps:
        t = {k: v.get("ms") for k, v in r["times"].items()}
        rel = lambda c: f"{t['bf16'] / t[c]:.2f}x" if t.get(c) and t.get("bf16") else "-"  # noqa: E731
        aq, nq, gq = (r["times"].get(c, {}) for c in ("act_quant", "norm_quant", "gelu_quant"))
        out.append(
            f"| {r['N']}x{r['K']} | {rel('w4a8_auto')} | {r.get('speedup_vs_bf16')}x | {rel('w4a8_per_token')} | "
            f"{rel('int_mm')} | " + (f"{aq['ms']:.3f} ({aq['GB/s']:.0f}, {aq['share_of_w4a8_auto']:.0%})" if "ms" in aq
                                     else "-") + " | "
            + (f"{nq['ms']:.3f} ({nq['share_of_w4a8_auto']:.0%})" if "ms" in nq else "-") + " | "
            + (f"{gq['ms']:.3f} ({gq['share_of_w4a8_auto']:.0%})" if "ms" in gq else "-") + " | "
            + (f"{t['expand']:.3f}" if t.get("expand") else "-") + " |")
    agree = [r.get("agreement", {}) for r in steps]
    out += ["", "Autotuned vs forced config and packed vs expanded loop on the same inputs, max |difference| of the "
            f"outputs: {sorted({v for a in agree for v in a.values() if isinstance(v, float)})} "
            "(integer partials are exact, so any config and loop must agree to the bit)."]
    if any("gluon_g128" in r["times"] for r in steps):
        out += ["", "The Gluon kernels (the rescale under the next wgmma: kernels/gluon_ws.py, warp-specialized, and "
                "kernels/gluon_qlinear.py) beside the Triton loop, ms (TOPS), and whether the output equals the Triton "
                "kernel's bit for bit (group 128: the wide cooperative 128x192 tile, the cooperative 128x128 and the "
                "128x64 ones; per-token: 256x128 and 128x128; the FFN-up with the GELU epilogue in ping-pong and "
                "cooperatively):", "",
                "| N x K | Triton g128 | Gluon g128 | = | 128x128 | = | 128x64 | = | Triton per-token | Gluon per-token | "
                "= | 128x128 | = | Triton GEMM + GELU→A8 | Gluon ping-pong | cooperative |",
                "|" + "---|" * 16]
        for r in steps:
            cells = [cell(r, "w4a8_auto")]
            for c in ("gluon_g128", "gluon_g128_coop", "gluon_g128_128x64", "w4a8_per_token", "gluon_per_token",
                      "gluon_per_token_128x128"):
                cells.append(cell(r, c))
                if c.startswith("gluon"):
                    cells.append(str(r.get(f"{c}_bit_exact", "-")))
            cells += [cell(r, c) for c in ("gelu_quant", "gluon_gelu_quant", "gluon_gelu_quant_coop")]
            out.append(f"| {r['N']}x{r['K']} | " + " | ".join(cells) + " |")
        ffn = [(r, c, r[f"{c}_codes_vs_triton"]) for r in steps for c in ("gluon_gelu_quant", "gluon_gelu_quant_coop")
               if f"{c}_codes_vs_triton" in r]
        if ffn:
            out += ["", "Gluon FFN-up codes and scales against the Triton epilogue kernel's: " + "; ".join(
                f"{r['N']}x{r['K']} {'ping-pong' if c == 'gluon_gelu_quant' else 'cooperative'} {v}" for r, c, v in ffn)]
    l2 = [(r, {c: v["L2_TB/s"] for c, v in r["times"].items() if "L2_TB/s" in v}) for r in steps]
    if any(d for _, d in l2):
        cols = sorted({c for _, d in l2 for c in d})
        out += ["", "L2 → shared-memory traffic of the GEMMs whose tile is known, TB/s at the measured time (each "
                "tile reads its K strips of codes and int8 weights; the instrument has no L2 bound: the same rate across "
                "tiles and shapes would be L2's ceiling):", "", "| N x K | " + " | ".join(cols) + " |",
                "|" + "---|" * (len(cols) + 1)]
        for r, d in l2:
            out.append(f"| {r['N']}x{r['K']} | " + " | ".join(str(d.get(c, "-")) for c in cols) + " |")
    mma = data["steps"].get("mma_peak")
    if isinstance(mma, dict) and "TFLOPs" in mma:   # bench/mma_peak.py: wgmmas on shared-memory tiles, nothing else
        out += ["", f"Tensor cores alone (`bench/mma_peak.py`: {mma.get('tile')}, operands in shared memory, no "
                "global traffic in the loop), TFLOP/s (TOPS); checked = the accumulators equal A @ Bᵀ:", "",
                "| dtype | TFLOP/s, 1 CTA per SM | checked |", "|---|---|---|"]
        for name, row in mma["TFLOPs"].items():
            out.append(f"| {name} | {row.get('1_cta_per_sm', row.get('error', '-'))} | "
                       f"{mma.get('checked', {}).get(name, '-')} |")
    probe = data["steps"].get("l2_probe")
    if isinstance(probe, dict) and "rates_TB/s" in probe:   # bench/l2_probe.py: what L2 gives a plain sweep
        out += ["", "L2 probe (`bench/l2_probe.py`: CTAs sweep a buffer with `.cg` loads, TB/s read; buffers under "
                "L2's 50 MB are served by L2 after the first sweep, the largest by HBM):", "",
                "| buffer | 1 CTA/SM | 2 CTAs/SM | 4 CTAs/SM | 8 CTAs/SM |", "|---|---|---|---|---|"]
        for size, row in probe["rates_TB/s"].items():
            out.append(f"| {size} | " + " | ".join(str(row.get(f"{c}_cta_per_sm", "-")) for c in (1, 2, 4, 8)) + " |")
    att = data["steps"].get("attention")
    if isinstance(att, dict) and "times" in att:
        ms = {k: v.get("ms") for k, v in att["times"].items()}
        tf = {k: f"{v:.3f} ({att['flop'] / v / 1e9:.0f})" if v else "error" for k, v in ms.items()}
        out += ["", f"Attention {att['shape']} (B, H, S, D) {att['dtype']}, ms (TFLOP/s): the graph's SDPA "
                f"{tf.get('sdpa')}, SDPA + act_quant of to_out's input {tf.get('sdpa_then_act_quant')}, the attention "
                f"kernel quantizing in its epilogue (fuse_attn) {tf.get('attn_act_quant')}; its codes against the "
                f"split path's: {att.get('agreement')}."]
    return "\n".join(out) + "\n"


def share(v: dict, r: dict):
    auto = r["times"].get("w4a8_auto", {})
    return round(v["ms"] / auto["ms"], 3) if "ms" in auto else None


def agreement(ql, q, codes, scales, packed, ws, wz, bias, xdt) -> dict:
    """Autotuned vs forced config (same loop order: 0) and packed vs expanded loop, max |difference|."""
    y_auto = ql.qlinear(codes, scales, packed, ws, wz, bias, 4, xdt, expand=True).float()
    return {"forced_vs_auto_max_abs": float((q(FORCED[0]).float() - y_auto).abs().max()),
            "packed_vs_expanded_max_abs": float((q(FORCED[0], False).float() - y_auto).abs().max())}


def attention_step(run: Run, dev: str, rep_ms: int) -> None:
    """Wan 2.1-1.3B self-attention (12 heads of 128, 32,760 tokens, bf16): the graph's SDPA, SDPA then the separate
    act_quant of to_out's input, and the project's attention kernel that quantizes in its epilogue
    (kernels/attn_quant.py, option fuse_attn), with how far its codes are from the split path's."""
    import torch
    import torch.nn.functional as F

    from dvdq_compile.kernels import act_quant as aq
    from dvdq_compile.kernels.attn_quant import attn_act_quant

    b, h, s, d = (1, 12, M_TOKENS, 128) if dev == "cuda" else (1, 2, 40, 64)
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, generator=g, device=dev, dtype=dt).permute(0, 2, 1, 3) for _ in range(3))
    t = timer(dev, rep_ms)
    merged = lambda: F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).flatten(2, 3)  # noqa: E731
    r = {"shape": [b, h, s, d], "dtype": str(dt), "flop": 4 * b * h * s * s * d, "times": {}}
    r["times"]["sdpa"] = t(merged)
    r["times"]["sdpa_then_act_quant"] = t(lambda: aq.act_quant(merged(), 8, d, d, 0))
    r["times"]["attn_act_quant"] = t(lambda: attn_act_quant(q, k, v, None, dt, 8, d, d, 0))

    def agreement():
        c, sc = attn_act_quant(q, k, v, None, dt, 8, d, d, 0)
        rc, rs = aq.act_quant(merged(), 8, d, d, 0)
        diff = (c.int() - rc.int()).abs()
        return {"max_code_diff": int(diff.max()), "codes_differing": float((diff > 0).float().mean()),
                "max_scale_rel": float(((sc - rs).abs() / rs.abs().clamp_min(1e-30)).max())}
    r["agreement"] = safe(agreement)()
    run.step("attention", r)


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
    p.add_argument("--render", metavar="JSON", default=None, help="write JSON's markdown report beside it and exit")
    p.add_argument("--skip", nargs="*", default=[], choices=["ncu", "tests", "e2e"],
                   help="steps a caller runs itself with its own time limits (scripts/gpu_run.sh window)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.render:
        src = Path(a.render)
        src.with_suffix(".md").write_text(render(json.loads(src.read_text())))
        print(f"wrote {src.with_suffix('.md')}")
        return 0
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
    if dev == "cuda" and not a.only_gemm:   # L2's read rate, the ceiling the instrument lacks (bench/l2_probe.py)
        sys.path.insert(0, str(ROOT / "bench"))
        import l2_probe
        import mma_peak
        run.step("l2_probe", safe(l2_probe.measure)())
        run.step("mma_peak", safe(mma_peak.measure)())   # the tensor cores alone: int8 vs fp8 vs bf16
    shapes = SHAPES if dev == "cuda" else ((64, 256), (96, 128))
    m = M_TOKENS if dev == "cuda" else 40
    if a.only_gemm:
        n, k = (int(v) for v in a.shape.split("x")) if a.shape else SHAPES[0]
        gemm_shapes(run, dev, ((n, k),), m, a.rep)
        return 0
    gemm_shapes(run, dev, shapes, m, a.rep)
    safe(attention_step)(run, dev, a.rep)
    if dev == "cuda":
        run.data["steps"]["environment"]["smi_after"] = smi()
        if "ncu" not in a.skip:
            safe(ncu_step)(run, out)
    if "tests" not in a.skip:
        safe(tests_step)(run, a.dry_run)
    if dev == "cuda" and "e2e" not in a.skip:
        e2e_step(run, out)
    run.step("done", {"elapsed_s": round(time.perf_counter() - run.t0, 1), "estimate": pl})
    report = render(run.data)
    run.path.with_suffix(".md").write_text(report)
    print(report, flush=True)   # the device reply carries the end of the output
    return 0


if __name__ == "__main__":
    sys.exit(main())
