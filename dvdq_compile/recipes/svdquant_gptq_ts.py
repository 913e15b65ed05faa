"""Recipe ``svdquant_gptq_ts``: SVDQuant + GPTQ residual + timestep-bin clip ratios, per expert
(docs/algorithms.md §7), and its calibration.

``calibrate_svdquant_ts(model, run_fn)`` makes the artifact the backend loads with
``options={"recipe": "svdquant_gptq_ts", "artifact": [artifact_expert_1, artifact_expert_2, ...]}``:

1. one calibration pass (``dvdq_compile.calibrate`` with ``hessian=True`` and ``timestep_bins``): per layer
   ``XᵀX``, channel absmax, and which layers read one input (q/k/v);
2. per group of layers that share an input: ``quant.svdquant`` (α searched, rank-r branch refit on the output error,
   residual GPTQ'd with the Hessian of X̂ = X·diag(λ)⁻¹);
3. a second pass over the same ``run_fn``: for every group, timestep bin and clip ratio c of ``clip_grid``, the
   running squared output error of the quantized layer on the actual calibration activations,
   ``Σ ‖x·Wᵀ − ((x̂·L1)·L2 + Q_c(x̂)·Q(R)ᵀ)‖²`` (bounded memory: a [bins, grid] table per group); each bin takes
   its argmin (a bin no calibration call reached takes the argmin over all bins).

A Wan 2.2 pipeline has two experts: calibrate each on its own timesteps (its ``run_fn`` runs the whole sampler,
with this expert hooked and the other one in full precision), which also gives each its own artifact. The
artifact is a :class:`~dvdq_compile.artifacts.Calibration` whose ``recipe_tensors`` hold, per layer ``name``:
``name::lam`` [K] (smoothing, x̂ = x/λ), ``name::l1`` [K, r], ``name::l2`` [r, N], ``name::packed`` / ``::scale`` /
``::zero`` (the quantized residual in kernel layout), ``name::clip`` [bins] (clip ratio per timestep bin).

Choices where the paper is silent (docs/algorithms.md §7): 4 uniform bins over t ∈ [0, 1000); clip grid
{1.0, 0.95, …, 0.6}; rank 32; residual scales per output row by default (``weight_group=0``) because the Triton
qlinear takes per-row scales only (``weight_group=64``, the SVDQuant setting, runs the reference GEMM); α grid
{0, 0.1, …, 1}; GPTQ damp 0.01, block 128, no act_order.
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..artifacts import Calibration, Extras, TimestepBins, as_calibration
from ..calibrate import calibrate
from ..config import DEFAULT_BLOCK_PATTERN, DEFAULT_MODULATION_PATTERN, register_recipe
from ..errors import OptionError
from ..passes.extras import plan_extras
from ..passes.plan import Products
from ..quant.act import dequantize_act, quantize_act
from ..quant.pack import pack
from ..quant.svdquant import DEFAULT_ALPHAS, SVDQuantConfig, svdquant
from .base import Recipe

RECIPE = "svdquant_gptq_ts"
CLIP_GRID = tuple(round(1.0 - 0.05 * i, 2) for i in range(9))  # 1.0 … 0.6
EXTRA_KEYS = ("lam", "l1", "l2", "packed", "scale", "zero", "clip")


@dataclass(frozen=True)
class SVDQuantTSConfig:
    rank: int = 32
    weight_bits: int = 4
    weight_group: int = 0
    act_bits: int = 4
    act_group: int = 64
    alphas: tuple = DEFAULT_ALPHAS
    gptq: bool = True
    gptq_act_order: bool = False
    refit_iters: int = 100  # low-rank refit on the output error (0: the plain SVD branch)
    timestep_bins: object = 4  # None or 1: one bin (the "no timestep bins" ablation)
    clip_grid: tuple = CLIP_GRID

    def __post_init__(self):
        if not self.clip_grid or not all(0.0 < c <= 1.0 for c in self.clip_grid):
            raise ValueError(f"svdquant_gptq_ts clip_grid must be non-empty values in (0, 1], got {self.clip_grid}")
        if self.weight_bits != 4:
            raise ValueError(f"svdquant_gptq_ts weight_bits must be 4 (nibble layout), got {self.weight_bits}")
        if self.weight_group not in (0, 64, 128, 256):
            raise ValueError(f"svdquant_gptq_ts weight_group must be 0 (per row), 64, 128 or 256, got "
                             f"{self.weight_group}")

    def svd(self) -> SVDQuantConfig:
        return SVDQuantConfig(rank=self.rank, bits=self.weight_bits, group=self.weight_group,
                              act_bits=self.act_bits, act_group=self.act_group, alphas=tuple(self.alphas),
                              gptq=self.gptq, gptq_act_order=self.gptq_act_order, refit_iters=self.refit_iters)


def default_layers(name: str, mod: torch.nn.Linear) -> bool:
    """The layers the backend quantizes with activations by default: transformer-block linears, not modulation."""
    return bool(re.search(DEFAULT_BLOCK_PATTERN, name)) and not re.search(DEFAULT_MODULATION_PATTERN, name)


@torch.no_grad()
def calibrate_svdquant_ts(model: torch.nn.Module, run_fn: Callable[[torch.nn.Module], object],
                          cfg: SVDQuantTSConfig = SVDQuantTSConfig(), *,
                          layers: Callable[[str, torch.nn.Linear], bool] | None = None, meta: dict | None = None,
                          progress: bool = False) -> Calibration:
    """Calibrate one model (one expert) for recipe ``svdquant_gptq_ts``; see the module docstring."""
    model = getattr(model, "_orig_mod", model)
    t0 = time.perf_counter()
    bins = TimestepBins.of(cfg.timestep_bins if cfg.timestep_bins not in (None, 1) else None)
    by_bin = bins if bins.n > 1 else None  # one bin: the model need not even take a timestep
    cal = calibrate(model, run_fn, hessian=True, layers=layers or default_layers, meta=meta,
                    timestep_bins=by_bin, progress=progress)
    mods = dict(model.named_modules())
    svd_cfg = cfg.svd()
    group_of, plans = {}, {}
    for group in cal.groups:
        stats = [cal.stats[n] for n in group]
        st = stats[0]
        ws = [mods[n].weight for n in group]
        if st.absmax.shape[0] % cfg.act_group or (cfg.weight_group and st.absmax.shape[0] % cfg.weight_group):
            continue  # K not a multiple of the groups: the backend keeps its default path for this layer
        res = svdquant(ws, st.xtx, st.absmax, st.tokens, svd_cfg)
        plans[group[0]] = (group, res)
        for n in group:
            group_of[n] = group[0]
        cal.meta.setdefault("alpha", {})[group[0]] = res.alpha
        if res.refit:
            cal.meta.setdefault("refit", {})[group[0]] = [
                {k: (round(v, 6) if isinstance(v, float) else v) for k, v in info.items()} for info in res.refit]

    # pass 2: clip-ratio error tables on the actual activations
    grid = torch.tensor(cfg.clip_grid, dtype=torch.float32)
    tables = {g: torch.zeros(bins.n, len(grid), dtype=torch.float64) for g in plans}
    prepared = {}
    for g, (group, res) in plans.items():
        prepared[g] = [(mods[n].weight.detach().float(), lay.l1, lay.l2, lay.residual()) for n, lay in
                       zip(group, res.layers)]

    def observe(name, x, b):
        if name not in plans:  # only the group's first layer: the group shares its input
            return
        _, res = plans[name]
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        lam = res.lam.to(x2.device)
        xh = x2 / lam
        targets = []
        for w, l1, l2, r in prepared[name]:
            dev = x2.device
            targets.append((x2 @ w.to(dev).T - (xh @ l1.to(dev)) @ l2.to(dev), r.to(dev)))
        for i, c in enumerate(grid):
            xq = dequantize_act(*quantize_act(xh, cfg.act_bits, cfg.act_group, clip=c))
            tables[name][b, i] += sum(float((t - xq @ r.T).double().square().sum()) for t, r in targets)

    calibrate(model, run_fn, layers=lambda n, m: n in plans, timestep_bins=by_bin, observers=observe)
    tensors = {}
    clips = {}
    for g, (group, res) in plans.items():
        tab = tables[g]
        best_all = int(tab.sum(0).argmin())
        seen = tab.sum(1) > 0
        idx = torch.where(seen, tab.argmin(1), torch.full((bins.n,), best_all))
        clip = grid[idx].clone()
        clips[g] = clip.tolist()
        for n, lay in zip(group, res.layers):
            tensors.update({f"{n}::lam": res.lam.float(), f"{n}::l1": lay.l1, f"{n}::l2": lay.l2,
                            f"{n}::packed": pack(lay.codes, cfg.weight_bits), f"{n}::scale": lay.scale,
                            f"{n}::zero": lay.zero, f"{n}::clip": clip})
    cal.recipe_tensors = tensors
    cal.meta.update(recipe=RECIPE, config={k: (list(v) if isinstance(v, tuple) else v) for k, v in
                                          dataclasses.asdict(cfg).items() if k != "timestep_bins"},
                    timestep_bins=list(bins.edges), clip=clips,
                    calibration_seconds=round(time.perf_counter() - t0, 3))
    return cal


class TSArtifact:
    """A ``svdquant_gptq_ts`` calibration as the backend reads it (``artifacts.Artifact``): the calibration's
    statistics and fingerprints, and per layer the recipe's tensors as ``Extras``."""

    def __init__(self, cal: Calibration):
        self.cal = cal
        self.meta, self.weights = cal.meta, cal.weights

    def check(self, name: str, w: torch.Tensor) -> None:
        self.cal.check(name, w)

    @property
    def bins(self) -> TimestepBins:
        return self.cal.bins

    @property
    def groups(self) -> list:
        return self.cal.groups

    def layer_extras(self, name: str) -> Extras | None:
        if f"{name}::packed" not in self.cal.recipe_tensors:
            return None
        e = {k: self.cal.recipe_tensors[f"{name}::{k}"] for k in EXTRA_KEYS}
        return Extras(pre_scale=e["lam"], qweight=(e["packed"], e["scale"], e["zero"]),
                      lowrank=(e["l1"], e["l2"]) if e["l1"].shape[1] else None, clip=e["clip"])


