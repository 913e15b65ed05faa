"""CFG-parallel: the conditional and unconditional halves of a batched classifier-free-guidance call on different
ranks.

A pipeline that batches CFG calls the transformer once per step with ``[cond; uncond]`` stacked on dim 0 (batch
2B). :class:`CFGSplitHook` gives each of the ``degree`` ranks of its group one slice of dim 0 of every tensor input
that has the batch size of ``hidden_states``, and all-gathers dim 0 of the outputs, so every rank returns the full
batch. It is a diffusers ``ModelHook`` registered after the context-parallel hooks (so it wraps them: split the
batch first, then the sequence), and it uses torch's functional collectives, which Dynamo traces into the graph.

Per-token activation quantization makes this exact: each token's scales depend on that token only, so a rank's
half quantizes exactly as it does inside the full batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed._functional_collectives as funcol
from diffusers.hooks import HookRegistry, ModelHook

HOOK_NAME = "dvdq_cfg_parallel"


def _wait(t: torch.Tensor) -> torch.Tensor:
    return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t


@dataclass
class CFGPlan:
    degree: int
    rank: int  # this rank's index in the CFG group (a Python int: a constant in the traced graph)
    group: Any  # torch.distributed ProcessGroup


class CFGSplitHook(ModelHook):
    def __init__(self, plan: CFGPlan):
        super().__init__()
        self.plan = plan

    def _batch(self, args, kwargs) -> int:
        x = kwargs.get("hidden_states")
        if x is None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is None:
            raise ValueError("dvdq_compile.parallel CFG-parallel: the transformer call has no `hidden_states` "
                             "tensor to take the batch size from")
        b = int(x.shape[0])
        if b % self.plan.degree:
            raise ValueError(f"dvdq_compile.parallel CFG-parallel: batch {b} of hidden_states {tuple(x.shape)} "
                             f"is not divisible by cfg={self.plan.degree}; the pipeline must batch cond and uncond "
                             "(batch 2B) for CFG-parallel")
        return b

    def _split(self, v, b: int):
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == b:
            return v.chunk(self.plan.degree, dim=0)[self.plan.rank]
        return v

    def pre_forward(self, module, *args, **kwargs):
        b = self._batch(args, kwargs)
        return tuple(self._split(a, b) for a in args), {k: self._split(v, b) for k, v in kwargs.items()}

    def _gather(self, t):
        if not isinstance(t, torch.Tensor):
            return t
        return _wait(funcol.all_gather_tensor(t.contiguous(), 0, group=self.plan.group))

    def post_forward(self, module, output):
        if isinstance(output, torch.Tensor):
            return self._gather(output)
        if isinstance(output, (tuple, list)):
            return type(output)(self._gather(t) for t in output)
        if hasattr(output, "sample"):  # a diffusers Transformer2DModelOutput (return_dict=True)
            output.sample = self._gather(output.sample)
            return output
        raise ValueError(f"dvdq_compile.parallel CFG-parallel: cannot gather a transformer output of type "
                         f"{type(output).__name__}")


def apply(model: torch.nn.Module, plan: CFGPlan) -> None:
    HookRegistry.check_if_exists_or_initialize(model).register_hook(CFGSplitHook(plan), HOOK_NAME)


def remove(model: torch.nn.Module) -> None:
    HookRegistry.check_if_exists_or_initialize(model).remove_hook(HOOK_NAME)
