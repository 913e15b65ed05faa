#!/usr/bin/env bash
# Installs dvdq_compile with its test and benchmark dependencies into $PYTHON (default: python3; `make` passes the
# project's virtualenv). Versions: requirements/constraints.txt, the set the suite was last run with
# (DVDQ_CONSTRAINTS=<file> for another set, DVDQ_CONSTRAINTS=none for the newest the ranges in pyproject.toml allow).
# A torch that is already installed and is not the pinned CPU build (a GPU image's) is kept, with its triton.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=${DVDQ_CONSTRAINTS:-requirements/constraints.txt}
PIN_ARGS=()
if [ "$CONSTRAINTS" != "none" ]; then
  [ -f "$CONSTRAINTS" ] || { echo "dvdq setup: constraints file $CONSTRAINTS not found" >&2; exit 1; }
  have=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null || true)
  want=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
  if [ -n "$have" ] && [ "${have%%+*}" != "$want" ]; then
    echo "dvdq setup: keeping the installed torch $have (constraints pin $want); dropping the torch/triton pins"
    filtered=$(mktemp)
    grep -v -E '^(torch|triton)==' "$CONSTRAINTS" > "$filtered"
    CONSTRAINTS=$filtered
  fi
  PIN_ARGS=(-c "$CONSTRAINTS")
fi
# torch first, on its own: an unpinned torch pulled in by another package would be a multi-GB CUDA build
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${PIN_ARGS[@]}" "torch==$(sed -n 's/^torch==//p' requirements/constraints.txt)"
fi
"$PY" -m pip install -q "${PIN_ARGS[@]}" -e ".[test,bench]"
"$PY" -c "import torch, triton, diffusers; print('dvdq setup:', __import__('sys').executable, '| torch', torch.__version__, '| triton', triton.__version__, '| diffusers', diffusers.__version__)"
