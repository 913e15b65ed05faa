"""Evaluate trained ``qvdit`` layers on the zoo sampling run against full precision (eager fake-quant).

Here the TQE layers run through a module swap whose quantized matmul is the dvdq integer reference
(``TQELinear.integer_forward`` → ``quant.qlinear_ref``); ``dvdq eval`` runs the same artifacts through the backend
(recipe ``qvdit``: offset folded into the codes at load, rank-1 branch in the graph), which
``tests/qvdit/test_backend.py`` checks against this eager path. Rows (same classes, seed, steps, CFG for all):

- ``qvdit`` W3A6 faithful (MLP W8A8), W3A6 all layers, W4A6: trained artifacts;
- plain RTN at the same bits and layer policy, untrained (the TQE layer at initialization);
- through the backend (``torch.compile(..., backend="dvdquant")``): MinMax W3A6 (a cross-check of the eager swap:
  same quantizers), DVD-Quant (BGR + rotation + per-(token, group) activations) at W3A6 and W4A6.

    python -m dvdq_compile.qvdit.evaluate --artifacts bench/results/qvdit --out bench/results/qvdit_cpu
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import metrics
from .artifact import QVDiTArtifact
from .swap import QVDiTConfig, install, layer_plan, set_integer
from .train import SETTINGS


@dataclass(frozen=True)
class EvalConfig:
    classes: tuple = (0, 3, 5, 8)
    seed: int = 0
    steps: int = 10
    guidance: float = 3.0


def _sample(pipe, high, low, ec: EvalConfig):
    from ..zoo import sample

    return sample(high, list(ec.classes), steps=ec.steps, guidance=ec.guidance, seed=ec.seed, progress=False,
                  model_low=low, boundary=pipe.boundary, shift=pipe.shift, table=pipe.table, data=pipe.data)


def _scores(v, fp) -> dict:
    return {"psnr": metrics.psnr(v, fp), "ssim": metrics.ssim(v, fp), "frame_diff_corr": metrics.frame_diff_corr(v, fp),
            "relation_kl": metrics.relation_kl(v, fp),
            "rel_l2": float((v - fp).norm() / fp.norm())}


def flop_weighted_bits(model, cfg: QVDiTConfig, video_tokens: int, text_tokens: int) -> dict:
    """FLOP-weighted average weight and activation bits over the quantized linears of one forward (2·M·N·K each;
    linears reading the text run on ``text_tokens``, the rest on ``video_tokens``)."""
    plan = layer_plan(model, cfg)
    tw = ta = tot = 0.0
    for name, lc in plan.items():
        lin = model.get_submodule(name)
        m = text_tokens if any(name.endswith(s.lstrip("*")) for s in cfg.weight_only) else video_tokens
        f = 2.0 * m * lin.in_features * lin.out_features
        tw += f * lc.weight_bits
        ta += f * lc.act_bits
        tot += f
    return {"weight_bits": tw / tot, "act_bits": ta / tot, "layers": len(plan)}


def _eager_row(pipe, ec, fp, cfg: QVDiTConfig, artifacts: dict | None) -> tuple[dict, float]:
    import copy

    experts = {}
    for key, m in (("high", pipe.model), ("low", pipe.model_low)):
        mm = copy.deepcopy(m)
        if artifacts is None:
            install(mm, cfg)
        else:
            artifacts[key].apply(mm)
        set_integer(mm)
        experts[key] = mm
    t0 = time.perf_counter()
    with torch.no_grad():
        v = _sample(pipe, experts["high"], experts["low"], ec)
    return _scores(v, fp), time.perf_counter() - t0


def _backend_row(pipe, ec, fp, options: dict) -> tuple[dict, float]:
    torch._dynamo.reset()
    opts = dict(options, lowering="eager", kernels="reference", progress=False)
    hi = torch.compile(pipe.model, backend="dvdquant", options=opts)
    lo = torch.compile(pipe.model_low, backend="dvdquant", options=opts)
    t0 = time.perf_counter()
    with torch.no_grad():
        v = _sample(pipe, hi, lo, ec)
    return _scores(v, fp), time.perf_counter() - t0


def evaluate(artifacts_dir: Path, ec: EvalConfig = EvalConfig(), settings=tuple(SETTINGS),
             baselines: bool = True) -> dict:
    from ..zoo import load_pipeline

    pipe = load_pipeline()
    with torch.no_grad():
        fp = _sample(pipe, pipe.model, pipe.model_low, ec)
    rows = []
    train_info = {}
    for s in settings:
        cfg = SETTINGS[s]
        arts = {k: QVDiTArtifact.load(artifacts_dir / f"{s}_{k}.safetensors") for k in ("high", "low")}
        lj = artifacts_dir / f"{s}_loss.json"
        info = json.loads(lj.read_text())["summary"] if lj.is_file() else {}
        train_info[s] = info
        secs = sum(e.get("seconds", 0.0) for e in info.get("experts", {}).values())
        iters = {k: e.get("iters") for k, e in info.get("experts", {}).items()}
        sc, t = _eager_row(pipe, ec, fp, cfg, arts)
        rows.append({"label": f"qvdit {cfg.label}", "kind": "trained (eager, integer reference)", **sc,
                     "sample_seconds": t, "train_seconds": secs, "train_iters": iters})
        if not baselines:
            continue
        sc, t = _eager_row(pipe, ec, fp, replace(cfg, lora=False), None)
        rows.append({"label": f"RTN {cfg.label}", "kind": "untrained (eager, integer reference)", **sc,
                     "sample_seconds": t, "train_seconds": 0.0})
    for label, opts in (("MinMax W3A6 (backend)", {"recipe": "minmax", "weight_bits": 3, "act_bits": 6}),
                        ("DVD-Quant W3A6 (backend)", {"recipe": "dvdquant", "weight_bits": 3, "act_bits": 6}),
                        ("DVD-Quant W4A6 (backend)", {"recipe": "dvdquant", "weight_bits": 4, "act_bits": 6})
                        ) if baselines else ():
        sc, t = _backend_row(pipe, ec, fp, opts)
        rows.append({"label": label, "kind": "backend " + json.dumps(opts), **sc, "sample_seconds": t,
                     "train_seconds": 0.0})
    d = pipe.data
    video_tokens = d.frames * (d.height // 2) * (d.width // 2)
    from ..zoo import T_TEXT
    bits = {s: flop_weighted_bits(pipe.model, SETTINGS[s], video_tokens, T_TEXT) for s in settings}
    return {"device": f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "eval": asdict(ec), "rows": rows, "flop_weighted_bits": bits,
            "train": train_info,
            "notes": "qvdit rows: TQE layers swapped in eagerly, quantized matmul = dvdq integer reference "
                     "(quant.qlinear_ref) + FP rank-1 branch; activations symmetric per-token; attn2.to_k/to_v "
                     "(4 text tokens) weight-only as in the backend's min_tokens policy."}


def to_markdown(res: dict) -> str:
    ec = res["eval"]
    lines = [f"# qvdit on the zoo model ({res['device']}, torch {res['torch']})", "",
             (f"Two experts, classes {list(ec['classes'])}, seed {ec['seed']}, {ec['steps']} steps, CFG "
             f"{ec['guidance']}; scores vs the full-precision run."), "",
             "| row | PSNR (dB) | SSIM | frame-diff corr | relation KL | rel-L2 | train s (iters/expert) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        tr = (f"{r['train_seconds']:.0f} ({'/'.join(str(v) for v in r['train_iters'].values())})"
              if r.get("train_iters") else "-")
        lines.append(f"| {r['label']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['frame_diff_corr']:.4f} | "
                     f"{r['relation_kl']:.2e} | {r['rel_l2']:.4f} | {tr} |")
    lines += ["", "FLOP-weighted average bits (quantized block linears, one forward):", ""]
    for s, b in res["flop_weighted_bits"].items():
        lines.append(f"- {s}: W {b['weight_bits']:.2f} / A {b['act_bits']:.2f} over {b['layers']} linears")
    lines += ["", res["notes"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dvdq_compile.qvdit.evaluate")
    ap.add_argument("--artifacts", type=Path, default=Path("bench/results/qvdit"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/qvdit_cpu"))
    ap.add_argument("--steps", type=int, default=EvalConfig.steps)
    ap.add_argument("--classes", type=int, nargs="+", default=list(EvalConfig.classes))
    ap.add_argument("--seed", type=int, default=EvalConfig.seed)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=sorted(SETTINGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-baselines", action="store_true", help="trained rows only (no RTN / backend rows)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ec = EvalConfig(tuple(a.classes), a.seed, a.steps)
    res = evaluate(a.artifacts, ec, tuple(a.settings), baselines=not a.no_baselines)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(a.out) + ".json").write_text(json.dumps(res, indent=1) + "\n")
    md = to_markdown(res)
    Path(str(a.out) + ".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
