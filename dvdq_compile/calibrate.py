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

Timestep bins (``timestep_bins=``, for recipes whose activation handling depends on the denoising step): the
current timestep is read from each top-level model call (its ``timestep`` argument, by keyword or position) and
every layer also keeps ``absmax`` and token counts per bin; :class:`TimestepBins` maps a timestep to its bin,
the same way the compiled graph does (``torch.bucketize(t, edges, right=True)``). Recipes can pass ``observers``
(called with ``(layer name, input, bin)`` from the same hooks) to accumulate their own bounded statistics, and
store their products in ``Calibration.extras`` (saved with the artifact). ``Calibration.groups`` lists the layers
seen reading the same input tensor (q/k/v), which share one quantized activation in the compiled graph.
"""
from __future__ import annotations

import bisect
import hashlib
import inspect
import itertools
import json
import math
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


def check_fingerprint(weights: dict[str, str], name: str, w: torch.Tensor, what: str, fix: str) -> None:
    """Raise if ``w`` is not the weight layer ``name`` had when the artifact was made. ``weights``: layer ->
    fingerprint (a layer not listed is not checked); ``what``: "<artifact> was made" (or "was trained"), the start
    of the message; ``fix``: what to do. A weight released by free_weights is compared by the fingerprint taken
    before release."""
    want = weights.get(name)
    if want is None:
        return
    from .runtime.free import fingerprint_of
    got = fingerprint_of(w)
    if got != want:
        raise ValueError(f"{what} for a different model: layer {name!r} has weight fingerprint {got}, the "
                         f"artifact expects {want}. {fix}")


def write_artifact(path: str | Path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """An artifact file: safetensors with the JSON manifest in its metadata, plus a readable ``path.json`` copy."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"manifest": json.dumps(manifest)})
    Path(str(path) + ".json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(f, path: Path, fmt: str, what: str, kind: str) -> dict:
    """The manifest of an open safetensors artifact ``f``, checked to be of format ``fmt``."""
    raw = (f.metadata() or {}).get("manifest")
    if raw is None:
        raise ValueError(f"{what}: {path} is not a {kind} (no manifest)")
    manifest = json.loads(raw)
    if manifest.get("format") != fmt:
        raise ValueError(f"{what}: {path} has format {manifest.get('format')!r}, expected {fmt!r}")
    return manifest


def model_fingerprint(layers: dict[str, str]) -> str:
    """The fingerprint of a set of layers: a hash of the sorted (name, weight fingerprint) pairs."""
    h = hashlib.sha256()
    for name in sorted(layers):
        h.update(f"{name}={layers[name]};".encode())
    return h.hexdigest()[:16]


NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class TimestepBins:
    """Timestep bins by their ascending inner edges: bin i holds ``edges[i-1] <= t < edges[i]`` (``len(edges)+1``
    bins; no edges = one bin). ``TimestepBins.uniform(n)`` splits ``[0, 1000)`` into n equal bins."""
    edges: tuple = ()

    def __post_init__(self):
        e = tuple(float(v) for v in self.edges)
        if any(not math.isfinite(v) for v in e) or any(b <= a for a, b in itertools.pairwise(e)):
            raise ValueError(f"timestep_bins edges must be finite and strictly increasing, got {self.edges}")
        object.__setattr__(self, "edges", e)

    @classmethod
    def uniform(cls, n: int, t_max: float = NUM_TRAIN_TIMESTEPS) -> TimestepBins:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"timestep_bins must be an int >= 1 or a sequence of edges, got {n!r}")
        return cls(tuple(t_max * i / n for i in range(1, n)))

    @classmethod
    def of(cls, spec) -> TimestepBins:
        """From None (one bin), an int (uniform bins) or a sequence of edges."""
        if spec is None:
            return cls()
        if isinstance(spec, TimestepBins):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            return cls.uniform(spec)
        if isinstance(spec, (list, tuple)):
            return cls(tuple(spec))
        raise ValueError(f"timestep_bins must be None, an int >= 1 or a sequence of edges, got {spec!r}")

    @property
    def n(self) -> int:
        return len(self.edges) + 1

    def index(self, t: float) -> int:
        return bisect.bisect_right(self.edges, float(t))


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
    extras: dict = field(default_factory=dict)  # recipe products: name -> tensor (saved as "extra::name")

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.weights)

    def check(self, name: str, w: torch.Tensor) -> None:
        """Raise if ``w`` is not the weight layer ``name`` had when this calibration was made."""
        check_fingerprint(self.weights, name, w,
                          f"dvdquant option artifact: calibration {self.meta.get('path', '(in memory)')} was made",
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
        for key, t in self.extras.items():
            tensors[f"extra::{key}"] = t.detach().cpu().contiguous()
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "layers": layers,
                    "meta": {k: v for k, v in self.meta.items() if k != "path"},
                    "bins": list(self.bins.edges), "groups": self.groups, "extras": sorted(self.extras)}
        return write_artifact(path, tensors, manifest)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dvdquant option artifact: no calibration file at {path}")
        with safe_open(str(path), framework="pt") as f:
            manifest = read_manifest(f, path, FORMAT, "dvdquant option artifact", "dvdq calibration")
            stats, weights = {}, {}
            for name, info in manifest["layers"].items():
                xtx = f.get_tensor(f"{name}::xtx") if info.get("hessian") else None
                tb = info.get("tokens_bins")
                ab = f.get_tensor(f"{name}::absmax_bins") if tb is not None else None
                stats[name] = LayerStats(f.get_tensor(f"{name}::absmax"), int(info["tokens"]), xtx, ab, tb)
                if info.get("weight"):
                    weights[name] = info["weight"]
            extras = {k: f.get_tensor(f"extra::{k}") for k in manifest.get("extras", [])}
        cal = cls(stats, weights, dict(manifest.get("meta", {}), path=str(path)),
                  TimestepBins(tuple(manifest.get("bins", ()))), [list(g) for g in manifest.get("groups", [])],
                  extras)
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


