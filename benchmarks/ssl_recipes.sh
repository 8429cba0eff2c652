#!/usr/bin/env bash
# Semi-supervised MNIST with 100 labels: recipes at equal CPU time (train.max_cpu_minutes; one
# thread each, two at a time), from mnist_100_labels_cpu (L = 3, 16 filters, one block a stage;
# the overrides below pin that hierarchy, which the config has shipped since these runs, and
# BIVA, which the recipes other than m2 train; the config itself now ships M2). Then
# the test error of each best checkpoint. Run again with a larger MINUTES to train the same
# runs further.
# Usage: bash benchmarks/ssl_recipes.sh OUT_DIR DATA_ROOT MINUTES RECIPE...
#   recipes: balanced paper supervised m2, and BIVA balanced variants: alphaA (train.alpha=A,
#   e.g. alpha5.5), unlabelledU (U unlabelled rows a step), labelledL (L labelled rows a step)
set -euo pipefail
out=$1; root=$2; minutes=$3; shift 3
mkdir -p "$out"
small=(--set model.filters=[16] --set model.blocks=1 --set model.latents=[32,16,8]
       --set model.kernels=[5,3,3] --set model.strides=[2,2,1] --set model.variant=biva)
recipe() {
  case $1 in
    balanced)   echo "--set train.ssl_objective=balanced" ;;
    paper)      echo "--set train.ssl_objective=paper" ;;
    supervised) echo "--set train.ssl_objective=supervised" ;;
    m2)         echo "--set train.ssl_objective=balanced --set model.variant=vae" ;;
    alpha*)     echo "--set train.ssl_objective=balanced --set train.alpha=${1#alpha}" ;;
    unlabelled*) echo "--set train.ssl_objective=balanced --set train.batch_size=${1#unlabelled}" ;;
    labelled*)  echo "--set train.ssl_objective=balanced --set data.labelled_batch_size=${1#labelled}" ;;
    *) echo "unknown recipe $1" >&2; exit 2 ;;
  esac
}
one() {
  local name=$1 extra
  extra=$(recipe "$name")
  if [ -f "$out/$name/config.json" ]; then
    # An existing run continues up to the new budget (a larger MINUTES extends it; the step
    # cap grows with it so that the CPU budget is what stops the run).
    biva train --resume "$out/$name" --no-progress --set "train.max_cpu_minutes=$minutes" \
      --set "train.steps=$((minutes * 1000))" >> "$out/$name.log" 2>&1 || true
  else
    # shellcheck disable=SC2086
    biva train --config mnist_100_labels_cpu --data-root "$root" --run-dir "$out/$name" \
      --threads 1 --no-progress "${small[@]}" $extra --set "train.max_cpu_minutes=$minutes" \
      --set train.eval_every=250 --set train.checkpoint_every=250 \
      > "$out/$name.log" 2>&1 || echo "$name failed: see $out/$name.log" >&2
  fi
  biva evaluate "$out/$name" --k 1 --split test --threads 1 --no-progress \
    >> "$out/$name.log" 2>&1 || echo "$name evaluation failed" >&2
}
while (($#)); do
  one "$1" & shift
  if (($#)); then one "$1" & shift; fi
  wait
done
