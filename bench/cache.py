"""Step caching on the zoo (two experts, CFG): our controller's rules vs diffusers' caches, at full precision and
quantized, scored against the uncached full-precision video.

Rows
- ``none``: no cache (full precision; W4A8 and δ-switched through the backend);
- ours: ``delta`` (the δ signal, ``runtime/step_cache.py``), ``easycache`` and ``teacache`` rules of the same
  controller; full precision through a plain wrapper around the eager model (``Controlled``: the same
  ``DeltaController`` the backend uses), quantized through ``torch.compile(backend="dvdquant", fullgraph=True)``;
  the TeaCache polynomial is fitted here on a separate run (other seed and classes), never on the scored one;
- diffusers' own caches on the eager experts (``enable_cache``): First-Block Cache, TaylorSeer (with block
  identifiers that match Wan), SeaCache, PyramidAttentionBroadcast, FasterCache, and MagCache with ratios from its
  own calibration mode (read from its log) on the same separate run as the TeaCache fit.

Columns: transformer calls computed (ours: from the controller; diffusers' caches skip work inside the forward, so
every call is made), calls saved, wall-clock ratio vs the uncached row of the same precision measured in this run,
PSNR / SSIM / frame-difference correlation vs the uncached full-precision video, and graph breaks / recompiles of
the compiled rows (Dynamo counters). Writes ``bench/results/cache.{json,md}`` (+ ``cache.png``: calls saved vs
PSNR) with the device and versions.

    python bench/cache.py [--steps 50] [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--classes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 steps, a few rows (the test's smoke run)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return p.parse_args(argv)


class Controlled:
    """An eager model driven by a step-caching controller: what the backend's wrapper does, without compiling."""

    def __init__(self, model, ctrl):
        self.model, self.ctrl = model, ctrl
        self._zoo_class_table = getattr(model, "_zoo_class_table", None)

    def parameters(self):
        return self.model.parameters()

    def __call__(self, hidden_states, timestep, **kw):
        from dvdq_compile.runtime.step_cache import REUSE

        bits = self.ctrl.begin_call(timestep, x=hidden_states, model=self.model)
        if bits == REUSE:
            return self.ctrl.reuse_call(hidden_states)
        out = self.model(hidden_states=hidden_states, timestep=timestep, **kw)
        self.ctrl.end_call(out, x=hidden_states, model=self.model)
        return out


class DiffusersCalls:
    """Calls an expert with diffusers' cache contexts ("cond" / "uncond" by call index within a step) and tracks
    the current timestep for the caches that ask for it."""

    current = [1000.0]

    def __init__(self, model):
        self.model = model
        self._zoo_class_table = getattr(model, "_zoo_class_table", None)
        self._t, self._j = None, 0

    def parameters(self):
        return self.model.parameters()

    def __call__(self, hidden_states, timestep, **kw):
        t = float(timestep.reshape(-1)[0])
        self._j = 0 if t != self._t else self._j + 1
        self._t = DiffusersCalls.current[0] = t
        with self.model.cache_context("cond" if self._j == 0 else "uncond"):
            return self.model(hidden_states=hidden_states, timestep=timestep, **kw)


def diffusers_configs():
    import diffusers

    cb = lambda: DiffusersCalls.current[0]  # noqa: E731
    return {
        "diffusers FirstBlockCache t=0.05": lambda: diffusers.FirstBlockCacheConfig(threshold=0.05),
        "diffusers FirstBlockCache t=0.2": lambda: diffusers.FirstBlockCacheConfig(threshold=0.2),
        "diffusers TaylorSeer interval=3": lambda: diffusers.TaylorSeerCacheConfig(
            cache_interval=3, disable_cache_before_step=2, cache_identifiers=[r"^blocks\.\d+$"]),
        "diffusers SeaCache": lambda: diffusers.SeaCacheConfig(),
        "diffusers PAB": lambda: diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, cross_attention_block_skip_range=4,
            spatial_attention_timestep_skip_range=(100, 900), current_timestep_callback=cb),
        "diffusers FasterCache": lambda: diffusers.FasterCacheConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=cb, tensor_format="BCFHW"),
    }


