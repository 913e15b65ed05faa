"""TMD distillation of the TQE tensors on the zoo model, one expert at a time (Wan 2.2 style: each expert on the
timesteps it serves).

Data (Q-VDiT: 10 prompts × 100 timesteps of the FP model's own sampling trajectories): the full-precision
two-expert sampler is run on calibration classes disjoint from the evaluation classes, with another seed; every
transformer call (conditional and unconditional, every step) is recorded with its FP output, which is the
distillation target. The high-noise expert trains on the calls it made (t ≥ boundary), the low-noise one on its own.

Optimisation: AdamW on the learned tensors only, cosine decay to 0, batch of ``batch`` recorded calls drawn by a
seeded generator. Q-VDiT runs lr 1e-5 for 10k iterations (W4A6; 15k for W3); on CPU our budget is a few hundred
iterations, so lr is scaled up (default 1e-3 over 300 iterations). Activations are kept in full precision while
training (``train_act_quant=False``), as in Q-VDiT's code; evaluation quantizes them.

Deterministic (one thread, seeded init and batches) and resumable: a checkpoint holds the learned tensors, the
optimizer, scheduler and generator states and the loss history; ``--resume`` continues it and ends where an
uninterrupted run ends (tested bit-exactly).

    python -m dvdq_compile.qvdit.train --setting w3a6-faithful --iters 300 --out bench/results/qvdit [--resume]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..zoo.model import DEFAULT_VERSION, VERSIONS
from .artifact import QVDiTArtifact
from .swap import QVDiTConfig, install, learnable, set_act_quant
from .tmd import TMDLoss

SETTINGS = {
    "w3a6-faithful": QVDiTConfig(weight_bits=3, act_bits=6, mlp_w8a8=True),
    "w3a6": QVDiTConfig(weight_bits=3, act_bits=6, mlp_w8a8=False),
    "w4a6": QVDiTConfig(weight_bits=4, act_bits=6, mlp_w8a8=False),
}
CALIB_CLASSES = (1, 2, 4, 6, 7, 9, 10, 11)
CALIB_SEED = 1234


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 300
    batch: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    lam: float = 100.0
    seed: int = 0
    train_act_quant: bool = False
    minutes: float = 15.0          # wall-time cap per expert; hitting it is recorded (the run is then not exact)
    ckpt_every: int = 50

    def __post_init__(self):
        for k in ("iters", "batch", "ckpt_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"qvdit train {k}={v!r} is not allowed; expected an int >= 1")
        if not (self.lr > 0 and self.minutes > 0):
            raise ValueError(f"qvdit train lr={self.lr} and minutes={self.minutes} must be > 0")


@dataclass
class Calls:
    """Recorded transformer calls: inputs and the FP outputs (targets)."""
    x: torch.Tensor      # [S, C, F, H, W]
    t: torch.Tensor      # [S]
    enc: torch.Tensor    # [S, T_TEXT, D]
    target: torch.Tensor  # [S, C, F, H, W]

    def __len__(self):
        return self.x.shape[0]


@torch.no_grad()
def record_calls(pipe, classes=CALIB_CLASSES, seed=CALIB_SEED, steps: int = 10, guidance: float = 3.0) -> dict:
    """Run the FP sampler and return ``{"high": Calls, "low": Calls}`` (one per expert that ran)."""
    from ..zoo import sample

    rec = {"high": [], "low": []}
    handles = []
    experts = {"high": pipe.model, "low": pipe.model_low} if pipe.model_low is not None else {"high": pipe.model}
    for key, m in experts.items():
        def hook(_m, _args, kwargs, out, key=key):
            rec[key].append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone(),
                             kwargs["encoder_hidden_states"].clone(), out[0].clone()))
        handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        sample(pipe.model, list(classes), steps=steps, guidance=guidance, seed=seed, progress=False,
               model_low=pipe.model_low, boundary=pipe.boundary, shift=pipe.shift, table=pipe.table, data=pipe.data)
    finally:
        for h in handles:
            h.remove()
    return {k: Calls(*(torch.cat(z) for z in zip(*v))) for k, v in rec.items() if v}


def _forward(model, x, t, enc):
    return model(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)[0]


def _lr_lambda(iters: int):
    return lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, iters) / iters))


class Trainer:
    """Distils one expert: ``model`` must already carry its TQE layers (``swap.install``)."""

    def __init__(self, model: nn.Module, calls: Calls, cfg: TrainConfig):
        self.model, self.calls, self.cfg = model, calls, cfg
        self.params = learnable(model)
        if not self.params:
            raise ValueError("qvdit train: the model has no learnable TQE tensors (install with lora=True)")
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg.iters))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.loss = TMDLoss(cfg.lam)
        self.it = 0
        self.history: list[dict] = []
        self.seconds = 0.0
        self.stopped_by_time = False
        set_act_quant(model, cfg.train_act_quant)

    def batch_loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.calls
        out = _forward(self.model, c.x[idx], c.t[idx], c.enc[idx])
        mse, kl = self.loss.terms(out, c.target[idx])
        return mse + self.loss.lam * kl, mse, kl

    def step(self) -> dict:
        idx = torch.randint(0, len(self.calls), (self.cfg.batch,), generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss, mse, kl = self.batch_loss(idx)
        loss.backward()
        loss, mse, kl = loss.detach(), mse.detach(), kl.detach()
        self.opt.step()
        self.sched.step()
        self.it += 1
        row = {"iter": self.it, "loss": loss.item(), "mse": mse.item(), "kl": kl.item(), "lr": self.sched.get_last_lr()[0]}
        self.history.append(row)
        return row

    # -- checkpoints (torch.save of tensors / plain containers; loaded with weights_only=True) -----------------
    def state(self) -> dict:
        return {"it": self.it, "params": [p.detach().clone() for p in self.params], "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "gen": self.gen.get_state(), "history": self.history,
                "seconds": self.seconds, "config": asdict(self.cfg)}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        st = torch.load(path, weights_only=True)
        # the wall-time cap may change between sessions (that is what resuming is for); nothing else may
        diff = {k: (st["config"].get(k), v) for k, v in asdict(self.cfg).items()
                if k != "minutes" and st["config"].get(k) != v}
        if diff:
            raise ValueError(f"qvdit train --resume: checkpoint {path} was made with other settings "
                             f"(checkpoint, now): {diff}")
        if len(st["params"]) != len(self.params) or any(a.shape != b.shape for a, b in zip(st["params"], self.params)):
            raise ValueError(f"qvdit train --resume: checkpoint {path} holds other TQE tensors than this model")
        with torch.no_grad():
            for p, v in zip(self.params, st["params"]):
                p.copy_(v)
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.gen.set_state(st["gen"])
        self.it, self.history, self.seconds = st["it"], list(st["history"]), float(st["seconds"])

    def run(self, until: int | None = None, ckpt: Path | None = None, progress: bool = True, desc: str = "qvdit") -> None:
        until = self.cfg.iters if until is None else min(until, self.cfg.iters)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=until, initial=self.it, desc=desc, leave=False)
        t0 = time.perf_counter() - self.seconds
        self.model.train()
        while self.it < until:
            row = self.step()
            self.seconds = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
            if ckpt is not None and self.it % self.cfg.ckpt_every == 0:
                self.save(ckpt)
            if self.seconds > 60 * self.cfg.minutes:
                self.stopped_by_time = True
                break
        if bar is not None:
            bar.close()
        self.model.eval()
        if ckpt is not None:
            self.save(ckpt)


def plot_curves(histories: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, h in histories.items():
        it = [r["iter"] for r in h]
        ax[0].plot(it, [r["loss"] for r in h], label=f"{name} total", lw=0.8)
        ax[1].plot(it, [r["mse"] for r in h], label=f"{name} MSE", lw=0.8)
        ax[1].plot(it, [100 * r["kl"] for r in h], label=f"{name} 100·KL", lw=0.8, ls="--")
    for a in ax:
        a.set_yscale("log")
        a.set_xlabel("iteration")
        a.legend(fontsize=7)
    ax[0].set_title(f"{title}: TMD loss")
    ax[1].set_title("terms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_setting(setting: str, out: Path, tcfg: TrainConfig, resume: bool = False, progress: bool = True,
                  calib_steps: int = 10, experts=("high", "low"), zoo: str | None = None) -> dict:
    """Train every expert of the zoo pipeline for ``setting``; writes ``<setting>_<expert>.safetensors`` (+ .json),
    checkpoints, and ``<setting>_loss.{json,png}`` under ``out``. Returns a summary."""
    from ..zoo import load_pipeline
    from ..zoo.model import DEFAULT_VERSION

    zoo = zoo or DEFAULT_VERSION
    if setting not in SETTINGS:
        raise ValueError(f"qvdit train --setting {setting!r} is not allowed; expected one of {sorted(SETTINGS)}")
    qcfg = SETTINGS[setting]
    torch.manual_seed(tcfg.seed)
    pipe = load_pipeline(version=zoo)
    t0 = time.perf_counter()
    calls = record_calls(pipe, steps=calib_steps)
    record_s = time.perf_counter() - t0
    summary = {"setting": setting, "label": qcfg.label, "zoo": zoo, "train": asdict(tcfg), "record_seconds": record_s,
               "calib": {"classes": list(CALIB_CLASSES), "seed": CALIB_SEED, "steps": calib_steps, "guidance": 3.0},
               "torch": torch.__version__, "threads": torch.get_num_threads(), "experts": {}}
    histories = {}
    for key in experts:
        model = pipe.model if key == "high" else pipe.model_low
        install(model, qcfg, seed=tcfg.seed)
        tr = Trainer(model, calls[key], tcfg)
        ckpt = out / f"{setting}_{key}.ckpt"
        if resume and ckpt.is_file():
            tr.load(ckpt)
        tr.run(ckpt=ckpt, progress=progress, desc=f"qvdit {setting} {key}")
        art = QVDiTArtifact.from_model(model, qcfg, meta={"expert": key, "iters": tr.it, "seconds": tr.seconds,
                                                          "train": asdict(tcfg)})
        art.save(out / f"{setting}_{key}.safetensors")
        histories[key] = tr.history
        h = tr.history
        summary["experts"][key] = {"iters": tr.it, "seconds": round(tr.seconds, 1), "samples": len(calls[key]),
                                   "stopped_by_time": tr.stopped_by_time,
                                   "loss_first10": sum(r["loss"] for r in h[:10]) / max(1, len(h[:10])),
                                   "loss_last10": sum(r["loss"] for r in h[-10:]) / max(1, len(h[-10:]))}
    (out / f"{setting}_loss.json").write_text(json.dumps({"summary": summary, "history": histories}, indent=1) + "\n")
    plot_curves(histories, out / f"{setting}_loss.png", f"qvdit {qcfg.label}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dvdq_compile.qvdit.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    ap.add_argument("--out", type=Path, default=Path("bench/results/qvdit"))
    ap.add_argument("--iters", type=int, default=TrainConfig.iters)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--minutes", type=float, default=TrainConfig.minutes, help="wall-time cap per expert")
    ap.add_argument("--calib-steps", type=int, default=10)
    ap.add_argument("--train-act-quant", action="store_true", help="fake-quantize activations while training")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--zoo", choices=sorted(VERSIONS), default=None,
                    help=f"zoo model version (default: the zoo's default, {DEFAULT_VERSION})")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tcfg = TrainConfig(iters=a.iters, batch=a.batch, lr=a.lr, seed=a.seed, minutes=a.minutes,
                       train_act_quant=a.train_act_quant)
    s = train_setting(a.setting, a.out, tcfg, resume=a.resume, progress=not a.no_progress, calib_steps=a.calib_steps,
                       zoo=a.zoo)
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
