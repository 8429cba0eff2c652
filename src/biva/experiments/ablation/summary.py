"""The ablation's tables and figures, from the runs' ``ablation_result.json`` files alone:
Table 1 (``table.json`` / ``table.md``), Figure 2 (``kl_per_layer.json`` / ``.png``) and the
validation curves (``curves.png``)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from biva.evaluation.style import save_png
from biva.experiments.ablation.runner import AblationRun, load_result
from biva.experiments.ablation.step_costs import (
    STEP_COSTS_FILE,
    equal_compute_steps,
    value_at_step,
)
from biva.experiments.ablation.variants import ABLATION_VARIANTS
from biva.utils.atomic import atomic_write_json, atomic_write_text
from biva.utils.machine import same_machine
from biva.utils.paired import paired_difference
from biva.utils.run_lock import output_lock


# ----------------------------------------------------------------------------- summary
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)



def _cpu_minutes_comparable(results: Sequence[dict]) -> bool:
    """Whether the runs' accumulated CPU-minutes may stand side by side: all were made on one
    kind of machine (a run without a machine record matches nothing). Even then they only
    describe the runs; "equal compute" comes from paired step costs (:mod:`.step_costs`)."""
    machines = [r.get("machine") for r in results]
    return all(same_machine(machines[0], m) for m in machines[1:]) and bool(machines[0])


def _equal_compute(results: Sequence[dict], step_costs: dict | None) -> dict:
    """The equal-compute budget of the table and the step each variant reaches on it; the
    budget is the runs' step count of the cheapest variant *measured* (not shown)."""
    if step_costs is None:
        return {"basis": "not measured: no paired step costs (biva ablation --step-costs)",
                "steps": {}}
    budget_steps = min(r["budget"]["steps"] for r in results)
    eq = equal_compute_steps(step_costs, budget_steps)
    return {**eq, "budget_steps": budget_steps, "machine": step_costs["machine"],
            "load_1min_after": step_costs.get("load_1min_after"),
            "basis": f"{budget_steps} steps of {eq['reference']} (the cheapest variant "
            f"measured), step costs paired on {step_costs['machine'].get('cpu')}"}


def summarize(results: Sequence[dict], variants: Sequence[str],
              step_costs: dict | None = None) -> dict:
    """Table 1 and Figure 2 of the ablation from the runs' results (see module docstring).

    Bounds are in nats per example and, for 8-bit data, bits/dim. "At equal compute" (with
    ``step_costs``, a ``step_costs.json``) is the best validation ELBO each run held at the
    step its variant reaches on one budget (:func:`.step_costs.equal_compute_steps`),
    interpolated between validations.
    """
    if not results:
        raise ValueError("no finished ablation runs to summarize")
    k = results[0]["test"].get("k", 1)
    lk = f"L_{k}" if k > 1 else "L_1"
    equal = _equal_compute(results, step_costs)
    cpu_ok = _cpu_minutes_comparable(results)
    rows = []
    for v in [v for v in variants if any(r["variant"] == v for r in results)]:
        rs = sorted((r for r in results if r["variant"] == v), key=lambda r: r["seed"])
        row = {"variant": v, "description": ABLATION_VARIANTS.get(v, ""),
               "seeds": [r["seed"] for r in rs], "params": rs[0]["params"],
               "stochastic_layers": rs[0]["stochastic_layers"],
               "steps": _mean_std([r["steps"] for r in rs])[0],
               "cpu_minutes": _mean_std([r["cpu_minutes"] for r in rs])[0] if cpu_ok else None,
               "cpu_s_per_step": (step_costs or {}).get("variants", {}).get(v, {}).get(
                   "cpu_s_per_step")}
        for name in ("L_1", lk):
            for suffix in ("", "_bpd"):
                vals = [r["test"].get(name + suffix) for r in rs]
                row[f"test_{name}{suffix}"] = vals
                row[f"test_{name}{suffix}_mean"], row[f"test_{name}{suffix}_std"] = (
                    _mean_std(vals))
        row.update(_at_equal_compute(rs, equal["steps"].get(v), results[0]))
        rows.append(row)
    return {"k": k, "dims": results[0]["dims"],
            "units": "bits/dim" if results[0]["kind"] == "8bit" else "nats",
            "dataset": results[0]["dataset"], "equal_compute": equal,
            "cpu_minutes_comparable": cpu_ok,
            "n_test": results[0]["test"]["n_examples"], "rows": rows,
            "paired_differences": _paired(rows, lk),
            "runs": list(results), "kl_per_layer": _kl_figure(results, rows)}


