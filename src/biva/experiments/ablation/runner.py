"""Running the paper's ablation (section 4.1, Table 1 and Figure 2) for any config: VAE,
LVAE, LVAE+, LVAE+ with 2L-1 stochastic layers and BIVA (and the top-down families), trained
from one base config for several seeds.

Each (variant, seed) is an ordinary run directory ``OUT/<variant>/seed<S>`` (resumable with
``biva train --resume``); when its training budget is spent, its best-validation checkpoint
is evaluated on the test split and ``ablation_result.json`` is written beside it. The summary
reads those files only:

* ``table.json`` / ``table.md``: Table 1 (parameters, steps, test L_1 and L_K, mean and
  spread over seeds), the validation bound at equal compute (from ``step_costs.json``);
* ``kl_per_layer.json`` / ``kl_per_layer.png``: Figure 2 (KL(q||p) per latent group on the
  test examples, BIVA's z^BU and z^TD apart) and active units per group;
* ``curves.png``: the validation bound against steps and against compute.

Several processes may work on one ablation at once: a run is taken under an exclusive lock,
so a second worker moves on to the next run instead of waiting.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from biva.config import ConfigError, load_run_config
from biva.data import evaluation_split, load_run_data
from biva.evaluation.diagnostics import active_units
from biva.experiments.ablation.variants import (
    ABLATION_VARIANTS,
    PAPER_VARIANTS,
    ablation_model,
    ablation_train,
)
from biva.objectives.splits import evaluate_bounds, split_batches
from biva.runs.loading import load_trained
from biva.training import Trainer
from biva.training.own_data import config_for_data
from biva.utils.atomic import atomic_write_json
from biva.utils.checkpoint import latest_checkpoint
from biva.utils.config_io import to_dict
from biva.utils.jsonl import read_jsonl
from biva.utils.machine import describe_machine
from biva.utils.rng import seeded_eval
from biva.utils.run_lock import RunDirLocked, lock_run_dir, unlock_run_dir

RESULT_FILE = "ablation_result.json"


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


def load_result(path: Path) -> dict | None:
    """A run's ``ablation_result.json``, or None when it is missing or unreadable."""
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
        if (run.run_dir / "config.json").is_file():
            # A finished or half-trained run counts only if it is what is asked for now.
            check_run_matches(run, make_config(run.variant, run.seed)[0])
        result = load_result(run.result_path)
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
            train_ablation_run(run, make_config, budget)
            log(f"{run.run_dir}: evaluating on the test split (k = {budget.k})")
            atomic_write_json(run.result_path, evaluate_run_for_ablation(run, budget, device))
            done.append(run)
        finally:
            unlock_run_dir(lock)
    return done


def train_ablation_run(run: AblationRun, make_config: Callable, budget: AblationBudget) -> None:
    """Train ``run`` to ``budget``: resume its latest checkpoint, or start it."""

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

    # through JSON, as config.json holds it (tuples as lists)
    new = json.loads(json.dumps({"data": to_dict(cfg.data), "train": to_dict(cfg.train)}))
    for other in sorted(run.run_dir.parent.parent.glob("*/seed*/config.json")):
        if other.parent == run.run_dir:
            continue
        old = load_result(other)
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


def check_run_matches(run: AblationRun, cfg) -> None:
    """Refuse, naming each field with the run's value and the requested one, a run already in
    the ablation's folder whose model, data or train settings differ from what this command
    asks for (``--set train.lr=0.05`` on a finished run was ignored, and the table re-issued
    as if for it). Budget, seed, device and paths may differ."""
    saved = load_result(run.run_dir / "config.json")
    if saved is None:
        return
    want = json.loads(json.dumps({s: to_dict(getattr(cfg, s)) for s in ("model", "data",
                                                                         "train")}))
    diffs = [f"{sec}.{key}: {saved[sec].get(key)!r} in the run, {value!r} asked"
             for sec in ("model", "data", "train") for key, value in want[sec].items()
             if key not in RECIPE_FREE and key in saved.get(sec, {})
             and saved[sec][key] != value]
    if diffs:
        raise ConfigError(f"{run.run_dir} was trained with other settings than this command "
                          f"asks for ({'; '.join(diffs[:4])}): drop those --set options to "
                          "summarize it, or use another --out for the new recipe")


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

    model, cfg, state = load_trained(run.run_dir, "best", device)
    data = load_run_data(cfg)
    test = evaluation_split(data, "test", seed=cfg.train.seed)
    n = min(budget.eval_examples or len(test), len(test))
    bounds = evaluate_bounds(model, test, data.kind, cfg.model.bits, n_samples=budget.k,
                             batch_size=cfg.eval.batch_size, max_batch=cfg.eval.max_batch,
                             n_examples=n, device=device, seed=0)
    bounds.pop("per_example", None)
    batches = split_batches(test, data.kind, cfg.model.bits, cfg.eval.batch_size, device, n)
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
        # CPU-minutes are compared only between runs of one kind of machine (summary.py).
        "machine": describe_machine(),
    }




