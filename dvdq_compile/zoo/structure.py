"""The structure ``wan_zoo`` v2 is trained with, so its statistics look like a trained video DiT's.

A few thousand CPU steps do not grow the heavy-tailed weights and the outlier activation channels that real video
DiTs acquire over their pre-training (``bench/results/stats_zoo_v1_*.md``: v1's weights are still the
kaiming-uniform init, kurtosis 1.84). v2 imposes that structure *while training* and lets every other weight adapt
to it; nothing is a function-preserving transform applied afterwards (those pair an outlier channel with a weight
column S times smaller, which real models do not show):

* **Heavy-tailed init.** Every ``nn.Linear`` weight starts from a Student-t (``NU`` degrees of freedom), scaled to
  the standard deviation of PyTorch's default init (``1/sqrt(3·fan_in)``), instead of a uniform.
* **Super weights** (fixed). In the FFN down-projections of the last ``len(SUPER_SIGMAS)`` blocks, one weight is
  set to ``±SUPER_SIGMAS[i]`` times the layer's init std and held there (the "super weight" of FFN
  down-projections in trained transformers).
* **Outlier modulation channels** (fixed). In every block's ``scale_shift_table`` (adaLN, fp32), for both the
  self-attention input (``shift_msa``/``scale_msa``) and the FFN input (``c_shift_msa``/``c_scale_msa``),
  ``len(SCALED)`` channels get ``1 + scale = SCALED[i]`` (channels 12-30x the others on every token), and at the
  places in ``MASSIVE`` one more channel gets a constant shift of ``±MASSIVE_SHIFT`` (a massive activation: the same
  large value on every token, which the q/k/v or FFN-up weights then read like a bias). Only two places: a
  constant of 240 in every block's q/k/v and FFN input slowed the first 40 training steps 1.7x (loss 1.05 vs 0.61),
  one or two are what real models show. The temb projection still adds its per-step term on top.

"Fixed" means the entries are written back after every optimizer step (:meth:`Imposed.restore`), so neither the
gradient nor AdamW's weight decay moves them; everything else in the tensors trains. The channel choice is seeded
and recorded in the checkpoint metadata (:meth:`Imposed.describe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["NU", "MASSIVE_SHIFT", "SCALED", "SUPER_SIGMAS", "Imposed", "impose"]

NU = 5.0
MASSIVE_SHIFT = 240.0
SCALED = (12.0, 20.0, 30.0)
SUPER_SIGMAS = (60.0, 80.0)
# (block, "attn" | "ffn") that get the massive constant channel
MASSIVE = ((1, "ffn"), (2, "attn"))
# indices into the 6 chunks of WanTransformerBlock.scale_shift_table
SHIFT_MSA, SCALE_MSA, SHIFT_FFN, SCALE_FFN = 0, 1, 3, 4


@dataclass
class Imposed:
    """The fixed entries: ``(parameter name, flat index, value)``."""

    entries: list[tuple[str, int, float]] = field(default_factory=list)
    seed: int = 0

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, idx, value in self.entries:
            params[name].view(-1)[idx] = value

    @classmethod
    def from_meta(cls, meta: dict) -> "Imposed":
        return cls(entries=[(n, int(i), float(v)) for n, i, v in meta["fixed"]], seed=int(meta.get("seed", 0)))

    def summary(self) -> dict:
        """What was imposed, without the entry list."""
        d = self.describe()
        d.pop("fixed")
        d["fixed_entries"] = len(self.entries)
        return d

    def describe(self) -> dict:
        return {"nu": NU, "massive_shift": MASSIVE_SHIFT, "massive_at": [list(m) for m in MASSIVE], "scaled": list(SCALED), "super_sigmas": list(SUPER_SIGMAS),
                "seed": self.seed, "fixed": [[n, i, v] for n, i, v in self.entries]}


def _student_t_(w: torch.Tensor, g: torch.Generator) -> None:
    fan_in = w.shape[1]
    std = 1.0 / math.sqrt(3.0 * fan_in)
    # t_nu = N / sqrt(chi2_nu / nu); chi2_nu = 2 * Gamma(nu/2); unit variance needs a factor sqrt((nu-2)/nu)
    n = torch.randn(w.shape, generator=g)
    chi2 = torch._standard_gamma(torch.full(w.shape, NU / 2)) * 2.0  # no generator argument: seeded globally below
    t = n / torch.sqrt(chi2 / NU) * math.sqrt((NU - 2.0) / NU)
    w.copy_(t * std)


@torch.no_grad()
def impose(model: nn.Module, seed: int = 0) -> Imposed:
    """Re-initialise ``model`` (a ``WanTransformer3DModel``) with the v2 structure; returns the fixed entries."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            _student_t_(m.weight, g)
    imp = Imposed(seed=seed)
    blocks = list(model.blocks)
    dim = blocks[0].scale_shift_table.shape[-1]
    for b, blk in enumerate(blocks):
        name = f"blocks.{b}.scale_shift_table"
        chans = torch.randperm(dim, generator=g)[: 2 * (1 + len(SCALED))].tolist()
        for j, (where, shift_k, scale_k) in enumerate((("attn", SHIFT_MSA, SCALE_MSA), ("ffn", SHIFT_FFN, SCALE_FFN))):
            cs = chans[j * (1 + len(SCALED)):(j + 1) * (1 + len(SCALED))]
            if (b, where) in MASSIVE:
                sign = 1.0 if (b + j) % 2 == 0 else -1.0
                imp.entries.append((name, shift_k * dim + cs[0], sign * MASSIVE_SHIFT))
                imp.entries.append((name, scale_k * dim + cs[0], 0.0))
            for c, s in zip(cs[1:], SCALED):
                imp.entries.append((name, scale_k * dim + c, s - 1.0))
                imp.entries.append((name, shift_k * dim + c, 0.0))
    for i, sig in enumerate(SUPER_SIGMAS):
        b = len(blocks) - len(SUPER_SIGMAS) + i
        w = blocks[b].ffn.net[2].weight
        std = 1.0 / math.sqrt(3.0 * w.shape[1])
        idx = int(torch.randint(w.numel(), (1,), generator=g))
        imp.entries.append((f"blocks.{b}.ffn.net.2.weight", idx, (-1.0) ** i * sig * std))
    imp.restore(model)
    return imp
