#!/usr/bin/env bash
# Mutation testing of the math core with mutmut (slow: hours on 2 cores; not in CI).
# Mutates the files listed under [tool.mutmut] in pyproject.toml (hierarchy, semi-supervised
# model, objectives, likelihoods, Gaussian latents) and runs the tests listed there against
# each mutant, in a scratch clone so the work tree stays clean. Fast tests run first and the
# brute-force ones (marked slow) last, so a killed mutant costs seconds. Resumable: a second
# call runs only the mutants without a result. Prints the per-file counts and the survivors.
#   bash scripts/mutation.sh [SCRATCH_DIR [MUTANT_GLOB...]]    (default: /tmp/biva-mutation)
#   e.g. bash scripts/mutation.sh /tmp/m 'biva.models.hierarchy*'   (one file first)
# After adding tests for survivors: RETEST_SURVIVORS=1 bash scripts/mutation.sh /tmp/m [GLOB...]
# (with globs, only the matching survivors are tested again)
# A quick first pass can leave out the slowest tests (their names, comma-separated), which
# survivors then pay for in a full retest:
#   MUTATION_DESELECT=test_classifier_learns_digits_when_every_label_is_known bash scripts/...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q "mutmut>=3.8,<4"
SCRATCH=${1:-/tmp/biva-mutation}
shift || true
if [ ! -d "$SCRATCH/.git" ]; then
  git clone -q . "$SCRATCH"
fi
git -C "$SCRATCH" fetch -q "$(pwd)" HEAD && git -C "$SCRATCH" checkout -q FETCH_HEAD
ln -sfn "$(pwd)/.venv" "$SCRATCH/.venv"
cd "$SCRATCH"
# mutmut copies data files (configs) into mutants/ only once; refresh them so that the clean
# test run sees the checked-out ones.
if [ -d mutants/src ]; then
  (cd src && find . -type f ! -name '*.py' ! -path '*/__pycache__/*' \
     -exec cp --parents {} ../mutants/src/ \;)
fi
if [ "${RETEST_SURVIVORS:-0}" = 1 ] && [ -d mutants ]; then
  .venv/bin/python "$OLDPWD/scripts/mutation_summary.py" mutants --reset-survivors "$@"
fi
OMP_NUM_THREADS=1 .venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@" || true
.venv/bin/python "$OLDPWD/scripts/mutation_summary.py" mutants
