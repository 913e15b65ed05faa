"""QuantConfig: every backend option, its default and its validation.

``torch.compile(model, backend="dvdquant", options={...})`` builds one with ``QuantConfig.from_options``; an unknown
or ill-typed option raises ``ValueError`` naming the option and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import OptionError
from .quant.act import ACT_BITS
from .quant.hadamard import NO_SIGNS
from .quant.qweight import WEIGHT_BITS, WEIGHT_METHODS, WeightSpec

GROUPS = (64, 128, 256)
ACT_SCALES = ("group", "token", "channel")
KERNELS = ("auto", "triton", "reference")
LOWERINGS = ("inductor", "eager")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# The block lists of every diffusers video transformer (tests/models/catalog): `blocks` (Wan, SkyReels, Helios,
# ...), `*transformer_blocks` (transformer_blocks, single_/temporal_/text_/visual_/audio_text_transformer_blocks),
# `vace_blocks` (WanVACE), `refiner_blocks` (HunyuanVideo's text token refiner), `double_blocks` (JoyImage) and
# `face_adapter` (WanAnimate's cross-attention layers between blocks).
DEFAULT_BLOCK_PATTERN = (r"(^|\.)([a-z0-9_]*transformer_blocks|blocks|vace_blocks|refiner_blocks|double_blocks|"
                         r"face_adapter)\.\d+(\.|$)")
DEFAULT_MODULATION_PATTERN = r"(^|\.)(norm[^.]*|[^.]*modulation[^.]*|adaln[^.]*)\.[^.]+$"

# What each option accepts, for error messages and the README option table.
ALLOWED: dict[str, str] = {
    "recipe": "a registered recipe name (see dvdq_compile.recipes.names())",
    "weight_bits": f"one of {WEIGHT_BITS}",
    "act_bits": f"'auto' (delta-guided switch between act_bits_low and act_bits_high), 16 (weight-only), "
                f"or one of {ACT_BITS}",
    "act_bits_low": f"one of {ACT_BITS}, below act_bits_high",
    "act_bits_high": f"one of {ACT_BITS}, above act_bits_low",
    "delta": "a finite float > 0 (threshold on the accumulated relative L1 change of the model output)",
    "delta_mode": "'switch' (delta-GBS), 'low' or 'high' (force one variant of a switching compile)",
    "min_high_steps": "an int >= 1: denoising steps that always run act_bits_high at the start of a sampling run",
    "group": f"one of {GROUPS}: Hadamard block and activation scale group along K",
    "rotate": "bool: block-Hadamard rotation of weights (offline) and activations (online)",
    "sign_seed": "None or an int: seeded random +-1 diagonal before the Hadamard",
    "weight_method": f"one of {WEIGHT_METHODS}",
    "weight_group": "0 (one scale per output row) or a positive multiple of 'group' dividing K",
    "act_scale": f"one of {ACT_SCALES}: per (token, K-group), per token, or the paper-literal per-channel "
                 "fake-quant (reference kernels only)",
    "kernels": f"one of {KERNELS}",
    "lowering": f"one of {LOWERINGS}",
    "mode": f"None or one of {MODES}: the torch.compile mode of the Inductor lowering ('reduce-overhead': CUDA "
            "graphs); torch.compile refuses mode= next to options=, so with options pass it here",
    "exclude": "a list of fnmatch patterns of layer names kept in full precision",
    "include": "a list of fnmatch patterns of layer names quantized even outside transformer blocks",
    "weight_only": "a list of fnmatch patterns of layer names quantized with 16-bit activations",
    "min_tokens": "an int >= 0: linears whose static token count M is at most this run weight-only",
    "block_pattern": "a regular expression matching the names of transformer-block layers",
    "bgr_n": "an int >= 2: BGR candidate grid (range/n steps)",
    "bgr_max_shrink": "a float in [0, 1): largest total fraction of a row's range BGR clips",
    "bgr_max_iter": "an int >= 1: BGR refinement iteration cap",
    "progress": "bool: progress bar while weights are quantized",
    "artifact": "None, or a dvdq_compile.Calibration / the path of one saved by Calibration.save "
                "(calibrated recipes: smoothquant, svdquant_gptq_ts), or a qvdit artifact / its path (recipe qvdit), "
                "or (svdquant, qvdit) a list of them, one per model sharing the compiled graph (Wan 2.2 experts), "
                "matched by weight fingerprint",
    "smooth": "bool: SmoothQuant smoothing of the quantized linears from the artifact's activation ranges "
              "(needs 'artifact')",
    "smooth_alpha": "a float in [0, 1]: SmoothQuant migration strength alpha",
    "free_weights": "bool: release the 16-bit storage of quantized weights after their first compiled call "
                    "(eager use then raises; dvdq_compile.restore_weights brings them back)",
    "svdquant": "bool: apply the artifact's per-layer extras (smoothing, 16-bit low-rank branch, precomputed "
                "GPTQ residual, per-timestep-bin clip ratios; made by dvdq_compile.calibrate_svdquant_ts) to the "
                "layers it covers (needs 'artifact'; recipe svdquant_gptq_ts)",
    "qvdit": "bool: run the layers a Q-VDiT artifact covers with its learned estimator (weight offset folded into "
             "the codes at load, rank-1 branch on the quantized activation) at the artifact's per-layer bits "
             "(needs 'artifact' from python -m dvdq_compile.qvdit.train; recipe qvdit)",
}


def _fail(name: str, value: Any) -> None:
    raise OptionError(f"dvdquant option {name}={value!r} is not allowed; expected {ALLOWED[name]}")


@dataclass(frozen=True)
class QuantConfig:
    recipe: str = "dvdquant"
    weight_bits: int = 4
    act_bits: Any = "auto"
    act_bits_low: int = 4
    act_bits_high: int = 8
    delta: float = 0.09
    delta_mode: str = "switch"
    min_high_steps: int = 1
    group: int = 128
    rotate: bool = True
    sign_seed: int | None = None
    weight_method: str = "bgr"
    weight_group: int = 0
    act_scale: str = "group"
    kernels: str = "auto"
    lowering: str = "inductor"
    mode: str | None = None
    exclude: tuple = ()
    include: tuple = ()
    weight_only: tuple = ()
    min_tokens: int = 16
    block_pattern: str = DEFAULT_BLOCK_PATTERN
    bgr_n: int = 64
    bgr_max_shrink: float = 0.9
    bgr_max_iter: int = 64
    progress: bool = True
    artifact: Any = None
    smooth: bool = False
    smooth_alpha: float = 0.5
    free_weights: bool = False
    svdquant: bool = False
    qvdit: bool = False
    # Set by recipes, not by users: the modulation (adaLN) name pattern.
    modulation_pattern: str = field(default=DEFAULT_MODULATION_PATTERN, repr=False)

    @classmethod
    def from_options(cls, options: dict | None = None) -> QuantConfig:
        from .recipes import get_recipe

        options = dict(options or {})
        valid = [f.name for f in fields(cls) if f.name in ALLOWED]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            lines = "\n".join(f"  {k}: {ALLOWED[k]}" for k in valid)
            raise OptionError(f"unknown dvdquant option(s) {unknown}; valid options are:\n{lines}")
        recipe = options.get("recipe", "dvdquant")
        if not isinstance(recipe, str):
            _fail("recipe", recipe)
        base = get_recipe(recipe).defaults()
        base.update(options)
        for k in ("exclude", "include", "weight_only"):
            v = base.get(k, ())
            if isinstance(v, str):  # iterating a string would give one pattern per character
                raise OptionError(f"dvdquant option {k}={v!r} is a string; expected {ALLOWED[k]}, e.g. "
                                  f"{{'{k}': [{v!r}]}}")
            if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
                _fail(k, v)
            base[k] = tuple(v)
        if isinstance(base.get("artifact"), list):
            base["artifact"] = tuple(base["artifact"])  # QuantConfig is hashed
        cfg = cls(**base)
        cfg.validate()
        return cfg

    def replace(self, **kw) -> QuantConfig:
        cfg = dataclasses.replace(self, **kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.weight_bits) or self.weight_bits not in WEIGHT_BITS:
            _fail("weight_bits", self.weight_bits)
        if not (self.act_bits == "auto" or (is_int(self.act_bits) and (self.act_bits in ACT_BITS or
                                                                         self.act_bits == 16))):
            _fail("act_bits", self.act_bits)
        for k in ("act_bits_low", "act_bits_high"):
            if not is_int(getattr(self, k)) or getattr(self, k) not in ACT_BITS:
                _fail(k, getattr(self, k))
        if self.act_bits_low >= self.act_bits_high:
            raise OptionError(f"dvdquant options act_bits_low={self.act_bits_low} must be below "
                             f"act_bits_high={self.act_bits_high}")
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or \
                not math.isfinite(self.delta) or self.delta <= 0:
            _fail("delta", self.delta)
        if self.delta_mode not in ("switch", "low", "high"):
            _fail("delta_mode", self.delta_mode)
        if not is_int(self.min_high_steps) or self.min_high_steps < 1:
            _fail("min_high_steps", self.min_high_steps)
        if not is_int(self.group) or self.group not in GROUPS:
            _fail("group", self.group)
        if not isinstance(self.rotate, bool):
            _fail("rotate", self.rotate)
        if self.sign_seed is not None and not is_int(self.sign_seed):
            _fail("sign_seed", self.sign_seed)
        if self.weight_method not in WEIGHT_METHODS:
            _fail("weight_method", self.weight_method)
        if not is_int(self.weight_group) or self.weight_group < 0 or \
                (self.weight_group and self.weight_group % self.group):
            _fail("weight_group", self.weight_group)
        if self.act_scale not in ACT_SCALES:
            _fail("act_scale", self.act_scale)
        if self.kernels not in KERNELS:
            _fail("kernels", self.kernels)
        if self.lowering not in LOWERINGS:
            _fail("lowering", self.lowering)
        if self.mode is not None and self.mode not in MODES:
            _fail("mode", self.mode)
        if self.mode not in (None, "default") and self.lowering != "inductor":
            raise OptionError(f"dvdquant option mode={self.mode!r} is an Inductor mode; it needs "
                             f"lowering='inductor' (got lowering={self.lowering!r})")
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            _fail("min_tokens", self.min_tokens)
        if not isinstance(self.block_pattern, str):
            _fail("block_pattern", self.block_pattern)
        import re
        try:
            re.compile(self.block_pattern)
        except re.error as e:
            raise OptionError(f"dvdquant option block_pattern={self.block_pattern!r} is not a valid regular "
                             f"expression: {e}") from None
        if not is_int(self.bgr_n) or self.bgr_n < 2:
            _fail("bgr_n", self.bgr_n)
        if isinstance(self.bgr_max_shrink, bool) or not isinstance(self.bgr_max_shrink, (int, float)) or \
                not 0 <= self.bgr_max_shrink < 1:
            _fail("bgr_max_shrink", self.bgr_max_shrink)
        if not is_int(self.bgr_max_iter) or self.bgr_max_iter < 1:
            _fail("bgr_max_iter", self.bgr_max_iter)
        if not isinstance(self.progress, bool):
            _fail("progress", self.progress)
        from .calibrate import Calibration
        from .qvdit.artifact import QVDiTArtifact
        one = (str, os.PathLike, Calibration, QVDiTArtifact)
        if self.artifact is not None and not isinstance(self.artifact, one) and not (
                isinstance(self.artifact, tuple) and self.artifact and all(isinstance(a, one) for a in self.artifact)):
            _fail("artifact", self.artifact)
        if isinstance(self.artifact, tuple) and self.smooth:
            raise OptionError("dvdquant option smooth=True takes one artifact, not a list (SmoothQuant's factors are "
                             "graph constants; use recipe svdquant_gptq_ts for per-expert artifacts)")
        if not isinstance(self.svdquant, bool):
            _fail("svdquant", self.svdquant)
        if self.svdquant:
            if self.artifact is None:
                raise OptionError(f"dvdquant recipe {self.recipe!r} / option svdquant=True needs its artifact(s): "
                                 "pass options={'artifact': [dvdq_compile.calibrate_svdquant_ts(model, run_fn), ...]} "
                                 "(or saved paths), one per expert")
            if self.smooth or self.rotate or self.act_scale != "group":
                raise OptionError("dvdquant option svdquant=True needs smooth=False, rotate=False and "
                                 f"act_scale='group' (got smooth={self.smooth}, rotate={self.rotate}, "
                                 f"act_scale={self.act_scale!r}): the artifact's factors are for unrotated, "
                                 "per-(token, group) quantized activations")
        if not isinstance(self.qvdit, bool):
            _fail("qvdit", self.qvdit)
        if self.qvdit:
            if self.artifact is None:
                raise OptionError(f"dvdquant recipe {self.recipe!r} / option qvdit=True needs its artifact(s): pass "
                                 "options={'artifact': [path_expert_1, ...]} (python -m dvdq_compile.qvdit.train "
                                 "writes them), one per expert")
            if self.svdquant or self.smooth or self.rotate or self.act_scale != "token" or self.act_bits == "auto" \
                    or self.weight_method != "minmax":
                raise OptionError("dvdquant option qvdit=True needs svdquant=False, smooth=False, rotate=False, "
                                 "act_scale='token', weight_method='minmax' and fixed act_bits (got "
                                 f"svdquant={self.svdquant}, smooth={self.smooth}, rotate={self.rotate}, "
                                 f"act_scale={self.act_scale!r}, weight_method={self.weight_method!r}, "
                                 f"act_bits={self.act_bits!r}): the estimator was trained on unrotated MinMax "
                                 "weights and symmetric per-token activations at fixed bits")
        if not isinstance(self.smooth, bool):
            _fail("smooth", self.smooth)
        if isinstance(self.smooth_alpha, bool) or not isinstance(self.smooth_alpha, (int, float)) or \
                not 0 <= self.smooth_alpha <= 1:
            _fail("smooth_alpha", self.smooth_alpha)
        if not isinstance(self.free_weights, bool):
            _fail("free_weights", self.free_weights)
        if self.smooth and self.artifact is None:
            raise OptionError(f"dvdquant recipe {self.recipe!r} / option smooth=True needs calibration statistics: "
                             "pass options={'artifact': dvdq_compile.calibrate(model, run_fn)} (or the path of a "
                             "saved calibration)")
        if self.smooth and self.act_scale == "channel":
            raise OptionError("dvdquant option smooth=True cannot be combined with act_scale='channel' (the "
                             "per-channel fake-quant already scales every channel on its own)")
        if self.act_scale == "channel" and self.kernels == "triton":
            raise OptionError("dvdquant option act_scale='channel' is a fake-quant ablation that runs on the "
                             "reference path only; it cannot be combined with kernels='triton'")

    # Derived ------------------------------------------------------------------------------------------------
    @property
    def switching(self) -> bool:
        return self.act_bits == "auto"

    @property
    def act_variants(self) -> tuple[int, ...]:
        """Activation bit widths that get a compiled variant."""
        return (self.act_bits_low, self.act_bits_high) if self.switching else (self.act_bits,)

    @property
    def rotate_block(self) -> int:
        return self.group if self.rotate else 0

    @property
    def seed(self) -> int:
        return NO_SIGNS if self.sign_seed is None else self.sign_seed

    def weight_spec(self) -> WeightSpec:
        return WeightSpec(bits=self.weight_bits, method=self.weight_method, group=self.weight_group,
                          rotate=self.rotate_block, sign_seed=self.seed, bgr_n=self.bgr_n,
                          bgr_max_shrink=float(self.bgr_max_shrink), bgr_max_iter=self.bgr_max_iter)
