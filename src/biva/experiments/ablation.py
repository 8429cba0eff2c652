"""The paper's ablation (section 4.1, Table 1 and Figure 2) for any config: VAE, LVAE, LVAE+,
LVAE+ with 2L-1 stochastic layers and BIVA, trained from one base config for several seeds.

Each (variant, seed) is an ordinary run directory ``OUT/<variant>/seed<S>`` (resumable with
``biva train --resume``); when its training budget is spent, its best-validation checkpoint
is evaluated on the test split and ``ablation_result.json`` is written beside it. The summary
reads those files only:

* ``table.json`` / ``table.md``: Table 1 (parameters, steps, CPU-minutes, test L_1 and L_K,
  mean and spread over seeds), the validation bound at equal CPU-minutes;
* ``kl_per_layer.json`` / ``kl_per_layer.png``: Figure 2 (KL(q||p) per latent group on the
  test examples, BIVA's z^BU and z^TD apart) and active units per group;
* ``curves.png``: the validation bound against steps and against CPU-minutes.

Several processes may work on one ablation at once: a run is taken under an exclusive lock,
so a second worker moves on to the next run instead of waiting.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ConfigError, ModelConfig
from ..evaluation.style import save_png
from ..presets import topdown_equivalent
from ..utils.atomic import atomic_write_json, atomic_write_text
from ..utils.jsonl import read_jsonl
from ..utils.run_lock import RunDirLocked, lock_run_dir, unlock_run_dir

#: Variant name -> what it is. Names are lower case; the order is the table's.
ABLATION_VARIANTS = {
    "vae": "hierarchical VAE: q(z_1|x) q(z_i+1|z_i), no skips",
    "lvae": "Ladder VAE: deterministic BU path, top-down inference",
    "lvae+": "LVAE + the deterministic top-down skip path (eq. 5)",
    "lvae+2l-1": "LVAE+ with 2L-1 stochastic layers (as many latent groups as BIVA)",
    "biva": "BIVA: stochastic BU path (z^BU) and top-down inference (z^TD)",
    "vdvae": "VDVAE-style: deterministic encoder, top-down residual blocks with a latent each",
    "nvae": "NVAE-style: NVAE cells, residual-normal posterior, spectral regularization",
}
#: What ``biva ablation`` trains by default: the paper's section 4.1 (the top-down families
#: join with ``--variants``).
PAPER_VARIANTS = ("vae", "lvae", "lvae+", "lvae+2l-1", "biva")
#: train.spectral_reg of an nvae run whose config leaves it at 0 (NVAE used 1e-2 to 1e-1).
NVAE_SPECTRAL_REG = 0.01
RESULT_FILE = "ablation_result.json"


def doubled_depth(model: ModelConfig) -> ModelConfig:
    """The hierarchy with 2L-1 stochastic layers that has BIVA's latent groups as layers.

    Layer i < L of ``model`` becomes two layers (for BIVA's z^BU_i and z^TD_i), both with
    ``latents[i]`` units, layer i's filters and kernel, the first with layer i's stride and
    the second with stride 1 (so both sit at BIVA's resolution r_i); layer L stays one layer.
    The result holds as many latent units as the BIVA of ``model``.
    """
    L = model.n_layers
    filters, kernels, strides = (model.per_layer(n) for n in ("filters", "kernels", "strides"))
    out: dict[str, list[int]] = {"latents": [], "filters": [], "kernels": [], "strides": []}
    for i in range(L):
        for copy in range(2 if i < L - 1 else 1):
            out["latents"].append(model.latents[i])
            out["filters"].append(filters[i])
            out["kernels"].append(kernels[i])
            out["strides"].append(strides[i] if copy == 0 else 1)
    cfg = replace(model, **{k: tuple(v) for k, v in out.items()})
    cfg.validate()
    return cfg


def ablation_train(train, variant: str):
    """The train config of one variant: spectral regularization only for the top-down
    families, NVAE's at :data:`NVAE_SPECTRAL_REG` unless the config sets one."""
    if variant == "nvae":
        return replace(train, spectral_reg=train.spectral_reg or NVAE_SPECTRAL_REG)
    if variant == "vdvae":
        return train
    return replace(train, spectral_reg=0.0)


def ablation_model(model: ModelConfig, variant: str) -> ModelConfig:
    """The base ``model`` turned into one of :data:`ABLATION_VARIANTS`."""
    if variant not in ABLATION_VARIANTS:
        raise ConfigError(f"variant {variant!r}: expected one of {list(ABLATION_VARIANTS)}")
    if variant == "lvae+2l-1":
        return doubled_depth(replace(model, variant="lvae+"))
    if variant in ("vdvae", "nvae"):
        return topdown_equivalent(replace(model, variant="biva") if model.topdown else model,
                                  variant)
    cfg = replace(model, variant=variant)
    cfg.validate()
    return cfg


@dataclass(frozen=True)
class AblationRun:
    """One (variant, seed) of an ablation and its run directory."""

    variant: str
    seed: int
    run_dir: Path

    @property
    def result_path(self) -> Path:
        """RUN_DIR/ablation_result.json, written when the run is trained and evaluated."""
        return self.run_dir / RESULT_FILE


def plan_runs(out: str | Path, variants: Sequence[str], seeds: Sequence[int]) -> list[AblationRun]:
    """Runs in the order they are trained: seed by seed, every variant of a seed in turn (so
    a cut-short ablation has all variants at its first seeds)."""
    unknown = [v for v in variants if v not in ABLATION_VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; expected names from "
                         f"{list(ABLATION_VARIANTS)}")
    if not variants or not seeds:
        raise ValueError("an ablation needs at least one variant and one seed")
    out = Path(out)
    return [AblationRun(v, s, out / v / f"seed{s}") for s in seeds for v in variants]


@dataclass
class AblationBudget:
    """What each run gets (``steps``; ``max_cpu_minutes`` > 0 adds a CPU budget) and how its
    best checkpoint is evaluated (``k`` importance samples on the first ``eval_examples`` test
    examples, 0 = all)."""

    steps: int
    max_cpu_minutes: float = 0.0
    k: int = 100
    eval_examples: int = 0

    def overrides(self) -> list[str]:
        """The budget as ``--set`` overrides (new runs and resumed ones alike)."""
        return [f"train.steps={self.steps}", f"train.max_cpu_minutes={self.max_cpu_minutes}"]

    def matches(self, result: dict) -> bool:
        """Whether a run's ``ablation_result.json`` was made with this budget."""
        b = result.get("budget", {})
        return (b.get("steps") == self.steps and b.get("max_cpu_minutes") == self.max_cpu_minutes
                and b.get("k") == self.k and b.get("eval_examples") == self.eval_examples)


def _load_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_ablation(runs: Iterable[AblationRun], make_config: Callable, budget: AblationBudget, *,
                 device: str = "cpu", log=print) -> list[AblationRun]:
    """Train and evaluate every run that has no result for ``budget`` yet; skip runs another
    process holds. ``make_config(variant, seed)`` returns (RunConfig, DatasetSplits or None)
    for a new run (None: the trainer loads the data the config names). Returns the runs done.
    """
    done = []
    for run in runs:
        result = _load_json(run.result_path)
        if result is not None and budget.matches(result):
            continue
        lock = run.run_dir.parent / ".locks" / run.run_dir.name
        try:
            lock_run_dir(lock)
        except RunDirLocked:
            log(f"{run.run_dir}: another process is on it; next run")
            continue
        try:
            log(f"{run.run_dir}: training ({run.variant}, seed {run.seed})")
            train_run(run, make_config, budget)
            log(f"{run.run_dir}: evaluating on the test split (k = {budget.k})")
            atomic_write_json(run.result_path, evaluate_run_for_ablation(run, budget, device))
            done.append(run)
        finally:
            unlock_run_dir(lock)
    return done


def train_run(run: AblationRun, make_config: Callable, budget: AblationBudget) -> None:
    """Train ``run`` to ``budget``: resume its latest checkpoint, or start it."""
    from ..training import Trainer
    from ..utils.checkpoint import latest_checkpoint

    if latest_checkpoint(run.run_dir) is not None:
        Trainer.resume(run.run_dir, budget=budget.overrides()).fit()
        return
    cfg, data = make_config(run.variant, run.seed)
    check_same_recipe(run, cfg)
    Trainer(cfg, run.run_dir, data=data).fit()


#: data and train fields that may differ between the runs of one ablation: the seed, the
#: budget (equal by construction, extendable), where the data and the run live and run, and
#: what the variant sets itself.
RECIPE_FREE = {"seed", "steps", "max_cpu_minutes", "max_minutes", "threads", "device",
               "progress", "spectral_reg", "root", "path", "download"}


def check_same_recipe(run: AblationRun, cfg) -> None:
    """Refuse to start ``run`` with a data or train setting that differs from a run already
    in the ablation's folder (e.g. a shipped config changed between sessions): the table
    would compare recipes as well as variants. The error names each field and both values."""
    from ..utils.config_io import to_dict

    # through JSON, as config.json holds it (tuples as lists)
    new = json.loads(json.dumps({"data": to_dict(cfg.data), "train": to_dict(cfg.train)}))
    for other in sorted(run.run_dir.parent.parent.glob("*/seed*/config.json")):
        if other.parent == run.run_dir:
            continue
        old = _load_json(other)
        if old is None:
            continue
        diffs = [f"{sec}.{key}: {old[sec].get(key)!r} there, {value!r} here"
                 for sec in ("data", "train") for key, value in new[sec].items()
                 if key not in RECIPE_FREE
                 and key in old.get(sec, {}) and old[sec][key] != value]
        if diffs:
            raise ConfigError(f"{run.run_dir}: this ablation's {other.parent} was trained with "
                              f"another recipe ({'; '.join(diffs)}); pass --set for these "
                              "fields, or use another --out")
        return


def validation_curve(records: list[dict]) -> dict:
    """The validation records of a run's metrics.jsonl as columns: step, CPU-minutes, ELBO
    (nats), bits/dim."""
    valid = [r for r in records if r.get("kind") == "valid"]
    valid.sort(key=lambda r: (r["step"], r.get("cpu_s", 0.0)))
    return {"step": [r["step"] for r in valid],
            "cpu_minutes": [r.get("cpu_s", math.nan) / 60 for r in valid],
            "valid_elbo": [r["valid_elbo"] for r in valid],
            "valid_bpd": [r.get("valid_bpd") for r in valid]}


def layer_table(model, kl_per_group: dict, active: dict) -> list[dict]:
    """One row per latent group, bottom first: layer, KL (nats/example), active units."""
    rows = []
    for g in model.group_names:
        a = active["per_group"].get(g, {"active": 0, "dims": 0})
        rows.append({"group": g, "layer": model.group_layer(g), "kl": kl_per_group.get(g),
                     "active": a["active"], "dims": a["dims"],
                     "active_fraction": a["active"] / a["dims"] if a["dims"] else 0.0})
    return rows


def evaluate_run_for_ablation(run: AblationRun, budget: AblationBudget, device="cpu") -> dict:
    """Test L_1 and L_k of the best-validation checkpoint, KL and active units per group,
    cost and curves: the JSON-ready ``ablation_result.json`` of one run."""
    from ..evaluation import evaluate_bounds, evaluation_split
    from ..evaluation.diagnostics import _batches, active_units
    from ..evaluation.loading import load_trained
    from ..training import load_run_data
    from ..utils.rng import seeded_eval

    model, cfg, state = load_trained(run.run_dir, "best", device)
    data = load_run_data(cfg)
    test = evaluation_split(data, "test", seed=cfg.train.seed)
    n = min(budget.eval_examples or len(test), len(test))
    bounds = evaluate_bounds(model, test, data.kind, cfg.model.bits, k=budget.k,
                             batch_size=cfg.eval.batch_size, max_batch=cfg.eval.max_batch,
                             n_examples=n, device=device, seed=0)
    bounds.pop("per_example", None)
    batches = _batches(test, data.kind, cfg.model.bits, cfg.eval.batch_size, device, n)
    with seeded_eval(model, 0):
        active = active_units(model, batches)
    records = read_jsonl(run.run_dir / "metrics.jsonl")   # read once: curve and CPU time
    curve = validation_curve(records)
    latest = [r for r in records if "cpu_s" in r]
    return {
        "variant": run.variant, "seed": run.seed, "run_dir": str(run.run_dir),
        "dataset": data.name, "kind": data.kind, "dims": bounds["dims"],
        "params": sum(p.numel() for p in model.parameters()),
        "stochastic_layers": model.n_layers, "groups": list(model.group_names),
        "steps": max(curve["step"], default=0),
        "cpu_minutes": max((r["cpu_s"] for r in latest), default=math.nan) / 60,
        "best_step": state.get("step"), "best_valid_elbo": state.get("valid_elbo"),
        "budget": {"steps": budget.steps, "max_cpu_minutes": budget.max_cpu_minutes,
                   "k": budget.k, "eval_examples": budget.eval_examples},
        "test": {key: bounds[key] for key in bounds
                 if key.startswith("L_") or key in ("n_examples", "k")},
        "layers": layer_table(model, bounds["kl_per_group"], active),
        "active_units": {"threshold": active["threshold"], "active": active["active"],
                         "dims": active["dims"]},
        "curve": curve,
    }


# ----------------------------------------------------------------------------- summary
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def best_within_cpu(curve: dict, minutes: float, key: str = "valid_elbo") -> float | None:
    """The best validation ELBO (nats) reached by ``minutes`` CPU-minutes, from a curve."""
    vals = [v for v, m in zip(curve[key], curve["cpu_minutes"], strict=True)
            if m <= minutes + 1e-9]
    return max(vals) if vals else None


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
    equal_cpu = min(r["curve"]["cpu_minutes"][-1] for r in results if r["curve"]["step"])
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
        at_cpu = [best_within_cpu(r["curve"], equal_cpu) for r in rs]
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
            "n_test": results[0]["test"]["n_examples"], "rows": rows,
            "runs": [{key: r[key] for key in r if key != "curve"} for r in results],
            "kl_per_layer": figure}


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


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
             f"valid at {summary['equal_cpu_minutes']:.1f} CPU-min ({unit}) |",
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
    axes[1].axvline(summary["equal_cpu_minutes"], color="grey", linestyle=":")
    save_png(fig, out)
    plt.close(fig)
    return out


def write_summary(out: str | Path, runs: Sequence[AblationRun],
                  variants: Sequence[str]) -> list[Path]:
    """Write table.json, table.md, kl_per_layer.json/.png and curves.png into ``out`` from
    the finished runs; returns the paths written."""
    out = Path(out)
    results = [r for r in (_load_json(run.result_path) for run in runs) if r is not None]
    summary = summarize(results, variants)
    written = [out / "table.json", out / "table.md", out / "kl_per_layer.json"]
    atomic_write_json(written[0], summary)
    atomic_write_text(written[1], table_markdown(summary))
    atomic_write_json(written[2], {"dataset": summary["dataset"],
                                   "groups": summary["kl_per_layer"]})
    written.append(plot_kl_per_layer(summary, out / "kl_per_layer.png"))
    written.append(plot_curves(results, summary, out / "curves.png"))
    missing = [str(run.run_dir) for run in runs if not run.result_path.is_file()]
    if missing:
        print(f"summary of {len(results)} of {len(runs)} runs; not finished yet: "
              f"{', '.join(missing)}", file=sys.stderr)
    return written
