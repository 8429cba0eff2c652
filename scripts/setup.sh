#!/usr/bin/env bash
# Create .venv (if needed) with the CPU build of torch and biva installed editable.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Torch first, pinned, so no dependency pulls a (multi-GB) CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.biva-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
