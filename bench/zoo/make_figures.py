#!/usr/bin/env python3
"""Model-card figures for the zoo DiT: ``bench/zoo/loss.png`` and ``bench/zoo/samples.png`` (+ ``samples_moe.png``).

    nice -n 19 python3 bench/zoo/make_figures.py            # after bench/zoo/train.py
    nice -n 19 python3 bench/zoo/make_figures.py --zoo v2   # loss_v2.png, samples_v2.png, samples_moe_v2.png

samples.png: one row per class; left 8 frames = a sample from ``wan_zoo`` (20 Euler steps, CFG 3.0, seed 0),
right 8 frames = a real clip of that class from the data generator, for comparison.
samples_moe.png: the same noise sampled with the two experts (``wan_zoo`` for t >= 500, ``wan_zoo_low`` below).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dvdq_compile.zoo import (  # noqa: E402
    ZOO_DIR,
    checkpoint_path,
    class_names,
    load_checkpoint,
    num_classes,
    sample,
    sample_batch,
)
from dvdq_compile.zoo.model import VERSIONS, expert_stems  # noqa: E402


def read_csv(path: Path):
    steps, loss = [], []
    with open(path) as f:
        for r in csv.DictReader(f):
            steps.append(int(r["step"]))
            loss.append(float(r["loss"]))
    return steps, loss


def smooth(y, k=50):
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= k:
            acc -= y[i - k]
        out.append(acc / min(i + 1, k))
    return out


def loss_figure(out: Path, version: str = "v1"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    hi_name, lo_name = expert_stems(version)
    for ax, name, title in ((axes[0], hi_name, f"{version} main / high-noise expert (all sigma)"),
                            (axes[1], lo_name, f"{version} low-noise expert (fine-tune, sigma < 0.5)")):
        p = ZOO_DIR / f"{name}_loss.csv"
        if not p.is_file():
            ax.set_title(f"{title}: not trained")
            continue
        s, l = read_csv(p)
        ax.plot(s, l, lw=0.5, alpha=0.35, label="per step (batch 8)")
        ax.plot(s, smooth(l), lw=1.8, label="moving average (50)")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("flow-matching MSE  |v - (noise - x0)|^2")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print("wrote", out)


def to_grid(rows: list[torch.Tensor], labels: list[str], scale: int = 5, gap: int = 2):
    """rows: list of lists of videos [3, F, H, W] in [-1, 1] -> PIL image; each row = videos side by side."""
    from PIL import Image, ImageDraw

    label_w = 130
    tiles = []
    for vids in rows:
        parts = []
        for v in vids:
            F = v.shape[1]
            img = ((v.clamp(-1, 1) + 1) / 2).permute(2, 1, 3, 0).reshape(v.shape[2], F * v.shape[3], 3)  # H, F*W, 3
            parts.append(img)
            parts.append(torch.ones(v.shape[2], gap * 2, 3))
        tiles.append(torch.cat(parts[:-1], dim=1))
    Hh, Ww = tiles[0].shape[0], tiles[0].shape[1]
    canvas = Image.new("RGB", (label_w + Ww * scale, len(tiles) * (Hh * scale + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (t, lab) in enumerate(zip(tiles, labels)):
        im = Image.fromarray((t.numpy() * 255).round().astype("uint8")).resize((Ww * scale, Hh * scale), Image.NEAREST)
        y = i * (Hh * scale + gap)
        canvas.paste(im, (label_w, y))
        draw.text((4, y + Hh * scale // 2 - 6), lab, fill="black")
    return canvas


def sample_figures(out: Path, steps: int, guidance: float, seed: int, version: str = "v1"):
    torch.set_num_threads(2)
    hi_name, lo_name = expert_stems(version)
    hi, table, _ = load_checkpoint(checkpoint_path(hi_name))
    ids = torch.arange(num_classes())
    real, _ = sample_batch(len(ids), seed=1000 + seed, class_ids=ids)
    noise = torch.randn(len(ids), 3, *real.shape[2:], generator=torch.Generator().manual_seed(seed))
    x = sample(hi, ids, steps=steps, guidance=guidance, noise=noise, table=table)
    names = class_names()
    to_grid([[x[i], real[i]] for i in range(len(ids))], names).save(out)
    print("wrote", out, "(left: sample, right: real clip)")
    low_p = checkpoint_path(lo_name)
    if low_p.is_file():
        lo, _, _ = load_checkpoint(low_p)
        x2 = sample(hi, ids, steps=steps, guidance=guidance, noise=noise, table=table, model_low=lo, boundary=0.5)
        p2 = out.with_name(out.name.replace("samples", "samples_moe"))
        to_grid([[x2[i], x[i]] for i in range(len(ids))], names).save(p2)
        print("wrote", p2, "(left: two experts, right: main model only; same noise)")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["loss", "samples"], default=None)
    ap.add_argument("--zoo", choices=sorted(VERSIONS), default="v1")
    a = ap.parse_args()
    sfx = "" if a.zoo == "v1" else f"_{a.zoo}"
    if a.only in (None, "loss"):
        loss_figure(ZOO_DIR / f"loss{sfx}.png", a.zoo)
    if a.only in (None, "samples"):
        sample_figures(ZOO_DIR / f"samples{sfx}.png", a.steps, a.guidance, a.seed, a.zoo)


if __name__ == "__main__":
    main()
