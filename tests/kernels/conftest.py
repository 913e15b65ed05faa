"""Kernel tests run in one of two modes, fixed when triton is first imported (tests/conftest.py):

- ``TRITON_INTERPRET=1`` (default, CPU CI): the CPU tests run the kernels in the interpreter; ``gpu`` tests skip.
- ``TRITON_INTERPRET=0`` on a CUDA machine: the ``gpu`` tests run compiled kernels, and so do the property tests
  (``@given``): their inputs and references stay on the CPU, and every kernel entry point they call is wrapped to
  move its tensor arguments to the GPU and its results back, so the same properties (ragged M/N, every dtype and
  group) check the compiled code. Their example count is capped at ``DVDQ_GPU_EXAMPLES`` (default 10) there: each
  new constexpr combination is a compile. The other CPU-tensor tests skip in that mode.
  Run: ``TRITON_INTERPRET=0 python -m pytest tests/kernels -m "gpu or not gpu"``.
"""
import importlib
import os

import pytest
import torch
from hypothesis import settings

from dvdq_compile.kernels.tl_common import INTERPRET

# every kernel entry point a property test reaches: (module, names)
ENTRY_POINTS = {
    "dvdq_compile.kernels.launch": ("act_quant", "qlinear", "fused_qlinear", "qlinear_int_partials"),
    "dvdq_compile.kernels.expand": ("expand_weight",),
    "dvdq_compile.kernels.gelu_quant": ("qlinear_gelu_quant",),
    "dvdq_compile.kernels.norm_quant": ("norm_act_quant",),
    "dvdq_compile.kernels.attn_quant": ("attn_act_quant",),
    "dvdq_compile.kernels.bgr": ("bgr_rows",),
}


def _to(v, dev):
    if isinstance(v, torch.Tensor):
        return v.to(dev) if v.device.type == "cpu" else v
    if isinstance(v, (list, tuple)):
        return type(v)(_to(u, dev) for u in v)
    return v


def on_cuda(fn):
    """``fn`` with CPU tensor arguments run on the GPU; results come back to the CPU. An ``out=`` given on the CPU
    is filled from the GPU's (poisoned values included, so an unwritten element still shows) and returned. A call
    with no CPU tensor (the library calling itself on the GPU) passes through untouched."""
    def call(*args, **kwargs):
        if not any(t.device.type == "cpu" for t in _flat([args, list(kwargs.values())])):
            return fn(*args, **kwargs)
        out = kwargs.get("out")
        args, kwargs = _to(args, "cuda"), {k: _to(v, "cuda") for k, v in kwargs.items()}
        res = fn(*args, **kwargs)
        if out is None:
            return _to_cpu(res)
        pairs = list(zip(_flat(kwargs["out"]), _flat(out)))
        for g, c in pairs:
            c.copy_(g)
        back = {id(g): c for g, c in pairs}
        return _map(res, lambda t: back.get(id(t), t.cpu()))
    return call


def _flat(v):
    if isinstance(v, torch.Tensor):
        return [v]
    return [t for u in v for t in _flat(u)] if isinstance(v, (list, tuple)) else []


def _map(v, f):
    if isinstance(v, torch.Tensor):
        return f(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_map(u, f) for u in v)
    return v


def _to_cpu(v):
    return _map(v, lambda t: t.cpu())


def _drive_compiled(request, monkeypatch):
    """Point the property test at the compiled kernels (see the module docstring)."""
    for mod_name, names in ENTRY_POINTS.items():
        mod = importlib.import_module(mod_name)
        for name in names:
            fn = getattr(mod, name)
            wrapped = on_cuda(fn)
            monkeypatch.setattr(mod, name, wrapped)
            if getattr(request.module, name, None) is fn:   # ``from ... import name`` in the test module
                monkeypatch.setattr(request.module, name, wrapped)
    test = request.function
    cap = int(os.environ.get("DVDQ_GPU_EXAMPLES", "10"))
    current = test._hypothesis_internal_use_settings
    monkeypatch.setattr(test, "_hypothesis_internal_use_settings",
                        settings(current, max_examples=min(cap, current.max_examples)))


@pytest.fixture(autouse=True)
def _kernel_mode(request, monkeypatch):
    gpu = request.node.get_closest_marker("gpu") is not None
    if gpu and INTERPRET:
        pytest.skip("GPU kernel tests need compiled Triton: run with TRITON_INTERPRET=0")
    if not gpu and not INTERPRET:
        if not (torch.cuda.is_available() and hasattr(request.function, "hypothesis")):
            pytest.skip("CPU kernel tests need TRITON_INTERPRET=1 (set before triton is imported)")
        _drive_compiled(request, monkeypatch)
    yield
