#!/usr/bin/env python3
"""Train the zoo's small class-conditioned video DiT (``WanTransformer3DModel``, pixel space) by flow matching.

Rectified flow: ``x_t = (1 - sigma) * x0 + sigma * noise``, target ``v = noise - x0``, ``timestep = sigma * 1000``.

  main expert (all noise levels; also the HIGH-noise expert of the two-expert setup):
      nice -n 19 python3 bench/zoo/train.py --expert main --steps 1300 --minutes 48
  low-noise expert (fine-tuned from main on sigma < 0.5 only):
      nice -n 19 python3 bench/zoo/train.py --expert low --init bench/zoo/wan_zoo.safetensors --steps 400 --minutes 11

With ``--steps`` alone the run is deterministic given ``--seed`` (same machine / thread count); ``--minutes`` adds a
wall-clock stop and makes the cosine LR schedule time-aware (progress = max(step/steps, wall/minutes)), so a run
cut short by a busy machine still anneals -- but then the step count depends on the machine load.

Writes ``bench/zoo/<name>.safetensors`` (EMA weights, fp16, + the class table) and ``bench/zoo/<name>.json``
(config, data params, steps, losses, wall time, torch version, threads) and ``bench/zoo/<name>_loss.csv``.
Resumable: the full training state (fp32 weights, EMA, AdamW moments, step, log) goes to ``--state-dir``
(default ``$TMPDIR/dvdq_zoo``, never committed); ``--resume`` continues from it bit-for-bit (the batch, noise,
sigma and label dropout of step s are drawn from a generator seeded by ``(seed, s)``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# Shared CPU box: OpenMP threads that spin while waiting burn the cycles a niced job gets (measured: ~6.5 CPU-s
# per step with the default policy under contention vs ~2.5 CPU-s passive). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from dvdq_compile.zoo.data import DEFAULT_DATA, class_names, num_classes, sample_batch  # noqa: E402
from dvdq_compile.zoo.model import (  # noqa: E402
    CLASS_TABLE_SEED,
    WAN_ZOO_CONFIG,
    ZOO_DIR,
    build_model,
    class_table,
    load_checkpoint,
    null_class_id,
    save_checkpoint,
)
from dvdq_compile.zoo.structure import Imposed, impose  # noqa: E402

DEFAULTS = {
    # expert: (out name, steps, lr, sigma range, warmup)
    "main": dict(name="wan_zoo", steps=1300, lr=4e-4, sigma_max=1.0, warmup=100),
    "low": dict(name="wan_zoo_low", steps=400, lr=1e-4, sigma_max=0.5, warmup=20),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expert", choices=["main", "low"], default="main")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (sets the LR schedule)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock stop (saves and exits early)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay (0 disables; the saved weights are the EMA)")
    p.add_argument("--label-dropout", type=float, default=0.1, help="fraction of labels replaced by the null class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=str, default=None, help="safetensors to start from (required for --expert low)")
    p.add_argument("--resume", action="store_true", help="continue from the state in --state-dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=str, default=str(ZOO_DIR))
    p.add_argument("--name", type=str, default=None, help="checkpoint stem (default wan_zoo / wan_zoo_low)")
    p.add_argument("--state-dir", type=str, default=os.path.join(tempfile.gettempdir(), "dvdq_zoo"))
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--no-nice", action="store_true", help="do not lower this process' priority")
    p.add_argument("--structure", choices=["none", "v2"], default="none",
                   help="v2: heavy-tailed init + fixed outlier modulation channels and super weights "
                   "(dvdq_compile/zoo/structure.py); inherited from --init / --resume")
    return p.parse_args(argv)


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**63 - 1))


def sample_sigma(n: int, g: torch.Generator, sigma_max: float) -> torch.Tensor:
    """main: logit-normal(0, 1) (90 %) mixed with uniform (10 %, so sigma near 0 and 1 is seen too);
    low: uniform on (0, sigma_max)."""
    if sigma_max < 1.0:
        s = torch.rand(n, generator=g) * sigma_max
    else:
        ln = torch.sigmoid(torch.randn(n, generator=g))
        un = torch.rand(n, generator=g)
        pick = torch.rand(n, generator=g) < 0.1
        s = torch.where(pick, un, ln)
    return s.clamp(1e-3, 1.0 - 1e-4 if sigma_max >= 1.0 else sigma_max)


def lr_at(step: int, total: int, base: float, warmup: int, time_frac: float = 0.0) -> float:
    """Linear warmup, then cosine to 10 % of ``base``. Progress is ``max(step progress, time_frac)`` so that a
    ``--minutes`` budget that ends the run early still ends it at the bottom of the schedule."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = max((step - warmup) / max(1, total - warmup), time_frac)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def eval_loss(model, table, seed: int = 12345, n_batches: int = 4, batch: int = 8, sigma_max: float = 1.0):
    """Flow-matching MSE on a fixed held-out set (seeded far from the training seeds), sigma on a fixed grid."""
    model.eval()
    tot, cnt = 0.0, 0
    for b in range(n_batches):
        g = step_generator(10_000_019 + seed, b)
        x0, ids = sample_batch(batch, g)
        noise = torch.randn(x0.shape, generator=g)
        sig = (torch.arange(batch, dtype=torch.float32) + 0.5) / batch * sigma_max
        s = sig.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = model(hidden_states=xt, timestep=sig * 1000, encoder_hidden_states=table[ids], return_dict=False)[0]
        tot += float((pred - (noise - x0)).pow(2).mean()) * batch
        cnt += batch
    model.train()
    return tot / cnt