class SVDQuantGPTQTS(Recipe):
    name = RECIPE
    summary = ("SVDQuant (smoothing + 16-bit rank-32 branch) + GPTQ 4-bit residual + per-timestep-bin activation "
               "clip ratios, per expert (needs options['artifact'] from dvdq_compile.calibrate_svdquant_ts), W4A4 "
               "per-(token, 64) activations")
    defaults = {"weight_method": "minmax", "rotate": False, "act_scale": "group", "group": 64, "act_bits": 4}
    takes_artifact = True
    artifact_types = (Calibration,)
    artifact_help = ("its artifact(s): pass options={'artifact': [dvdq_compile.calibrate_svdquant_ts(model, "
                     "run_fn), ...]} (or saved paths), one per expert")

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if cfg.rotate or cfg.act_scale != "group":
            raise OptionError(f"dvdquant recipe {self.name!r} needs rotate=False and act_scale='group' (got "
                              f"rotate={cfg.rotate}, act_scale={cfg.act_scale!r}): the artifact's factors are for "
                              "unrotated, per-(token, group) quantized activations")

    def load_artifacts(self, cfg) -> list:
        out = []
        for a in cfg.artifacts:
            cal = as_calibration(a)
            ag = (cal.meta.get("config") or {}).get("act_group")
            if ag is not None and ag != cfg.group:
                raise OptionError(f"dvdquant option group={cfg.group} differs from the activation group {ag} the "
                                  f"artifact {cal.meta.get('path', '(in memory)')} was calibrated (clip ratios "
                                  "searched) with")
            out.append(TSArtifact(cal))
        return out

    def plan(self, ctx) -> Products:
        return Products(extras=plan_extras(ctx))


register_recipe(SVDQuantGPTQTS())