def _timestep_of(model: torch.nn.Module):
    """A function (args, kwargs) -> the ``timestep`` argument of ``model.forward`` (keyword or positional)."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    pos = params.index("timestep") if "timestep" in params else None

    def get(args, kwargs):
        if "timestep" in kwargs:
            return kwargs["timestep"]
        if pos is not None and pos < len(args):
            return args[pos]
        raise ValueError("calibrate(timestep_bins=...): the model was called without a `timestep` argument "
                         f"(forward parameters: {params}); timestep bins need it")
    return get


def _first_value(t) -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            raise ValueError("calibrate(timestep_bins=...): empty timestep tensor")
        return float(t.reshape(-1)[0])
    return float(t)


@torch.no_grad()
def calibrate(model: torch.nn.Module, run_fn: Callable[[torch.nn.Module], object], *, hessian: bool = False,
              layers: Callable[[str, torch.nn.Linear], bool] | None = None, meta: dict | None = None,
              timestep_bins=None, observers: Callable[[str, torch.Tensor, int], None] | None = None,
              progress: bool = False) -> Calibration:
    """Run ``run_fn(model)`` eagerly and record per-``nn.Linear`` input statistics.

    Args:
        model: the (uncompiled) model; a ``torch.compile`` wrapper is unwrapped.
        run_fn: calls the model on the calibration inputs, e.g. ``lambda m: sample(m, [1, 2], steps=8)``.
        hessian: also accumulate ``XᵀX`` (GPTQ).
        layers: optional filter ``(name, module) -> bool``; default: every ``nn.Linear``.
        meta: extra JSON-able facts stored in the manifest (data, seeds, steps).
        timestep_bins: None (no per-bin statistics), an int n (n uniform bins over [0, 1000)), a sequence of bin
            edges or a :class:`TimestepBins`: also keep per-bin ``absmax``/token counts, the bin read from each
            model call's ``timestep``. A batch's first timestep decides its bin (pipelines pass equal values).
        observers: optional ``fn(layer name, input, bin)`` called for every recorded layer input (bin 0 without
            bins): recipes accumulate their own running statistics with it.
        progress: a progress bar counting model calls.
    """
    model = getattr(model, "_orig_mod", model)
    bins = TimestepBins.of(timestep_bins) if timestep_bins is not None else None
    stats: dict[str, LayerStats] = {}
    weights: dict[str, str] = {}
    handles = []
    state = {"bin": None, "live": {}}  # live: id(input) -> (input, names) within one model call
    groups: dict[str, set] = {}

    def link(name: str, x: torch.Tensor) -> None:
        entry = state["live"].setdefault(id(x), (x, set()))  # the tensor is kept alive: its id cannot be reused
        entry[1].add(name)

    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or (layers is not None and not layers(name, mod)):
            continue
        weights[name] = weight_fingerprint(mod.weight)

        def hook(_mod, args, name=name, k=mod.in_features):
            st = stats.get(name)
            if st is None:
                st = stats[name] = LayerStats(torch.zeros(k, dtype=torch.float32))
            b = state["bin"]
            st.update(args[0], hessian, b, bins.n if bins is not None else 1)
            link(name, args[0])
            if observers is not None:
                observers(name, args[0], 0 if b is None else b)

        handles.append(mod.register_forward_pre_hook(hook))
    if not handles:
        raise ValueError("calibrate: the model has no nn.Linear layers (after the `layers` filter)")
    get_t = _timestep_of(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="dvdq calibrate", unit="call", leave=False)

    def enter(_mod, args, kwargs):
        state["live"].clear()
        if bins is not None:
            state["bin"] = bins.index(_first_value(get_t(args, kwargs)))

    def leave(_mod, _args, _kwargs, _out):
        for _, names in state["live"].values():
            merged = set(names)
            for n in names:
                merged |= groups.get(n, set())
            for n in merged:
                groups[n] = merged
        state["live"].clear()
        if bar is not None:
            bar.update(1)

    handles.append(model.register_forward_pre_hook(enter, with_kwargs=True))
    handles.append(model.register_forward_hook(leave, with_kwargs=True))
    t0 = time.perf_counter()
    try:
        run_fn(model)
    finally:
        for h in handles:
            h.remove()
        state["live"].clear()
        if bar is not None:
            bar.close()
    if not stats:
        raise ValueError("calibrate: run_fn did not call any nn.Linear of the model")
    info = dict(meta or {})
    info.update(seconds=round(time.perf_counter() - t0, 3), hessian=hessian)
    seen, group_list = set(), []
    for name in stats:
        if name not in seen:
            g = sorted(groups.get(name, {name}))
            seen.update(g)
            group_list.append(g)
    return Calibration(stats, {k: v for k, v in weights.items() if k in stats}, info,
                       bins if bins is not None else TimestepBins(), group_list)
