"""Summarize the runs of ``amp_equivalence.sh``: validation ELBO per step and training speed.

Usage: python benchmarks/amp_summary.py OUT   (prints one JSON object)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from biva.utils.jsonl import read_jsonl


def summarize(run: Path) -> dict:
    """Validation ELBO (nats) by step, median training images/s and summed train seconds."""
    recs = read_jsonl(run / "metrics.jsonl")
    train = [r for r in recs if r.get("kind") == "train"]
    valid = {r["step"]: r["valid_elbo"] for r in recs if r.get("kind") == "valid"}
    batch = json.loads((run / "config.json").read_text())["train"]["batch_size"]
    speeds = [r["images_per_s"] for r in train if r.get("images_per_s")]
    # Seconds of training (not validation): each log interval's steps at its own speed.
    seconds = 0.0
    prev = 0
    for r in train:
        if r.get("images_per_s"):
            seconds += (r["step"] - prev) * batch / r["images_per_s"]
        prev = r["step"]
    return {"valid_elbo": valid, "final_valid_elbo": valid[max(valid)] if valid else None,
            "median_images_per_s": statistics.median(speeds) if speeds else None,
            "train_seconds": round(seconds, 1), "steps": train[-1]["step"] if train else 0,
            "skipped_total": train[-1]["skipped_total"] if train else 0}


def main(out: str) -> None:
    runs = {p.name: summarize(p) for p in sorted(Path(out).iterdir())
            if (p / "metrics.jsonl").is_file()}
    res: dict = {"runs": runs}
    for amp in ("none", "bf16"):
        finals = [r["final_valid_elbo"] for n, r in runs.items()
                  if n.endswith(f"_{amp}") and r["final_valid_elbo"] is not None]
        speeds = [r["median_images_per_s"] for n, r in runs.items()
                  if n.endswith(f"_{amp}") and r["median_images_per_s"]]
        res[amp] = {"final_valid_elbo": finals,
                    "mean_final_valid_elbo": statistics.fmean(finals) if finals else None,
                    "median_images_per_s": statistics.median(speeds) if speeds else None}
    if res["none"]["median_images_per_s"] and res["bf16"]["median_images_per_s"]:
        res["bf16_speedup"] = (res["bf16"]["median_images_per_s"]
                               / res["none"]["median_images_per_s"])
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
