"""The ``qvdit`` artifact: the learned TQE tensors of one model as safetensors + a JSON manifest.

Tensors are stored as ``<layer>::<name>`` (``lora_A``, ``lora_B``, ``a1``, ``b1``, ``mask``); the manifest (in the
safetensors metadata and beside it as ``<path>.json``) holds the recipe, its bits, every layer's bits and weight
fingerprint (``artifacts.weight_fingerprint``), the layers kept at W8A8 in the faithful setting, and the
model fingerprint. Loading into a model whose weights differ is refused with a ``ValueError`` naming the layer, as
for the calibration artifacts. The (Δ, z) of each layer are not stored: they are MinMax of the model's own weight,
recomputed bit-exactly on load.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..artifacts import (
    Extras,
    TimestepBins,
    check_fingerprint,
    check_intact,
    label,
    model_fingerprint,
    read_artifact,
    weight_fingerprint,
    write_artifact,
)
from .swap import QVDiTConfig, install, tqe_layers
from .tqe import TQEConfig

FORMAT = "dvdq-qvdit/1"


@dataclass
class QVDiTArtifact:
    cfg: QVDiTConfig
    layers: dict[str, TQEConfig]
    weights: dict[str, str]                       # layer -> weight fingerprint
    tensors: dict[str, dict[str, torch.Tensor]]   # layer -> learned tensors
    frames: dict[str, int | None] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.weights)

    @property
    def kept_w8a8(self) -> list[str]:
        return [n for n, lc in self.layers.items() if (lc.weight_bits, lc.act_bits) == (8, 8)]

    @classmethod
    def from_model(cls, model: nn.Module, cfg: QVDiTConfig, meta: dict | None = None) -> QVDiTArtifact:
        layers = tqe_layers(model)
        if not layers:
            raise ValueError("qvdit artifact: the model has no TQE layers (install them with qvdit.swap.install)")
        return cls(cfg, {n: m.cfg for n, m in layers.items()},
                   {n: weight_fingerprint(m.weight) for n, m in layers.items()},
                   {n: {k: v.clone() for k, v in m.learned().items()} for n, m in layers.items()},
                   {n: m.frames for n, m in layers.items()}, dict(meta or {}))

    def manifest(self) -> dict:
        cfg = asdict(self.cfg)
        return {"format": FORMAT, "recipe": "qvdit", "config": cfg, "label": self.cfg.label,
                "fingerprint": self.fingerprint, "kept_w8a8": self.kept_w8a8,
                "layers": {n: {"config": asdict(lc), "weight": self.weights[n], "frames": self.frames.get(n),
                               "tensors": sorted(self.tensors[n])} for n, lc in self.layers.items()},
                "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        flat = {f"{n}::{k}": v.detach().cpu().contiguous() for n, ts in self.tensors.items() for k, v in ts.items()}
        return write_artifact(path, flat, self.manifest())

    @classmethod
    def load(cls, path: str | Path) -> QVDiTArtifact:
        man, t, path = read_artifact(path, FORMAT, "qvdit artifact", "qvdit artifact")
        c = man["config"]
        for k in ("mlp", "weight_only", "temporal"):
            c[k] = tuple(c[k])
        layers, weights, tensors, frames = {}, {}, {}, {}
        for n, info in man["layers"].items():
            layers[n] = TQEConfig(**info["config"])
            weights[n] = info["weight"]
            frames[n] = info["frames"]
            tensors[n] = {k: t[f"{n}::{k}"] for k in info["tensors"]}
        art = cls(QVDiTConfig(**c), layers, weights, tensors, frames, dict(man.get("meta", {}), path=str(path)))
        check_intact(man, art.fingerprint, path, "qvdit artifact")
        return art

    def check(self, name: str, w: torch.Tensor) -> None:
        """Raise if ``w`` is not the weight layer ``name`` was trained on (no-op for a layer not in the artifact).
        The same contract as ``Calibration.check``: the backend matches models (experts) to artifacts with it."""
        check_fingerprint(self.weights, name, w, f"qvdit artifact {label(self)} was trained",
                          "Train qvdit on this model (python -m dvdq_compile.qvdit.train) or pass the artifact made "
                          "for it.")

    def check_model(self, model: nn.Module) -> None:
        """Raise unless every layer of this artifact exists in ``model`` with the weight it was trained on."""
        for n in self.weights:
            try:
                mod = model.get_submodule(n)
            except AttributeError:
                raise ValueError(f"qvdit artifact {label(self)}: layer {n!r} does not "
                                 "exist in this model") from None
            self.check(n, mod.weight)

    # -- what the backend reads (artifacts.Artifact) ------------------------------------------------------------
    @property
    def bins(self) -> TimestepBins:
        return TimestepBins()  # no timestep dependence: one bin

    @property
    def groups(self) -> list:
        return []  # no shared smoothing: every layer is its own group

    def layer_extras(self, name: str):
        """Layer ``name`` as backend extras: its bits, the weight offset ``(B, A)`` folded into the weight codes at
        load (``quant.offset_qweight``) and the rank-1 branch ``(a1ᵀ, b1ᵀ)`` on the quantized activation (on ``x``
        for a weight-only layer). None: the artifact has no such layer."""
        lc = self.layers.get(name)
        if lc is None:
            return None
        t = self.tensors[name]
        if "mask" in t:
            raise ValueError(f"qvdit artifact {label(self)}: layer {name!r} has a per-frame "
                             "token mask (a temporal layer); the backend runs joint spatio-temporal models (Wan, "
                             "the zoo) and does not implement the mask. Evaluate it with qvdit.swap (eager)")
        lowrank = (t["a1"].T.contiguous(), t["b1"].T.contiguous()) if "a1" in t else None
        offset = (t["lora_B"], t["lora_A"]) if "lora_B" in t else None
        return Extras(lowrank=lowrank, lowrank_input="x" if lc.act_bits == 16 else "xq", weight_offset=offset,
                      weight_bits=lc.weight_bits, act_bits=lc.act_bits, offset_weight=True)

    def apply(self, model: nn.Module) -> dict:
        """Install the TQE layers into ``model`` (in place) with the learned tensors; checks the weights first."""
        self.check_model(model)
        layers = install(model, self.cfg, plan=self.layers)
        with torch.no_grad():
            for n, m in layers.items():
                if m.frames != self.frames.get(n):
                    raise ValueError(f"qvdit artifact: layer {n!r} has a token mask over {self.frames.get(n)} frames "
                                     f"in the artifact, {m.frames} in this install")
                for k, v in self.tensors[n].items():
                    getattr(m, k).copy_(v)
        return layers
