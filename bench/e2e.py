"""End-to-end denoising-step benchmark of full-size video DiTs (diffusers configs, random Gaussian weights, bf16).

One step = one transformer forward at the stated latent size. Rows (each on a freshly built model, so memory is
not shared between rows):

- ``eager bf16``; ``inductor bf16`` (``torch.compile``, the baseline every speedup is relative to);
  ``inductor bf16 + CUDA graphs`` (``mode="reduce-overhead"``);
- ``torchao int8 dynamic`` and ``torchao fp8 row-wise`` (if torchao is installed and the GPU supports it: the best
  a user could pick instead);
- ``dvdquant W4A8`` / ``W4A4``, ``dvdquant W4A8 free_weights`` (16-bit copies released), ``dvdquant W4A8 + CUDA
  graphs``, and ``dvdquant δ`` (a 20-step flow-matching loop, the δ-GBS switch between the A4 and A8 variants; the
  time is per step, with the average activation bits).

Per row: median step time, speedup vs Inductor bf16, first-call time (compile + quantization), peak GPU memory
(``torch.cuda.max_memory_allocated``: during the first call, and in steady state), resident weight bytes (parameter
storage still allocated + quantized copies). For Inductor bf16 and dvdquant W4A8 a profiler pass splits the step into
linears (GEMMs + our quantize/GEMM kernels), attention and the rest; the Amdahl ceiling of linear-only quantization
is ``1 / ((1 - f) + f / s)`` with f the bf16 linear share and s the measured linear speedup; the attained fraction
is the measured end-to-end speedup over that ceiling. BGR time: quantizing every block linear on the run device.

On CPU only the ``smoke`` configuration runs (a tiny Wan, fp32): it keeps the harness working in CI and measures
nothing worth reporting (no GPU memory, no CUDA graphs, no torchao rows; timings are CPU timings of a toy).

    python bench/e2e.py --config wan1.3b [--layers N] [--out bench/results] [--rows LABEL ...] [--iters 5]
    python bench/e2e.py --smoke
    python bench/e2e.py --config wan1.3b --bgr-only --layers 1     # BGR time only (CPU too; whole model estimated)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dvdq_compile  # noqa: E402
from dvdq_compile.config import DEFAULT_BLOCK_PATTERN, QuantConfig  # noqa: E402


# ------------------------------------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    family: str  # "wan" | "hunyuan"
    kwargs: dict
    latent: tuple  # (C, F, H, W) of the latent video
    text_len: int
    note: str = ""
    dtype: torch.dtype = torch.bfloat16

    def tokens(self, patch=(1, 2, 2)) -> int:
        _, f, h, w = self.latent
        return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
CONFIGS = {
    # Wan 2.1 1.3B, 480p (480x832), 81 frames: latent 16 x 21 x 60 x 104 -> 21*30*52 = 32,760 tokens.
    "wan1.3b": ModelConfig("wan", WAN_13B, (16, 21, 60, 104), 512, "Wan 2.1-1.3B, 480x832, 81 frames"),
    "wan14b": ModelConfig("wan", dict(WAN_13B, num_attention_heads=40, ffn_dim=13824, num_layers=40),
                          (16, 21, 60, 104), 512, "Wan 2.1-14B, 480x832, 81 frames"),
    "hunyuan": ModelConfig("hunyuan", dict(in_channels=16, out_channels=16, num_attention_heads=24,
                                           attention_head_dim=128, num_layers=20, num_single_layers=40,
                                           num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                                           qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096,
                                           pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
                           (16, 16, 68, 120), 256, "HunyuanVideo 13B, 544x960, 61 frames (16,320 x 2 tokens)"),
    "smoke": ModelConfig("wan", dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64,
                                     in_channels=4, out_channels=4, text_dim=16, freq_dim=256, ffn_dim=256,
                                     num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                     rope_max_seq_len=32),
                         (4, 2, 16, 16), 24, "tiny Wan (CI smoke, not a measurement)", torch.float32),
}


def build(cfg: ModelConfig, layers: int | None, device: torch.device, seed: int = 0) -> torch.nn.Module:
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    kw = dict(cfg.kwargs)
    if layers is not None:  # fewer blocks to fit: stated in the results
        if cfg.family == "wan":
            kw["num_layers"] = layers
        else:
            kw["num_layers"], kw["num_single_layers"] = layers, 2 * layers
    cls = WanTransformer3DModel if cfg.family == "wan" else HunyuanVideoTransformer3DModel
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(cfg.dtype)  # built directly in bf16: an fp32 14B model would not fit next to it
    try:
        with torch.device(device):
            model = cls(**kw).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(prev)
    with torch.device(device):
        # as from_pretrained(torch_dtype=bf16) loads it: bf16, except the modules the class keeps in fp32
        keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and keep & set(name.split(".")):
                t.data = t.data.float()
        # Gaussian N(0, 1/K) weights, drawn on the device: default (uniform) init is not what trained weights
        # look like, and drawing 14B values on the CPU would take minutes.
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, m.weight.shape[1] ** -0.5)
    return model


def inputs(cfg: ModelConfig, device: torch.device, t: float = 500.0, seed: int = 0) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    c, f, h, w = cfg.latent
    x = torch.randn(1, c, f, h, w, generator=g, device=device, dtype=cfg.dtype)
    text = cfg.kwargs.get("text_dim", cfg.kwargs.get("text_embed_dim"))
    ctx = torch.randn(1, cfg.text_len, text, generator=g, device=device, dtype=cfg.dtype)
    d = dict(hidden_states=x, timestep=torch.tensor([t], device=device), encoder_hidden_states=ctx,
             return_dict=False)
    if cfg.family == "hunyuan":
        d.update(encoder_attention_mask=torch.ones(1, cfg.text_len, device=device),
                 pooled_projections=torch.randn(1, 768, generator=g, device=device, dtype=cfg.dtype),
                 guidance=torch.tensor([6000.0], device=device))
    return d


# ------------------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    label: str
    kind: str  # eager | inductor | dvdquant | torchao_int8 | torchao_fp8
    options: dict = field(default_factory=dict)
    mode: str | None = None  # torch.compile mode ("reduce-overhead": CUDA graphs)
    loop: int = 0  # > 0: a denoising loop of this many steps (δ row)
    profile: bool = False
    cuda_only: bool = False
    env: dict = field(default_factory=dict)   # environment variables set while the row runs (DVDQ_GLUON)


CACHE = {"cache": "delta", "cache_threshold": 0.15, "cache_steps": 20}  # step caching rows (runtime/step_cache.py)
ROWS = [
    Row("eager bf16", "eager"),
    Row("inductor bf16", "inductor", profile=True),
    Row("inductor bf16 + CUDA graphs", "inductor", mode="reduce-overhead", cuda_only=True),
    Row("torchao int8 dynamic", "torchao_int8", cuda_only=True),
    Row("torchao fp8 row-wise", "torchao_fp8", cuda_only=True),
    Row("dvdquant W4A8", "dvdquant", {"act_bits": 8}, profile=True),
    Row("dvdquant W4A8 per-token", "dvdquant", {"act_bits": 8, "act_scale": "token"}),   # the fastest GEMM measured
    Row("dvdquant W4A8 fuse_attn", "dvdquant", {"act_bits": 8, "fuse_attn": "on"}),   # to_out's codes from attention
    Row("dvdquant W4A8 Gluon", "dvdquant", {"act_bits": 8}, env={"DVDQ_GLUON": "1"}, cuda_only=True),
    Row("dvdquant W4A8 per-token Gluon", "dvdquant", {"act_bits": 8, "act_scale": "token"}, env={"DVDQ_GLUON": "1"},
        cuda_only=True),
    Row("dvdquant W4A4", "dvdquant", {"act_bits": 4}),
    Row("dvdquant W4A8 free_weights", "dvdquant", {"act_bits": 8, "free_weights": True}),
    Row("dvdquant W4A8 + CUDA graphs", "dvdquant", {"act_bits": 8}, mode="reduce-overhead", cuda_only=True),
    Row("dvdquant delta (A4/A8)", "dvdquant", {"act_bits": "auto"}, loop=20),
    Row("dvdquant W4A8 loop", "dvdquant", {"act_bits": 8}, loop=20),
    Row("dvdquant W4A8 + cache delta", "dvdquant", {"act_bits": 8, **CACHE}, loop=20),
    Row("dvdquant W4A8 + cache delta + CUDA graphs", "dvdquant", {"act_bits": 8, **CACHE}, mode="reduce-overhead",
        loop=20, cuda_only=True),
]
BASELINE = "inductor bf16"


def prepare(row: Row, model: torch.nn.Module, smoke: bool = False):
    """The callable a user would run for this row (compiled lazily: the first call compiles)."""
    if row.kind == "eager":
        return model
    if row.kind == "inductor":
        return torch.compile(model, mode=row.mode)
    if row.kind in ("torchao_int8", "torchao_fp8"):
        from torchao.quantization import (
            quantize_,  # ImportError -> the row records "not installed"
        )
        if row.kind == "torchao_int8":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig
            config = Int8DynamicActivationInt8WeightConfig()
        else:
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                PerRow,
            )
            config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        pat = re.compile(DEFAULT_BLOCK_PATTERN)  # the same layers as dvdquant quantizes
        quantize_(model, config, filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and bool(pat.search(name)))
        return torch.compile(model)
    opts = dict(row.options, progress=False)
    if row.mode:  # torch.compile takes mode= or options=, not both: the backend takes the mode as an option
        opts["mode"] = row.mode
    if smoke:  # CI: the PyTorch reference path, no Inductor build (the Triton interpreter is minutes per step)
        opts.update(kernels="reference", lowering="eager")
        opts.pop("mode", None)
    # step caching skips whole model calls: it needs the model as one graph
    return torch.compile(model, backend=backend(), options=opts, fullgraph="cache" in opts)


def backend():
    """``"dvdquant"`` when the package is installed (its entry point registers the name); the callable itself
    when it only is on ``PYTHONPATH`` (the lent GPU machine: no install there)."""
    import torch._dynamo
    if "dvdquant" in torch._dynamo.list_backends():
        return "dvdquant"
    from dvdq_compile.backend import dvdquant
    return dvdquant


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def categorize(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("attention", "flash", "fmha", "sdpa", "softmax_backward")):
        return "attention"
    if any(k in n for k in ("gemm", "mm", "matmul", "linear", "qlinear", "act_quant", "cutlass", "sm90_xmma",
                            "int_mm", "scaled_mm", "dvdq")):
        return "linear"
    return "other"


def profile_split(fn, device) -> dict:
    """Share of the step's self time in linears, attention and the rest (device time on CUDA, CPU time on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    cuda = device.type == "cuda"
    tot = {"linear": 0.0, "attention": 0.0, "other": 0.0}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", 0.0) if cuda else e.self_cpu_time_total
        if cuda and getattr(e, "device_type", None) is not None and "CUDA" not in str(e.device_type):
            continue
        tot[categorize(e.key)] += us
    s = sum(tot.values()) or 1.0
    return {k: v / s for k, v in tot.items()} | {"total_ms": s / 1000}


