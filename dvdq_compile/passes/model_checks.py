"""Compile-time checks about the model as a whole, not one layer: said as warnings (once per model, by the
backend), never silently ignored.

- a pattern in ``exclude`` / ``include`` / ``weight_only`` that matches no module of the model;
- a model with no module matching ``block_pattern`` and nothing quantized (a plain ``nn.Sequential``);
- a submodule Dynamo compiled as its own frame after a graph break (a block, an attention processor): the graph
  runs every instance of the class, so a pattern that singles out one instance (``exclude=["blocks.3.*"]``) cannot
  apply; the layers whose own decision differs are returned for the report.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re

from ..config import QuantConfig
from .layer_names import Frame
from .plan import Plan, policy


def shared_frame_mismatches(plan: Plan, cfg: QuantConfig, frame: Frame) -> dict[str, tuple[str, str]]:
    """``{layer of another instance: (its own decision, why)}`` where it differs from the compiled one."""
    if frame.owner is None:
        return {}
    out = {}
    for local, prefix in frame.prefix.items():
        if not prefix:
            continue
        try:
            traced = frame.owner.get_submodule(prefix.rstrip("."))
        except AttributeError:
            continue
        mine = [p for p in plan.layers if p.site.local == local and p.site.w_index is not None
                and p.name.startswith(prefix)]
        for inst, mod in frame.owner.named_modules():
            if mod is traced or type(mod) is not type(traced):
                continue
            for p in mine:
                other = dataclasses.replace(p.site, name=f"{inst}.{p.name[len(prefix):]}")
                decision, reason = policy(other, cfg)
                if decision != p.decision:
                    out[other.name] = (decision, reason)
    return out


def model_warnings(plan: Plan, cfg: QuantConfig, frame: Frame) -> tuple[list[str], dict]:
    """(messages, shared-frame mismatches) for the model that owns this graph (nothing without an owner)."""
    owner = frame.owner
    if owner is None:
        return [], {}
    model = type(owner).__name__
    names = [n for n, _ in owner.named_modules()]
    msgs = []
    for option in ("exclude", "include", "weight_only"):
        for pat in getattr(cfg, option):
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                msgs.append(f"dvdquant option {option}: pattern {pat!r} matches no module of {model} (module names "
                            f"look like {names[1:4] if len(names) > 1 else names})")
    if plan.layers and not plan.quantized() and not cfg.include and \
            not any(re.search(cfg.block_pattern, n) for n in names):
        msgs.append(f"dvdquant: {model} has no module whose name matches block_pattern {cfg.block_pattern!r}, so "
                    f"none of its linears is quantized; pass options={{'include': ['*']}} (every linear) or a "
                    "block_pattern that matches its blocks")
    mismatches = shared_frame_mismatches(plan, cfg, frame)
    if mismatches:
        first = next(iter(mismatches))
        msgs.append(f"dvdquant: {len(mismatches)} layer(s) of {model} run a graph Dynamo compiled for another "
                    f"instance of the same module after a graph break, whose decision differs from their own (e.g. "
                    f"{first}: own decision {mismatches[first][0]}, {mismatches[first][1]}); options that single "
                    "out one instance need the whole model in one graph (fullgraph=True)")
    return msgs, mismatches
