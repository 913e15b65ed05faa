"""Compile a Triton kernel for Hopper (sm_90) on a machine without a GPU, and read what the compiler made of it.

Triton compiles to a cubin offline with the ptxas bundled in its NVIDIA backend; ``cuobjdump`` (same folder) gives
the resource usage and the SASS. Used by ``tests/kernels/aot_sm90.py`` (compile errors, spills) and
``bench/sass.py`` (the static performance instrument). Must run in a process where ``TRITON_INTERPRET`` was unset
before triton was imported: the kernels have to be real ``JITFunction``\\ s, and ``tl_common.USE_RINT`` is fixed
at import.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton

SM90 = 90
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
CUOBJDUMP = BIN / "cuobjdump"
PTXAS = BIN / "ptxas"


def available() -> bool:
    """True when this triton wheel can compile for NVIDIA offline (ptxas and cuobjdump present)."""
    return PTXAS.exists() and CUOBJDUMP.exists()


def compile_sm90(fn, sig: dict, const: dict, num_warps: int, num_stages: int, maxnreg: int | None = None):
    """``triton.compile`` of the JITFunction ``fn`` (or an ``Autotuner``: its ``.fn``) for sm_90.

    ``sig`` maps non-constexpr arguments to Triton types (``"*i8"``, ``"i32"``, ...), ``const`` the constexprs.
    Pointers, strides and ``K`` get the 16-divisibility the launcher specializes on at run time. ``maxnreg``: the
    launch's register cap per thread (a warp-specialized kernel's ``setmaxnreg`` budget is split from it).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_sm90 needs a process without TRITON_INTERPRET")
    while not isinstance(fn, triton.runtime.JITFunction):   # Autotuner / Heuristics wrap the JITFunction
        fn = fn.fn
    full = {a: ("constexpr" if a in const else sig[a]) for a in fn.arg_names}
    div = [a for a in fn.arg_names if a not in const and (full[a].startswith("*") or a.startswith("stride")
                                                           or a == "K")]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in div}
    source = (GluonASTSource if getattr(fn, "is_gluon", lambda: False)() else ASTSource)(fn, full, constexprs=const,
                                                                                         attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", SM90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages,
                                   **({"maxnreg": maxnreg} if maxnreg else {})})


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([str(CUOBJDUMP), *flags, f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def resources(kernel) -> dict:
    """``{"regs", "stack", "shared"}``: registers per thread, spill stack bytes per thread, shared bytes per CTA."""
    out = {"shared": int(kernel.metadata.shared)}
    m = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump(kernel.asm["cubin"], "-res-usage"))
    if m:
        out.update(regs=int(m.group(1)), stack=int(m.group(2)))
    return out


def sass(kernel) -> str:
    """The kernel's SASS listing (``cuobjdump -sass``)."""
    return _cuobjdump(kernel.asm["cubin"], "-sass")
