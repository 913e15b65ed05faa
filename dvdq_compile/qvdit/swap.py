"""Which linears of a video DiT get TQE, at which bits, and the module swap that installs them (eager fake-quant).

Layer policy (mirrors the backend's, docs/architecture.md §3): every ``nn.Linear`` inside a transformer block is
quantized;
embedders and the final projection stay full precision. Wan's cross-attention key/value projections read the text
tokens (``T_TEXT`` = 4 per sample on the zoo model): the backend runs linears with so few tokens weight-only
(``min_tokens``), so they keep 16-bit activations here too. Q-VDiT's released W3A6/W4A6 scripts keep the MLP
(``mlp.fc1/fc2``) at W8A8 in every block (``mixed_precision/weight_{3,4}_mp.yaml``): ``mlp_w8a8=True`` is that
faithful setting, on Wan ``ffn.net.0.proj`` / ``ffn.net.2``. Temporal layers (token mask) are matched by
``temporal``; Wan has none (joint spatio-temporal attention), so the default is empty.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fnmatch import fnmatch

import torch
from torch import nn

from ..config import DEFAULT_BLOCK_PATTERN
from .tqe import TQEConfig, TQELinear

BLOCK_RE = DEFAULT_BLOCK_PATTERN  # the layers the backend quantizes
MLP = ("*.ffn.net.0.proj", "*.ffn.net.2")
TEXT_KV = ("*.attn2.to_k", "*.attn2.to_v")


@dataclass(frozen=True)
class QVDiTConfig:
    """The recipe's options. ``lora=False``: plain RTN at the same bits (the untrained baseline)."""
    weight_bits: int = 3
    act_bits: int = 6
    rank: int = 32
    mlp_w8a8: bool = True
    act_sym: bool = True
    lora: bool = True
    frames: int = 8
    mlp: tuple = MLP
    weight_only: tuple = TEXT_KV
    temporal: tuple = ()

    def __post_init__(self):
        TQEConfig(self.weight_bits, self.act_bits, self.rank, self.act_sym, self.lora)   # validates
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"qvdit frames={self.frames!r} is not allowed; expected an int >= 1")

    @property
    def label(self) -> str:
        base = f"W{self.weight_bits}A{self.act_bits}"
        return base + (" (MLP W8A8)" if self.mlp_w8a8 else "")


def _match(name: str, pats) -> bool:
    return any(fnmatch(name, p) for p in pats)


def layer_plan(model: nn.Module, cfg: QVDiTConfig) -> dict[str, TQEConfig]:
    """``{layer name: its TQEConfig}`` for every linear the recipe quantizes, in module order."""
    plan = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or not re.search(BLOCK_RE, name):
            continue
        lc = TQEConfig(cfg.weight_bits, cfg.act_bits, cfg.rank, cfg.act_sym, cfg.lora)
        if cfg.mlp_w8a8 and _match(name, cfg.mlp):
            lc = replace(lc, weight_bits=8, act_bits=8)
        if _match(name, cfg.weight_only):
            lc = replace(lc, act_bits=16)
        plan[name] = lc
    if not plan:
        raise ValueError("qvdit: the model has no nn.Linear inside a transformer block (names matching "
                         f"{BLOCK_RE!r})")
    return plan


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def install(model: nn.Module, cfg: QVDiTConfig, seed: int = 0,
            plan: dict[str, TQEConfig] | None = None) -> dict[str, TQELinear]:
    """Replace the planned linears of ``model`` (in place) by :class:`TQELinear`; returns them by name.
    Initialization is seeded per layer in module order, so a given (model, cfg, seed) always starts the same."""
    plan = layer_plan(model, cfg) if plan is None else plan
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, lc in plan.items():
        mod = model.get_submodule(name)
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"qvdit: layer {name!r} is a {type(mod).__name__}, expected nn.Linear")
        frames = cfg.frames if (lc.lora and _match(name, cfg.temporal)) else None
        t = TQELinear(mod, lc, frames=frames, generator=g).to(mod.weight.device)
        _set(model, name, t)
        out[name] = t
    return out


def tqe_layers(model: nn.Module) -> dict[str, TQELinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, TQELinear)}


def learnable(model: nn.Module) -> list[nn.Parameter]:
    """The learned tensors only (the FP weights are buffers of the TQE layers; the rest of the model is frozen)."""
    return [p for m in tqe_layers(model).values() for p in m.parameters()]


def set_integer(model: nn.Module, on: bool = True) -> None:
    """Evaluation: run every TQE layer on the dvdq integer reference (``integer_forward``) instead of the
    differentiable fake-quant."""
    for m in tqe_layers(model).values():
        m.integer = on


def set_act_quant(model: nn.Module, on: bool = True) -> None:
    """Training with FP activations (``on=False``) or with the activation fake-quant (STE)."""
    for m in tqe_layers(model).values():
        m.quant_act = on
