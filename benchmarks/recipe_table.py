"""Compare training recipes of one variant from their ablation results (Markdown on stdout).

Each argument is LABEL=PATH, PATH an ``ablation_result.json`` (or the run directory holding
one) written by ``biva ablation``. Columns: steps, test L_1 and L_K (bits/dim for 8-bit
data, else nats), the best validation bound by the step count of the shortest run (equal
steps; the recipes of one variant cost the same a step), and per latent group the test KL
(nats) and active units.

    python benchmarks/recipe_table.py fb0.5=runs/recipes/fb0.5/biva/seed0 \\
        fb2=runs/ablation_photos32/biva/seed0 --json docs/results/recipes.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from biva.experiments.ablation import value_at_step


def load(spec: str) -> tuple[str, dict]:
    """LABEL=PATH -> (label, the run's ablation result)."""
    label, _, path = spec.partition("=")
    p = Path(path)
    p = p / "ablation_result.json" if p.is_dir() else p
    return label, json.loads(p.read_text())


def table(results: list[tuple[str, dict]], at_step: int | None = None) -> tuple[str, dict]:
    """The Markdown table and its numbers (JSON-ready)."""
    bpd = results[0][1]["kind"] == "8bit"
    k = results[0][1]["test"].get("k", 1)
    lk = f"L_{k}"
    unit = "bits/dim" if bpd else "nats"
    t = at_step or min(r["curve"]["step"][-1] for _, r in results)
    dims = results[0][1]["dims"]
    groups = results[0][1]["groups"]
    head = (f"| recipe | steps | test L_1 ({unit}) | test {lk} ({unit}) | "
            f"valid by step {t} ({unit}) | " +
            " | ".join(f"{g} KL / active" for g in groups) + " |")
    lines = [head, "|" + "---|" * (5 + len(groups))]
    rows = {}
    for label, r in results:
        at = value_at_step(r["curve"], t)
        conv = (lambda v: -v / (dims * math.log(2))) if bpd else (lambda v: -v)
        l1 = r["test"]["L_1_bpd"] if bpd else -r["test"]["L_1"]
        lkv = r["test"].get(f"{lk}_bpd" if bpd else lk, math.nan)
        lkv = lkv if bpd else -lkv
        layer = {x["group"]: x for x in r["layers"]}
        cells = [f"{layer[g]['kl']:.1f} / {layer[g]['active']}" if g in layer else "-"
                 for g in groups]
        valid = "-" if at is None else f"{conv(at):.3f}"
        lines.append(f"| {label} | {r['steps']} | {l1:.3f} | "
                     f"{lkv:.3f} | {valid} | " + " | ".join(cells) + " |")
        rows[label] = {"steps": r["steps"], "test_L_1": l1, f"test_{lk}": lkv,
                       "valid_at_equal_steps": None if at is None else conv(at),
                       "layers": r["layers"], "run_dir": r["run_dir"]}
    return "\n".join(lines) + "\n", {"units": unit, "equal_steps": t, "recipes": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    p.add_argument("--at-step", type=int, default=None,
                   help="step of the validation column (default: the shortest run's last)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args()
    text, numbers = table([load(s) for s in args.runs], args.at_step)
    print(text, end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
