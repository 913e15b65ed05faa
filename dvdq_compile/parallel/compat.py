"""Workarounds for diffusers' context parallelism, all in one place (written against diffusers 0.42.1).

Three things in diffusers 0.42.1 stop ``enable_parallelism`` + ``torch.compile`` from compiling as one graph, or
from running at all on a machine without accelerators:

1. ``ModelMixin._resolve_parallel_config`` picks the rank's device as ``rank % torch.accelerator.device_count()``:
   a ``ZeroDivisionError`` on a CPU-only machine. :func:`cpu_device_count` makes the count 1 while it runs.
2. ``ContextParallelSplitHook`` finds a positional input by calling ``inspect.signature(cls.forward)`` the first
   time it runs. Dynamo cannot trace that (``hasattr(..., '__wrapped__')``): a graph break per hooked module
   (Wan: ``blocks.0``), an error under ``fullgraph=True``. The lookup is replaced by one whose signature part is a
   constant to Dynamo (``torch._dynamo.assume_constant_result``: evaluated once at trace time).
3. The hook logs ``warning_once`` when an input has another rank than its plan expects (Wan 2.1's 1-D
   ``timestep`` against the plan's 2-D per-token one): Dynamo breaks the graph on a logger call. (``warning_once``
   is not even a ``logging.Logger`` method unless ``transformers`` was imported: it adds it.) That logger gets its
   own ``warning_once``, a plain function listed in ``torch._dynamo.config.ignore_logging_functions``: eager calls
   log the message once, traced ones are dropped.

2 and 3 must be in place before Dynamo traces the model, and ``torch.compile(..., backend="dvdquant")`` imports
this package before any trace; :func:`install` patches the diffusers module if it is loaded, or as soon as it is
imported (a ``sys.meta_path`` finder that runs the patch after the module executes), so the order of
``enable_parallelism``, ``import dvdq_compile`` and ``torch.compile`` does not matter. Nothing here imports
diffusers. If a future diffusers renames what is patched, the patch is skipped with a debug log line.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import inspect
import logging
import sys

import torch

log = logging.getLogger("dvdq_compile")

CP_MODULE = "diffusers.hooks.context_parallel"
_PATCHED = "_dvdq_patched"


@torch._dynamo.assume_constant_result
def _forward_params(cls) -> tuple[str, ...]:
    """The names of ``cls.forward``'s parameters after ``self`` (a constant to Dynamo)."""
    return tuple(inspect.signature(cls.forward).parameters)[1:]


def _get_parameter_from_args_kwargs(self, identifier: str, args=(), kwargs=None):
    # Same contract as diffusers 0.42.1's ModuleForwardMetadata._get_parameter_from_args_kwargs:
    # (value, is_kwarg, index), with its errors.
    kwargs = kwargs or {}
    if identifier in kwargs:
        return kwargs[identifier], True, None
    if self._cls is None:
        raise ValueError("Model class is not set for metadata.")
    names = _forward_params(self._cls)
    if identifier not in names:
        raise ValueError(f"Parameter '{identifier}' not found in function signature but was requested.")
    index = names.index(identifier)
    if index >= len(args):
        raise ValueError(f"Expected {index} arguments but got {len(args)}.")
    return args[index], False, index


def patch(module) -> bool:
    """Apply workarounds 2 and 3 to the loaded ``diffusers.hooks.context_parallel``; False if it does not have
    what they replace (another diffusers version)."""
    if getattr(module, _PATCHED, False):
        return True
    meta = getattr(module, "ModuleForwardMetadata", None)
    logger = getattr(module, "logger", None)
    if meta is None or not hasattr(meta, "_get_parameter_from_args_kwargs") or logger is None:
        log.debug("dvdq_compile.parallel: %s has no ModuleForwardMetadata/logger; not patched", CP_MODULE)
        return False
    meta._get_parameter_from_args_kwargs = _get_parameter_from_args_kwargs
    seen: set[str] = set()

    def warning_once(msg, *args, **kwargs):
        if msg not in seen:
            seen.add(msg)
            logger.warning(msg, *args, **kwargs)

    logger.warning_once = warning_once
    torch._dynamo.config.ignore_logging_functions.add(warning_once)
    setattr(module, _PATCHED, True)
    return True


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``diffusers.hooks.context_parallel`` through the other finders and patches it once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != CP_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Patch diffusers' context-parallel hooks now if loaded, else when they are imported (idempotent)."""
    mod = sys.modules.get(CP_MODULE)
    if mod is not None:
        patch(mod)
        return
    if importlib.util.find_spec("diffusers") is None:
        return
    if not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())


@contextlib.contextmanager
def cpu_device_count():
    """Workaround 1: ``torch.accelerator.device_count()`` is at least 1 inside the block (a CPU-only machine
    reports 0, and diffusers 0.42.1 takes ``rank % count``)."""
    acc = torch.accelerator
    original = acc.device_count
    if original() > 0:
        yield
        return
    acc.device_count = lambda: 1
    try:
        yield
    finally:
        acc.device_count = original
