"""Tabulate pilot runs: held-out bits/dim, steps, images/s and early skip rate per run dir.

Usage: python benchmarks/pilot_summary.py OUT_DIR   (writes OUT_DIR/summary.md and .json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(run_dir: Path) -> dict | None:
    """One row for a run directory holding metrics.jsonl; None when it has none."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    if not train or not valid:
        return None
    t0 = records[0]["time"]
    early = [r for r in train if r["step"] <= 200]
    skips_200 = early[-1]["skipped_total"] if early else None
    best = min(valid, key=lambda r: r["valid_bpd"])
    config = json.loads((run_dir / "config.json").read_text())
    n_params = next((r["n_params"] for r in records if "n_params" in r), None)
    return {
        "name": run_dir.name, "steps": train[-1]["step"],
        "images_per_s": round(train[-1]["images_per_s"], 1),
        "skipped_first_200": skips_200, "skipped_total": train[-1]["skipped_total"],
        "best_valid_bpd": round(best["valid_bpd"], 3), "best_at_step": best["step"],
        "last_valid_bpd": round(valid[-1]["valid_bpd"], 3),
        "minutes": round((valid[-1]["time"] - t0) / 60, 1), "n_params": n_params,
        "model": config["model"],
    }


def main(out: Path) -> None:
    rows = [r for d in sorted(out.iterdir()) if d.is_dir() and (r := summarize(d))]
    rows.sort(key=lambda r: r["best_valid_bpd"])
    lines = ["| pilot | best valid bits/dim (step) | last | steps | img/s | skipped in first 200 "
             "| skipped total |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['best_valid_bpd']:.3f} ({r['best_at_step']}) | "
                     f"{r['last_valid_bpd']:.3f} | {r['steps']} | {r['images_per_s']} | "
                     f"{r['skipped_first_200']} | {r['skipped_total']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
