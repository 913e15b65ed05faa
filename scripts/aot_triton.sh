#!/usr/bin/env bash
# Compile every kernel for sm_90 offline with ANOTHER triton release than the project's (e.g. the GPU image's):
#   bash scripts/aot_triton.sh 3.6.0 [--sass]
# The wheel goes to the git-ignored .triton/<version>/ and shadows the venv's triton through PYTHONPATH for this run
# only. Prints tests/kernels/aot_sm90.py's records (compile errors, registers, spills, wgmma waits); with --sass also
# the Gluon kernels' instrument estimates (bench/sass.py --only gluon_qlinear / gluon_ws, under .triton/<version>/).
set -euo pipefail
V=${1:?usage: aot_triton.sh TRITON_VERSION [--sass]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DIR=$ROOT/.triton/$V
if [ ! -f "$DIR/triton/__init__.py" ]; then
  mkdir -p "$DIR/wheel"
  "$PY" -m pip download -q --no-deps "triton==$V" -d "$DIR/wheel"
  "$PY" -m pip install -q --no-deps --target "$DIR" "$DIR"/wheel/triton-*.whl
fi
cd "$ROOT"
PYTHONPATH=$DIR env -u TRITON_INTERPRET "$PY" -c "import triton; assert triton.__version__ == '$V', triton.__version__"
PYTHONPATH=$DIR env -u TRITON_INTERPRET "$PY" tests/kernels/aot_sm90.py
if [ "${2:-}" = "--sass" ]; then
  PYTHONPATH=$DIR "$PY" bench/sass.py --only gluon_qlinear --out "$DIR/sass" | tail -3
  PYTHONPATH=$DIR "$PY" bench/sass.py --only gluon_ws --out "$DIR/sass_ws" | tail -3
  grep -h "^| [0-9]" "$DIR/sass/sass.md" "$DIR/sass_ws/sass.md"
fi