def resident_bytes(model) -> int:
    """Parameter storage still allocated + the quantized copies of this model's weights."""
    params = sum(p.untyped_storage().nbytes() for p in model.parameters())
    try:
        rep = dvdq_compile.report(model)
    except RuntimeError:  # not compiled with dvdquant
        return params
    return params + sum(r.bytes_after for r in rep.layers if r.decision in ("quantize", "weight_only"))


def run_row(row: Row, cfg: ModelConfig, args, device) -> dict:
    out = {"label": row.label}
    if row.cuda_only and device.type != "cuda":
        return out | {"skipped": "needs a CUDA GPU"}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()
    try:
        model = build(cfg, args.layers, device, seed=args.seed)
        fn_model = prepare(row, model, smoke=args.smoke)
    except ImportError as e:
        return out | {"skipped": f"not installed: {e}"}
    kw = inputs(cfg, device, seed=args.seed)
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            fn_model(**kw)
            sync(device)
            out["first_call_s"] = time.perf_counter() - t0
            if device.type == "cuda":
                out["peak_first_call_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            if row.loop:
                out.update(delta_loop(fn_model, model, cfg, row.loop, device, args.seed))
            else:
                times = []
                for _ in range(args.warmup):
                    fn_model(**kw)
                sync(device)
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    fn_model(**kw)
                    sync(device)
                    times.append(time.perf_counter() - t0)
                out["step_ms"] = 1000 * statistics.median(times)
                out["step_ms_all"] = [1000 * t for t in times]
            if device.type == "cuda":
                out["peak_steady_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            out["resident_weight_gib"] = resident_bytes(model) / 2**30
            if row.kind == "dvdquant":
                rep = dvdq_compile.report(fn_model)
                out["quantized_layers"] = rep.count("quantize") + rep.count("weight_only")
                out["freed_gib"] = rep.freed_bytes / 2**30
            if row.profile and args.profile:
                out["split"] = profile_split(lambda f=fn_model: f(**kw), device)
    except Exception as e:  # one failing row must not end a GPU run
        out["error"] = f"{type(e).__name__}: {e}"[:800]
        out["traceback"] = traceback.format_exc()[-3000:]
    finally:
        del model, fn_model
        torch._dynamo.reset()
    return out


def delta_loop(fn_model, model, cfg, steps, device, seed) -> dict:
    """A flow-matching sampling loop: the δ controller picks A4/A8 per step from the output's relative change."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(steps, device=device)
    kw = inputs(cfg, device, seed=seed)
    x = kw.pop("hidden_states")
    times = []
    for t in sched.timesteps:
        sync(device)
        t0 = time.perf_counter()
        v = fn_model(hidden_states=x, **dict(kw, timestep=t.reshape(1).to(device)))[0]
        x = sched.step(v, t, x, return_dict=False)[0]
        sync(device)
        times.append(time.perf_counter() - t0)
    ctrl = dvdq_compile.controller(fn_model)
    out = {"step_ms": 1000 * statistics.median(times), "step_ms_all": [1000 * t for t in times],
           "loop_ms": 1000 * sum(times), "avg_act_bits": ctrl.average_bits() if ctrl else None, "steps": steps}
    if ctrl is not None and ctrl.cache.on:  # reused steps take ~0 ms: the loop total is the comparable number
        run = ctrl.trace[-1].run  # the loop's own run (the first call at t=500 was a run of its own)
        out.update(reuse_rate=ctrl.reuse_rate(run), computed_calls=ctrl.computed_calls(run))
    return out


def block_linears(model) -> list[tuple[str, torch.Tensor]]:
    """The linears the backend quantizes by default (block pattern; K a multiple of the rotation block)."""
    pat = re.compile(DEFAULT_BLOCK_PATTERN)
    return [(n, m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pat.search(n)
            and m.weight.shape[1] % 128 == 0]


def bgr_time(cfg: ModelConfig, args, device) -> dict:
    """Seconds to quantize every block linear with the default spec (rotation + BGR) on ``device``, per weight
    shape, and the estimate for the whole model: seconds per weight × the full config's block-linear weights (the
    cost is linear in the weight count for a given K; built with fewer blocks, the estimate says so)."""
    from dvdq_compile.kernels.dispatch import bgr_solver
    from dvdq_compile.quant.qweight import quantize_weight

    model = build(cfg, args.layers, device, seed=args.seed)
    ws = block_linears(model)
    spec = QuantConfig().weight_spec()
    shapes: dict[str, dict] = {}
    total = 0.0
    for _, w in ws:
        sync(device)
        t0 = time.perf_counter()
        quantize_weight(w, spec, rows_fn=bgr_solver(w.device, w.shape[1]))  # the kernel on a GPU, as the backend
        sync(device)
        dt = time.perf_counter() - t0
        total += dt
        rec = shapes.setdefault(f"{w.shape[0]}x{w.shape[1]}", {"layers": 0, "seconds": 0.0})
        rec["layers"] += 1
        rec["seconds"] += dt
    n = sum(w.numel() for _, w in ws)
    vs_reference = None
    if device.type == "cuda" and ws:  # the Triton BGR kernel vs the PyTorch reference on the first layer
        w0 = ws[0][1]
        times = {}
        for impl in ("auto", "reference"):
            sync(device)
            t0 = time.perf_counter()
            quantize_weight(w0, spec, rows_fn=bgr_solver(w0.device, w0.shape[1], impl))
            sync(device)
            times[impl] = time.perf_counter() - t0
        vs_reference = {"layer": ws[0][0], "shape": list(w0.shape), "kernel_seconds": times["auto"],
                        "reference_seconds": times["reference"]}
    del model, ws
    full = sum(w.numel() for _, w in block_linears(build(cfg, None, torch.device("meta"))))
    threads = torch.get_num_threads() if device.type == "cpu" else None
    return {"device": device_name(device), "threads": threads, "spec": repr(spec), "layers": sum(
        r["layers"] for r in shapes.values()), "weights": n, "seconds": total, "us_per_weight": 1e6 * total / n,
        "shapes": shapes, "full_model_weights": full, "full_model_seconds_est": total * full / n,
        "estimated": full != n, "vs_reference": vs_reference}


# ------------------------------------------------------------------------------------------------- output
def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def amdahl(res: dict) -> dict | None:
    rows = {r["label"]: r for r in res["rows"]}
    base, q = rows.get(BASELINE, {}), rows.get("dvdquant W4A8", {})
    if "split" not in base or "split" not in q or "step_ms" not in base or "step_ms" not in q:
        return None
    f = base["split"]["linear"]
    lin_b = f * base["split"]["total_ms"]
    lin_q = q["split"]["linear"] * q["split"]["total_ms"]
    s = lin_b / lin_q if lin_q else float("inf")
    ceiling = 1 / ((1 - f) + f / s)
    measured = base["step_ms"] / q["step_ms"]
    return {"linear_share_bf16": f, "linear_speedup": s, "ceiling": ceiling, "ceiling_if_free": 1 / (1 - f),
            "measured_speedup": measured, "attained": measured / ceiling}


def bgr_lines(b: dict) -> list[str]:
    est = (f" Whole model ({b['full_model_weights'] / 1e9:.2f} B block-linear weights), estimated at the same rate: "
           f"{b['full_model_seconds_est'] / 60:.1f} min." if b.get("estimated") else "")
    L = [f"BGR quantization (rotation + BGR, `{b['spec']}`) of {b['layers']} block linears "
         f"({b['weights'] / 1e6:.1f} M weights) on {b['device']}: {b['seconds']:.1f} s, "
         f"{b['us_per_weight']:.2f} µs per weight." + est,
         "", "| weight [N x K] | layers | seconds | µs / weight |", "|---|---:|---:|---:|"]
    v = b.get("vs_reference")
    if v:
        L[0] += (f" Triton BGR kernel vs the PyTorch reference on {v['layer']} {v['shape']}: "
                 f"{v['kernel_seconds']:.2f} s vs {v['reference_seconds']:.2f} s.")
    for shape, r in b.get("shapes", {}).items():
        nk = [int(v) for v in shape.split("x")]
        L.append(f"| {shape} | {r['layers']} | {r['seconds']:.1f} | "
                 f"{1e6 * r['seconds'] / (r['layers'] * nk[0] * nk[1]):.2f} |")
    return L


def write_bgr(res: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    L = [f"# BGR quantization time: {res['model']} ({res['device']})", "",
         f"{res['date']} · torch {res['torch']} · {res['params_b']:.2f} B parameters{res['layers_note']}", "",
         f"Command: `{res['command']}`", ""] + bgr_lines(res["bgr"])
    if res.get("not_measured"):
        L += ["", "Not measured here: " + res["not_measured"]]
    (out / f"{stem}.md").write_text("\n".join(L) + "\n")


def write(res: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    base = next((r.get("step_ms") for r in res["rows"] if r["label"] == BASELINE), None)
    L = [f"# End-to-end step: {res['model']} ({res['device']})", "",
         f"{res['date']} · torch {res['torch']} · triton {res['triton']} · diffusers {res['diffusers']} · "
         f"{res['tokens']} tokens · {res['params_b']:.2f} B parameters{res['layers_note']}", "",
         f"Command: `{res['command']}`", "",
         "| row | step (ms) | vs Inductor bf16 | first call (s) | peak 1st call (GiB) | peak steady (GiB) | "
         "resident weights (GiB) | note |", "|---|---|---|---|---|---|---|---|"]

    def fmt(v, f="{:.2f}"):
        return f.format(v) if isinstance(v, (int, float)) else "-"

    for r in res["rows"]:
        note = r.get("skipped") or (r.get("error", "")[:80] and "error: " + r["error"][:80])
        if r.get("avg_act_bits") is not None:
            note = f"{r['steps']}-step loop ({r['loop_ms']:.0f} ms), avg {r['avg_act_bits']:.2f} act bits"
            if r.get("reuse_rate") is not None:
                note += f", {r['reuse_rate']:.0%} of steps reused"
        if r.get("freed_gib"):
            note = (note or "") + f" released {r['freed_gib']:.2f} GiB"
        sp = base / r["step_ms"] if base and r.get("step_ms") else None
        L.append(f"| {r['label']} | {fmt(r.get('step_ms'), '{:.1f}')} | {fmt(sp, '{:.2f}x')} | "
                 f"{fmt(r.get('first_call_s'), '{:.1f}')} | {fmt(r.get('peak_first_call_gib'))} | "
                 f"{fmt(r.get('peak_steady_gib'))} | {fmt(r.get('resident_weight_gib'))} | {note or ''} |")
    a = res.get("amdahl")
    if a:
        L += ["", f"Linear share of the Inductor bf16 step: {a['linear_share_bf16']:.1%}; linear speedup of dvdquant "
              f"W4A8 (profiler): {a['linear_speedup']:.2f}x; Amdahl ceiling {a['ceiling']:.2f}x (linears free: "
              f"{a['ceiling_if_free']:.2f}x); measured {a['measured_speedup']:.2f}x = {a['attained']:.0%} of the "
              "ceiling."]
    for r in res["rows"]:
        if "split" in r:
            s = r["split"]
            L.append(f"- {r['label']}: linear {s['linear']:.1%}, attention {s['attention']:.1%}, other "
                     f"{s['other']:.1%} of {s['total_ms']:.1f} ms profiled")
    if res.get("bgr"):
        L += [""] + bgr_lines(res["bgr"])
    if res.get("not_measured"):
        L += ["", "Not measured here: " + res["not_measured"]]
    (out / f"{stem}.md").write_text("\n".join(L) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in res["rows"] if r.get("step_ms")]
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    ax[0].barh([r["label"] for r in rows], [r["step_ms"] for r in rows])
    ax[0].set_xlabel("median step time (ms)")
    ax[0].invert_yaxis()
    mem = [r for r in rows if r.get("peak_steady_gib") is not None]
    if mem:
        ax[1].barh([r["label"] for r in mem], [r["peak_steady_gib"] for r in mem], label="steady")
        ax[1].barh([r["label"] for r in mem], [r["resident_weight_gib"] for r in mem], alpha=0.6,
                   label="resident weights")
        ax[1].set_xlabel("GiB")
        ax[1].legend()
        ax[1].invert_yaxis()
    else:
        ax[1].text(0.5, 0.5, "GPU memory not measured on CPU", ha="center", va="center")
        ax[1].set_axis_off()
    fig.suptitle(f"{res['model']} one denoising step ({res['device']}, torch {res['torch']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="wan1.3b")
    p.add_argument("--layers", type=int, default=None, help="fewer transformer blocks (stated in the results)")
    p.add_argument("--rows", nargs="+", default=None, help="row labels, run in this order (default all, in the "
                   "listed order); see --list-rows")
    p.add_argument("--list-rows", action="store_true")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--no-bgr", dest="bgr", action="store_false", help="skip the BGR timing")
    p.add_argument("--bgr-only", action="store_true", help="only the BGR timing (runs on CPU for full-size configs "
                   "too; use --layers to time fewer blocks, the whole-model time is then an estimate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--stem", default=None, help="output file stem (default e2e_<config>_<device>)")
    p.add_argument("--smoke", action="store_true", help="the tiny CPU configuration: 1 iteration, 4-step δ loop, "
                   "no BGR timing, dvdquant on the reference kernels with eager lowering")
    args = p.parse_args(argv)
    if args.list_rows:
        for r in ROWS:
            print(f"{r.label:<32} {r.kind:<13} {r.options or ''} {r.mode or ''}")
        return 0
    labels = [r.label for r in ROWS]
    if args.rows:
        bad = [r for r in args.rows if r not in labels]
        if bad:
            p.error(f"unknown rows {bad}; choose from {labels}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.config, args.iters, args.warmup, args.bgr = "smoke", 1, 0, False
    elif device.type == "cpu" and args.config != "smoke" and not args.bgr_only:
        p.error(f"--config {args.config} is a full-size model: it needs a CUDA GPU (use --smoke on CPU)")
    if args.layers is not None and args.layers < 1:
        p.error(f"--layers must be >= 1, got {args.layers}")
    by_label = {r.label: r for r in ROWS}
    rows = [by_label[label] for label in dict.fromkeys(args.rows)] if args.rows else list(ROWS)  # in --rows order
    if args.smoke:
        rows = [Row(r.label, r.kind, r.options, r.mode, min(r.loop, 4), r.profile, r.cuda_only) for r in rows]
    cfg = CONFIGS[args.config]
    import diffusers
    import triton

    probe = build(cfg, args.layers, torch.device("meta"))
    n_params = sum(p.numel() for p in probe.parameters())
    del probe
    res = {"model": cfg.note, "config": args.config, "device": device_name(device), "torch": torch.__version__,
           "triton": triton.__version__, "diffusers": diffusers.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python bench/e2e.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "tokens": cfg.tokens(), "params_b": n_params / 1e9, "dtype": str(cfg.dtype),
           "layers_note": f" ({args.layers} blocks instead of the config's)" if args.layers else "", "rows": []}
    if args.bgr_only:
        if device.type == "cpu":
            res["not_measured"] = "GPU quantization time (CPU run; the GPU time is in the e2e results of a GPU run)."
        res["bgr"] = bgr_time(cfg, args, device)
        slug = re.sub(r"[^a-z0-9]+", "-", res["device"].lower()).strip("-")[:40]
        stem = args.stem or f"bgr_time_{args.config}_{slug}"
        write_bgr(res, Path(args.out), stem)
        print("\n".join(bgr_lines(res["bgr"])))
        print(f"[e2e] wrote {Path(args.out) / stem}.{{json,md}}")
        return 0
    if device.type == "cpu":
        res["not_measured"] = ("GPU memory, CUDA graphs and the torchao rows (CPU run); the CPU timings are of a "
                               "tiny smoke model and say nothing about GPU speed.")
    slug = re.sub(r"[^a-z0-9]+", "-", res["device"].lower()).strip("-")[:40]
    stem = args.stem or f"e2e_{args.config}_{slug}"
    for row in rows:
        print(f"[e2e] {row.label} ...", flush=True)
        saved = {k: os.environ.get(k) for k in row.env}
        os.environ.update(row.env)
        try:
            r = run_row(row, cfg, args, device)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        res["rows"].append(r)
        print(f"[e2e] {row.label}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in r.items() if k not in ("traceback", "step_ms_all",
                                                                                     "split", "label")), flush=True)
        write(res, Path(args.out), stem)  # after every row: a run cut short keeps the rows it finished
    res["amdahl"] = amdahl(res)
    if args.bgr:
        res["bgr"] = bgr_time(cfg, args, device)
    write(res, Path(args.out), stem)
    print(f"[e2e] wrote {Path(args.out) / stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