@dataclass
class AblationSettings:
    """One ablation: every variant of ``variants`` for every seed of ``seeds``, from the base
    config ``config`` (a shipped name or file; or ``data``, one's own images), each trained
    ``steps`` steps (and at most ``max_cpu_minutes`` of CPU time when > 0), its best
    checkpoint evaluated with ``n_samples`` importance samples on the first ``eval_examples``
    test images (0: all). ``overrides``: ``KEY=VALUE`` for every run."""

    out: Path
    steps: int
    variants: Sequence[str] = PAPER_VARIANTS
    seeds: Sequence[int] = (0,)
    config: str | None = None
    data: Path | None = None
    split_seed: int = 0
    max_cpu_minutes: float = 0.0
    n_samples: int = 100
    eval_examples: int = 0
    overrides: Sequence[str] = ()
    data_root: str | None = None
    device: str = "cpu"
    threads: int = 1

    def budget(self) -> AblationBudget:
        """What each run gets and how it is evaluated."""
        return AblationBudget(self.steps, self.max_cpu_minutes, self.n_samples,
                              self.eval_examples)

    def run_overrides(self) -> list[str]:
        """The overrides of every run: the user's, then the device, threads and split seed."""
        out = list(self.overrides)
        if self.data_root:
            out.append(f"data.root={self.data_root}")
        return [*out, f"train.device={self.device}", f"train.threads={self.threads}",
                "train.progress=false", f"data.split_seed={self.split_seed}",
                *self.budget().overrides()]


def config_maker(settings: AblationSettings) -> Callable:
    """make_config(variant, seed) -> (RunConfig, its data or None to load them)."""
    base = settings.run_overrides()

    def make(variant: str, seed: int):
        data = None
        if settings.data is not None:
            cfg, data, lines = config_for_data(settings.data, settings.config,
                                               [*base, f"train.seed={seed}"])
            print("\n".join(lines))
        else:
            cfg = load_run_config(settings.config or "digits", [*base, f"train.seed={seed}"])
            cfg.name = Path(settings.config or "digits").stem
        cfg.model = ablation_model(cfg.model, variant)
        cfg.train = ablation_train(cfg.train, variant)
        cfg.name = f"{cfg.name}-{variant}-seed{seed}"
        cfg.validate()
        return cfg, data

    return make


def train_ablation(settings: AblationSettings, *, workers: Sequence[Sequence[str]] = ()
                   ) -> list[AblationRun]:
    """Train and evaluate every run of the ablation that has no result yet, in this process
    and in one extra process per command line of ``workers`` (each takes the runs no other
    process holds); returns this process's runs. A failed worker is reported after the
    others have finished their runs: run the same ablation again to resume."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    runs = plan_runs(settings.out, settings.variants, settings.seeds)
    procs = [subprocess.Popen([sys.executable, *w]) for w in workers]
    failed = None
    done: list[AblationRun] = []
    try:
        done = run_ablation(runs, config_maker(settings), settings.budget(),
                            device=settings.device)
    except Exception as err:  # let the workers finish their runs before reporting it
        failed = err
    codes = [p.wait() for p in procs]
    if failed is not None:
        raise failed
    if any(codes):
        raise RuntimeError(f"{sum(c != 0 for c in codes)} ablation worker(s) failed "
                           f"(exit codes {codes}); run the same command again to resume")
    return done
