#!/usr/bin/env bash
# Installs dvdq_compile and its dependencies into the current Python.
# CPU pins (torch==2.13.0, triton==3.7.1) are installed only when absent, so a GPU machine keeps its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
if ! "$PY" -c "import triton" 2>/dev/null; then
  "$PY" -m pip install -q "triton==3.7.1"
fi
"$PY" -m pip install -q -e ".[test,bench]"
"$PY" -c "import torch, triton, diffusers; print('dvdq setup: torch', torch.__version__, '| triton', triton.__version__, '| diffusers', diffusers.__version__)"
