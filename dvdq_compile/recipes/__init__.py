"""Recipes: each quantization method is one module here that defines and registers a ``base.Recipe``.

Importing the package imports every module in it, so adding a method is adding a file (``recipes/base.py`` says
what a recipe owns). Data-free: ``dvdquant`` (default), ``minmax``, ``quarot``, the ablations ``bgr_only`` and
``arq_only``; calibrated or trained: ``smoothquant``, ``svdquant_gptq_ts``, ``qvdit``.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..config import recipe_for, recipe_names
from ..passes.plan import Products
from .base import Option, Recipe

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Option", "Products", "Recipe", "recipe_for", "recipe_names"]
