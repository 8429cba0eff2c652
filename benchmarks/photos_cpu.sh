#!/usr/bin/env bash
# The "Your own images" figures (docs/guide/own-images.md): natural32_cpu on an image folder for a CPU-time
# budget (one thread), then the test bits/dim, samples, reconstructions and anomaly scores of
# the held-out photos against MNIST digits made 32x32 colour images and against noise.
# Usage: bash benchmarks/photos_cpu.sh RUN_DIR [FOLDER] [MINUTES] [DATA_ROOT]
set -euo pipefail
run=$1
folder=${2:-../shared/data/photos32}
minutes=${3:-60}
root=${4:-../shared/data}

if [ -f "$run/config.json" ]; then
  biva run --resume "$run" --samples 100 --no-progress
else
  biva run --data "$folder" --run-dir "$run" --threads 1 --no-progress --samples 100 \
    --set "train.max_minutes=$minutes"
fi
biva sample "$run" -n 16 --temperature 1.0,0.7 --out "$run/figures/samples_t1.0_t0.7.png"
biva ood "$run" --ood-data mnist uniform mean_noise --fit-shape --data-root "$root" \
  --score elbo,lk,llr,llr_mean --n-examples 500 --n-valid 250 --threads 1 --no-progress
python - "$run" <<'PY'
import sys
from pathlib import Path
from biva.evaluation.plots import plot_valid_vs_cpu
run = Path(sys.argv[1])
print("figure:", plot_valid_vs_cpu({run.name: run}, run / "figures" / "valid_bpd_vs_cpu.png"))
PY
