#!/usr/bin/env bash
# Set up, lint (ruff and the import contract), and run the test suite, one pytest-xdist worker
# per core (files stay whole on a worker: --dist loadfile), each worker and its subprocesses on
# one thread.
# Usage: bash scripts/test.sh [--fast | --all] [extra pytest options]  (e.g. -n 0: one process)
#   (none): what CI runs: every test but the extended ones.
#   --fast: the tier a developer runs before every commit: every test not marked slow
#           (the slow ones are listed by `pytest -m slow --collect-only -q`).
#   --all:  every test, the extended ones too (`pytest -m extended --collect-only -q` lists
#           them: memory growth, multi-process and compiled runs, the GPU check's dry run, a
#           real training recipe); run it before a release and at the end of a session.
set -euo pipefail
cd "$(dirname "$0")/.."
marker=(-m "not extended")
case "${1:-}" in
  --fast) marker=(-m "not slow and not extended"); shift ;;
  --all) marker=(); shift ;;
esac
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks docs
# The layers of the package (pyproject.toml, [tool.importlinter]): no upward or sideways import.
.venv/bin/lint-imports --no-cache
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n auto --dist loadfile --durations=15 "${marker[@]}" "$@"
