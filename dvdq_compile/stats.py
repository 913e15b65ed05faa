"""The statistics card of a model: do its weights and activations look like a trained video DiT's?

Rotation and BGR help or hurt depending on the distributions they meet (docs/algorithms.md §1, §2): on uniform
weights a Hadamard rotation raises the per-row 4-bit error, on heavy-tailed ones it cuts it. This card measures, per
linear, what decides that, so a test model can be judged before its quality tables are believed.

Weights (per linear ``W [N, K]``): Pearson kurtosis ``E[(w−μ)⁴]/σ⁴`` (uniform 1.8, Gaussian 3.0), ``max|w|/σ``,
the share of weights beyond 3σ, the per-row asymmetric 4-bit MinMax error ``‖W − Q(W)‖²/‖W‖²`` without and with the
block-Hadamard rotation (block 128 along K; the rotation is orthogonal, so the errors compare directly) and their
ratio.

Activations (per linear input, from forward pre-hooks during ``run_fn(model)``): per channel the absmax over all
tokens and calls; the top channel's absmax over the median channel's; the fraction of tokens on which the top
channel is the token's largest (a fixed outlier channel is present on every token); the token count of the input
(text-conditioned linears see the text length); per denoising step (a change of the model's ``timestep`` input) the
per-tensor absmax, and its max/min ratio across steps; the input-column norm of the top channel relative to the
median column norm of ``W`` (a function-preserving rescale would make it S times smaller than its neighbours).

Summary targets (``TARGETS``): weight medians over the block linears; activation targets over the post-modulation
inputs (self-attention q/k/v and FFN-up, ``QKV_FFN_UP`` minus cross-attention): the median layer's top/median ratio,
the largest ratio of a *fixed* channel (the token's largest on ≥ ``FIXED_SHARE`` of tokens), and the range of the top
channel's column norm over the median column (within [0.3, 3]: no function-preserving rescale).

API: :func:`weight_card`, :func:`activation_card`, :func:`card` (both plus the summary against the targets of a
realistic test model), :func:`write_card`. CLI: ``dvdq stats``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .quant.hadamard import rotate
from .quant.minmax import dequantize, minmax

ROTATE_BLOCK = 128

# What a test model with real-DiT statistics must show (medians over block linears unless said otherwise).
TARGETS = {
    "median_kurtosis": (">=", 3.5),
    "share_kurtosis_ge_3": (">=", 0.90),
    "beyond_3sigma": (">=", 0.0027),
    "median_rotation_ratio": ("<=", 0.8),
    "median_max_over_std": (">=", 7.0),
    "max_max_over_std": (">=", 50.0),
    "median_top_over_median_qkv_ffn_up": (">=", 10.0),
    "max_top_over_median_qkv_ffn_up": (">=", 50.0),
    "median_step_range": (">=", 1.25),
    "min_outlier_column": (">=", 0.3),
    "max_outlier_column": ("<=", 3.0),
}

# Post-modulation inputs: self-attention q/k/v and FFN-up. Cross-attention (Wan's attn2) reads the unmodulated norm2
# output (q) or the text (k, v), so it is left out of the activation targets (still listed in the card).
QKV_FFN_UP = re.compile(r"(to_q|to_k|to_v|ffn?\.net\.0\.proj|ffn\.0|fc1|proj_in)$")
CROSS = re.compile(r"attn2\.")
# a fixed outlier channel is the token's largest on (nearly) every token
FIXED_SHARE = 0.99


def _rel_w4_error(w: torch.Tensor) -> float:
    """Relative squared error ``‖W − Q(W)‖² / ‖W‖²`` of per-row asymmetric 4-bit MinMax."""
    codes, scale, zero = minmax(w, 4)
    return float((dequantize(codes, scale, zero) - w).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30))


@torch.no_grad()
def weight_stats(w: torch.Tensor) -> dict:
    w = w.detach().float()
    flat = w.reshape(-1)
    mu, sd = flat.mean(), flat.std(unbiased=False).clamp_min(1e-30)
    z = (flat - mu) / sd
    err = _rel_w4_error(w)
    err_rot = _rel_w4_error(rotate(w, ROTATE_BLOCK)) if w.shape[-1] % ROTATE_BLOCK == 0 else None
    return {"shape": list(w.shape), "kurtosis": float(z.pow(4).mean()),
            "max_over_std": float((flat - mu).abs().max() / sd), "beyond_3sigma": float((z.abs() > 3).float().mean()),
            "w4_error": err, "w4_error_rotated": err_rot,
            "rotation_ratio": err_rot / err if err_rot is not None and err > 0 else None}


def linears(model: nn.Module, pattern: str | None = None) -> list[tuple[str, nn.Linear]]:
    from .config import DEFAULT_BLOCK_PATTERN

    pat = re.compile(pattern or DEFAULT_BLOCK_PATTERN)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and pat.search(n)]


def weight_card(model: nn.Module, pattern: str | None = None) -> dict[str, dict]:
    """Per block linear (``pattern``: the backend's default block pattern), its weight statistics."""
    return {name: weight_stats(m.weight) for name, m in linears(model, pattern)}


class _Recorder:
    def __init__(self):
        self.step = -1
        self.t = None
        self.chan: dict[str, torch.Tensor] = {}
        self.top_share: dict[str, list] = {}
        self.tokens: dict[str, int] = {}
        self.per_step: dict[str, dict[int, float]] = {}

    def on_model(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        key = float(t.detach().float().max()) if isinstance(t, torch.Tensor) else (None if t is None else float(t))
        if key is None or key != self.t:
            self.step += 1
            self.t = key

    def on_linear(self, name):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            a = x.abs()
            cm = a.amax(0)
            self.chan[name] = cm if name not in self.chan else torch.maximum(self.chan[name], cm)
            top = int(self.chan[name].argmax())
            self.top_share.setdefault(name, []).append((a.argmax(1) == top).float().mean().item())
            self.tokens[name] = x.shape[0]
            d = self.per_step.setdefault(name, {})
            d[self.step] = max(d.get(self.step, 0.0), float(cm.max()))
        return hook


@torch.no_grad()
def activation_card(model: nn.Module, run_fn: Callable[[nn.Module], object], pattern: str | None = None) -> dict:
    """Per block linear, the statistics of its input over ``run_fn(model)`` (e.g. a sampling run)."""
    rec = _Recorder()
    lins = linears(model, pattern)
    hooks = [model.register_forward_pre_hook(rec.on_model, with_kwargs=True)]
    hooks += [m.register_forward_pre_hook(rec.on_linear(n)) for n, m in lins]
    try:
        run_fn(model)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, m in lins:
        if name not in rec.chan:
            continue
        cm = rec.chan[name]
        med = cm.median().clamp_min(1e-30)
        top = int(cm.argmax())
        cols = m.weight.detach().float().norm(dim=0)
        steps = list(rec.per_step[name].values())
        out[name] = {"top_channel": top, "top_over_median": float(cm[top] / med),
                     "top_is_token_max": sum(rec.top_share[name]) / len(rec.top_share[name]),
                     "tokens": rec.tokens[name], "steps": len(steps),
                     "step_range": max(steps) / max(min(steps), 1e-30) if steps else None,
                     "top_column_over_median_column": float(cols[top] / cols.median().clamp_min(1e-30))}
    return out


def _median(v):
    v = sorted(x for x in v if x is not None and math.isfinite(x))
    return (v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])) if v else None


