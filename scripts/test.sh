#!/usr/bin/env bash
# Set up, lint (ruff and the import contract), and run the whole test suite, one pytest-xdist worker per core (files stay
# whole on a worker: --dist loadfile), each worker and its subprocesses on one thread.
# Usage: bash scripts/test.sh [extra pytest options]  (e.g. -n 0 for one process)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks docs
# The layers of the package (pyproject.toml, [tool.importlinter]): no upward or sideways import.
.venv/bin/lint-imports --no-cache
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n auto --dist loadfile --durations=15 "$@"
