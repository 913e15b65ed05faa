"""The ablations of DVD-Quant (docs/algorithms.md §9): each of its two data-free parts alone.

``bgr_only``: BGR weights without rotation, per-token activations. ``arq_only``: rotation and per-(token, group)
activations with MinMax weights.
"""
from ..config import register_recipe
from .base import Recipe


class BGROnly(Recipe):
    name = "bgr_only"
    summary = "ablation: BGR weights without rotation, per-token activations"
    defaults = {"weight_method": "bgr", "rotate": False, "act_scale": "token", "act_bits": 8}


class ARQOnly(Recipe):
    name = "arq_only"
    summary = "ablation: rotation + per-(token, group) activations with MinMax weights"
    defaults = {"weight_method": "minmax", "rotate": True, "act_scale": "group", "act_bits": 8}


register_recipe(BGROnly())
register_recipe(ARQOnly())