def summary(weights: dict, acts: dict | None) -> dict:
    """Medians and extremes over the card, each with its target and whether it is met."""
    w = list(weights.values())
    got = {
        "median_kurtosis": _median([s["kurtosis"] for s in w]),
        "share_kurtosis_ge_3": sum(s["kurtosis"] >= 3.0 for s in w) / len(w) if w else None,
        "beyond_3sigma": sum(s["beyond_3sigma"] * math.prod(s["shape"]) for s in w) /
        max(1, sum(math.prod(s["shape"]) for s in w)),
        "median_rotation_ratio": _median([s["rotation_ratio"] for s in w]),
        "median_max_over_std": _median([s["max_over_std"] for s in w]),
        "max_max_over_std": max((s["max_over_std"] for s in w), default=None),
    }
    if acts:
        post = [a for n, a in acts.items() if QKV_FFN_UP.search(n) and not CROSS.search(n)]
        got["median_top_over_median_qkv_ffn_up"] = _median([a["top_over_median"] for a in post])
        got["max_top_over_median_qkv_ffn_up"] = max(
            (a["top_over_median"] for a in post if a["top_is_token_max"] >= FIXED_SHARE), default=None)
        got["median_step_range"] = _median([a["step_range"] for a in acts.values()])
        cols = [a["top_column_over_median_column"] for a in post]
        got["min_outlier_column"] = min(cols, default=None)
        got["max_outlier_column"] = max(cols, default=None)
    out = {}
    for k, v in got.items():
        op, target = TARGETS[k]
        ok = None if v is None else (v >= target if op == ">=" else v <= target)
        out[k] = {"value": v, "target": f"{op} {target:g}", "met": ok}
    return out


