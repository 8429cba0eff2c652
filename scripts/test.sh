#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (about 5 minutes on 2 cores).
# Usage: bash scripts/test.sh [extra pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks docs
exec .venv/bin/python -m pytest -q "$@"
