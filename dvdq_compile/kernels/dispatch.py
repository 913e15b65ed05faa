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
    """True once the kernel launchers module (kernels/launch.py) imports (it needs triton)."""
    try:
        from . import launch  # noqa: F401
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
        return False, "dvdq_compile.kernels.launch is not available"
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


def linear_impl(impl: str, wbits: int, weight_groups: int, n: int, k: int, act_group: int,
                rotate: int) -> tuple[str, str]:
    """Per-linear choice: the graph-level ``impl`` unless the Triton kernels do not cover this linear."""
    if impl != "triton":
        return impl, ""
    from . import launch as kernels

    why = kernels.unsupported_reason(wbits, (n, weight_groups), act_group, k, rotate)
    return ("reference", f"reference kernels: {why}") if why else ("triton", "")


def act_impl(impl: str, act_group: int, rotate: int, k: int) -> str:
    if impl != "triton":
        return impl
    from . import capability

    return "reference" if capability.unsupported_reason("act_quant", None, None, act_group, k, rotate) else "triton"


def gemm_variant(impl: str, m, n: int, k: int, abits: int, device, act_group: int, rotate: int, wbits: int,
                 weight_groups: int) -> str:
    """"fused" (one launch) or "split" (act_quant + qlinear), from the measured decision table (kernels/table.json)."""
    if impl != "triton":
        return "split"
    from . import launch as kernels

    if kernels.unsupported_reason(wbits, (n, weight_groups), act_group, k, rotate, variant="fused"):
        return "split"
    return kernels.choose_variant(m, n, k, abits, device, group=act_group, rotate=rotate)


def bgr_solver(device: torch.device, length: int, impl: str = "auto"):
    """The Triton BGR row solver for rows of ``length`` on a CUDA device (``impl="auto"``), else None (the PyTorch
    reference). The kernel sums in another order, so its (Δ, z) can differ from the reference's in the last bits
    (per-row error within 1e-4 of the reference's; docs/numerics.md §10)."""
    if impl not in ("auto", "reference"):
        raise ValueError(f"bgr_impl must be 'auto' or 'reference', got {impl!r}")
    if impl == "auto" and device.type == "cuda" and triton_importable():
        from . import bgr

        if bgr.supports(length):
            return bgr.bgr_rows
    return None