def main(argv=None):
    args = parse_args(argv)
    d = DEFAULTS[args.expert]
    name = args.name or d["name"]
    total = args.steps if args.steps is not None else d["steps"]
    base_lr = args.lr if args.lr is not None else d["lr"]
    sigma_max = d["sigma_max"]
    out_dir = Path(args.out_dir)
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / f"{name}_state.pt"
    if not args.no_nice:
        try:
            os.nice(max(0, 19 - os.nice(0)))
        except OSError:
            pass
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # ---- model / table
    if args.expert == "low" and not args.init and not args.resume:
        sys.exit("--expert low needs --init bench/zoo/wan_zoo.safetensors")
    if args.init:
        model, table, init_meta = load_checkpoint(args.init)
        model.train().requires_grad_(True)
    else:
        model, table, init_meta = build_model(), class_table(CLASS_TABLE_SEED), {}
        model.train()
    imposed = None
    if args.init and "imposed" in init_meta:
        imposed = Imposed.from_meta(json.loads(init_meta["imposed"]))
    elif args.structure == "v2" and not args.init:
        imposed = impose(model, seed=args.seed)
    ema = None
    if args.ema > 0:
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    start, log, prior_wall = 0, [], 0.0
    if args.resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        ema = st["ema"]
        table = st["table"]
        start, log, prior_wall = st["step"], st["log"], st["wall"]
        init_meta = st.get("init_meta", init_meta)
        if st.get("imposed") is not None:
            imposed = Imposed.from_meta(st["imposed"])
        print(f"resumed from {state_path} at step {start}", flush=True)
    elif args.resume:
        print(f"--resume: no state at {state_path}, starting fresh", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    null_id = null_class_id()
    print(
        f"[zoo] expert={args.expert} name={name} params={n_params / 1e6:.2f}M steps={total} batch={args.batch} "
        f"lr={base_lr} sigma<{sigma_max} threads={torch.get_num_threads()} torch={torch.__version__}",
        flush=True,
    )

    def save(step: int, wall: float, final: bool = False):
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema, "table": table, "step": step,
             "log": log, "wall": wall, "init_meta": init_meta, "args": vars(args),
             "imposed": imposed.describe() if imposed else None},
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)
        to_save = model
        if ema is not None:
            to_save = build_model(dict(model.config))
            to_save.load_state_dict(ema)
        recent = [r["loss"] for r in log[-100:]]
        final_loss = sum(recent) / max(1, len(recent))
        info = {
            "name": name,
            "expert": args.expert,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in WAN_ZOO_CONFIG.items()},
            "params": n_params,
            "data": {**DEFAULT_DATA.to_dict(), "num_classes": num_classes(), "classes": class_names(),
                     "generator": "dvdq_compile.zoo.data.sample_batch"},
            "conditioning": {"class_table_seed": CLASS_TABLE_SEED, "t_text": table.shape[1], "text_dim": table.shape[2],
                             "null_class_id": null_id, "label_dropout": args.label_dropout},
            "objective": "rectified flow: x_t=(1-s)x0+s*noise, v=noise-x0, timestep=1000*s",
            "sigma_sampling": ("uniform(0, 0.5)" if sigma_max < 1 else "0.9*logit-normal(0,1) + 0.1*uniform(0,1)"),
            "optimizer": {"type": "AdamW", "lr": base_lr, "betas": [0.9, 0.99], "weight_decay": args.weight_decay,
                          "schedule": f"linear warmup {d['warmup']} + cosine to 10% over {total} steps"
                          + (f" or {args.minutes} min wall, whichever is reached first (time-aware: not bit-reproducible)"
                             if args.minutes else " (step-based: reproducible)"),
                          "batch": args.batch},
            "ema": args.ema,
            "weights_saved": "EMA" if ema is not None else "raw",
            "init": args.init,
            "steps": step,
            "steps_planned": total,
            "final_train_loss_last100": final_loss,
            "wall_time_s": round(wall, 1),
            "s_per_step": round(wall / max(1, step), 3),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "host": platform.processor() or platform.machine(),
            "seed": args.seed,
            "complete": final,
            "imposed_structure": imposed.summary() if imposed else None,
        }
        if final:
            info["eval_loss_heldout"] = {"ema": eval_loss(to_save, table, sigma_max=sigma_max)}
            if ema is not None:
                info["eval_loss_heldout"]["raw"] = eval_loss(model, table, sigma_max=sigma_max)
            print(f"[zoo] held-out eval loss: {info['eval_loss_heldout']}", flush=True)
        ck = save_checkpoint(to_save, out_dir / f"{name}.safetensors", table, dtype=torch.float16,
                             metadata={"steps": step, "expert": args.expert, "final_train_loss": final_loss,
                                       **({"imposed": imposed.describe()} if imposed else {})})
        info["checkpoint_bytes"] = ck.stat().st_size
        (out_dir / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
        with open(out_dir / f"{name}_loss.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "wall_s"])
            for r in log:
                w.writerow([r["step"], f"{r['loss']:.6f}", f"{r['lr']:.3e}", f"{r['wall']:.1f}"])
        return info

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=total, initial=start, mininterval=30, dynamic_ncols=False, ncols=100, file=sys.stderr) if tqdm else None
    t0 = time.time()
    wall = prior_wall
    run_loss, run_n = 0.0, 0
    step = start
    for step in range(start, total):
        wall = prior_wall + (time.time() - t0)
        if args.minutes is not None and wall > args.minutes * 60:
            print(f"[zoo] time budget reached at step {step}", flush=True)
            break
        g = step_generator(args.seed, step, salt=1 if args.expert == "low" else 0)
        x0, ids = sample_batch(args.batch, g)
        noise = torch.randn(x0.shape, generator=g)
        sig = sample_sigma(args.batch, g, sigma_max)
        drop = torch.rand(args.batch, generator=g) < args.label_dropout
        ids = torch.where(drop, torch.full_like(ids, null_id), ids)
        s = sig.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        time_frac = wall / (args.minutes * 60) if args.minutes else 0.0
        lr = lr_at(step, total, base_lr, d["warmup"], time_frac)
        for pg in opt.param_groups:
            pg["lr"] = lr
        pred = model(hidden_states=xt, timestep=sig * 1000, encoder_hidden_states=table[ids], return_dict=False)[0]
        loss = (pred - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if imposed is not None:
            imposed.restore(model)
        if ema is not None:
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        ema[k].copy_(v)
        lv = float(loss.detach())
        log.append({"step": step + 1, "loss": lv, "lr": lr, "wall": prior_wall + time.time() - t0})
        run_loss, run_n = run_loss + lv, run_n + 1
        if bar:
            bar.update(1)
        if (step + 1) % args.log_every == 0:
            msg = f"step {step + 1}/{total} loss {run_loss / run_n:.4f} lr {lr:.2e} {(time.time() - t0) / (step + 1 - start):.2f}s/step"
            if bar:
                bar.set_postfix_str(f"loss {run_loss / run_n:.4f}")
                bar.write(msg)
            else:
                print(msg, flush=True)
            run_loss, run_n = 0.0, 0
        if (step + 1) % args.save_every == 0 and step + 1 < total:
            save(step + 1, prior_wall + time.time() - t0)
    else:
        step = total
    if bar:
        bar.close()
    wall = prior_wall + time.time() - t0
    done = len(log)
    info = save(done, wall, final=True)
    print(f"[zoo] saved {out_dir / (name + '.safetensors')} ({info['checkpoint_bytes'] / 1e6:.1f} MB) steps={done} "
          f"final loss={info['final_train_loss_last100']:.4f} wall={wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