def _paired(rows: Sequence[dict], lk: str) -> list[dict]:
    """The reference variant (BIVA when in the table, else the first row) minus each other
    variant, seed by seed, on test L_1 and L_K (bits/dim for 8-bit data, else nats), with
    the 95% t-interval of the mean difference."""
    by = {r["variant"]: r for r in rows}
    ref = "biva" if "biva" in by else rows[0]["variant"]
    suffix = "_bpd" if by[ref].get("test_L_1_bpd_mean") is not None else ""
    out = []
    for v in by:
        for metric in dict.fromkeys((f"test_L_1{suffix}", f"test_{lk}{suffix}")):
            seeds = {s: x for s, x in zip(by[ref]["seeds"], by[ref][metric], strict=True)
                     if x is not None}
            other = {s: x for s, x in zip(by[v]["seeds"], by[v][metric], strict=True)
                     if x is not None}
            if v != ref and (p := paired_difference(seeds, other)) is not None:
                out.append({"a": ref, "b": v, "metric": metric, **p})
    return out


def _at_equal_compute(rs: Sequence[dict], step: float | None, first: dict) -> dict:
    """A variant's validation ELBO (and bits/dim) at its equal-compute step, per seed, mean
    and spread; None where unmeasured or past a run's end."""
    at = [None if step is None else value_at_step(r["curve"], step) for r in rs]
    mean, std = _mean_std(at)
    out = {"equal_compute_step": step, "valid_elbo_at_equal_compute": at,
           "valid_elbo_at_equal_compute_mean": mean, "valid_elbo_at_equal_compute_std": std}
    if first["kind"] == "8bit":
        scale = 1 / (first["dims"] * math.log(2))
        out["valid_bpd_at_equal_compute_mean"] = None if mean is None else -mean * scale
        out["valid_bpd_at_equal_compute_std"] = None if std is None else std * scale
    return out


def _kl_figure(results: Sequence[dict], rows: Sequence[dict]) -> list[dict]:
    """Figure 2's numbers: per variant and latent group, KL and active units over seeds."""
    figure = []
    for row in rows:
        rs = sorted((r for r in results if r["variant"] == row["variant"]),
                    key=lambda r: r["seed"])
        for group in rs[0]["layers"]:
            g = group["group"]
            per_seed = [next(x for x in r["layers"] if x["group"] == g) for r in rs]
            figure.append({"variant": row["variant"], "group": g, "layer": group["layer"],
                           "kl_mean": _mean_std([x["kl"] for x in per_seed])[0],
                           "kl": [x["kl"] for x in per_seed],
                           "active": [x["active"] for x in per_seed], "dims": group["dims"],
                           "active_fraction_mean": _mean_std(
                               [x["active_fraction"] for x in per_seed])[0]})
    return figure


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")



def _compute_label(summary: dict) -> str:
    eq = summary["equal_compute"]
    if "cpu_s" not in eq:
        return "equal compute: not measured"
    return f"the compute of {eq['budget_steps']} {eq['reference']} steps"


