"""Several processes (GPUs) on one transformer: diffusers' context parallelism, plus CFG-parallel, made to compile
as one graph with the dvdquant backend.

    dist.init_process_group(...)                     # torchrun: one process per GPU
    layout = dvdq_compile.parallel.enable(pipe.transformer, ulysses=4, cfg=2)
    pipe.transformer = torch.compile(pipe.transformer, backend="dvdquant", fullgraph=True)

The sequence sharding is diffusers' own (``model.enable_parallelism`` with the model's ``_cp_plan``: Wan, LTX,
Flux, QwenImage, ...); this package only builds the device mesh, works around what stops it compiling or running
on CPU (``compat.py``), adds CFG-parallel (``cfg.py``), and tells the δ controller which process group must agree
on each step's decision (``group_of``). A model the user parallelised with ``enable_parallelism`` directly works
too (the compatibility patches are installed when the backend is imported).

Every rank holds the full weights (context parallelism shards activations, not weights), quantizes them itself,
and gets the same codes: the quantizers are deterministic functions of the weight. Activation scales are per
(token, K-group), so a token quantizes the same whichever rank holds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..state import STATE
from . import compat

__all__ = ["Layout", "enable", "group_of", "register"]


@dataclass
class Layout:
    """What :func:`enable` set up for one model: degrees, this rank's coordinates, the mesh, and the group every
    rank of which runs this model (the δ controller's group)."""
    cfg: int
    ring: int
    ulysses: int
    mesh: Any  # torch.distributed.device_mesh.DeviceMesh with dims ("cfg", "ring", "ulysses")
    group: Any  # ProcessGroup over the whole mesh
    cfg_rank: int

    @property
    def world(self) -> int:
        return self.cfg * self.ring * self.ulysses


def _check_degree(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"dvdq_compile.parallel.enable: {name}={v!r} must be an integer >= 1")
    return v


def _device_type() -> str:
    acc = torch.accelerator.current_accelerator() if torch.accelerator.device_count() > 0 else None
    return acc.type if acc is not None else "cpu"


def enable(model: torch.nn.Module, *, ulysses: int = 1, ring: int = 1, cfg: int = 1, mesh=None) -> Layout:
    """Shard ``model`` over the processes of the initialized default group: ``cfg`` CFG-parallel groups, each
    running diffusers' context parallelism with ``ring`` x ``ulysses`` ranks. ``cfg * ring * ulysses`` must be the
    world size (or the size of ``mesh``, a DeviceMesh with dims ``("cfg", "ring", "ulysses")``).

    Call it once per model (Wan 2.2: once for each expert; they may share the mesh: pass ``mesh=layout.mesh``),
    before ``torch.compile``. CFG-parallel needs a pipeline that batches the cond and uncond inputs (batch 2B)."""
    ulysses, ring, cfg = _check_degree("ulysses", ulysses), _check_degree("ring", ring), _check_degree("cfg", cfg)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("dvdq_compile.parallel.enable: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first (torchrun sets up the environment)")
    if getattr(model, "_parallel_config", None) is not None:
        raise RuntimeError(f"dvdq_compile.parallel.enable: {type(model).__name__} is already parallelised "
                           "(enable_parallelism was called on it)")
    world = cfg * ring * ulysses
    if mesh is None:
        if world != dist.get_world_size():
            raise ValueError(f"dvdq_compile.parallel.enable: cfg*ring*ulysses = {cfg}*{ring}*{ulysses} = {world}, "
                             f"but the world size is {dist.get_world_size()}")
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(_device_type(), (cfg, ring, ulysses), mesh_dim_names=("cfg", "ring", "ulysses"))
    elif tuple(mesh.mesh_dim_names or ()) != ("cfg", "ring", "ulysses") or tuple(mesh.shape) != (cfg, ring, ulysses):
        raise ValueError(f"dvdq_compile.parallel.enable: mesh has dims {mesh.mesh_dim_names} of shape "
                         f"{tuple(mesh.shape)}; expected ('cfg', 'ring', 'ulysses') of shape {(cfg, ring, ulysses)}")
    compat.install()
    if ring * ulysses > 1:
        from diffusers import ContextParallelConfig
        if not getattr(model, "_cp_plan", None):
            raise ValueError(f"dvdq_compile.parallel.enable: {type(model).__name__} has no context-parallel plan "
                             "(`_cp_plan`) in diffusers; use cfg=... only, or pass the model to diffusers' "
                             "enable_parallelism with a cp_plan")
        config = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh["ring", "ulysses"])
        with compat.cpu_device_count():
            model.enable_parallelism(config=config)
    group = mesh._flatten("dvdq_all").get_group() if mesh.ndim > 1 else mesh.get_group()
    cfg_rank = mesh.get_local_rank("cfg")
    if cfg > 1:
        from . import cfg as cfg_parallel
        cfg_parallel.apply(model, cfg_parallel.CFGPlan(cfg, cfg_rank, mesh["cfg"].get_group()))
    layout = Layout(cfg, ring, ulysses, mesh, group, cfg_rank)
    _record(model, group)
    model._dvdq_parallel = layout
    return layout


def group_of(model: torch.nn.Module | None):
    """The process group whose ranks all run ``model`` (None: not parallel): set by :func:`enable`, else the
    context-parallel mesh of a model parallelised with diffusers' ``enable_parallelism``."""
    if model is None:
        return None
    layout = getattr(model, "_dvdq_parallel", None)
    if layout is not None:
        return layout.group
    cp = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    flat = getattr(cp, "_flattened_mesh", None)
    return flat.get_group() if flat is not None else None


def register(model: torch.nn.Module | None) -> None:
    """Record the group of a model parallelised with diffusers' own ``enable_parallelism`` for its δ controller
    (called by the backend at compile time; models set up by :func:`enable` are recorded already)."""
    if model is None or getattr(model, "_parallel_config", None) is None:
        return
    if not any(STATE.parallel_groups.get(p) is not None for p in model.parameters()):
        _record(model, group_of(model))


def _record(model: torch.nn.Module, group) -> None:
    """The δ controller of ``model`` (found by its parameters) sums its step signal over ``group``."""
    if group is not None:
        for p in model.parameters():
            STATE.parallel_groups[p] = group
