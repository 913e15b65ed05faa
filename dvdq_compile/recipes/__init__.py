"""Recipes: small declarative objects that set QuantConfig defaults (DESIGN §7).

A recipe says how weights are quantized, how activations are scaled and which kernels run. Users can still
override any option on top of a recipe. Calibrated recipes take an artifact (``options={"artifact": ...}``, made
by ``dvdq_compile.calibrate``): ``smoothquant``; ``svdquant_gptq_ts`` (artifact per expert from
``dvdq_compile.calibrate_svdquant_ts``, see ``recipes/svdquant_gptq_ts.py``); ``qvdit`` (artifact per expert from
``python -m dvdq_compile.qvdit.train``, see ``dvdq_compile/qvdit/``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import OptionError


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    options: dict = field(default_factory=dict)

    def defaults(self) -> dict:
        return dict(self.options)


_RECIPES = {r.name: r for r in (
    Recipe("dvdquant", "DVD-Quant: BGR weights on Hadamard-rotated W, ARQ per-(token, group) activations, "
                       "delta-guided A4/A8 switching (default)",
           {"weight_method": "bgr", "rotate": True, "act_scale": "group", "act_bits": "auto"}),
    Recipe("minmax", "MinMax RTN: per-row asymmetric MinMax weights, per-token activations, no rotation",
           {"weight_method": "minmax", "rotate": False, "act_scale": "token", "act_bits": 8}),
    Recipe("quarot", "QuaRot-style: block-Hadamard rotation + MinMax (RTN) weights + per-token activations",
           {"weight_method": "minmax", "rotate": True, "act_scale": "token", "act_bits": 8}),
    Recipe("smoothquant", "SmoothQuant: calibrated per-channel smoothing (needs options['artifact']) + MinMax "
                          "weights + per-token activations, no rotation",
           {"weight_method": "minmax", "rotate": False, "act_scale": "token", "act_bits": 8, "smooth": True}),
    Recipe("svdquant_gptq_ts", "SVDQuant (smoothing + 16-bit rank-32 branch) + GPTQ 4-bit residual + per-timestep-bin "
                               "activation clip ratios, per expert (needs options['artifact'] from "
                               "dvdq_compile.calibrate_svdquant_ts), W4A4 per-(token, 64) activations",
           {"weight_method": "minmax", "rotate": False, "act_scale": "group", "group": 64, "act_bits": 4,
            "svdquant": True}),
    Recipe("qvdit", "Q-VDiT: TQE (learned weight offset + rank-1 correction) distilled with TMD; MinMax W3 weights, "
                    "per-token A6 activations, per-layer bits from the artifact (faithful: MLP W8A8; needs "
                    "options['artifact'] from python -m dvdq_compile.qvdit.train)",
           {"weight_method": "minmax", "rotate": False, "act_scale": "token", "weight_bits": 3, "act_bits": 6,
            "qvdit": True}),
    Recipe("bgr_only", "ablation: BGR weights without rotation, per-token activations",
           {"weight_method": "bgr", "rotate": False, "act_scale": "token", "act_bits": 8}),
    Recipe("arq_only", "ablation: rotation + per-(token, group) activations with MinMax weights",
           {"weight_method": "minmax", "rotate": True, "act_scale": "group", "act_bits": 8}),
)}


def names() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    try:
        return _RECIPES[name]
    except KeyError:
        raise OptionError(f"dvdquant option recipe={name!r} is not allowed; expected one of {names()}") from None
