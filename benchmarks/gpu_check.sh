#!/usr/bin/env bash
# The accelerator check in one call (at most 9 minutes on one CUDA GPU); see gpu_check.py.
#   bash benchmarks/gpu_check.sh OUT_DIR                        # CUDA
#   bash benchmarks/gpu_check.sh OUT_DIR --device cpu --quick   # the CPU dry run (< 1 min)
# Sets up .venv first when it is missing (scripts/setup.sh), so it runs on a bare machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR [--device cuda|cpu] [--quick] [--data-root DIR]}
shift
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup.sh
fi
export BIVA_DATA_DIR="${BIVA_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python benchmarks/gpu_check.py "$OUT" "$@"
