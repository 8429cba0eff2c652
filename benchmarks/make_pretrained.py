"""Turn a finished run into a shipped pretrained model with its card (maintainers' tool).

Writes src/biva/pretrained/NAME/ (config.json, model.safetensors, card.json, README.md and the
run's detector.json if it has one). Each card score is measured on a fixed, seeded slice of the
real test split at importance-sampling seeds 0, 1, 2: the card states the seed-0 value (what
tests/test_pretrained.py re-measures) and the standard deviation over the three seeds as its
Monte Carlo error. With --half the weights are stored as float16 only if every score moves
by less than its Monte Carlo error; otherwise float32 is kept (and the card says which).

Usage:
  python benchmarks/make_pretrained.py RUN_DIR NAME --description TEXT --command "biva ..."
      --commit SHA --date YYYY-MM-DD [--metric L_1 --metric L_100] [--n-examples 200] [--half]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from biva.pretrained import card_markdown, load, measure, save_pretrained  # noqa: E402
from biva.utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from biva.utils.jsonl import read_jsonl  # noqa: E402


def _scores(folder: Path, metrics: list[str], n: int) -> list[dict]:
    p = load(folder)
    out = []
    for metric in metrics:
        values = [measure(p, metric, n_examples=n, seed=s) for s in (0, 1, 2)]
        out.append({"metric": metric, "unit": "nats", "split": "test", "n_examples": n,
                    "seed": 0, "value": values[0],
                    "mc_error": statistics.stdev(values) if len(values) > 1 else 0.0})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--description", required=True)
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--metric", action="append", default=None)
    ap.add_argument("--n-examples", type=int, default=200)
    ap.add_argument("--half", action="store_true")
    args = ap.parse_args()
    metrics = args.metric or ["L_1", "L_100"]
    out = ROOT / "src" / "biva" / "pretrained" / args.name
    cfg = json.loads((args.run_dir / "config.json").read_text())
    records = read_jsonl(args.run_dir / "metrics.jsonl")
    cpu = max((r["cpu_s"] for r in records if "cpu_s" in r), default=math.nan) / 60
    steps = max((r["step"] for r in records if "step" in r), default=0)
    card = {"name": args.name, "description": args.description,
            "data": {"name": cfg["data"]["name"], "split_seed": cfg["data"].get("split_seed"),
                     "binarization": cfg["data"].get("binarization")},
            "training": {"command": args.command, "commit": args.commit, "date": args.date,
                         "cpu_minutes": round(cpu, 1), "steps": steps}}
    tmp = out.with_name(out.name + ".float32")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(args.run_dir, tmp, card={**card, "scores": []})
    scores = _scores(tmp, metrics, args.n_examples)
    chosen, half = tmp, False
    if args.half:
        tmp16 = out.with_name(out.name + ".float16")
        shutil.rmtree(tmp16, ignore_errors=True)
        save_pretrained(args.run_dir, tmp16, card={**card, "scores": []}, half=True)
        s16 = _scores(tmp16, metrics, args.n_examples)
        moved = [abs(a["value"] - b["value"]) for a, b in zip(scores, s16, strict=True)]
        if all(m < max(a["mc_error"], 1e-9) for m, a in zip(moved, scores, strict=True)):
            chosen, half, scores = tmp16, True, s16
        print(f"float16 moves the scores by {moved} (Monte Carlo errors "
              f"{[a['mc_error'] for a in scores]}): keeping {'float16' if half else 'float32'}")
    shutil.rmtree(out, ignore_errors=True)
    chosen.rename(out)
    for extra in (tmp, out.with_name(out.name + ".float16")):
        shutil.rmtree(extra, ignore_errors=True)
    full = json.loads((out / "card.json").read_text())
    full["scores"] = scores
    atomic_write_json(out / "card.json", full)
    atomic_write_text(out / "README.md", card_markdown(full))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"written {out} ({size / 1e6:.2f} MB, {'float16' if half else 'float32'})")
    print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
