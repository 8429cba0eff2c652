#!/usr/bin/env bash
# Skipped updates in the first 200 steps and in steps 201-400 of each CPU-sized shipped config
# (one thread each, in turn). The paper-sized GPU configs train ~8 images/s here and are left
# out; for every config the learning-rate warm-up (200 steps) skips nothing by construction.
# Usage: bash benchmarks/skip_rates.sh OUT_DIR DATA_ROOT [STEPS]
set -euo pipefail
out=$1; root=$2; steps=${3:-400}
mkdir -p "$out"
run() {  # name, extra args...
  local name=$1; shift
  [ -f "$out/$name/metrics.jsonl" ] && return 0
  biva train "$@" --run-dir "$out/$name" --steps "$steps" --threads 1 --no-progress \
    --set train.log_every=10 --set train.eval_every=1000000 --set train.finetune_steps=0 \
    > "$out/$name.log" 2>&1 || echo "$name failed: see $out/$name.log" >&2
}
run digits --config digits
run static_mnist_cpu --config static_mnist_cpu --data-root "$root"
run fashion_mnist_cpu --config fashion_mnist_cpu --data-root "$root"
run natural32_cpu --data "$root/photos32"
run natural64_cpu --data "$root/photos32" --image-size 64
run mnist_100_labels_cpu --config mnist_100_labels_cpu --data-root "$root"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
rows = ["| config | skipped, steps 1-200 | skipped, steps 201-400 | images/s |", "|---|---|---|---|"]
for d in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "metrics.jsonl").is_file()):
    recs = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    first = sum(round(r["skipped"] * r["n_steps"]) for r in train if r["step"] <= 200)
    second = sum(round(r["skipped"] * r["n_steps"]) for r in train if 200 < r["step"] <= 400)
    rows.append(f"| {d.name} | {first} | {second} | {train[-1]['images_per_s']:.1f} |")
text = "\n".join(rows) + "\n"
(Path(sys.argv[1]) / "summary.md").write_text(text)
print(text)
PY
