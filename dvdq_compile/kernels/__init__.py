"""Triton kernels for the quantized linear and the code that chooses/launches them (see dispatch.py)."""
