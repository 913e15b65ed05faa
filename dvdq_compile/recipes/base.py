"""What a recipe is: one quantization method as a plugin of the backend.

A recipe module defines one :class:`Recipe` subclass and registers an instance (``config.register_recipe``). It owns:

- ``defaults``: the values of generic options it sets (weight method, rotation, activation scaling, bits);
- ``options``: options only it reads (``smoothquant``'s ``smooth_alpha``), validated here, read with
  ``cfg.option(name)``;
- ``validate(cfg)``: the option combinations it accepts;
- ``load_artifacts(cfg)``: the ``artifact`` option as objects that implement ``artifacts.Artifact`` (loaded from
  paths, checked against the options), or an error when the recipe takes none and one is given;
- ``plan(ctx)``: its overrides of the layer plan (``passes/plan.py``): per-layer bits and decisions from an
  artifact, smoothing, extra graph inputs.

Adding a method means adding one file to ``recipes/``: the package imports every module in it. Nothing in the
options layer, the passes or the backend names a recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import OptionError
from ..passes.plan import Products


@dataclass(frozen=True)
class Option:
    """An option one recipe declares: its default, what it accepts (for messages), and the check."""
    default: Any
    allowed: str
    check: Callable[[Any], bool]

    def ok(self, value) -> bool:
        return bool(self.check(value))


class Recipe:
    name: str = ""
    summary: str = ""
    defaults: Mapping[str, Any] = {}
    options: Mapping[str, Option] = {}
    takes_artifact: bool = False  # whether the ``artifact`` option means something to this recipe
    artifact_types: tuple = ()  # the in-memory artifact classes it accepts (paths are always accepted)

    def validate(self, cfg) -> None:
        if not self.takes_artifact:
            if cfg.artifact is not None:
                raise OptionError(f"dvdquant recipe {self.name!r} is data-free and takes no artifact (got "
                                  f"{type(cfg.artifact).__name__}); the calibrated recipes are smoothquant, "
                                  "svdquant_gptq_ts and qvdit")
            return
        if cfg.artifact is None:
            raise OptionError(f"dvdquant recipe {self.name!r} needs {self.artifact_help}")
        for a in cfg.artifacts:
            if not (isinstance(a, (str, *self.artifact_types)) or hasattr(a, "__fspath__")):
                names = ", ".join(t.__name__ for t in self.artifact_types)
                raise OptionError(f"dvdquant recipe {self.name!r}: option artifact takes paths or {names} "
                                  f"objects, got {type(a).__name__}")

    artifact_help: str = ""  # how to make the artifact (for the error when it is missing)

    def load_artifacts(self, cfg) -> list:
        return []

    def plan(self, ctx) -> Products:
        return Products()

    def __repr__(self) -> str:
        return f"<recipe {self.name}>"


def is_number(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
