#!/usr/bin/env bash
# Build the documentation site into docs/_build/html (warnings are errors; offline).
# Usage: bash scripts/docs.sh   (then open docs/_build/html/index.html)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv/bin/python -c "import sphinx, myst_parser, furo" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q -e ".[docs]"
fi
exec .venv/bin/python -m sphinx -W --keep-going -b html -q docs docs/_build/html "$@"
