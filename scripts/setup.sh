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
  # Torch first, pinned, so no dependency pulls a (multi-GB) CUDA build. --no-compile: byte-
  # compiling every file of torch at install took about as long as the install itself; the
  # modules a run imports are compiled on first import instead.
  .venv/bin/python -m pip install -q --no-compile "torch==2.13.0"
fi
stamp=.venv/.biva-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --no-compile -e ".[dev]"
  touch "$stamp"
fi
