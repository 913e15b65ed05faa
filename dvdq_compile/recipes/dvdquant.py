"""Recipe ``dvdquant`` (the default): DVD-Quant, data-free (docs/algorithms.md §1-§3).

BGR weights on block-Hadamard-rotated W, ARQ activations (online rotation, per-(token, group) scales), and δ-guided
A4/A8 switching per denoising step (two compiled variants, ``runtime/delta.py``).
"""
from ..config import register_recipe
from .base import Recipe


class DVDQuant(Recipe):
    name = "dvdquant"
    summary = ("DVD-Quant: BGR weights on Hadamard-rotated W, ARQ per-(token, group) activations, delta-guided A4/A8 "
               "switching (default)")
    defaults = {"weight_method": "bgr", "rotate": True, "act_scale": "group", "act_bits": "auto"}


register_recipe(DVDQuant())