def fit_teacache(pipe, args, steps) -> tuple:
    """Polynomial (degree 2) from the latent input's relative change to the output's, on an uncached run with
    another seed and other classes than the scored one."""
    import numpy as np

    from dvdq_compile.zoo import sample

    seen = []

    def hook(model):
        def call(hidden_states, timestep, **kw):
            out = model(hidden_states=hidden_states, timestep=timestep, **kw)
            seen.append((float(timestep.reshape(-1)[0]), hidden_states.clone(), out[0].clone()))
            return out
        call._zoo_class_table = getattr(model, "_zoo_class_table", None)
        call.parameters = model.parameters
        return call

    sample(hook(pipe.model), [0, 7], steps=steps, guidance=args.guidance, seed=args.seed + 100, progress=False,
           model_low=hook(pipe.model_low) if pipe.model_low is not None else None, boundary=pipe.boundary,
           shift=pipe.shift, table=pipe.table, data=pipe.data)
    firsts, last_t = [], None
    for t, x, y in seen:  # the cond call of each step
        if t != last_t:
            firsts.append((x, y))
        last_t = t
    rel = lambda a, b: float((a - b).abs().sum() / b.abs().sum())  # noqa: E731
    inp = [rel(firsts[i][0], firsts[i - 1][0]) for i in range(1, len(firsts))]
    out = [rel(firsts[i][1], firsts[i - 1][1]) for i in range(1, len(firsts))]
    coef = np.polyfit(np.array(inp), np.array(out), 2)
    return tuple(float(c) for c in coef)


