PY ?= python3
export PYTHON := $(PY)

.PHONY: setup demo test bench-kernels

setup:
	bash scripts/setup.sh

# The main job: compile a video DiT with backend="dvdquant", sample, print the report and the error vs full precision.
demo: setup
	$(PY) -m dvdq_compile.cli demo

# The test suite (CPU; Triton kernels run under TRITON_INTERPRET=1, set in tests/conftest.py).
test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench-kernels: setup
	$(PY) bench/kernels.py
