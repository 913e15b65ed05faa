"""Kernel tests run in one of two modes, fixed when triton is first imported (tests/conftest.py):

- ``TRITON_INTERPRET=1`` (default, CPU CI): the CPU tests run the kernels in the interpreter; ``gpu`` tests skip.
- ``TRITON_INTERPRET=0`` on a CUDA machine: the ``gpu`` tests run compiled kernels; CPU-tensor tests skip
  (compiled Triton cannot take CPU tensors). Run: ``TRITON_INTERPRET=0 python -m pytest tests/kernels -m gpu``.
"""
import pytest

from dvdq_compile.kernels.tl_common import INTERPRET


@pytest.fixture(autouse=True)
def _kernel_mode(request):
    gpu = request.node.get_closest_marker("gpu") is not None
    if gpu and INTERPRET:
        pytest.skip("GPU kernel tests need compiled Triton: run with TRITON_INTERPRET=0")
    if not gpu and not INTERPRET:
        pytest.skip("CPU kernel tests need TRITON_INTERPRET=1 (set before triton is imported)")
    yield
