#!/usr/bin/env bash
# The figures of docs/guide/latents.md: what each layer of the shipped photos32 and
# fashion-mnist-ood models holds, on the first 8 test images of their own data sets.
# Usage: bash scripts/latent_figures.sh [OUT_DIR]   (default docs/results/latents)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/results/latents}
for m in photos32 fashion-mnist-ood; do
  .venv/bin/biva sample --pretrained "$m" --from-split test -n 8 --threads 1 \
    --out "$out/$m"
  .venv/bin/biva sample --pretrained "$m" --from-split test -n 8 --threads 1 \
    --keep 6 --interpolate-layers 1,6 --interpolate-others prior --out "$out/${m}_others_prior"
done
