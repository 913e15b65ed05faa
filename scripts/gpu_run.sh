#!/usr/bin/env bash
# A whole GPU run, in stages that each fit one device command (<= 10 min). Standing order: whenever a GPU is lent,
# run every stage and commit what they write. On the device machine (its torch is kept; nothing is fetched):
#   PYTHONUNBUFFERED=1 bash scripts/gpu_run.sh STAGE "$OUT"      STAGE: tests | kernels-quick | kernels | sweep
# Results and logs go under $2 (default bench/results/gpu); copy them into bench/results/ and commit.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?usage: gpu_run.sh tests|kernels-quick|kernels|sweep [OUT]}
OUT=${2:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, triton; print('device', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| triton', triton.__version__)" | tee "$OUT/env.txt"
case "$STAGE" in
  tests)          # GPU-only tests: compiled Triton kernels (no interpreter), bf16, real autotune
    TRITON_INTERPRET=0 timeout 540 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" ;;
  kernels-quick)  timeout 540 python3 bench/kernels.py --quick --out "$OUT" 2>&1 | tee "$OUT/kernels_quick.log" ;;
  kernels)        timeout 540 python3 bench/kernels.py --write-table --out "$OUT" 2>&1 | tee "$OUT/kernels_full.log" ;;
  sweep)          timeout 540 python3 bench/delta_sweep.py --out "$OUT" 2>&1 | tee "$OUT/delta_sweep.log" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