def table_markdown(summary: dict) -> str:
    """Table 1 and the per-layer figure's numbers as Markdown."""
    k, bpd = summary["k"], summary["units"] == "bits/dim"
    lk = f"L_{k}" if k > 1 else "L_1"
    unit = "bpd" if bpd else "nats"
    suffix, digits = ("_bpd", 3) if bpd else ("", 2)
    lines = [f"Test ({summary['n_test']} examples of {summary['dataset']}, best-validation "
             f"checkpoint; mean ± std over seeds; {summary['units']}, lower is better"
             + ("" if bpd else " for -L") + "). Equal compute: "
             + summary["equal_compute"]["basis"] + ":", "",
             f"| variant | params | seeds | steps | CPU-ms a step (paired) | L_1 ({unit}) | "
             f"{lk} ({unit}) | valid at {_compute_label(summary)} ({unit}) |",
             "|---|---|---|---|---|---|---|---|"]
    sign = 1 if bpd else -1     # bits/dim are positive already; -L in nats

    def neg(m, s):
        return (None if m is None else sign * m, s)

    for r in summary["rows"]:
        at = (_fmt(r.get("valid_bpd_at_equal_compute_mean"),
                   r.get("valid_bpd_at_equal_compute_std"), 3) if bpd else
              _fmt(*neg(r["valid_elbo_at_equal_compute_mean"],
                        r["valid_elbo_at_equal_compute_std"]), 2))
        if r["equal_compute_step"] is not None and at != "-":
            at += f" (step {r['equal_compute_step']:.0f})"
        cost = "-" if r["cpu_s_per_step"] is None else f"{1000 * r['cpu_s_per_step']:.0f}"
        lines.append(
            f"| `{r['variant']}` | {r['params'] / 1e6:.2f}M | {len(r['seeds'])} | "
            f"{r['steps']:.0f} | {cost} | "
            f"{_fmt(*neg(r[f'test_L_1{suffix}_mean'], r[f'test_L_1{suffix}_std']), digits)} | "
            f"{_fmt(*neg(r[f'test_{lk}{suffix}_mean'], r[f'test_{lk}{suffix}_std']), digits)} | "
            f"{at} |")
    lines += _paired_lines(summary)
    lines += ["", "KL(q||p) per latent group on the test examples (nats, mean over seeds) and "
              "active units (Var_x E_q[u] > 0.01), bottom group first:", "",
              "| variant | group | KL | active / units |", "|---|---|---|---|"]
    for f in summary["kl_per_layer"]:
        act = "/".join(str(a) for a in f["active"])
        lines.append(f"| `{f['variant']}` | {f['group']} | {f['kl_mean']:.2f} | "
                     f"{act} / {f['dims']} |")
    if summary.get("missing_runs"):
        lines += ["", f"Incomplete: {len(summary['missing_runs'])} run(s) without a result "
                  f"yet ({', '.join(summary['missing_runs'])}); run the same command again."]
    return "\n".join(lines) + "\n"


def _paired_lines(summary: dict) -> list[str]:
    """The paired differences as Markdown lines (none when no seed is shared)."""
    pairs = summary.get("paired_differences") or []
    if not pairs:
        return []
    bpd = summary["units"] == "bits/dim"
    lines = ["", f"Paired differences, seed by seed ({pairs[0]['a']} minus each; "
             + ("bits/dim, negative: " if bpd else "nats, positive: ") + f"{pairs[0]['a']} "
             "better); an ordering holds where the 95% interval excludes 0:", "",
             "| minus | metric | per seed | mean | 95% interval |", "|---|---|---|---|---|"]
    digits = 3 if bpd else 2
    for p in pairs:
        ci = ("- (one seed)" if p["ci95"] is None else
              f"[{p['ci95'][0]:.{digits}f}, {p['ci95'][1]:.{digits}f}]"
              + (" excludes 0" if p["excludes_zero"] else ""))
        per = ", ".join(f"{d:+.{digits}f}" for d in p["differences"])
        lines.append(f"| `{p['b']}` | {p['metric'].removeprefix('test_')} | {per} | "
                     f"{p['mean']:+.{digits}f} | {ci} |")
    return lines


