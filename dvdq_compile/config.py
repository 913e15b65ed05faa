"""QuantConfig: every backend option, its default and its validation; and the recipe registry.

``torch.compile(model, backend="dvdquant", options={...})`` builds one with ``QuantConfig.from_options``: the
recipe's defaults, then the options given. An unknown or ill-typed option raises ``OptionError`` (a
``ValueError``) naming the option and what is allowed.

Options that only one recipe reads (``smooth_alpha`` for ``smoothquant``) are declared by that recipe and live in
``QuantConfig.recipe_options``; a recipe registers itself here with :func:`register_recipe` (see
``recipes/base.py``), so this module knows no recipe and no artifact class.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import OptionError
from .quant.act import ACT_BITS
from .quant.hadamard import NO_SIGNS
from .quant.qweight import WEIGHT_BITS, WEIGHT_METHODS, WeightSpec
from .runtime.step_cache import ALLOWED as CACHE_ALLOWED
from .runtime.step_cache import CachePolicy

GROUPS = (64, 128, 256)
ACT_SCALES = ("group", "token", "channel")
FUSE_NORM = ("auto", "on", "off")
KERNELS = ("auto", "triton", "reference")
LOWERINGS = ("inductor", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# The block lists of every diffusers video transformer (tests/models/catalog): `blocks` (Wan, SkyReels, Helios,
# ...), `*transformer_blocks` (transformer_blocks, single_/temporal_/text_/visual_/audio_text_transformer_blocks),
# `vace_blocks` (WanVACE), `refiner_blocks` (HunyuanVideo's text token refiner), `double_blocks` (JoyImage) and
# `face_adapter` (WanAnimate's cross-attention layers between blocks).
DEFAULT_BLOCK_PATTERN = (r"(^|\.)([a-z0-9_]*transformer_blocks|blocks|vace_blocks|refiner_blocks|double_blocks|"
                         r"face_adapter)\.\d+(\.|$)")
DEFAULT_MODULATION_PATTERN = r"(^|\.)(norm[^.]*|[^.]*modulation[^.]*|adaln[^.]*)\.[^.]+$"

# What each option accepts, for error messages and the README option table.
ALLOWED: dict[str, str] = {
    "recipe": "a registered recipe name (dvdq_compile.config.recipe_names())",
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
    "mode": f"None or one of {COMPILE_MODES}: the torch.compile mode of the Inductor lowering ('reduce-overhead': CUDA "
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
    "artifact": "None, or what the recipe reads (a calibration, an artifact, a path to one, or a list of them: one "
                "per model sharing the compiled graph, matched by weight fingerprint); see the recipe",
    "fuse_norm": f"one of {FUSE_NORM}; 'auto' = on with Triton kernels on CUDA: quantize an activation made by layer norm "
                 "-> modulation -> cast inside that norm's kernel when only quantized linears read it",
    "fuse_gelu": f"one of {FUSE_NORM}; 'auto' = on with Triton kernels on CUDA: quantize the FFN-down's input in the "
                 "FFN-up GEMM's epilogue (GELU -> rotate -> quantize) when the FFN-up is a quantized linear read only "
                 "by the GELU",
    "fuse_attn": f"one of {FUSE_NORM}; default 'off' (its speed is not measured yet); 'on' quantizes to_out's input in "
                 "the epilogue of the project's attention kernel, which then replaces the graph's scaled-dot-product "
                 "attention; 'auto' = on with Triton kernels on CUDA",
    "free_weights": "bool: release the 16-bit storage of quantized weights after their first compiled call "
                    "(eager use then raises; dvdq_compile.restore_weights brings them back)",
    **CACHE_ALLOWED,
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
    free_weights: bool = False
    fuse_norm: str = "auto"
    fuse_gelu: str = "auto"
    fuse_attn: str = "off"
    # step caching (runtime/step_cache.py): reuse the model's prediction on steps the rule says change little
    cache: str = "off"
    cache_threshold: float = 0.1
    cache_max_skips: int = 2
    cache_warmup: int = 2
    cache_steps: int | None = None
    cache_last: int = 1
    cache_reuse: str = "auto"
    cache_coefficients: tuple = (1.0, 0.0)
    cache_schedule: str = ""
    # The options the recipe declares for itself, as sorted (name, value) pairs (read with ``option``).
    recipe_options: tuple = ()
    # Set by recipes, not by users: the modulation (adaLN) name pattern.
    modulation_pattern: str = field(default=DEFAULT_MODULATION_PATTERN, repr=False)

    @classmethod
    def from_options(cls, options: dict | None = None) -> QuantConfig:
        options = dict(options or {})
        recipe_name = options.get("recipe", "dvdquant")
        if not isinstance(recipe_name, str):
            _fail("recipe", recipe_name)
        recipe = recipe_for(recipe_name)
        valid = [f.name for f in fields(cls) if f.name in ALLOWED]
        own = dict(recipe.options)
        unknown = sorted(set(options) - set(valid) - set(own))
        if unknown:
            lines = "\n".join([f"  {k}: {ALLOWED[k]}" for k in valid] +
                              [f"  {k}: {o.allowed} (recipe {recipe_name!r})" for k, o in own.items()])
            others = sorted({k for r in _RECIPES.values() for k in r.options} - set(own))
            hint = f" (recipe-specific options of other recipes: {others})" if set(unknown) & set(others) else ""
            raise OptionError(f"unknown dvdquant option(s) {unknown}{hint}; valid options are:\n{lines}")
        base = dict(recipe.defaults)
        base.update({k: v for k, v in options.items() if k not in own})
        for k in ("exclude", "include", "weight_only"):
            v = base.get(k, ())
            if isinstance(v, str):  # iterating a string would give one pattern per character
                raise OptionError(f"dvdquant option {k}={v!r} is a string; expected {ALLOWED[k]}, e.g. "
                                  f"{{'{k}': [{v!r}]}}")
            if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
                _fail(k, v)
            base[k] = tuple(v)
        if isinstance(base.get("cache_coefficients"), list):
            base["cache_coefficients"] = tuple(base["cache_coefficients"])
        if isinstance(base.get("artifact"), list):
            base["artifact"] = tuple(base["artifact"])  # QuantConfig is hashed
        ropts = {k: o.default for k, o in own.items()}
        for k, v in options.items():
            if k in own:
                if not own[k].ok(v):
                    raise OptionError(f"dvdquant option {k}={v!r} is not allowed; expected {own[k].allowed}")
                ropts[k] = v
        base["recipe_options"] = tuple(sorted(ropts.items()))
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
        if self.mode is not None and self.mode not in COMPILE_MODES:
            _fail("mode", self.mode)
        if self.mode not in (None, "default") and self.lowering != "inductor":
            raise OptionError(f"dvdquant option mode={self.mode!r} is an Inductor mode; it needs "
                             f"lowering='inductor' (got lowering={self.lowering!r})")
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            _fail("min_tokens", self.min_tokens)
        if not isinstance(self.block_pattern, str):
            _fail("block_pattern", self.block_pattern)
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
        if not isinstance(self.free_weights, bool):
            _fail("free_weights", self.free_weights)
        if self.fuse_norm not in FUSE_NORM:
            _fail("fuse_norm", self.fuse_norm)
        if self.fuse_gelu not in FUSE_NORM:
            _fail("fuse_gelu", self.fuse_gelu)
        if self.fuse_attn not in FUSE_NORM:
            _fail("fuse_attn", self.fuse_attn)
        if self.act_scale == "channel" and self.kernels == "triton":
            raise OptionError("dvdquant option act_scale='channel' is a fake-quant ablation that runs on the "
                              "reference path only; it cannot be combined with kernels='triton'")
        self.cache_policy  # validates the cache options
        recipe_for(self.recipe).validate(self)

    # Derived ------------------------------------------------------------------------------------------------
    def option(self, name: str):
        """The value of recipe option ``name`` (declared by the recipe: ``Recipe.options``)."""
        for k, v in self.recipe_options:
            if k == name:
                return v
        raise KeyError(f"recipe {self.recipe!r} has no option {name!r}")

    @property
    def artifacts(self) -> tuple:
        """The ``artifact`` option as a tuple (empty for None)."""
        if self.artifact is None:
            return ()
        return self.artifact if isinstance(self.artifact, tuple) else (self.artifact,)

    @property
    def cache_policy(self) -> CachePolicy:
        return CachePolicy(rule=self.cache, threshold=self.cache_threshold, max_skips=self.cache_max_skips,
                           warmup=self.cache_warmup, steps=self.cache_steps, last=self.cache_last,
                           reuse=self.cache_reuse, coefficients=self.cache_coefficients,
                           schedule=self.cache_schedule)

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


# -- the recipe registry (recipes/base.py registers every recipe module's recipe here) ---------------------------
_RECIPES: dict[str, Any] = {}  # name -> recipes.base.Recipe


def register_recipe(recipe):
    """Make ``recipe`` available as ``options={"recipe": recipe.name}``; returns it (a decorator-friendly call)."""
    if recipe.name in _RECIPES and _RECIPES[recipe.name] is not recipe:
        raise ValueError(f"dvdquant recipe {recipe.name!r} is registered twice")
    _RECIPES[recipe.name] = recipe
    return recipe


def recipe_names() -> list[str]:
    return sorted(_RECIPES)


def recipe_for(name: str):
    try:
        return _RECIPES[name]
    except KeyError:
        raise OptionError(f"dvdquant option recipe={name!r} is not allowed; expected one of {recipe_names()}") \
            from None
