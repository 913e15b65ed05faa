"""Recipe ``quarot``: a QuaRot-style baseline (docs/algorithms.md §6): block-Hadamard rotation of weights and
activations, MinMax (RTN) weights, per-token activations, A8."""
from ..config import register_recipe
from .base import Recipe


class QuaRot(Recipe):
    name = "quarot"
    summary = "QuaRot-style: block-Hadamard rotation + MinMax (RTN) weights + per-token activations"
    defaults = {"weight_method": "minmax", "rotate": True, "act_scale": "token", "act_bits": 8}


register_recipe(QuaRot())
