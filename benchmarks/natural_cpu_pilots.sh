#!/usr/bin/env bash
# Short pilots for the natural-image CPU config: each candidate trains for MINUTES wall-minutes
# on one thread on an image folder, then benchmarks/pilot_summary.py tabulates held-out bits/dim,
# steps, throughput and the skip rate of the first 200 steps.
# Usage: bash benchmarks/natural_cpu_pilots.sh OUT_DIR DATA_PATH MINUTES CANDIDATE...
# Candidates are the names below; two run at a time (one thread each).
set -euo pipefail
out=$1; data=$2; minutes=$3; shift 3
mkdir -p "$out"

# Shared: 32x32 conv latents with 3x3 latent kernels, the discretized logistic mixture, bf16 auto.
base=(--config natural32_cpu --set "data.path=$data" --threads 1 --no-progress
      --set "train.max_minutes=$minutes" --set train.steps=1000000)

candidate() {
  case $1 in
    L6-f32)   echo "" ;;  # the shipped natural32_cpu config as it stands
    L6-f48)   echo "--set model.filters=[48]" ;;
    L6-f32-b2) echo "--set model.blocks=2" ;;
    L10-f32)  echo "--set model.latents=[16,16,16,16,16,16,16,16,16,16] --set model.kernels=[5,3,3,3,3,3,3,3,3,3] --set model.strides=[2,1,1,1,1,2,1,1,1,2]" ;;
    L15-f32)  echo "--set model.latents=[38,36,34,32,30,28,26,24,22,20,18,16,14,12,10] --set model.kernels=[5,3,3,3,3,3,3,3,3,3,3,3,3,3,3] --set model.strides=[2,1,1,1,1,1,1,1,1,1,2,1,1,1,2]" ;;
    z8)       echo "--set model.latents=[8,8,8,8,8,8]" ;;
    z32)      echo "--set model.latents=[32,32,32,32,32,32]" ;;
    mix10)    echo "--set model.n_mix=10" ;;
    fb0)      echo "--set train.free_bits=0" ;;
    fb2)      echo "--set train.free_bits=2" ;;
    drop0)    echo "--set model.dropout_q=0" ;;
    lr1e-3)   echo "--set train.lr=0.001" ;;
    bs16)     echo "--set train.batch_size=16" ;;
    *) echo "unknown candidate $1" >&2; exit 2 ;;
  esac
}

run_one() {
  local name=$1
  local extra
  extra=$(candidate "$name")
  # shellcheck disable=SC2086
  biva train "${base[@]}" $extra --run-dir "$out/$name" > "$out/$name.log" 2>&1 \
    || echo "pilot $name failed: see $out/$name.log" >&2
}

while (($#)); do
  run_one "$1" & shift
  if (($#)); then run_one "$1" & shift; fi
  wait
done
python "$(dirname "$0")/pilot_summary.py" "$out"
