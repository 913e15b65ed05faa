"""Calibration: per-layer activation statistics of one model (made by ``dvdq_compile.calibrate``).

Per ``nn.Linear`` input: ``absmax`` [K] (max |x| per channel over all tokens), the token count, optionally the
running ``XᵀX`` (GPTQ's Hessian up to a factor) and per-timestep-bin ``absmax``; plus the weight fingerprint of every
calibrated layer, the layers seen reading one input (``groups``: q/k/v) and a recipe's products (``recipe_tensors``,
saved as ``extra::<name>``). Saved as safetensors + manifest (``artifacts/manifest.py``), loaded back bit-exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bins import TimestepBins
from .extras import Extras, label
from .fingerprint import check_fingerprint, model_fingerprint
from .manifest import check_intact, read_artifact, write_artifact

FORMAT = "dvdq-calibration/1"


@dataclass
class LayerStats:
    absmax: torch.Tensor  # [K] fp32
    tokens: int = 0
    xtx: torch.Tensor | None = None  # [K, K] fp64 running sum of XᵀX
    absmax_bins: torch.Tensor | None = None  # [B, K] fp32 per timestep bin (calibrate(timestep_bins=...))
    tokens_bins: list | None = None  # [B] token counts per bin

    def update(self, x: torch.Tensor, hessian: bool, bin: int | None = None, n_bins: int = 1) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1])
        if x2.shape[0] == 0:
            return
        x2f = x2.float()
        amax = x2f.abs().amax(0).nan_to_num(0.0).cpu()
        self.absmax = torch.maximum(self.absmax, amax)
        self.tokens += x2.shape[0]
        if bin is not None:
            if self.absmax_bins is None:
                self.absmax_bins = torch.zeros(n_bins, amax.shape[0], dtype=torch.float32)
                self.tokens_bins = [0] * n_bins
            self.absmax_bins[bin] = torch.maximum(self.absmax_bins[bin], amax)
            self.tokens_bins[bin] += x2.shape[0]
        if hessian:
            x64 = x2f.double()
            s = (x64.T @ x64).cpu()
            self.xtx = s if self.xtx is None else self.xtx + s


@dataclass(eq=False)  # compared and hashed by identity: it rides in the (hashable) QuantConfig
class Calibration:
    """Per-layer activation statistics of one model, with the weight fingerprints they belong to."""
    stats: dict[str, LayerStats]
    weights: dict[str, str]  # layer name -> weight_fingerprint of its weight at calibration time
    meta: dict = field(default_factory=dict)
    bins: TimestepBins = field(default_factory=TimestepBins)
    groups: list = field(default_factory=list)  # lists of layer names seen reading one input tensor
    recipe_tensors: dict = field(default_factory=dict)  # a recipe's products: name -> tensor (saved "extra::name")

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.weights)

    def check(self, name: str, w: torch.Tensor) -> None:
        """Raise if ``w`` is not the weight layer ``name`` had when this calibration was made."""
        check_fingerprint(self.weights, name, w, f"dvdquant option artifact: calibration {label(self)} was made",
                          "Calibrate this model (dvdq_compile.calibrate) or pass the artifact made for it.")

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and ``path`` + ``.json`` (manifest). Returns the safetensors path."""
        tensors, layers = {}, {}
        for name, st in self.stats.items():
            tensors[f"{name}::absmax"] = st.absmax.contiguous()
            if st.xtx is not None:
                tensors[f"{name}::xtx"] = st.xtx.contiguous()
            if st.absmax_bins is not None:
                tensors[f"{name}::absmax_bins"] = st.absmax_bins.contiguous()
            layers[name] = {"tokens": st.tokens, "weight": self.weights.get(name), "hessian": st.xtx is not None,
                            "tokens_bins": st.tokens_bins}
        for key, t in self.recipe_tensors.items():
            tensors[f"extra::{key}"] = t.detach().cpu().contiguous()
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "layers": layers,
                    "meta": {k: v for k, v in self.meta.items() if k != "path"},
                    "bins": list(self.bins.edges), "groups": self.groups, "extras": sorted(self.recipe_tensors)}
        return write_artifact(path, tensors, manifest)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        what = "dvdquant option artifact"
        manifest, t, path = read_artifact(path, FORMAT, what, "dvdq calibration")
        stats, weights = {}, {}
        for name, info in manifest["layers"].items():
            tb = info.get("tokens_bins")
            stats[name] = LayerStats(t[f"{name}::absmax"], int(info["tokens"]),
                                     t[f"{name}::xtx"] if info.get("hessian") else None,
                                     t[f"{name}::absmax_bins"] if tb is not None else None, tb)
            if info.get("weight"):
                weights[name] = info["weight"]
        recipe_tensors = {k: t[f"extra::{k}"] for k in manifest.get("extras", [])}
        cal = cls(stats, weights, dict(manifest.get("meta", {}), path=str(path)),
                  TimestepBins(tuple(manifest.get("bins", ()))), [list(g) for g in manifest.get("groups", [])],
                  recipe_tensors)
        check_intact(manifest, cal.fingerprint, path, what)
        return cal

    def layer_extras(self, name: str) -> Extras | None:
        """A plain calibration gives layers statistics, not extras (recipes that store extras in one wrap it)."""
        return None


def as_calibration(artifact) -> Calibration:
    """The ``artifact`` option as a Calibration (a path is loaded)."""
    if isinstance(artifact, Calibration):
        return artifact
    if isinstance(artifact, (str, Path)) or hasattr(artifact, "__fspath__"):
        return Calibration.load(artifact)
    raise ValueError(f"dvdquant option artifact must be a path or a dvdq_compile.Calibration, got "
                     f"{type(artifact).__name__}")