def calibrate_magcache(pipe, args, steps) -> list[list[float]]:
    """MagCache's calibration mode on the separate fitting run: per expert, the ratios it logs (cond context)."""
    import logging

    import diffusers
    import torch

    from dvdq_compile.zoo import sample

    got: list[list[float]] = []

    class Grab(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("MagCache Calibration Results:"):
                got.append(json.loads(msg.split(":", 1)[1].strip()))

    log = logging.getLogger("diffusers.hooks.mag_cache")
    h, level = Grab(), log.level
    log.addHandler(h)
    log.setLevel(logging.INFO)
    experts = [pipe.model, pipe.model_low]
    n_hi = sum(float(t) >= pipe.boundary * 1000 for t in _timesteps(pipe, steps))
    try:
        for m, n in zip(experts, (n_hi, steps - n_hi)):
            m.enable_cache(diffusers.MagCacheConfig(calibrate=True, num_inference_steps=n))
        with torch.no_grad():
            sample(DiffusersCalls(pipe.model), [0, 7], steps=steps, guidance=args.guidance, seed=args.seed + 100,
                   progress=False, model_low=DiffusersCalls(pipe.model_low), boundary=pipe.boundary,
                   shift=pipe.shift, table=pipe.table, data=pipe.data)
    finally:
        log.removeHandler(h)
        log.setLevel(level)
        for m in experts:
            m.disable_cache()
    if len(got) < 2:
        raise RuntimeError(f"MagCache calibration logged {len(got)} result(s), expected one per expert")
    # each expert logs once per context (cond, uncond): take the first of each expert, in call order
    return [got[0], got[2] if len(got) >= 4 else got[1]]


def _timesteps(pipe, steps):
    from dvdq_compile.zoo import make_scheduler

    sched = make_scheduler(pipe.shift)
    sched.set_timesteps(steps, device="cpu")
    return sched.timesteps


def main(argv=None) -> int:
    args = parse_args(argv)
    import diffusers
    import torch
    import triton

    import dvdq_compile
    from dvdq_compile import metrics
    from dvdq_compile.runtime.delta import DeltaController
    from dvdq_compile.runtime.step_cache import CachePolicy
    from dvdq_compile.zoo import load_pipeline, sample

    torch.manual_seed(0)
    steps = 8 if args.quick else args.steps
    pipe = load_pipeline(two_experts=True)
    experts = (pipe.model, pipe.model_low)

    def run(models):
        t0 = time.perf_counter()
        v = sample(models[0], list(args.classes), steps=steps, guidance=args.guidance, seed=args.seed,
                   progress=False, model_low=models[1], boundary=pipe.boundary, shift=pipe.shift, table=pipe.table,
                   data=pipe.data)
        return v, time.perf_counter() - t0

    calls_total = steps * (2 if args.guidance != 1.0 else 1)
    with torch.no_grad():
        ref, t_ref = run(experts)
        run(experts)  # warm caches/allocator, then time the reference again
        ref2, t_ref = run(experts)
        assert torch.equal(ref, ref2)
    coef = fit_teacache(pipe, args, steps)
    rows = []

    def score(name, precision, video, secs, base_secs, computed=None, extra=None):
        r = {"row": name, "precision": precision, "calls": calls_total,
             "computed_calls": computed if computed is not None else calls_total,
             "calls_saved": calls_total / computed if computed else 1.0,
             "wall_s": round(secs, 2), "wall_ratio": round(base_secs / secs, 3),
             "psnr_db": round(metrics.psnr(video, ref), 2) if not torch.equal(video, ref) else None,
             "ssim": round(metrics.ssim(video, ref), 4),
             "frame_diff_corr": round(metrics.frame_diff_corr(video, ref), 4)}
        r.update(extra or {})
        rows.append(r)
        print(f"{name:44s} {precision:6s} computed {r['computed_calls']:4d}/{calls_total} "
              f"PSNR {r['psnr_db']} SSIM {r['ssim']} wall x{r['wall_ratio']}", flush=True)

    score("none", "fp", ref, t_ref, t_ref)
    # (rule, threshold, max consecutive skips, reuse): the δ rule with its default reuse (extrapolate), then the
    # ablations: plain output reuse, and the EasyCache / TeaCache rules with their own reuse
    ours = [("delta", t, 2, "auto") for t in ((0.08, 0.15, 0.3) if not args.quick else (0.15,))]
    if not args.quick:
        ours += [("delta", t, 3, "output") for t in (0.05, 0.1, 0.2)]
        ours += [("delta", t, 3, "auto") for t in (0.1, 0.3)]
    ours += [("easycache", t, 3, "auto") for t in ((0.05, 0.1, 0.2) if not args.quick else (0.1,))]
    ours += [("teacache", t, 3, "auto") for t in ((0.1, 0.2) if not args.quick else (0.1,))]
    for rule, thr, skips, reuse in ours:
        pol = CachePolicy(rule=rule, threshold=thr, max_skips=skips, coefficients=coef if rule == "teacache" else
                          (1.0, 0.0), steps=steps, last=1, reuse=reuse)
        ctrls = [DeltaController(low=16, high=16, mode="high", cache=pol) for _ in experts]
        with torch.no_grad():
            v, secs = run([Controlled(m, c) for m, c in zip(experts, ctrls)])
        score(f"ours {rule} t={thr:g} skips={skips} {pol.reuse_mode}", "fp", v, secs, t_ref,
              sum(c.computed_calls() for c in ctrls), {"policy": pol.describe()})
    diff = diffusers_configs()
    for name, make in (diff.items() if not args.quick else list(diff.items())[:1]):
        try:
            for m in experts:
                m.enable_cache(make())
            with torch.no_grad():
                v, secs = run([DiffusersCalls(m) for m in experts])
            score(name, "fp", v, secs, t_ref)
        except Exception as e:  # a cache that cannot run on this model is a result too
            rows.append({"row": name, "precision": "fp", "error": f"{type(e).__name__}: {e}"[:300]})
            print(f"{name}: {type(e).__name__}: {e}"[:200], flush=True)
        finally:
            for m in experts:
                try:
                    m.disable_cache()
                except Exception:
                    pass
    try:
        ratios = calibrate_magcache(pipe, args, steps)
        for thr in (0.06, 0.12):
            for m, r in zip(experts, ratios):
                m.enable_cache(diffusers.MagCacheConfig(threshold=thr, mag_ratios=r, num_inference_steps=len(r)))
            with torch.no_grad():
                v, secs = run([DiffusersCalls(m) for m in experts])
            score(f"diffusers MagCache t={thr:g}", "fp", v, secs, t_ref)
            for m in experts:
                m.disable_cache()
    except Exception as e:
        rows.append({"row": "diffusers MagCache", "precision": "fp", "error": f"{type(e).__name__}: {e}"[:300]})
        print(f"MagCache: {type(e).__name__}: {e}"[:200], flush=True)
        for m in experts:
            try:
                m.disable_cache()
            except Exception:
                pass

    # quantized: W4A8 and δ-switched, no cache vs ours, through the backend with fullgraph=True
    qrows = [("W4A8", {"act_bits": 8}), ("δ-GBS", {})]
    qcache = [("delta", 0.15, 2)] if args.quick else [("delta", 0.15, 2), ("delta", 0.3, 2), ("easycache", 0.1, 3)]
    base_q = {}
    for qname, qopts in qrows:
        for rule, thr, skips in [(None, None, None)] + qcache:
            opts = dict(qopts, lowering="eager", kernels="reference", progress=False)
            if rule:
                opts.update(cache=rule, cache_threshold=thr, cache_max_skips=skips, cache_steps=steps)
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            cm = [torch.compile(m, backend="dvdquant", options=opts, fullgraph=True) for m in experts]
            with torch.no_grad():
                run(cm)  # compile + quantize outside the timed run
                for m in experts:
                    c = dvdq_compile.controller(m)
                    if c is not None:
                        c.reset()
                v, secs = run(cm)
            ctrls = [dvdq_compile.controller(m) for m in experts]
            computed = None
            if rule:
                computed = sum(sum(r.calls for r in c.trace if r.run == c.trace[-1].run and r.bits != 0)
                               for c in ctrls)
            cnt = torch._dynamo.utils.counters
            extra = {"graph_breaks": sum(cnt["graph_break"].values()), "unique_graphs": cnt["stats"]["unique_graphs"],
                     "avg_act_bits": round(sum(c.average_bits() for c in ctrls if c) / max(1, sum(1 for c in ctrls
                                                                                                   if c)), 2)
                     if any(ctrls) else 8.0}
            if rule is None:
                base_q[qname] = secs
            name = "none" if rule is None else f"ours {rule} t={thr:g} skips={skips}"
            score(name, qname, v, secs, base_q[qname], computed, extra)

    env = {"device": "CPU (" + (platform.processor() or platform.machine()) + f", {torch.get_num_threads()} threads)",
           "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "steps": steps, "classes": args.classes, "guidance": args.guidance, "seed": args.seed,
           "teacache_coefficients": coef, "kernels": "reference (eager lowering)",
           "note": "wall ratios are CPU times of this run; GPU not measured"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cache_quick" if args.quick else "cache"
    (out / f"{tag}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = [f"# Step caching on the zoo ({steps} steps, CFG {args.guidance:g}, two experts, classes {args.classes})",
             "", f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; {env['kernels']}. "
             "Wall ratio: uncached time of the same precision / this row's time, both measured in this run. "
             "PSNR/SSIM/frame-difference correlation vs the uncached full-precision video. GPU not measured.", "",
             "| row | precision | computed calls | calls saved | wall ratio | PSNR dB | SSIM | frame-diff corr | "
             "graph breaks | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['precision']} | | | | | | | | {r['error']} |")
            continue
        psnr = "exact" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        lines.append(f"| {r['row']} | {r['precision']} | {r['computed_calls']}/{r['calls']} | "
                     f"{r['calls_saved']:.2f}x | {r['wall_ratio']:.2f}x | {psnr} | {r['ssim']:.4f} | "
                     f"{r['frame_diff_corr']:.4f} | {r.get('graph_breaks', '')} | {r.get('policy', '')} |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rows:
            if "error" in r or r["psnr_db"] is None:
                continue
            mk = "o" if r["row"].startswith("ours") else ("s" if r["row"] == "none" else "^")
            ax.scatter(r["wall_ratio"] if r["row"].startswith("diffusers") else r["calls_saved"], r["psnr_db"],
                       marker=mk, label=f"{r['row']} ({r['precision']})")
        ax.set_xlabel("calls saved (ours) / wall-clock ratio (diffusers caches)")
        ax.set_ylabel("PSNR vs uncached FP (dB)")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / f"{tag}.png", dpi=110)
    except ImportError:
        pass
    print(f"wrote {out / tag}.json/.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
