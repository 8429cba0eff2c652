#!/usr/bin/env bash
# The main job: set up, then train a small BIVA on scikit-learn's 8x8 digits (no download),
# evaluate L_1 and L_1000 on the test split, write samples, reconstructions and curves.
# Usage: bash scripts/demo.sh [extra `biva run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/biva run --config digits --run-dir "runs/digits-$(date +%Y%m%d-%H%M%S)" "$@"
echo
echo "biva is installed in .venv: run '. .venv/bin/activate' (then 'biva --help'), or call"
echo ".venv/bin/biva directly. Next: docs/getting-started.md, or bash scripts/docs.sh for the site."