def card(model: nn.Module, run_fn: Callable[[nn.Module], object] | None = None, pattern: str | None = None) -> dict:
    w = weight_card(model, pattern)
    a = activation_card(model, run_fn, pattern) if run_fn is not None else None
    return {"weights": w, "activations": a, "summary": summary(w, a)}


def _fmt(v, f="{:.3g}"):
    return "-" if v is None else (f.format(v) if isinstance(v, float) else str(v))


def write_card(c: dict, out: Path, stem: str, title: str, env: dict) -> None:
    """``<out>/<stem>.json``, ``.md`` and (with matplotlib) ``.png``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, **c}, indent=1) + "\n")
    L = [f"# Statistics card: {title}", "", ", ".join(f"{k} {v}" for k, v in env.items()), "",
         "| summary | value | target | met |", "|---|---|---|---|"]
    for k, s in c["summary"].items():
        L.append(f"| {k} | {_fmt(s['value'])} | {s['target']} | {'-' if s['met'] is None else s['met']} |")
    L += ["", "| linear | shape | kurtosis | max/σ | >3σ | W4 err | W4 err rotated | ratio | act top/median | "
          "top = token max | tokens | step range | top column / median column |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    acts = c["activations"] or {}
    for name, s in c["weights"].items():
        a = acts.get(name, {})
        L.append(f"| {name} | {'x'.join(map(str, s['shape']))} | {_fmt(s['kurtosis'])} | "
                 f"{_fmt(s['max_over_std'])} | {s['beyond_3sigma']:.2%} | {_fmt(s['w4_error'])} | "
                 f"{_fmt(s['w4_error_rotated'])} | "
                 f"{_fmt(s['rotation_ratio'])} | {_fmt(a.get('top_over_median'))} | "
                 f"{_fmt(a.get('top_is_token_max'))} | {_fmt(a.get('tokens'))} | {_fmt(a.get('step_range'))} | "
                 f"{_fmt(a.get('top_column_over_median_column'))} |")
    (out / f"{stem}.md").write_text("\n".join(L) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    w = list(c["weights"].values())
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].scatter([s["kurtosis"] for s in w], [s["rotation_ratio"] or float("nan") for s in w], s=12)
    ax[0].axhline(1.0, color="gray", lw=0.8)
    ax[0].axvline(3.0, color="gray", lw=0.8, ls="--")
    ax[0].set_xlabel("weight kurtosis (Gaussian = 3)")
    ax[0].set_ylabel("W4 error rotated / unrotated")
    if acts:
        ax[1].hist([a["top_over_median"] for a in acts.values()], bins=30)
        ax[1].set_xlabel("activation top channel / median channel (absmax)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
