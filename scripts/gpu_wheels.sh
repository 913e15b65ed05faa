#!/usr/bin/env bash
# Fetch (here, where pip reaches the index) the wheels the device image lacks, for Python 3.12 on x86_64, into .whl/
# (git-ignored). Carry them with the run: carry [".whl"]; scripts/gpu_run.sh installs them to /tmp/site.
# The image (device/KINDS.md) has torch, triton, numpy, safetensors, huggingface-hub, pillow, regex, requests,
# filelock, hypothesis, sympy, matplotlib; diffusers and its importlib_metadata are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
# the diffusers version the project pins (requirements/constraints.txt), so no local install is needed
V=$(sed -n 's/^diffusers==//p' requirements/constraints.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==${V:?no diffusers pin in requirements/constraints.txt}" importlib_metadata
ls -la .whl
