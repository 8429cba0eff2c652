#!/usr/bin/env bash
# Run every benchmark; each prints one JSON line (collect them with `> results.jsonl`).
#   bash benchmarks/run_all.sh                 # full: tens of minutes on a 2-core CPU
#   bash benchmarks/run_all.sh --quick         # smoke version: a few minutes
#   bash benchmarks/run_all.sh --device cuda   # extra arguments go to every benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
$PY benchmarks/bench_conv.py --preset binary "$@"
$PY benchmarks/bench_train.py --preset binary --batch 48 "$@"
$PY benchmarks/bench_train.py --preset natural32 --batch 8 "$@"
$PY benchmarks/bench_eval.py --preset binary --samples 1000 "$@"
$PY benchmarks/bench_sample.py --preset binary "$@"
