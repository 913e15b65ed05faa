"""The one place that decides which implementation a `dvdq` op runs: Triton kernels or the PyTorch reference.

Triton runs when the tensors are on CUDA, or on CPU when ``TRITON_INTERPRET=1`` was set before triton was first
imported; everything else (and ``kernels="reference"``) runs the reference in ``dvdq_compile.quant``. The backend
resolves the choice once per compiled graph and bakes it into the op arguments, so the compile report can say
which ran.
"""
from __future__ import annotations

import os

import torch

IMPLS = ("triton", "reference")


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_ready() -> bool:
    """True once the codegen kernels module imports (it needs triton)."""
    try:
        from . import kernels  # noqa: F401
    except ImportError:
        return False
    return True


def triton_usable(device: torch.device) -> tuple[bool, str]:
    """Whether Triton kernels can run on ``device``, and why not."""
    if not triton_importable():
        return False, "triton is not installed"
    if device.type == "cuda":
        pass
    elif device.type == "cpu":
        if not interpreter_on():
            return False, "CPU tensors need TRITON_INTERPRET=1 (set before triton is imported) for Triton kernels"
    else:
        return False, f"no Triton kernels for device type {device.type!r}"
    if not kernels_ready():
        return False, "dvdq_compile.codegen.kernels is not available"
    return True, ""


def resolve(kernels: str, device: torch.device) -> tuple[str, str]:
    """(impl, reason) for the ``kernels`` option on ``device``."""
    if kernels == "reference":
        return "reference", "kernels='reference' requested"
    ok, why = triton_usable(device)
    if ok:
        return "triton", f"Triton kernels on {device.type}" + (" (interpreter)" if device.type == "cpu" else "")
    if kernels == "triton":
        raise RuntimeError(f"dvdquant option kernels='triton' cannot be honoured: {why}")
    return "reference", f"PyTorch reference ({why})"
