"""``dvdq eval``: the ablation table of quantization methods on the project's trained two-expert video DiT.

Every row samples the same classes, seeds, steps and CFG scale as the full-precision reference, through
``torch.compile(expert, backend="dvdquant", options=row.options)`` for each expert, and is scored against the
full-precision videos: PSNR, SSIM, temporal consistency (frame-difference correlation, relation-matrix KL), per-layer
output SQNR on captured full-precision inputs (mean and worst layer), average activation bits, weight bytes.

SmoothQuant rows are calibrated on a separate calibration set (other classes, other seed, fewer steps) and pick
their migration strength α from ``ALPHAS`` by the calibration-set PSNR of a short sampling run; the chosen α and the
calibration time are in the results. Nothing of the evaluation set is seen by calibration.

``svdquant_gptq_ts`` rows calibrate each expert on the same calibration set (``calibrate_svdquant_ts``: statistics,
SVDQuant + GPTQ, and the clip-ratio search per timestep bin, each expert on its own timesteps) and pass both
artifacts to the compiled graph; their ablations change one setting of ``SVDQuantTSConfig`` (``Row.calib``).
Their calibration time is the whole per-expert calibration.

``qvdit`` rows load the per-expert artifacts that ``python -m dvdq_compile.qvdit.train`` wrote (``--qvdit-dir``,
default ``bench/results/qvdit``; trained on the calibration classes of that CLI, disjoint from the evaluation
classes) and run them through the backend (recipe ``qvdit``); their "calibration" time is the training time. Next
to them: RTN (MinMax) and DVD-Quant (BGR+ARQ) at the same bits.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import metrics
from ..zoo.model import DEFAULT_VERSION
from .layers import capture_inputs, layer_sqnr

log = logging.getLogger("dvdq_compile")

ALPHAS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Row:
    label: str
    options: dict
    group: str = ""  # "baseline" | "ablation" | "ours" | "control" | "peer" | "kernel" (speed-option ablation)
    calib: tuple = ()  # svdquant_gptq_ts: (field, value) overrides of SVDQuantTSConfig
    qvdit: str = ""  # qvdit: the training setting whose artifacts the row loads (qvdit.train.SETTINGS)

    @property
    def calibrated(self) -> bool:
        return self.options.get("recipe") == "smoothquant"

    @property
    def svdquant(self) -> bool:
        return self.options.get("recipe") == "svdquant_gptq_ts"


ROWS = (
    Row("W8A8 MinMax (control)", {"recipe": "minmax", "weight_bits": 8, "act_bits": 8}, "control"),
    Row("MinMax W4A8", {"recipe": "minmax", "act_bits": 8}, "baseline"),
    Row("MinMax W4A4", {"recipe": "minmax", "act_bits": 4}, "baseline"),
    Row("SmoothQuant W4A8", {"recipe": "smoothquant", "act_bits": 8}, "baseline"),
    Row("SmoothQuant W4A4", {"recipe": "smoothquant", "act_bits": 4}, "baseline"),
    Row("QuaRot W4A8", {"recipe": "quarot", "act_bits": 8}, "baseline"),
    Row("QuaRot W4A4", {"recipe": "quarot", "act_bits": 4}, "baseline"),
    Row("BGR only W4A8", {"recipe": "bgr_only", "act_bits": 8}, "ablation"),
    Row("BGR only W4A4", {"recipe": "bgr_only", "act_bits": 4}, "ablation"),
    Row("ARQ only W4A8", {"recipe": "arq_only", "act_bits": 8}, "ablation"),
    Row("ARQ only W4A4", {"recipe": "arq_only", "act_bits": 4}, "ablation"),
    Row("BGR+ARQ W4A8", {"recipe": "dvdquant", "act_bits": 8}, "ours"),
    Row("BGR+ARQ W4A4", {"recipe": "dvdquant", "act_bits": 4}, "ours"),
    Row("DVD-Quant δ-GBS W4A4/8", {"recipe": "dvdquant", "act_bits": "auto"}, "ours"),
    Row("SVDQuant-GPTQ-TS W4A4", {"recipe": "svdquant_gptq_ts", "act_bits": 4}, "peer"),
    Row("SVDQuant-GPTQ-TS W4A4 (no timestep bins)", {"recipe": "svdquant_gptq_ts", "act_bits": 4}, "peer",
        (("timestep_bins", None),)),
    Row("SVDQuant-GPTQ-TS W4A4 (no GPTQ)", {"recipe": "svdquant_gptq_ts", "act_bits": 4}, "peer",
        (("gptq", False),)),
    Row("SVDQuant-GPTQ-TS W4A4 (no low-rank)", {"recipe": "svdquant_gptq_ts", "act_bits": 4}, "peer",
        (("rank", 0),)),
    Row("SVDQuant-GPTQ-TS W4A4 (no refit)", {"recipe": "svdquant_gptq_ts", "act_bits": 4}, "peer",
        (("refit_iters", 0),)),
    Row("MinMax W3A6", {"recipe": "minmax", "weight_bits": 3, "act_bits": 6}, "baseline"),
    Row("BGR+ARQ W3A6", {"recipe": "dvdquant", "weight_bits": 3, "act_bits": 6}, "ours"),
    Row("Q-VDiT W3A6 (MLP W8A8)", {"recipe": "qvdit", "weight_bits": 3, "act_bits": 6}, "peer", qvdit="w3a6-faithful"),
    Row("Q-VDiT W3A6", {"recipe": "qvdit", "weight_bits": 3, "act_bits": 6}, "peer", qvdit="w3a6"),
    Row("MinMax W4A6", {"recipe": "minmax", "weight_bits": 4, "act_bits": 6}, "baseline"),
    Row("BGR+ARQ W4A6", {"recipe": "dvdquant", "weight_bits": 4, "act_bits": 6}, "ours"),
    Row("Q-VDiT W4A6", {"recipe": "qvdit", "weight_bits": 4, "act_bits": 6}, "peer", qvdit="w4a6"),
    # what the GEMM kernel's speed options cost in quality: a per-token A8 scale takes the fp32 rescale out of the
    # K loop (bench/results/sass.md), group 256 halves it (MinMax is per-token by default: its row is the reverse)
    Row("MinMax W4A8 (group-128 scale)", {"recipe": "minmax", "act_bits": 8, "act_scale": "group"}, "kernel"),
    Row("BGR+ARQ W4A8 (per-token scale)", {"recipe": "dvdquant", "act_bits": 8, "act_scale": "token"}, "kernel"),
    Row("BGR+ARQ W4A8 (group 256)", {"recipe": "dvdquant", "act_bits": 8, "group": 256}, "kernel"),
)


@dataclass
class EvalSetup:
    classes: tuple = tuple(range(16))
    seed: int = 0
    steps: int = 20
    guidance: float = 3.0
    calib_classes: tuple = (1, 6, 11, 14)
    calib_seed: int = 1234
    calib_steps: int = 8
    two_experts: bool = True
    device: str = "cpu"
    lowering: str = "eager"
    kernels: str = "auto"
    rows: tuple = field(default_factory=lambda: tuple(r.label for r in ROWS))
    qvdit_dir: str = "bench/results/qvdit"
    zoo: str = DEFAULT_VERSION  # zoo model version (zoo.model.VERSIONS)


def qvdit_paths(setup: EvalSetup, setting: str) -> list[Path]:
    """The artifacts a ``qvdit`` row loads, one per expert; missing ones raise with the command that trains them."""
    keys = ("high", "low") if setup.two_experts else ("high",)
    paths = [Path(setup.qvdit_dir) / f"{setting}_{k}.safetensors" for k in keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dvdq eval: the qvdit rows of setting {setting!r} need {missing}; train them with "
                                f"`python -m dvdq_compile.qvdit.train --setting {setting} --out {setup.qvdit_dir}` "
                                "(about 7 min per setting on one CPU core) or pass --qvdit-dir")
    return paths


def _act_bits_from_report(experts) -> float:
    """Average activation bits over the activation-quantized linears, weighted by N·K (every one of them reads the
    video tokens): per-layer bits differ in the faithful Q-VDiT setting (MLP at 8 bits)."""
    from .. import api

    num = den = 0.0
    for m in experts:
        for r in api.report(m).layers:
            if r.decision == "quantize":
                num += int(r.act_bits) * r.n * r.k
                den += r.n * r.k
    return num / den if den else float("nan")


@dataclass
class RowResult:
    label: str
    group: str
    options: dict
    psnr: float
    ssim: float
    frame_diff_corr: float
    relation_kl: float
    rel_l2: float
    sqnr_mean: float
    sqnr_worst: float
    sqnr_worst_layer: str
    avg_act_bits: float
    weight_bytes: int
    weight_bytes_fp: int
    seconds: float
    calib_seconds: float = 0.0
    alpha: float | None = None
    # peak GPU memory of the row's sampling run (both experts resident, FP weights included unless freed);
    # None on CPU: torch has no allocator peak there, so it is not measured
    peak_bytes: int | None = None
    # PSNR of each video (one per class of the setup, same order): the spread of paired per-video differences
    # between two rows is the noise estimate of their PSNR difference (bench/quality_compare.py)
    psnr_per_video: list = field(default_factory=list)


def _sample(pipe, models, setup: EvalSetup, classes, seed, steps):
    from ..zoo import sample

    return sample(models[0], list(classes), steps=steps, guidance=setup.guidance, seed=seed, progress=False,
                  model_low=models[1] if len(models) > 1 else None, boundary=pipe.boundary, shift=pipe.shift,
                  table=pipe.table, data=pipe.data)


def _compile(experts, options: dict, setup: EvalSetup, artifacts=None):
    torch._dynamo.reset()
    out = []
    for i, m in enumerate(experts):
        opts = dict(options, lowering=setup.lowering, kernels=setup.kernels, progress=False)
        if artifacts is not None:
            opts["artifact"] = artifacts[i]
        out.append(torch.compile(m, backend="dvdquant", options=opts))
    return out


def _avg_bits(experts, options) -> float:
    from .. import api

    if options.get("recipe") == "qvdit":
        return _act_bits_from_report(experts)
    if options.get("act_bits") != "auto":
        return float(options.get("act_bits", 8))
    bits = []
    for m in experts:
        ctrl = api.controller(m)
        if ctrl is not None:
            bits += [r.bits for r in ctrl.trace]
    return sum(bits) / len(bits) if bits else float("nan")


class Evaluator:
    """Loads the zoo pipeline once, samples the full-precision reference, then scores rows."""

    def __init__(self, setup: EvalSetup):
        from ..zoo import load_pipeline

        self.setup = setup
        self.pipe = load_pipeline(two_experts=setup.two_experts, device=torch.device(setup.device), version=setup.zoo)
        self.experts = [m for m in (self.pipe.model, self.pipe.model_low) if m is not None]
        names = None
        t0 = time.perf_counter()
        with torch.no_grad(), capture_inputs(self.experts[0], names) as hi, \
                (capture_inputs(self.experts[1], names) if len(self.experts) > 1 else _null()) as lo:
            self.fp = _sample(self.pipe, self.experts, setup, setup.classes, setup.seed, setup.steps)
        self.fp_seconds = time.perf_counter() - t0
        self.inputs = [hi] + ([lo] if lo is not None else [])
        self._calib = None
        self._svd: dict[tuple, tuple[list, float]] = {}

    def svd_artifacts(self, overrides: tuple) -> tuple[list, float]:
        """Per-expert ``svdquant_gptq_ts`` artifacts for ``SVDQuantTSConfig(**overrides)`` and the seconds spent."""
        if overrides not in self._svd:
            from ..recipes.svdquant_gptq_ts import (
                SVDQuantTSConfig,
                calibrate_svdquant_ts,
            )

            s = self.setup
            cfg = SVDQuantTSConfig(**dict(overrides))
            t0 = time.perf_counter()
            arts = []
            for i, m in enumerate(self.experts):
                def run(_m, s=s):  # the whole pipeline, so expert i sees exactly its own timesteps
                    _sample(self.pipe, self.experts, s, s.calib_classes, s.calib_seed, s.calib_steps)
                arts.append(calibrate_svdquant_ts(m, run, cfg, meta={"classes": list(s.calib_classes),
                                                                     "seed": s.calib_seed, "steps": s.calib_steps,
                                                                     "expert": i}))
            self._svd[overrides] = (arts, time.perf_counter() - t0)
        return self._svd[overrides]

    def qvdit_artifacts(self, setting: str) -> tuple[list, float]:
        """The per-expert qvdit artifacts of ``setting`` and their training seconds (from ``<setting>_loss.json``:
        recording the FP trajectories + training every expert)."""
        from ..qvdit.artifact import QVDiTArtifact

        arts = [QVDiTArtifact.load(p) for p in qvdit_paths(self.setup, setting)]
        loss = Path(self.setup.qvdit_dir) / f"{setting}_loss.json"
        seconds = float("nan")
        if loss.is_file():
            summ = json.loads(loss.read_text())["summary"]
            seconds = summ.get("record_seconds", 0.0) + sum(e.get("seconds", 0.0) for e in summ["experts"].values())
        return arts, seconds

    # -- SmoothQuant calibration ------------------------------------------------------------------------------
    def calibration(self):
        """Per-expert activation statistics from the calibration set (computed once)."""
        if self._calib is None:
            from ..calibrate import calibrate

            s = self.setup
            t0 = time.perf_counter()
            cals = []
            for i, m in enumerate(self.experts):
                # Run the whole pipeline (both experts) so each expert sees its own timesteps; record expert i.
                def run(_m, s=s):
                    _sample(self.pipe, self.experts, s, s.calib_classes, s.calib_seed, s.calib_steps)
                cals.append(calibrate(m, run, meta={"classes": list(s.calib_classes), "seed": s.calib_seed,
                                                    "steps": s.calib_steps, "expert": i}))
            with torch.no_grad():
                self._calib_fp = _sample(self.pipe, self.experts, s, s.calib_classes, s.calib_seed, s.calib_steps)
            self._calib = (cals, time.perf_counter() - t0)
        return self._calib

    def choose_alpha(self, options: dict) -> tuple[float, float]:
        """α from ``ALPHAS`` with the best calibration-set PSNR; returns (α, seconds spent choosing)."""
        cals, _ = self.calibration()
        s = self.setup
        t0 = time.perf_counter()
        best = None
        for a in ALPHAS:
            comp = _compile(self.experts, dict(options, smooth_alpha=a), s, cals)
            with torch.no_grad():
                v = _sample(self.pipe, comp, s, s.calib_classes, s.calib_seed, s.calib_steps)
            p = metrics.psnr(v, self._calib_fp)
            log.info("smoothquant alpha=%.2f: calibration PSNR %.2f dB", a, p)
            if best is None or p > best[1]:
                best = (a, p)
        return best[0], time.perf_counter() - t0

    # -- one row ----------------------------------------------------------------------------------------------
    def run_row(self, row: Row) -> RowResult:
        from .. import api

        options = dict(row.options)
        calib_s, alpha, artifacts = 0.0, None, None
        if row.calibrated:
            cals, t_stats = self.calibration()
            alpha, t_alpha = self.choose_alpha(options)
            options["smooth_alpha"] = alpha
            artifacts, calib_s = cals, t_stats + t_alpha
        elif row.svdquant:
            arts, calib_s = self.svd_artifacts(row.calib)
            artifacts = [arts] * len(self.experts)  # every expert's graph gets all artifacts (Dynamo may share it)
        elif row.qvdit:
            arts, calib_s = self.qvdit_artifacts(row.qvdit)
            artifacts = [arts] * len(self.experts)
        cuda = torch.device(self.setup.device).type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        comp = _compile(self.experts, options, self.setup, artifacts)
        with torch.no_grad():
            q = _sample(self.pipe, comp, self.setup, self.setup.classes, self.setup.seed, self.setup.steps)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else None
        sq = {}
        for tag, m, inp in zip(("high", "low"), self.experts, self.inputs):
            sq.update({f"{tag}:{k}": v for k, v in layer_sqnr(m, inp).items()})
        worst = min(sq, key=sq.get) if sq else ""
        reps = [api.report(m) for m in self.experts]
        fp, q = self.fp, q.to(self.fp.device)
        return RowResult(
            label=row.label, group=row.group, options=options,
            psnr=metrics.psnr(q, fp), psnr_per_video=[float(v) for v in metrics.psnr_per_video(q, fp)],
            ssim=metrics.ssim(q, fp), frame_diff_corr=metrics.frame_diff_corr(q, fp),
            relation_kl=metrics.relation_kl(q, fp), rel_l2=float((q - fp).norm() / fp.norm()),
            sqnr_mean=sum(sq.values()) / len(sq) if sq else float("nan"),
            sqnr_worst=sq[worst] if sq else float("nan"), sqnr_worst_layer=worst,
            avg_act_bits=_avg_bits(self.experts, options),
            weight_bytes=sum(r.bytes_after for r in reps), weight_bytes_fp=sum(r.bytes_before for r in reps),
            seconds=seconds, calib_seconds=calib_s, alpha=alpha, peak_bytes=peak)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def select_rows(labels) -> list[Row]:
    by = {r.label: r for r in ROWS}
    bad = [x for x in labels if x not in by]
    if bad:
        raise ValueError(f"unknown eval row(s) {bad}; rows are: {[r.label for r in ROWS]}")
    return [by[x] for x in labels]


def environment(setup: EvalSetup) -> dict:
    import triton

    dev = torch.device(setup.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def run(setup: EvalSetup, out_dir: Path, progress: bool = True, stem: str = "quality") -> dict:
    rows = select_rows(setup.rows)
    for r in rows:  # before the full-precision run: a missing artifact fails in seconds, not after it
        if r.qvdit:
            qvdit_paths(setup, r.qvdit)
    ev = Evaluator(setup)
    results = []
    it = rows
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(rows, desc="dvdq eval", unit="row")
    for row in it:
        r = ev.run_row(row)
        log.info("%s: PSNR %.2f dB, SSIM %.4f", r.label, r.psnr, r.ssim)
        results.append(r)
    doc = {"env": environment(setup), "setup": asdict(setup), "fp_seconds": ev.fp_seconds,
           "rows": [asdict(r) for r in results]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(doc))
    try:
        plot(doc, out_dir / f"{stem}.png")
    except ImportError:  # matplotlib is a bench extra
        log.warning("matplotlib not installed: no %s.png", stem)
    return doc


def markdown(doc: dict) -> str:
    env, s = doc["env"], doc["setup"]
    lines = [
        "# Quality: quantization methods on the zoo video DiT",
        "",
        (f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; {env['date']}. Zoo model "
        f"{s.get('zoo', 'v1')} ({'two experts, boundary 0.5' if s['two_experts'] else 'one expert'}), {len(s['classes'])} classes, "
        f"seed {s['seed']}, {s['steps']} Euler steps, CFG {s['guidance']}, lowering {s['lowering']}, "
        f"kernels {s['kernels']}. Every row is scored against the full-precision videos of the same seeds."),
        "",
        ("| method | PSNR dB | SSIM | frame-diff corr | relation KL | rel L2 | layer SQNR mean / worst dB | "
        "avg A bits | weight MiB | peak GPU MiB | time s |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        extra = f" (α={r['alpha']:g}, calib {r['calib_seconds']:.0f} s)" if r.get("alpha") is not None else \
            (f" ({'train' if r['options'].get('recipe') == 'qvdit' else 'calib'} {r['calib_seconds']:.0f} s)"
             if r.get("calib_seconds") else "")
        lines.append(
            f"| {r['label']}{extra} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['frame_diff_corr']:.4f} | "
            f"{r['relation_kl']:.2e} | {r['rel_l2']:.4f} | {r['sqnr_mean']:.1f} / {r['sqnr_worst']:.1f} | "
            f"{r['avg_act_bits']:.2f} | {r['weight_bytes'] / 2**20:.2f} | "
            f"{'-' if r.get('peak_bytes') is None else format(r['peak_bytes'] / 2**20, '.0f')} | {r['seconds']:.0f} |")
    fp_mib = doc["rows"][0]["weight_bytes_fp"] / 2**20 if doc["rows"] else 0
    lines += [
        "",
        (f"Full-precision linear weights: {fp_mib:.2f} MiB (fp32 checkpoint). Layer SQNR: each quantized linear "
        "alone on inputs captured from the full-precision run (worst layer named in the JSON); δ-GBS rows weight "
        "the A4 and A8 variants by the calls each served. Relation KL: Q-VDiT's inter-frame relation-matrix KL "
        "(0 = the frame-to-frame similarity structure is preserved). SmoothQuant: α chosen from "
        f"{list(ALPHAS)} by calibration-set PSNR (classes {s['calib_classes']}, seed {s['calib_seed']}, "
        f"{s['calib_steps']} steps); calibration time includes the statistics run and the α search. SVDQuant-GPTQ-TS rows: "
        "each expert calibrated on the same calibration set (its own timesteps), time = statistics + SVDQuant/GPTQ + "
        "clip-ratio search; weight MiB includes the 16-bit low-rank branch. Q-VDiT rows: artifacts from "
        "`python -m dvdq_compile.qvdit.train` (calibration trajectories of other classes and seed), time = recording + "
        "training both experts; avg A bits weighted by N·K over activation-quantized layers (faithful: MLP at A8); "
        "weight MiB includes the rank-1 branch. Peak GPU MiB: torch.cuda.max_memory_allocated over the row's compile "
        "and sampling ('-': not measured, CPU run)."),
        "",
    ]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    colours = {"control": "grey", "baseline": "tab:blue", "ablation": "tab:orange", "ours": "tab:green",
               "peer": "tab:purple", "kernel": "tab:red"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(rows) + 1.5), sharey=True)
    labels = [r["label"] for r in rows]
    for ax, key, title in zip(axes, ("psnr", "ssim", "sqnr_mean"),
                              ("PSNR vs FP (dB)", "SSIM vs FP", "mean layer SQNR (dB)")):
        ax.barh(labels, [r[key] for r in rows], color=[colours.get(r["group"], "k") for r in rows])
        ax.set_title(title)
        ax.invert_yaxis() if ax is axes[0] else None
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"zoo video DiT, {doc['env']['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
