"""Plot a δ-GBS controller trace, and a δ sweep on a SYNTHETIC signal.

``plot_trace(trace, delta, path)`` draws, per denoising step, the relative L1 change of the model output, the
accumulator the decision was taken on, the δ threshold, and the chosen activation bits (shaded per step).
``trace`` is ``DeltaController.trace`` (a list of ``StepRecord``) or the ``"trace"`` list of ``to_dict()`` /
``to_json()`` (``null`` = +inf / undefined).

``python bench/delta_plot.py`` drives a fake, deterministic "transformer" (a function of the latent and the
timestep, not a model) with ``diffusers.FlowMatchEulerDiscreteScheduler`` (20 steps, CFG as two calls) through
the controller for several δ, and writes ``bench/results/delta_trace.png`` and ``bench/results/delta_sweep_fake.md``.
These are controller behaviour on a synthetic signal, not model results.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Sequence

DELTAS = (0.03, 0.06, 0.09, 0.12, 0.18)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _rows(trace: Sequence[Any]) -> list[dict]:
    out = []
    for r in trace:
        d = dict(r) if isinstance(r, dict) else {k: getattr(r, k) for k in
                                                  ("run", "step", "timestep", "l1", "acc", "bits")}
        # JSON null: an undefined L1 (NaN: not drawn) or an accumulator at +inf (drawn as a marker)
        d["l1"] = math.nan if d.get("l1") is None else float(d["l1"])
        d["acc"] = math.inf if d.get("acc") is None else float(d["acc"])
        out.append(d)
    return out


def draw_trace(ax, trace: Sequence[Any], delta: float, title: str | None = None):
    """Draw one trace on a matplotlib axis (see module docstring)."""
    rows = _rows(trace)
    x = list(range(len(rows)))
    bits = [r["bits"] for r in rows]
    lo, hi = (min(bits), max(bits)) if bits else (4, 8)
    l1 = [r["l1"] for r in rows]
    acc = [r["acc"] for r in rows]
    finite = [v for v in l1 + acc if math.isfinite(v)]
    top = max(finite + [delta]) * 1.25 if finite else 2 * delta
    # bits shaded per step: darker = high bits
    for i, b in enumerate(bits):
        ax.axvspan(i - 0.5, i + 0.5, color="tab:red" if b == hi and hi != lo else "tab:blue",
                   alpha=0.18 if b == hi else 0.10, lw=0)
        ax.text(i, top * 0.97, f"A{b}", ha="center", va="top", fontsize=6)
    # acc = +inf (nothing to compare with since the last reset) is drawn as a marker at the top
    acc_plot = [v if math.isfinite(v) else math.nan for v in acc]
    ax.plot(x, [v if math.isfinite(v) else math.nan for v in l1], "o-", ms=3, color="black",
            label="L1 = |F_t - F_t-1|_1 / |F_t-1|_1")
    ax.plot(x, acc_plot, "s--", ms=3, color="tab:green", label="accumulator at decision")
    inf_x = [i for i, v in enumerate(acc) if not math.isfinite(v)]
    if inf_x:
        ax.plot(inf_x, [top * 0.88] * len(inf_x), "^", ms=4, color="tab:green", label="accumulator = +inf")
    ax.axhline(delta, color="tab:orange", lw=1.2, label=f"delta = {delta:g}")
    for i in range(1, len(rows)):
        if rows[i]["run"] != rows[i - 1]["run"]:
            ax.axvline(i - 0.5, color="gray", lw=1.5, ls=":")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, max(len(rows) - 0.5, 0.5))
    ax.set_ylim(0, top)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("relative L1")
    avg = sum(bits) / len(bits) if bits else math.nan
    ax.set_title(title or f"delta = {delta:g}: average {avg:.2f} activation bits (red A{hi}, blue A{lo})",
                 fontsize=9)
    return ax


def plot_trace(trace: Sequence[Any], delta: float, path: str, title: str | None = None) -> str:
    """Write a one-panel plot of ``trace`` to ``path`` (png/pdf/svg by extension); returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6))
    draw_trace(ax, trace, delta, title)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.85))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- synthetic driver
def fake_model(x, t):
    """A deterministic stand-in for a DiT (SYNTHETIC): flow velocity toward a fixed target plus a smooth
    timestep-dependent error term, so the relative output change decays smoothly over the schedule."""
    import torch

    s = t.reshape(-1, 1).float() / 1000.0
    g = torch.linspace(0, 6.283, x.shape[-1])
    x0 = torch.sin(2 * g) + 0.5 * torch.cos(5 * g)
    return 0.15 * x - x0 + 0.25 * torch.sin(3 * g + 5.0 * s * s) * (0.3 + s)


def run_fake(delta: float, steps: int = 20, guidance: float = 3.0, seed: int = 0, ctrl=None):
    """Sample with the fake model through a DeltaController (CFG as two calls, Wan-style); returns it (``ctrl``:
    the controller to drive, else a new one with ``delta``) and the scheduler."""
    import torch
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
        FlowMatchEulerDiscreteScheduler,
    )

    from dvdq_compile.runtime.delta import DeltaController

    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(steps)
    ctrl = DeltaController(delta=delta) if ctrl is None else ctrl
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(seed))
    for t in sched.timesteps:
        ts = t.expand(x.shape[0])
        ctrl.begin_call(ts)
        cond = fake_model(x, ts)
        ctrl.end_call((cond,))
        ctrl.begin_call(ts)
        uncond = 0.8 * fake_model(x, ts)
        ctrl.end_call((uncond,))
        x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
    return ctrl, sched


def main(out_dir: str = RESULTS, deltas: Sequence[float] = DELTAS, steps: int = 20) -> tuple[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dvdq_compile.runtime.delta import bits_pattern

    os.makedirs(out_dir, exist_ok=True)
    ctrls = {d: run_fake(d, steps)[0] for d in deltas}
    fig, axes = plt.subplots(len(deltas), 1, figsize=(10, 2.6 * len(deltas)), sharex=True)
    axes = [axes] if len(deltas) == 1 else list(axes)
    for ax, d in zip(axes, deltas):
        draw_trace(ax, ctrls[d].trace, d)
    axes[0].legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.85))
    fig.suptitle(f"delta-GBS on a SYNTHETIC signal (fake model, FlowMatchEuler {steps} steps, CFG 2 calls) "
                 "- not a model result", fontsize=10)
    fig.tight_layout()
    png = os.path.join(out_dir, "delta_trace.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)

    import diffusers
    lines = [
        "# δ-GBS sweep on a synthetic signal (not a model result)",
        "",
        f"Controller `dvdq_compile.runtime.delta.DeltaController` (A4/A8, min_high_steps=1) driven by a fake, "
        f"deterministic function of the latent and timestep (`bench/delta_plot.py:fake_model`), "
        f"`FlowMatchEulerDiscreteScheduler` with {steps} steps, CFG as two calls per step. Shows the "
        "controller's behaviour only; says nothing about quality or speed of any model. "
        f"CPU, torch {torch.__version__}, diffusers {diffusers.__version__}. Plot: `delta_trace.png`.",
        "",
        "| δ | A8 steps | A4 steps | average bits | bits per step |",
        "|---|---|---|---|---|",
    ]
    for d in deltas:
        tr = ctrls[d].trace
        n8 = sum(r.bits == 8 for r in tr)
        lines.append(f"| {d:g} | {n8} | {len(tr) - n8} | {ctrls[d].average_bits():.2f} | `{bits_pattern(tr)}` |")
    md = os.path.join(out_dir, "delta_sweep_fake.md")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return png, md


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for p in main():
        print("wrote", p)
