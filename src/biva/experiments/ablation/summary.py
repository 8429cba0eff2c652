"""The ablation's tables and figures, from the runs' ``ablation_result.json`` files alone:
Table 1 (``table.json`` / ``table.md``), Figure 2 (``kl_per_layer.json`` / ``.png``) and the
validation curves (``curves.png``)."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from biva.evaluation.style import save_png
from biva.experiments.ablation.runner import AblationRun, load_result
from biva.experiments.ablation.variants import ABLATION_VARIANTS
from biva.utils.atomic import atomic_write_json, atomic_write_text
from biva.utils.machine import same_machine
from biva.utils.run_lock import output_lock


# ----------------------------------------------------------------------------- summary
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)



def best_within_cpu(curve: dict, minutes: float, key: str = "valid_elbo") -> float | None:
    """The best validation ELBO (nats) of a run by ``minutes`` CPU-minutes: the best
    validation at or before it, or the curve's value at ``minutes`` itself, linearly
    interpolated between the validations around it, whichever is higher. None when the run
    never reached ``minutes`` (no extrapolation) or had no validation by then."""
    m, v = curve["cpu_minutes"], curve[key]
    before = [x for x, t in zip(v, m, strict=True) if t <= minutes + 1e-9]
    if not before or m[-1] < minutes - 1e-9:
        return None
    i = len(before) - 1
    at = before[-1]
    if i + 1 < len(m) and m[i + 1] > m[i]:
        w = (minutes - m[i]) / (m[i + 1] - m[i])
        at = v[i] + w * (v[i + 1] - v[i])
    return max(*before, at)


def _equal_cpu_minutes(results: Sequence[dict]) -> tuple[float | None, str]:
    """The CPU-minutes every run is compared at, and on what basis: the runs' common CPU
    budget when they had one (whatever variants the table shows), else the shortest run's
    CPU time; None when the runs were made on different machines (CPU time is not
    comparable across machines: compare at equal steps)."""
    machines = [r.get("machine") for r in results]
    if any(not same_machine(machines[0], m) for m in machines[1:]):
        kinds = sorted({f"{(m or {}).get('cpu')} x{(m or {}).get('cores')}" for m in machines})
        return None, f"not compared: runs from different machines ({'; '.join(kinds)})"
    budgets = {r.get("budget", {}).get("max_cpu_minutes") or 0 for r in results}
    if len(budgets) == 1 and budgets != {0}:
        return float(budgets.pop()), "the runs' CPU budget"
    return (min(r["curve"]["cpu_minutes"][-1] for r in results if r["curve"]["step"]),
            "the shortest run's CPU time")


def summarize(results: Sequence[dict], variants: Sequence[str]) -> dict:
    """Table 1 and Figure 2 of the ablation from the runs' results (see module docstring).

    Bounds are in nats per example and, for 8-bit data, bits/dim. "At equal CPU-minutes" is
    the best validation ELBO each run reached within the CPU time of the cheapest run.
    """
    if not results:
        raise ValueError("no finished ablation runs to summarize")
    k = results[0]["test"].get("k", 1)
    dims = results[0]["dims"]
    bpd = results[0]["kind"] == "8bit"
    equal_cpu, equal_cpu_basis = _equal_cpu_minutes(results)
    rows, figure = [], []
    lk = f"L_{k}" if k > 1 else "L_1"
    for v in [v for v in variants if any(r["variant"] == v for r in results)]:
        rs = sorted((r for r in results if r["variant"] == v), key=lambda r: r["seed"])
        row = {"variant": v, "description": ABLATION_VARIANTS.get(v, ""),
               "seeds": [r["seed"] for r in rs], "params": rs[0]["params"],
               "stochastic_layers": rs[0]["stochastic_layers"],
               "steps": _mean_std([r["steps"] for r in rs])[0],
               "cpu_minutes": _mean_std([r["cpu_minutes"] for r in rs])[0]}
        for name in ("L_1", lk):
            for suffix in ("", "_bpd"):
                vals = [r["test"].get(name + suffix) for r in rs]
                row[f"test_{name}{suffix}"] = vals
                row[f"test_{name}{suffix}_mean"], row[f"test_{name}{suffix}_std"] = (
                    _mean_std(vals))
        at_cpu = [None if equal_cpu is None else best_within_cpu(r["curve"], equal_cpu)
                  for r in rs]
        row["valid_elbo_at_equal_cpu"] = at_cpu
        row["valid_elbo_at_equal_cpu_mean"], row["valid_elbo_at_equal_cpu_std"] = (
            _mean_std(at_cpu))
        if bpd:
            scale = 1 / (dims * math.log(2))
            row["valid_bpd_at_equal_cpu_mean"] = (None if row["valid_elbo_at_equal_cpu_mean"]
                                                  is None else
                                                  -row["valid_elbo_at_equal_cpu_mean"] * scale)
            row["valid_bpd_at_equal_cpu_std"] = (None if row["valid_elbo_at_equal_cpu_std"]
                                                 is None else
                                                 row["valid_elbo_at_equal_cpu_std"] * scale)
        rows.append(row)
        for group in rs[0]["layers"]:
            g = group["group"]
            per_seed = [next(x for x in r["layers"] if x["group"] == g) for r in rs]
            figure.append({"variant": v, "group": g, "layer": group["layer"],
                           "kl_mean": _mean_std([x["kl"] for x in per_seed])[0],
                           "kl": [x["kl"] for x in per_seed],
                           "active": [x["active"] for x in per_seed], "dims": group["dims"],
                           "active_fraction_mean": _mean_std(
                               [x["active_fraction"] for x in per_seed])[0]})
    return {"k": k, "dims": dims, "units": "bits/dim" if bpd else "nats",
            "dataset": results[0]["dataset"], "equal_cpu_minutes": equal_cpu,
            "equal_cpu_basis": equal_cpu_basis,
            "n_test": results[0]["test"]["n_examples"], "rows": rows,
            "runs": [{key: r[key] for key in r if key != "curve"} for r in results],
            "kl_per_layer": figure}



def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")



def _cpu_label(summary: dict) -> str:
    m = summary["equal_cpu_minutes"]
    return "equal CPU-min: not compared (different machines)" if m is None else \
        f"{m:.1f} CPU-min"


def table_markdown(summary: dict) -> str:
    """Table 1 and the per-layer figure's numbers as Markdown."""
    k, bpd = summary["k"], summary["units"] == "bits/dim"
    lk = f"L_{k}" if k > 1 else "L_1"
    unit = "bpd" if bpd else "nats"
    suffix, digits = ("_bpd", 3) if bpd else ("", 2)
    lines = [f"Test ({summary['n_test']} examples of {summary['dataset']}, best-validation "
             f"checkpoint; mean ± std over seeds; {summary['units']}, lower is better"
             + ("" if bpd else " for -L") + "):", "",
             f"| variant | params | seeds | steps | CPU-min | L_1 ({unit}) | {lk} ({unit}) | "
             f"valid at {_cpu_label(summary)} ({unit}) |",
             "|---|---|---|---|---|---|---|---|"]
    sign = 1 if bpd else -1     # bits/dim are positive already; -L in nats

    def neg(m, s):
        return (None if m is None else sign * m, s)

    for r in summary["rows"]:
        at_cpu = (_fmt(r.get("valid_bpd_at_equal_cpu_mean"), r.get("valid_bpd_at_equal_cpu_std"),
                       3) if bpd else _fmt(*neg(r["valid_elbo_at_equal_cpu_mean"],
                                                r["valid_elbo_at_equal_cpu_std"]), 2))
        lines.append(
            f"| `{r['variant']}` | {r['params'] / 1e6:.2f}M | {len(r['seeds'])} | "
            f"{r['steps']:.0f} | {r['cpu_minutes']:.1f} | "
            f"{_fmt(*neg(r[f'test_L_1{suffix}_mean'], r[f'test_L_1{suffix}_std']), digits)} | "
            f"{_fmt(*neg(r[f'test_{lk}{suffix}_mean'], r[f'test_{lk}{suffix}_std']), digits)} | "
            f"{at_cpu} |")
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
    """Validation bound against steps and against CPU-minutes, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bpd = summary["units"] == "bits/dim"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = dict(zip([r["variant"] for r in summary["rows"]],
                      plt.get_cmap("tab10").colors, strict=False))
    seen = set()
    for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
        c = r["curve"]
        y = c["valid_bpd"] if bpd else [-e for e in c["valid_elbo"]]
        label = None if r["variant"] in seen else r["variant"]
        seen.add(r["variant"])
        for ax, x in zip(axes, (c["step"], c["cpu_minutes"]), strict=True):
            ax.plot(x, y, color=colors.get(r["variant"]), label=label, alpha=0.85)
    for ax, xlabel in zip(axes, ("training step", "CPU-minutes"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation -ELBO, " + ("bits/dim" if bpd else "nats"))
        ax.grid(alpha=0.3)
        ax.legend()
    if summary["equal_cpu_minutes"] is not None:
        axes[1].axvline(summary["equal_cpu_minutes"], color="grey", linestyle=":")
    save_png(fig, out)
    plt.close(fig)
    return out



def write_summary(out: str | Path, runs: Sequence[AblationRun],
                  variants: Sequence[str]) -> list[Path]:
    """Write table.json, table.md, kl_per_layer.json/.png and curves.png into ``out`` from
    the finished runs; returns the paths written. Several processes may work on one ablation:
    the summaries are written one at a time (a lock beside the files), each from the results
    there when it starts, so the five files always come from one summary and the last one
    written holds the most runs. Runs without a result yet are listed in table.json
    (``missing_runs``) and table.md."""
    out = Path(out)
    with output_lock(out / "table", wait_s=600):
        results = [r for r in (load_result(run.result_path) for run in runs) if r is not None]
        missing = [str(run.run_dir) for run in runs if not run.result_path.is_file()]
        summary = {**summarize(results, variants), "missing_runs": missing}
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