def plot_kl_per_layer(summary: dict, out: Path) -> Path:
    """Figure 2's layout: KL per latent group (log scale) and active-unit share, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [r["variant"] for r in summary["rows"]]
    fig, axes = plt.subplots(2, len(variants), figsize=(3.2 * len(variants), 5.5),
                             squeeze=False, constrained_layout=True)
    for col, v in enumerate(variants):
        groups = [f for f in summary["kl_per_layer"] if f["variant"] == v]
        names = [f["group"] for f in groups]
        colors = ["tab:orange" if n.endswith("_bu") else "tab:blue" for n in names]
        ax = axes[0][col]
        ax.bar(range(len(groups)), [max(f["kl_mean"], 1e-3) for f in groups], color=colors)
        ax.set_yscale("log")
        ax.set_title(v)
        ax.set_ylabel("KL(q||p), nats" if col == 0 else "")
        ax = axes[1][col]
        ax.bar(range(len(groups)), [f["active_fraction_mean"] for f in groups], color=colors)
        ax.set_ylim(0, 1)
        ax.set_ylabel("active units (share)" if col == 0 else "")
        for a in axes[:, col]:
            a.set_xticks(range(len(groups)), names, rotation=90, fontsize=7)
            a.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{summary['dataset']}: per-layer KL and active units (orange: BIVA z^BU)")
    save_png(fig, out)
    plt.close(fig)
    return out



def plot_curves(results: Sequence[dict], summary: dict, out: Path) -> Path:
    """Validation bound against steps and, with paired step costs, against compute (steps x
    the variant's CPU seconds a step, in steps of the cheapest variant), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bpd = summary["units"] == "bits/dim"
    eq = summary["equal_compute"]
    costs = {r["variant"]: r["cpu_s_per_step"] for r in summary["rows"]}
    panels = 2 if "cpu_s" in eq else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), constrained_layout=True,
                             squeeze=False)
    axes = axes[0]
    colors = dict(zip(costs, plt.get_cmap("tab10").colors, strict=False))
    seen = set()
    for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
        c = r["curve"]
        y = c["valid_bpd"] if bpd else [-e for e in c["valid_elbo"]]
        label = None if r["variant"] in seen else r["variant"]
        seen.add(r["variant"])
        axes[0].plot(c["step"], y, color=colors.get(r["variant"]), label=label, alpha=0.85)
        if panels == 2 and costs.get(r["variant"]):
            ref = eq["cpu_s"] / eq["budget_steps"]
            axes[1].plot([s * costs[r["variant"]] / ref for s in c["step"]], y,
                         color=colors.get(r["variant"]), label=label, alpha=0.85)
    xlabels = ["training step", f"compute (steps of {eq.get('reference')}, paired costs)"]
    for ax, xlabel in zip(axes, xlabels, strict=False):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation -ELBO, " + ("bits/dim" if bpd else "nats"))
        ax.grid(alpha=0.3)
        ax.legend()
    if panels == 2:
        axes[1].axvline(eq["budget_steps"], color="grey", linestyle=":")
    save_png(fig, out)
    plt.close(fig)
    return out


def write_summary(out: str | Path, runs: Sequence[AblationRun],
                  variants: Sequence[str]) -> list[Path]:
    """Write table.json, table.md, kl_per_layer.json/.png and curves.png into ``out`` from
    the finished runs; returns the paths written. Several processes may work on one ablation:
    the summaries are written one at a time (a lock beside the files), each from the results
    there when it starts, so the five files always come from one summary and the last one
    written holds the most runs. With ``out/step_costs.json`` (``biva ablation
    --step-costs``) the table has its equal-compute column. Runs without a result yet are
    listed in table.json (``missing_runs``) and table.md."""
    out = Path(out)
    with output_lock(out / "table", wait_s=600):
        results = [r for r in (load_result(run.result_path) for run in runs) if r is not None]
        missing = [str(run.run_dir) for run in runs if not run.result_path.is_file()]
        costs = out / STEP_COSTS_FILE
        step_costs = json.loads(costs.read_text()) if costs.is_file() else None
        summary = {**summarize(results, variants, step_costs), "missing_runs": missing}
        written = [out / "table.json", out / "table.md", out / "kl_per_layer.json"]
        atomic_write_json(written[0], summary)
        atomic_write_text(written[1], table_markdown(summary))
        atomic_write_json(written[2], {"dataset": summary["dataset"],
                                       "groups": summary["kl_per_layer"]})
        written.append(plot_kl_per_layer(summary, out / "kl_per_layer.png"))
        written.append(plot_curves(results, summary, out / "curves.png"))
    if missing:
        print(f"summary of {len(results)} of {len(runs)} runs; not finished yet: "
              f"{', '.join(missing)}", file=sys.stderr)
    return written
