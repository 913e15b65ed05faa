"""Calibration: per-layer activation statistics for the calibrated recipes (SmoothQuant, later SVDQuant/GPTQ).

DVD-Quant itself is data-free; its peers are not. ``calibrate`` runs the model eagerly on a few user-chosen inputs
with forward hooks on every ``nn.Linear`` and keeps **running** statistics only (memory is bounded by the layer
sizes, never by the number of tokens seen):

- ``absmax`` [K] fp32: max |x| per input channel over all tokens (SmoothQuant's activation range);
- ``tokens``: how many tokens the layer saw;
- ``xtx`` [K, K] fp64 (``hessian=True``): the running sum of ``XᵀX`` (GPTQ's Hessian up to a factor).

The result is a :class:`Calibration`; ``save`` writes it as safetensors with a JSON manifest (recipe, the
options it was made for, the model fingerprint) beside it, ``Calibration.load`` reads it back bit-exactly. The
backend takes it as ``options={"artifact": calibration_or_path}`` and refuses it for a model whose weights do not
match the per-layer fingerprints stored in it (wrong model, edited weights).

Layer names are module paths relative to the model passed in (``blocks.0.attn1.to_q``): the names the backend's
compile report uses for a ``torch.compile``-d model.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "dvdq-calibration/1"
_SAMPLE = 4096  # weight elements hashed per layer: enough to tell models apart, cheap on a 14B model


def weight_fingerprint(w: torch.Tensor) -> str:
    """A short hash of a weight's shape, and of up to 4096 evenly spaced elements (as fp32 bytes).

    Sampling keeps fingerprinting a full-size model to milliseconds; any re-initialisation, fine-tune or a
    different checkpoint changes the sampled values. The hash is of values, so it is the same on CPU and GPU.
    """
    flat = w.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    sample = flat[::step][:_SAMPLE].to(device="cpu", dtype=torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(w.shape)).encode())
    h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(layers: dict[str, str]) -> str:
    """The fingerprint of a set of layers: a hash of the sorted (name, weight fingerprint) pairs."""
    h = hashlib.sha256()
    for name in sorted(layers):
        h.update(f"{name}={layers[name]};".encode())
    return h.hexdigest()[:16]


@dataclass
class LayerStats:
    absmax: torch.Tensor  # [K] fp32
    tokens: int = 0
    xtx: torch.Tensor | None = None  # [K, K] fp64 running sum of XᵀX

    def update(self, x: torch.Tensor, hessian: bool) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1])
        if x2.shape[0] == 0:
            return
        x2f = x2.float()
        self.absmax = torch.maximum(self.absmax, x2f.abs().amax(0).nan_to_num(0.0).cpu())
        self.tokens += x2.shape[0]
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

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.weights)

    def check(self, name: str, w: torch.Tensor) -> None:
        """Raise if ``w`` is not the weight layer ``name`` had when this calibration was made."""
        want = self.weights.get(name)
        if want is None:
            return
        from .runtime.free import fingerprint_of
        got = fingerprint_of(w)  # a weight released by free_weights: the fingerprint taken before release
        if got != want:
            raise ValueError(
                f"dvdquant option artifact: calibration {self.meta.get('path', '(in memory)')} was made for a "
                f"different model: layer {name!r} has weight fingerprint {got}, the artifact expects {want}. "
                "Calibrate this model (dvdq_compile.calibrate) or pass the artifact made for it.")

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and ``path`` + ``.json`` (manifest). Returns the safetensors path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, layers = {}, {}
        for name, st in self.stats.items():
            tensors[f"{name}::absmax"] = st.absmax.contiguous()
            if st.xtx is not None:
                tensors[f"{name}::xtx"] = st.xtx.contiguous()
            layers[name] = {"tokens": st.tokens, "weight": self.weights.get(name), "hessian": st.xtx is not None}
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "layers": layers,
                    "meta": {k: v for k, v in self.meta.items() if k != "path"}}
        save_file(tensors, str(path), metadata={"manifest": json.dumps(manifest)})
        Path(str(path) + ".json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dvdquant option artifact: no calibration file at {path}")
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("manifest")
            if raw is None:
                raise ValueError(f"dvdquant option artifact: {path} is not a dvdq calibration (no manifest)")
            manifest = json.loads(raw)
            if manifest.get("format") != FORMAT:
                raise ValueError(f"dvdquant option artifact: {path} has format {manifest.get('format')!r}, "
                                 f"expected {FORMAT!r}")
            stats, weights = {}, {}
            for name, info in manifest["layers"].items():
                xtx = f.get_tensor(f"{name}::xtx") if info.get("hessian") else None
                stats[name] = LayerStats(f.get_tensor(f"{name}::absmax"), int(info["tokens"]), xtx)
                if info.get("weight"):
                    weights[name] = info["weight"]
        cal = cls(stats, weights, dict(manifest.get("meta", {}), path=str(path)))
        if cal.fingerprint != manifest["fingerprint"]:
            raise ValueError(f"dvdquant option artifact: {path} is corrupt (manifest fingerprint "
                             f"{manifest['fingerprint']} != {cal.fingerprint} recomputed from its layers)")
        return cal


def as_calibration(artifact) -> Calibration:
    """The ``artifact`` option as a Calibration (a path is loaded once per call site; cheap for small models)."""
    if isinstance(artifact, Calibration):
        return artifact
    if isinstance(artifact, (str, Path)):
        return Calibration.load(artifact)
    raise TypeError(f"dvdquant option artifact must be a path or a dvdq_compile.Calibration, got {type(artifact)}")


@torch.no_grad()
def calibrate(model: torch.nn.Module, run_fn: Callable[[torch.nn.Module], object], *, hessian: bool = False,
              layers: Callable[[str, torch.nn.Linear], bool] | None = None, meta: dict | None = None) -> Calibration:
    """Run ``run_fn(model)`` eagerly and record per-``nn.Linear`` input statistics.

    Args:
        model: the (uncompiled) model; a ``torch.compile`` wrapper is unwrapped.
        run_fn: calls the model on the calibration inputs, e.g. ``lambda m: sample(m, [1, 2], steps=8)``.
        hessian: also accumulate ``XᵀX`` (GPTQ).
        layers: optional filter ``(name, module) -> bool``; default: every ``nn.Linear``.
        meta: extra JSON-able facts stored in the manifest (data, seeds, steps).
    """
    model = getattr(model, "_orig_mod", model)
    stats: dict[str, LayerStats] = {}
    weights: dict[str, str] = {}
    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or (layers is not None and not layers(name, mod)):
            continue
        weights[name] = weight_fingerprint(mod.weight)

        def hook(_mod, args, name=name, k=mod.in_features):
            st = stats.get(name)
            if st is None:
                st = stats[name] = LayerStats(torch.zeros(k, dtype=torch.float32))
            st.update(args[0], hessian)

        handles.append(mod.register_forward_pre_hook(hook))
    if not handles:
        raise ValueError("calibrate: the model has no nn.Linear layers (after the `layers` filter)")
    t0 = time.perf_counter()
    try:
        run_fn(model)
    finally:
        for h in handles:
            h.remove()
    if not stats:
        raise ValueError("calibrate: run_fn did not call any nn.Linear of the model")
    info = dict(meta or {})
    info.update(seconds=round(time.perf_counter() - t0, 3), hessian=hessian)
    return Calibration(stats, {k: v for k, v in weights.items() if k in stats}, info)
