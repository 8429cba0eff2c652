#!/usr/bin/env bash
# Does bf16 autocast learn the same as fp32? static_mnist_cpu, seeds 0 and 1, fp32 vs bf16,
# STEPS steps each (one thread a run, run one after another), validation ELBO on the whole
# validation split every 500 steps. Writes OUT/<seed>_<amp>/ runs and OUT/summary.json.
#   bash benchmarks/amp_equivalence.sh OUT [STEPS]          (about 25 CPU-min a run at 1500)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: amp_equivalence.sh OUT [STEPS]}
STEPS=${2:-1500}
BIVA=${BIVA:-.venv/bin/biva}
mkdir -p "$OUT"
for seed in 0 1; do
  for amp in none bf16; do
    dir="$OUT/seed${seed}_${amp}"
    if [ -f "$dir/config.json" ]; then
      $BIVA train --resume "$dir" --threads 1 --no-progress
    else
      $BIVA train --config static_mnist_cpu --run-dir "$dir" --seed "$seed" --amp "$amp" \
        --threads 1 --no-progress --steps "$STEPS" --set train.finetune_steps=0 \
        --set train.eval_every=500 --set train.eval_batches=0
    fi
  done
done
.venv/bin/python benchmarks/amp_summary.py "$OUT" > "$OUT/summary.json"
cat "$OUT/summary.json"
