"""Recipe ``minmax``: round-to-nearest baseline (docs/algorithms.md §4): per-row asymmetric MinMax weights,
symmetric per-token activations, no rotation, A8."""
from ..config import register_recipe
from .base import Recipe


class MinMax(Recipe):
    name = "minmax"
    summary = "MinMax RTN: per-row asymmetric MinMax weights, per-token activations, no rotation"
    defaults = {"weight_method": "minmax", "rotate": False, "act_scale": "token", "act_bits": 8}


register_recipe(MinMax())
