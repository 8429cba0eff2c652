"""Table and curves of semi-supervised runs: validation error against CPU minutes (PNG), best
validation error, and the test error of the best checkpoint (from `biva evaluate`).

Usage: python benchmarks/ssl_summary.py OUT_DIR [--at 20,60,120] [--at-steps 12000] [--draws]
(writes OUT_DIR/summary.md/json and valid_error_vs_cpu.png; each run dir holds
eval_test_k1.json). ``--at``: also the best validation error each run reached within that many
CPU-minutes (equal budgets for runs that trained for different times); ``--at-steps``: within
that many steps (equal training for models that cost different CPU time a step).
``--draws``: runs named RECIPE_seedS are label draws of one recipe (``SEEDS=...
ssl_recipes.sh``); writes OUT_DIR/draws.json, one object per recipe with its ``variant``, the
``test_errors`` of its draws (fractions, 10,000 test images each) and their mean and standard
deviation, as the paper's Table 3 (with ``--at-steps``, each draw's validation error within
each step budget and their mean).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biva.evaluation.plots import plot_valid_vs_cpu
from biva.utils.jsonl import read_jsonl


def best_within(valid: list[dict], minutes: float) -> float | None:
    """The lowest validation error among the evaluations within ``minutes`` of CPU time."""
    return min((r["valid_error"] for r in valid if r["cpu_s"] <= 60 * minutes), default=None)


def best_within_steps(valid: list[dict], steps: int) -> float | None:
    """The lowest validation error among the evaluations at or before step ``steps``."""
    return min((r["valid_error"] for r in valid if r["step"] <= steps), default=None)


def step_cost(train: list[dict]) -> dict:
    """The CPU cost of a step (ms, validations included) between the first and the last train
    record, and the run's share of a core over that time (CPU seconds / wall seconds: 1.0 is
    a core of its own; less, a busy machine). None where the records lack times."""
    timed = [r for r in train if "time" in r and "cpu_s" in r]
    if len(timed) < 2 or timed[-1]["step"] == timed[0]["step"]:
        return {"cpu_ms_per_step": None, "cpu_share": None}
    cpu = timed[-1]["cpu_s"] - timed[0]["cpu_s"]
    wall = timed[-1]["time"] - timed[0]["time"]
    return {"cpu_ms_per_step": round(1000 * cpu / (timed[-1]["step"] - timed[0]["step"]), 2),
            "cpu_share": round(cpu / wall, 3) if wall > 0 else None}


def machine() -> dict:
    """The machine the summary was made on: CPU model, cores, torch version, load."""
    from biva.utils.machine import describe_machine

    return describe_machine()


def paired_difference(result: list[dict], a: str, b: str) -> dict | None:
    """Test error of recipe ``a`` minus recipe ``b`` on the label draws both ran (same seed:
    the same 100 labels): the differences, their mean and its 95% t-interval (None with fewer
    than 2 draws)."""
    from biva.utils.paired import paired_difference as paired

    by = {g["recipe"]: dict(zip(g["seeds"], g["test_errors"], strict=True)) for g in result}
    if a not in by or b not in by or (p := paired(by[a], by[b])) is None:
        return None
    return {"a": a, "b": b, **{k: p[k] for k in ("seeds", "differences", "n", "mean")},
            "ci95": p["ci95"]}


def summarize(run: Path, at: tuple[float, ...] = (), at_steps: tuple[int, ...] = ()
              ) -> dict | None:
    """One row for a semi-supervised run directory; None when it has no validation yet.
    ``at``: CPU-minute budgets for the ``valid_at`` column (best validation error within each;
    None when the run has not trained that long); ``at_steps``: the same within step budgets
    (``valid_at_steps``)."""
    records = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    valid = [r for r in records if r.get("kind") == "valid"]
    train = [r for r in records if r.get("kind") == "train"]
    if not valid:
        return None
    best = min(valid, key=lambda r: r["valid_error"])
    row = {"recipe": run.name, "steps": train[-1]["step"] if train else 0,
           **step_cost(train),
           "cpu_minutes": round(max(r["cpu_s"] for r in records) / 60, 1),
           "best_valid_error": best["valid_error"], "best_step": best["step"],
           "last_valid_error": valid[-1]["valid_error"]}
    if at:
        row["valid_at"] = {f"{t:g}": best_within(valid, t) if row["cpu_minutes"] >= t - 0.5
                           else None for t in at}
    if at_steps:
        row["valid_at_steps"] = {str(n): best_within_steps(valid, n) if row["steps"] >= n
                                 else None for n in at_steps}
    test = run / "eval_test_k1.json"
    if test.is_file():
        cls = json.loads(test.read_text())["classification"]
        row.update(test_error=cls["error"], test_examples=cls["n_examples"])
        gen = cls.get("generative_k1")
        if gen:  # the generative model's own classes, p(y|x) ∝ exp L_1(x, y)
            row.update(generative_error=gen["error"],
                       class_information_nats=gen["class_information_nats"],
                       agreement_with_q=gen["agreement_with_q"])
    return row


def draws(rows: list[dict], out: Path) -> list[dict]:
    """Group RECIPE_seedS rows by recipe: mean and sample std of their test errors."""
    import re
    import statistics

    groups: dict[str, list[dict]] = {}
    for r in rows:
        m = re.fullmatch(r"(.+)_seed(\d+)", r["recipe"])
        if m and "test_error" in r:
            groups.setdefault(m.group(1), []).append({**r, "seed": int(m.group(2))})
    result = []
    for recipe, rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        cfg = json.loads((out / rs[0]["recipe"] / "config.json").read_text())
        errors = [r["test_error"] for r in rs]
        extra = {}
        if "valid_at_steps" in rs[0]:
            # Equal steps: validation error of every draw within each step budget, and its mean
            # over the draws that reached it.
            extra["valid_at_steps"] = {}
            for n in rs[0]["valid_at_steps"]:
                per_draw = [r["valid_at_steps"][n] for r in rs]
                reached = [v for v in per_draw if v is not None]
                extra["valid_at_steps"][n] = {
                    "errors": per_draw, "mean": statistics.fmean(reached) if reached else None}
        result.append({"recipe": recipe, "variant": cfg["model"]["variant"],
                       "steps": [r["steps"] for r in rs],
                       "cpu_ms_per_step": [r.get("cpu_ms_per_step") for r in rs],
                       "cpu_share": [r.get("cpu_share") for r in rs], "machine": machine(),
                       "classifier_input": cfg["model"].get("classifier_input", "sample"),
                       "seeds": [r["seed"] for r in rs], "test_errors": errors,
                       "test_examples": [r["test_examples"] for r in rs],
                       "cpu_minutes": [r["cpu_minutes"] for r in rs],
                       "mean": statistics.fmean(errors),
                       "std": statistics.stdev(errors) if len(errors) > 1 else None, **extra})
    (out / "draws.json").write_text(json.dumps(result, indent=1) + "\n")
    pairs = [p for a, b in (("means", "m2"),) if (p := paired_difference(result, a, b))]
    if pairs:
        (out / "paired.json").write_text(json.dumps(pairs, indent=1) + "\n")
        for p in pairs:
            ci = (f", 95% interval [{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]"
                  if p["ci95"] else " (one draw: no interval)")
            print(f"{p['a']} - {p['b']}: {100 * p['mean']:+.2f} points of test error over "
                  f"{p['n']} paired draws{ci}")
    for g in result:
        spread = f" ± {100 * g['std']:.2f}" if g["std"] is not None else ""
        steps = "".join(f"; validation error within {n} steps {100 * v['mean']:.2f}% (mean)"
                        for n, v in g.get("valid_at_steps", {}).items() if v["mean"] is not None)
        print(f"{g['recipe']} ({g['variant']}, {len(g['test_errors'])} draws): "
              f"{100 * g['mean']:.2f}%{spread}{steps}")
    return result


def main(out: Path, at: tuple[float, ...] = (), by_draw: bool = False,
         at_steps: tuple[int, ...] = ()) -> None:
    runs = sorted(d for d in out.iterdir() if (d / "metrics.jsonl").is_file())
    rows = [r for d in runs if (r := summarize(d, at, at_steps))]
    at_head = "".join(f" best valid error within {t:g} CPU-min |" for t in at)
    at_head += "".join(f" best valid error within {n} steps |" for n in at_steps)
    lines = ["| recipe | CPU min | steps | best valid error (step) | last valid error |" + at_head
             + " test error (10,000) | generative model's error | nats about y (at most log C) "
             "| same class as q |", "|---" * (9 + len(at) + len(at_steps)) + "|"]
    for r in rows:
        test = f"{100 * r['test_error']:.2f}%" if "test_error" in r else "-"
        gen = (f"{100 * r['generative_error']:.2f}% | {r['class_information_nats']:.2f} | "
               f"{100 * r['agreement_with_q']:.1f}%" if "generative_error" in r
               else "- | - | -")
        within = "".join(f" {100 * v:.1f}% |" if v is not None else " - |"
                         for v in [*r.get("valid_at", {}).values(),
                                   *r.get("valid_at_steps", {}).values()])
        lines.append(f"| {r['recipe']} | {r['cpu_minutes']} | {r['steps']} | "
                     f"{100 * r['best_valid_error']:.1f}% ({r['best_step']}) | "
                     f"{100 * r['last_valid_error']:.1f}% |{within} {test} | {gen} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot_valid_vs_cpu({d.name: d for d in runs}, out / "valid_error_vs_cpu.png",
                      key="valid_error", ylabel="validation error (1,000 images, EMA)")
    print("\n".join(lines))
    if by_draw:
        draws(rows, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory of semi-supervised run directories")
    parser.add_argument("--at", default="", help="comma-separated CPU-minute budgets")
    parser.add_argument("--at-steps", default="", help="comma-separated step budgets")
    parser.add_argument("--draws", action="store_true",
                        help="mean and std over the label draws RECIPE_seedS (draws.json)")
    args = parser.parse_args()
    main(args.out, tuple(float(t) for t in args.at.split(",") if t), args.draws,
         tuple(int(n) for n in args.at_steps.split(",") if n))
