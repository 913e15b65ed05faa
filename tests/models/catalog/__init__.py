"""Tiny configs of every video transformer diffusers exports (``*Transformer3DModel``), for the model tests.

Each family file defines ``SPECS``: class name -> ``TinySpec``. The configs follow diffusers' own tester configs,
widened where needed so that the transformer-block linears have K a multiple of 128 (the default group), so there is
something to quantize; inputs are small enough that an eager forward takes well under a second on one CPU thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class TinySpec:
    cls: str  # the diffusers class name (exported from ``diffusers``)
    init: dict  # constructor kwargs
    inputs: Callable[..., dict]  # inputs(seed=0, batch=1) -> forward kwargs (CPU tensors, return_dict=False)
    needs: tuple = ()  # extra importable packages the forward needs
    note: str = ""  # what differs from diffusers' tester config, and why
    blocks: tuple = field(default=())  # attribute paths of the ModuleLists that hold the transformer blocks

    def build(self, seed: int = 0) -> torch.nn.Module:
        import diffusers

        torch.manual_seed(seed)
        model = getattr(diffusers, self.cls)(**self.init).eval()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # Gaussian N(0, 1/K): default kaiming-uniform init is not what trained weights are
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight.shape[1] ** 0.5)
        return model


def _collect() -> dict[str, TinySpec]:
    from . import hunyuan_family, ltx_family, other_family, wan_family

    out: dict[str, TinySpec] = {}
    for mod in (wan_family, hunyuan_family, ltx_family, other_family):
        for name, spec in mod.SPECS.items():
            assert name not in out, name
            out[name] = spec
    return out


SPECS = _collect()
