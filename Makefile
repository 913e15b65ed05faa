# `make demo` and `make test` set everything up in a virtualenv of the project's own (VENV, default .venv; created
# with $(PY) if missing) and then run. VENV=/path/to/env to use another one.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export PYTHON

.PHONY: setup demo test bench-kernels

$(PYTHON):
	$(PY) -m venv $(VENV)

setup: $(PYTHON)
	bash scripts/setup.sh

# The main job: compile a video DiT with backend="dvdquant", sample, print the report and the error vs full precision.
demo: setup
	$(PYTHON) -m dvdq_compile.cli demo

# The test suite (CPU; Triton kernels run under TRITON_INTERPRET=1, set in tests/conftest.py), one worker per core.
test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider -n auto

bench-kernels: setup
	$(PYTHON) bench/kernels.py
